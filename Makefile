# ncsniffer: `make demo` replays the bundled sample, `make test` runs the suite,
# `make install` puts the program in place (see README, "Install").
# All set up what they need first (Debian packages, .venv); run them as root.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# make install: where things go (tools/install says what each is)
DESTDIR     ?=
PREFIX      ?= /opt/ncsniffer
BINDIR      ?= /usr/local/bin
MANDIR      ?= /usr/local/share/man
CONFDIR     ?= /etc/nc.sniffer
UNITDIR     ?= /usr/local/lib/systemd/system
TMPFILESDIR ?= /usr/local/lib/tmpfiles.d
INSTALL_ENV  = DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" BINDIR="$(BINDIR)" MANDIR="$(MANDIR)" \
               CONFDIR="$(CONFDIR)" UNITDIR="$(UNITDIR)" TMPFILESDIR="$(TMPFILESDIR)"
WHEELDIR := build/wheel
MANPAGES := build/man/nc.sniffer.8 build/man/nc.sniffer.conf.5

.PHONY: setup test-setup demo test test-quick bench man wheel install uninstall clean

setup: $(STAMP)

# scripts/: pip copies them into the virtualenv; Makefile: how it installs.  Editable
# mode compat: a plain path in a .pth file; the default finder costs every start ~20 ms
# (it imports pathlib and importlib.util before the program runs; issue 16)
$(STAMP): setup.cfg setup.py tools/ensure-system Makefile $(wildcard scripts/*)
	./tools/ensure-system
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,docs]' --config-settings editable_mode=compat
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

man: $(MANPAGES)

build/man/%: docs/man/%.rst $(STAMP)
	@mkdir -p build/man
	$(VENV)/bin/rst2man --strict $< $@

wheel: setup
	rm -rf $(WHEELDIR)
	$(PY) -m pip wheel -q --no-deps -w $(WHEELDIR) .

install: setup man wheel
	$(INSTALL_ENV) ./tools/install $(WHEELDIR)/ncsniffer-*.whl $(MANPAGES)

uninstall:
	$(INSTALL_ENV) ./tools/uninstall

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
