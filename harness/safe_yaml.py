"""Reading an experiment file as untrusted YAML: every problem is one ConfigError naming the file and line.

Beyond PyYAML's safe loader: a duplicate key is an error (YAML would keep the last one silently), nesting
is bounded (deep documents overflow the recursive composer), and so is the size of the document once its
aliases are expanded (an alias bomb loads in microseconds but hangs whoever walks it).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from harness.registry import ConfigError

MAX_BYTES = 1 << 20
MAX_DEPTH = 50
MAX_NODES = 100_000


class _Loader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (list, dict)):
                    raise yaml.constructor.ConstructorError(None, None, "a key must be a plain value",
                                                            key_node.start_mark)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {seen[key] + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _expanded_size(data, budget: int) -> int:
    """How many values `data` holds with every alias expanded, counting no further than `budget`."""
    count, stack = 0, [data]
    while stack and count <= budget:
        value = stack.pop()
        count += 1
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return count


def read_yaml(path: str | Path):
    """The document in `path`, or a ConfigError naming the file (and line) for anything a careless or
    hostile file can do: missing, unreadable, not UTF-8, too large, not YAML, duplicate keys, bombs."""
    path = Path(path)
    if not path.exists():
        raise ConfigError("no such experiment file", where=str(path))
    if not path.is_file():
        raise ConfigError("not a file (an experiment file is expected)", where=str(path))
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError(f"larger than {MAX_BYTES >> 20} MiB: not an experiment file", where=str(path))
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read it: {exc.strerror or exc}", where=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})",
                          where=str(path)) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', None) or exc}", where=where) from None
    if _expanded_size(data, MAX_NODES) > MAX_NODES:
        raise ConfigError(f"more than {MAX_NODES} values once its aliases are expanded (an alias bomb?)",
                          where=str(path))
    return data
