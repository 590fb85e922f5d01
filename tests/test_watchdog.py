"""chkIFrunning: only the daemon that wrote the pid file counts as running (issue 11.16)."""

import os
import subprocess
import sys

import pytest

from ncsniffer import watchdog
from tests.conftest import stop_process

CHK = os.path.join(os.path.dirname(sys.executable), "chkIFrunning")


def restart_script(workdir: str) -> tuple[str, str]:
    marker = os.path.join(workdir, "restarted")
    script = os.path.join(workdir, "restart.sh")
    with open(script, "w") as fh:
        fh.write(f"#!/bin/sh\necho restarted > {marker}\n")
    os.chmod(script, 0o755)
    return script, marker


@pytest.mark.integration
def test_a_live_stranger_is_a_stale_pid_file(workdir):
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        pidf = os.path.join(workdir, "nc.sniffer.pid")
        with open(pidf, "w") as fh:
            fh.write(f"{stranger.pid}\n")
        script, marker = restart_script(workdir)
        r = subprocess.run([CHK, pidf, script], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert not os.path.exists(pidf) and os.path.exists(marker)
        assert stranger.poll() is None
    finally:
        stop_process(stranger)


@pytest.mark.integration
def test_a_fifo_pid_file_is_reported_not_waited_on(workdir):
    pidf = os.path.join(workdir, "nc.sniffer.pid")
    os.mkfifo(pidf)
    r = subprocess.run([CHK, pidf], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"chkIFrunning: cannot read pid file '{pidf}': "
                                f"'{pidf}' is not a regular file; remove it")


def test_usage():
    assert watchdog.main([]) == 1
