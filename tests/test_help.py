"""Every program's --help: exit 0, on stdout, and a word on each of its arguments."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)

HELP = {
    ("nc.sniffer",): ["-c FILE", "-r FILE", "-d ", "-f, --foreground", "-q ", "--name N",
                      "--version", "start", "stop", "restart", "status", "dump", "config",
                      "top"],
    ("nc.sniffer", "top"): ["--once", "--interval N", "--count K", "--sort KEY"],
    ("nc.sniffer.cgi",): ["TYPE", "0 (default)", "1 by sub-domain", "--format FORMAT",
                          "-c CONF", "--stats FILE", "--update", "--refresh S", "--updto S"],
    ("nc.sniffer.coalesce.cgi",): ["TYPE", "1 (default): the report by sub-domain",
                                   "0: by /24", "-c CONFIG"],
    ("nc.sniffer.dump",): ["-c CONFIG", "--stats FILE", "--update [HOST:]PORT",
                           "--updto S", "seconds to wait", "--age S", "0: always"],
    ("chkIFrunning",): ["PIDFILE", "the daemon's pid file", "COMMAND ARGS", "run (exec)"],
}


@pytest.mark.parametrize("argv", sorted(HELP), ids=" ".join)
def test_help_names_every_argument(argv, tmp_path):
    run = subprocess.run([os.path.join(BIN, argv[0]), *argv[1:], "--help"],
                         capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                         env={**os.environ, "COLUMNS": "80"})
    assert run.returncode == 0 and run.stderr == "", run.stderr
    for word in HELP[argv]:
        assert word in run.stdout, word
    assert max(len(line) for line in run.stdout.splitlines()) <= 90


# tools a README example may use only with a word on installing them
NOT_IN_BASE = ("nc -u", "dig -", "sudo ", "curl ", "wget ", "jq ", "tcpdump -", "socat ")


def test_readme_examples_say_what_to_install():
    from tests.conftest import ROOT
    with open(os.path.join(ROOT, "README.md")) as fh:
        lines = fh.read().splitlines()
    for i, line in enumerate(lines):
        for tool in NOT_IN_BASE:
            if f"`{tool}" in line or f"$ {tool}" in line or f"| {tool}" in line:
                near = " ".join(lines[i:i + 2])
                assert "apt-get install" in near, f"README line {i + 1}: {line}"
