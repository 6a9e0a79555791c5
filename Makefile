# The two commands a newcomer needs: `make demo` and `make test`. Each sets everything up first
# (virtualenv, the project with its test extras, the offline Fashion-MNIST data) and then runs.

VENV      ?= .venv
PY        := $(VENV)/bin/python
UNTUNABLE := $(VENV)/bin/untunable
STAMP     := $(VENV)/.installed
FMNIST    := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PYTEST    := $(PY) -m pytest

.PHONY: demo test test-slow ci-leaderboard bench setup data browser clean

demo: setup data
	$(UNTUNABLE) run configs/demo.yaml

# pytest exits 5 when it collected no test: that must fail, not pass silently.
test: setup data browser
	@$(PYTEST) -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$rc

# A bounded selection of the slow end-to-end tests (what CI runs after `make test`): sigkill resume of a grid
# and of a search, fault injection, the ray executor, and scaffolded plugins end to end.
test-slow: setup data
	@$(PYTEST) -q -m slow -k "$(SLOW)"; rc=$$?; if [ $$rc -eq 5 ]; then echo "make test-slow: no tests selected" >&2; exit 1; fi; exit $$rc
SLOW ?= resume or ray_executor or fault_injection or scaffolded_plugins

# The CI leaderboard: real cells, written to runs/ci, then checked against the store.
ci-leaderboard: setup data
	$(UNTUNABLE) run configs/ci.yaml --quiet --no-leaderboard
	$(UNTUNABLE) leaderboard runs/ci
	UNTUNABLE_CI_RESULTS=runs/ci $(PYTEST) -q tests/test_ci_leaderboard.py

bench: setup data
	$(PYTEST) benchmarks -o addopts="" -q --benchmark-columns=min,mean,max,rounds

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Fashion-MNIST comes from Debian's dataset-fashion-mnist; install it when we may, else say how.
data:
	@test -f $(FMNIST) -o -n "$$UNTUNABLE_DATA" || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q dataset-fashion-mnist >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get install -y -q dataset-fashion-mnist >/dev/null; \
	  else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' (or set UNTUNABLE_DATA to a folder holding its IDX files)" >&2; exit 1; fi; }

# The HTML leaderboard is tested in Debian's chromium; the test skips (saying why) where it cannot be installed.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null 2>&1; } || echo "chromium could not be installed: the browser test will skip" >&2; \
	  else echo "chromium is not installed: the browser test will skip (sudo apt-get install chromium)" >&2; fi; }

clean:
	rm -rf runs .pytest_cache
