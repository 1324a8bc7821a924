# make demo  - create .venv if missing, install, run the quickstart job on an embedded local Ray
# make test  - create .venv if missing, install, run the test suite (make test-all adds the slow tests)
# make lab   - JupyterLab on 127.0.0.1 with the notebooks (their kernel: this venv's python3)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# constraints.txt pins the CPU build of torch (and the versions we test) on our machines
PIP_INSTALL := $(BIN)/pip install -c constraints.txt
# uv installs the same packages as pip (the same resolution, checked with pip freeze), downloading and
# unpacking in parallel (1.6 min instead of pip's 4.5 on a fresh venv here, before bytecode was compiled;
# with --compile-bytecode, which pip does by default, not yet measured on a quiet machine). uv does not read
# pip's configuration, so the wheel folders and extra indexes pip is configured with are passed on,
# and each index may offer any version (pip's behaviour; uv's default takes the first index only).
# Where uv cannot install, pip does.
PIP_CONF = $(strip $(shell $(PY) -m pip config get global.$(1) 2>/dev/null))
UV_FLAGS := --index-strategy unsafe-best-match $(addprefix --find-links ,$(call PIP_CONF,find-links)) \
	$(addprefix --extra-index-url ,$(call PIP_CONF,extra-index-url))
UV_INSTALL := $(BIN)/uv pip install --python $(BIN)/python --compile-bytecode $(UV_FLAGS) -c constraints.txt

.PHONY: demo test test-all test-unit lint lab chromium sysdeps bench clean

$(BIN)/cellforge: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	($(BIN)/pip install -q uv && $(UV_INSTALL) -q -e ".[dev]") || $(PIP_INSTALL) -q -e ".[dev]"
	# Jupyter brings rfc3987-syntax (jupyter-events asks for jsonschema[format-nongpl]); on import it
	# builds ~35 Earley grammars, and every Ray process imports it (ray -> jsonschema): 3 s each here,
	# a local Ray's start 34 s instead of 12. Only jsonschema's optional `iri` format check uses it.
	$(BIN)/pip uninstall -y -q rfc3987-syntax 2>/dev/null || true
	touch $@

demo: $(BIN)/cellforge
	$(BIN)/cellforge run jobs/quickstart.yaml

# the paths are pyproject's testpaths: tests/ and the package's docstring examples. The unit tests and
# docstring examples (no Ray) run on two processes (pytest-xdist): 122 s against ~230 s on 2 cores;
# the integration tests share one Ray per session, so they run in one
test: $(BIN)/cellforge sysdeps
	$(BIN)/python -m pytest -q -m "not slow" -n 2 tests/unit platform/cellforge
	$(BIN)/python -m pytest -q -m "not slow" --durations=25 tests/integration

test-all: $(BIN)/cellforge sysdeps chromium
	$(BIN)/python -m pytest -q

test-unit: $(BIN)/cellforge
	$(BIN)/python -m pytest -q -n 2 tests/unit platform/cellforge

lint: $(BIN)/cellforge
	$(BIN)/ruff check platform tests benchmarks

# JupyterLab on the loopback address only (it prints a URL with its login token); the notebooks
# name the standard "python3" kernel, which is the Python of the Jupyter running them (this venv's
# here, papermill's or a cluster's elsewhere), so no kernel is registered. LAB_PORT=8899 for another port
# As root (a container, a CI image) Jupyter refuses to start without --allow-root: given then, still
# on 127.0.0.1 with a token. The notebooks' kernels share the local cellforge Ray (`cellforge ray
# status|stop`); it stops by itself once idle.
LAB_PORT ?= 8888
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)
lab: $(BIN)/cellforge
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) --ServerApp.root_dir=notebooks \
		--no-browser $(ROOT_FLAG)

# the browser test (tests/integration/test_browser.py, slow: make test-all) drives Debian's Chromium: Playwright's own
# browser download is not reachable from our machines
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
chromium:
	command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

# programs the tests start themselves: redis-server (the Redis session store's tests run one on 127.0.0.1
# in a temporary directory) and espeak-ng (scripts/make_speech.py synthesises the spoken corpus with it)
sysdeps:
	command -v redis-server >/dev/null && command -v espeak-ng >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends redis-server espeak-ng)

clean:
	rm -rf runs .pytest_cache
