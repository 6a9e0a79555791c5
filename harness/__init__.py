"""untunable's core. Importing this package is cheap (no torch): plugins need only `hookimpl` and `Param`."""

from harness.hookspecs import hookimpl
from harness.registry import Measure, Param, ReferenceStart

__all__ = ["hookimpl", "Measure", "Param", "ReferenceStart"]
