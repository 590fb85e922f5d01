"""A real ClickHouse server for one test: Debian's clickhouse-server, started as a
child on 127.0.0.1 with its own config, ports and data directory, killed at
the end (``tools/ensure-test-system`` installs it, its service disabled)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from tests.daemonutil import free_port

SERVER = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"
READY_TIMEOUT = 30.0

CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog>
        <console>0</console></logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{tcp}</tcp_port>
    <http_port>{http}</http_port>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <users_config>{d}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>67108864</mark_cache_size>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>{cluster}
</yandex>
"""

# a cluster of shards (one replica each) for Distributed tables, in 18.16's syntax
CLUSTER = """
    <remote_servers><{name}>{shards}</{name}></remote_servers>"""
SHARD = """
        <shard><replica><host>127.0.0.1</host><port>{port}</port></replica></shard>"""

USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip></networks>
        <profile>default</profile><quota>default</quota></default></users>
    <quotas><default></default></quotas>
</yandex>
"""


class Server:
    """One clickhouse-server in ``directory``; ``start``/``kill`` may repeat on the
    same data (the resilience tests)."""

    def __init__(self, directory: str):
        self.dir = directory
        self.port = free_port(socket.SOCK_STREAM)
        self.http = free_port(socket.SOCK_STREAM)
        self.conf = os.path.join(directory, "config.xml")
        self.write_config()
        with open(os.path.join(directory, "users.xml"), "w") as fh:
            fh.write(USERS)
        self.proc: subprocess.Popen | None = None

    def write_config(self, cluster: str = "", shards: tuple[int, ...] = ()) -> None:
        """The server's config.xml; with ``cluster``, a cluster of the servers on the
        ``shards`` ports, one shard each (before ``start``)."""
        text = ""
        if cluster:
            text = CLUSTER.format(name=cluster,
                                  shards="".join(SHARD.format(port=p) for p in shards))
        with open(self.conf, "w") as fh:
            fh.write(CONFIG.format(d=self.dir, tcp=self.port, http=self.http, cluster=text))

    @property
    def url(self) -> str:
        return f"clickhouse://127.0.0.1:{self.port}/ncs"

    def start(self) -> "Server":
        self.proc = subprocess.Popen([SERVER, f"--config-file={self.conf}"], cwd=self.dir,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"clickhouse-server exited: {self._log_tail()}")
            try:
                if self.query("SELECT 1") == [(1,)]:
                    return self
            except Exception:
                time.sleep(0.1)
        raise AssertionError(f"clickhouse-server not ready: {self._log_tail()}")

    def query(self, sql: str) -> list:
        from clickhouse_driver import Client
        client = Client("127.0.0.1", port=self.port, connect_timeout=2, send_receive_timeout=10)
        try:
            return client.execute(sql)
        finally:
            client.disconnect()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.dir, "error.log")) as fh:
                return fh.read()[-500:]
        except OSError:
            return "(no log)"


@pytest.fixture
def chserver(tmp_path_factory):
    """A running server on loopback, killed however the test ends."""
    if not os.path.exists(SERVER):
        pytest.fail("clickhouse-server missing: run tools/ensure-test-system (make test does)")
    server = Server(str(tmp_path_factory.mktemp("clickhouse")))
    try:
        yield server.start()
    finally:
        server.kill()
