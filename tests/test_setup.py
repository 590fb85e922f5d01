"""The set-up: `make setup` asks only for what the program needs; the tests' own set-up
(tools/ensure-test-system) installs their servers and leaves them disabled."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.conftest import ROOT

SETUP_TIMEOUT = 900
TEST_SERVERS = ["dnsmasq", "lighttpd", "ssh", "prometheus"]
QUICK_SETUP_SECONDS = 20


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="installs Debian packages as root")
def test_test_setup_leaves_the_test_servers_disabled():
    """The servers only the tests use are installed by the tests' set-up and never
    enabled at boot; a second run with everything present is quick."""
    started = time.monotonic()
    r = subprocess.run([os.path.join(ROOT, "tools", "ensure-test-system")],
                       capture_output=True, text=True, timeout=SETUP_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - started < QUICK_SETUP_SECONDS or "installing" in r.stdout
    for svc in TEST_SERVERS:
        if shutil.which("systemctl") and os.path.exists(f"/lib/systemd/system/{svc}.service"):
            state = subprocess.run(["systemctl", "is-enabled", svc], capture_output=True,
                                   text=True).stdout.strip()
            assert state == "disabled", f"{svc} is {state}"
        for level in "2345":
            links = [n for n in os.listdir(f"/etc/rc{level}.d") if n.startswith("S")
                     and n[3:] == svc] if os.path.isdir(f"/etc/rc{level}.d") else []
            assert not links, f"/etc/rc{level}.d/{links}"


def test_program_setup_installs_no_test_server():
    """`make setup`/`make demo`/`make install` ask only for what the program needs."""
    text = open(os.path.join(ROOT, "tools", "ensure-system")).read()
    pkgs = next(line for line in text.splitlines() if line.startswith("PKGS="))
    assert pkgs.split("=")[1].strip('"').split() == ["libpcap-dev", "gcc", "python3-dev",
                                                      "python3-venv"]
