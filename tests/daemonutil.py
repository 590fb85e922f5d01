"""Start and stop real daemons in tests, and wait for their files."""

from __future__ import annotations

import os
import socket
import time

from tests.conftest import plain_read, run_cli, write_config


def free_port(kind=socket.SOCK_DGRAM) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(predicate, timeout: float = 10.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0


class LiveDaemon:
    """A real ``nc.sniffer`` daemon on lo for one test, always stopped afterwards."""

    def __init__(self, workdir: str, dport: int | None = None, **cfg):
        self.workdir = workdir
        self.dport = dport or free_port()
        self.port = cfg.pop("port", None)
        cfg.setdefault("bpf", f"host 127.0.0.1 and udp port {self.dport}")
        if self.port is not None:
            cfg["port"] = self.port
        self.conf = write_config(workdir, **cfg)
        self.stats = os.path.join(workdir, "nc.sniffer.stats")
        self.pidfile = os.path.join(workdir, "nc.sniffer.pid")

    def cli(self, *args, **kw):
        return run_cli("-c", self.conf, *args, **kw)

    def start(self):
        result = self.cli("start")
        assert result.returncode == 0, result.stderr
        return self

    @property
    def pid(self) -> int:
        with open(self.pidfile) as fh:
            return int(fh.readline())         # the first line is the bare pid

    def dump(self) -> dict:
        """``nc.sniffer dump`` and wait for the rewritten stats file; return its records."""
        before = mtime_ns(self.stats)
        time.sleep(0.3)          # let the capture deliver what was just sent
        result = self.cli("dump")
        assert result.returncode == 0, result.stderr
        wait_for(lambda: mtime_ns(self.stats) > before)
        return plain_read(self.stats)[1]

    def stop(self):
        return self.cli("stop")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def tmp_files(path: str) -> list[str]:
    """The temporary files of writers of ``path`` (``FILE.PID.tmp``, or an old ``FILE.tmp``)."""
    import glob
    return sorted(glob.glob(glob.escape(path) + ".*tmp"))
