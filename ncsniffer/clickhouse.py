"""The ClickHouse sink of the export (SPEC 11): tables, inserts, the connection.

The only module that imports clickhouse-driver (the native protocol; it works
with servers from 18.16 on).  Tables are created when missing, as
ReplacingMergeTree keyed by the row's identity and the batch id, so a batch
sent again after a failure (its id kept in the spool) is stored once; queries
read them with FINAL.
"""

from __future__ import annotations

import logging
import socket

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from ncsniffer.export import CONNECTION_COLUMNS, CONNECTIONS, TRAFFIC, TRAFFIC_COLUMNS, ExportError

TRAFFIC_TABLE = """CREATE TABLE IF NOT EXISTS {db}.ncsniffer_traffic (
    sniffer String, instance String, peer String,
    start DateTime, end DateTime,
    bytes UInt64, packets UInt64, rate Float64, bw Float64,
    names Array(String), epoch DateTime, batch String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(start)
ORDER BY (sniffer, instance, peer, start, batch)"""

CONNECTIONS_TABLE = """CREATE TABLE IF NOT EXISTS {db}.ncsniffer_connections (
    sniffer String, instance String,
    start Float64, end Float64, proto String,
    me String, me_port UInt16, peer String, peer_port UInt16,
    dir String, state String,
    orig_packets UInt64, orig_bytes UInt64, resp_packets UInt64, resp_bytes UInt64,
    batch String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(toDateTime(toUInt32(start)))
ORDER BY (sniffer, instance, peer, start, proto, me, me_port, peer_port, batch)"""

# the driver logs each failed connection with a traceback; the export logs one line
logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)

COLUMNS = {TRAFFIC: TRAFFIC_COLUMNS, CONNECTIONS: CONNECTION_COLUMNS}


class ClickHouse:
    """Inserts batches into DB's tables over one native-protocol connection,
    made (and the tables created) on first use and again after a failure."""

    def __init__(self, host: str, port: int, database: str, timeout: float,
                 user: str = "default", password: str = "", create: bool = True):
        self.host, self.port, self.database = host, port, database
        self.timeout = timeout
        self.user, self.password = user, password
        self.create = create            # a reader (the fleet report) creates nothing
        self.client: Client | None = None

    def _connect(self) -> Client:
        client = Client(self.host, port=self.port, database="default", user=self.user,
                        password=self.password, connect_timeout=self.timeout,
                        send_receive_timeout=self.timeout, sync_request_timeout=self.timeout)
        if not self.create:
            return client
        db = _quote(self.database)
        client.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
        client.execute(TRAFFIC_TABLE.format(db=db))
        client.execute(CONNECTIONS_TABLE.format(db=db))
        _add_missing_columns(client, self.database, db)
        return client

    def send(self, table: str, batch: str, rows: list) -> None:
        """Insert ``rows`` (tuples in the table's column order) tagged ``batch``."""
        columns = COLUMNS[table] + ("batch",)
        try:
            if self.client is None:
                self.client = self._connect()
            # by columns: no per-row copy here, none in the driver
            data = [list(col) for col in zip(*rows)] + [[batch] * len(rows)]
            self.client.execute(
                f"INSERT INTO {_quote(self.database)}.{table} ({', '.join(columns)}) VALUES",
                data, columnar=True)
        except (ch_errors.Error, OSError, EOFError, socket.timeout) as exc:
            self.close()
            raise ExportError(_reason(exc)) from exc

    def query(self, sql: str, params: dict | None = None) -> list:
        """Rows of a query (``%(name)s`` filled from ``params`` by the driver, quoted)."""
        try:
            if self.client is None:
                self.client = self._connect()
            return self.client.execute(sql, params)
        except (ch_errors.Error, OSError, EOFError, socket.timeout) as exc:
            self.close()
            raise ExportError(_reason(exc)) from exc

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.disconnect()
            except Exception:        # a half-dead connection: nothing more to do with it
                pass
            self.client = None


# columns added after a table may have been made: (table, column, type, the one before)
ADDED_COLUMNS = (("ncsniffer_traffic", "epoch", "DateTime", "names"),)


def _add_missing_columns(client: Client, database: str, db: str) -> None:
    """Bring tables made by an older version up to date (18.16 knows no ADD COLUMN
    IF NOT EXISTS, so the columns are looked up first)."""
    have = set(client.execute("SELECT table, name FROM system.columns WHERE database = "
                              "%(db)s", {"db": database}))
    for table, column, kind, after in ADDED_COLUMNS:
        if (table, column) not in have:
            client.execute(f"ALTER TABLE {db}.{table} ADD COLUMN {column} {kind} AFTER {after}")


def _quote(name: str) -> str:
    """A database name as an identifier (backquotes; config validation allows
    only letters, digits and _)."""
    return f"`{name}`"


def _reason(exc: BaseException) -> str:
    """The first line of the driver's message."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
