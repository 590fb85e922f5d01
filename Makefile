# ncsniffer: `make demo` replays the bundled sample, `make test` runs the suite.
# Both set everything up first (Debian packages, .venv); run them as root.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test-setup demo test test-quick bench clean

setup: $(STAMP)

$(STAMP): setup.cfg setup.py tools/ensure-system
	./tools/ensure-system
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# the servers and tools only the tests use, installed and left disabled
test-setup: setup
	./tools/ensure-test-system

demo: setup
	$(PY) samples/demo.py

test: test-setup
	$(PY) -m pytest -q

test-quick: test-setup
	$(PY) -m pytest -q -m "not integration and not slow"

bench: setup
	bench/run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
