"""Shared test helpers: temp configs, running the CLI, reading stats files plainly."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
NC_SNIFFER = os.path.join(BIN, "nc.sniffer")


@contextlib.contextmanager
def other_users_dir(prefix: str, mode: int):
    """A temporary directory with ``mode``, outside pytest's own tmp root (which is
    0700), for processes of other users; removed afterwards."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, mode)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_config(directory: str, name: str = "nc.sniffer.conf", **settings) -> str:
    """A Python dict literal config file; piddir/sniffer default to ``directory``."""
    settings.setdefault("piddir", directory)
    settings.setdefault("sniffer", directory)
    settings.setdefault("resolve", False)
    path = os.path.join(directory, name)
    with open(path, "w") as fh:
        fh.write("# test configuration\n{\n")
        for key, value in settings.items():
            fh.write(f"    {key!r}: {value!r},\n")
        fh.write("}\n")
    return path


def imported_modules(args: list, directory: str) -> set:
    """The modules a command's process imported (run as the installed program
    would be, with sys.modules printed at exit)."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: sys.stderr.write("
            "'MODULES ' + ' '.join(sys.modules) + '\\n'))\n"
            "sys.argv = ['nc.sniffer'] + sys.argv[1:]\n"
            "from ncsniffer.cli import main\n"
            "sys.exit(main())\n")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                            text=True, timeout=60, cwd=directory)
    line = [x for x in result.stderr.splitlines() if x.startswith("MODULES ")][-1]
    return set(line.split()[1:])


def run_cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([NC_SNIFFER, *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


# Runs argv[2:] as its own child and writes that child's peak RSS (ru_maxrss, KiB)
# to the descriptor argv[1].  The child is forked from this small process, so its figure is its own:
# a process forked straight from pytest starts with pytest's whole RSS.
PEAK_LAUNCHER = """
import os, sys
fd, argv = int(sys.argv[1]), sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.close(fd)
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
os.write(fd, str(usage.ru_maxrss).encode())
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_cli_peak(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, int]:
    """``run_cli`` through PEAK_LAUNCHER: the result and the program's own peak RSS
    in KiB (its children's too), not the figure of a big pytest process it forked from."""
    peak_r, peak_w = os.pipe()
    try:
        result = subprocess.run([sys.executable, "-c", PEAK_LAUNCHER, str(peak_w), NC_SNIFFER,
                                 *args], capture_output=True, text=True, timeout=timeout,
                                pass_fds=(peak_w,))
    finally:
        os.close(peak_w)
    with os.fdopen(peak_r, "rb") as fh:
        return result, int(fh.read() or 0)


def hold_lock(take: str, path: str, seconds: float) -> subprocess.Popen:
    """Another process takes a lock with ``take`` ("module.function", called with
    ``path`` and a 5 s wait), says so, holds it ``seconds`` and releases it."""
    module, function = take.split(".")
    code = (f"import sys, time\nfrom ncsniffer import {module}\n"
            f"lock = {module}.{function}(sys.argv[1], 5)\nprint('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\nlock.release()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, path, str(seconds)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def plain_read(path: str) -> tuple[list[str], dict]:
    """Read a Python-format stats file the way a user's script would: drop the
    '#' header lines, ``ast.literal_eval`` the rest (independent of our reader).

    literal_eval needs some 100 us a record (16 s for the 100,000 records of the
    big-dump tests), so a file that is also JSON but for the last record's comma
    is read with ``json`` instead, which takes what literal_eval would and
    refuses the rest (NaN, Infinity), then left to literal_eval."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    header = [line for line in text.splitlines() if line.startswith("#")]
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip()
    if body.endswith(",\n}"):
        try:
            return header, json.loads(body[:-3] + "\n}", parse_constant=_not_python)
        except ValueError:
            pass
    return header, ast.literal_eval(body)


def _not_python(name: str):
    raise ValueError(f"{name} is no Python literal")


def stop_process(proc: subprocess.Popen, wait: float = 10) -> None:
    """SIGTERM a child the test started, SIGKILL it if it lingers; always reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(wait)


@pytest.fixture
def workdir(tmp_path):
    return str(tmp_path)


def is_root() -> bool:
    return os.geteuid() == 0


def with_hosts_file(directory: str, entries: dict[str, list[str]]) -> list[str]:
    """A command prefix that runs a program in a mount namespace of its own where
    ``/etc/hosts`` is a test file: localhost, plus each name with its addresses
    (root only; the machine's /etc/hosts is never touched)."""
    path = os.path.join(directory, "hosts")
    with open(path, "w") as fh:
        fh.write("127.0.0.1 localhost\n::1 localhost\n")
        for name, addresses in entries.items():
            fh.writelines(f"{a} {name}\n" for a in addresses)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount --bind "{path}" /etc/hosts && exec "$0" "$@"']
