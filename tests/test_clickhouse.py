"""The ClickHouse export against a real server (Debian's clickhouse-server 18.16,
started by the test on loopback): replay and live daemon, a server killed and
restarted mid-run, a spool filled past its bound."""

from __future__ import annotations

import os
import random
import socket
import time

import pytest

from ncsniffer import decode, pcapgen
from tests.chserver import Server, chserver  # noqa: F401  (the fixture)
from tests.conftest import plain_read, run_cli, write_config
from tests.daemonutil import LiveDaemon, free_port, wait_for
from tests.netutil import RawSender

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root")]

ME = "192.0.2.10"
T0 = 1_600_000_000
SPAN = 250        # seconds of packets: under the 300 s of a record's first rate update,
#                   so the stats file's B and C are the records' whole traffic


def capture(path: str, seed: int = 1, n: int = 3000, peers: int = 40) -> set:
    """A capture of ``n`` packets over SPAN seconds; the (peer, second) pairs in it."""
    rng = random.Random(seed)
    records, pairs = [], set()
    for i in range(n):
        peer = f"198.51.100.{1 + rng.randrange(peers)}"
        src, dst = (peer, ME) if rng.random() < 0.5 else (ME, peer)
        pkt = pcapgen.ip_packet(src, dst, "udp", b"x" * rng.randrange(200))
        ts = T0 + SPAN * i / n
        records.append((ts, pcapgen.frame(decode.DLT_EN10MB, pkt)))
        pairs.add((peer, int(ts)))
    pcapgen.write_pcap(path, decode.DLT_EN10MB, records)
    return pairs


def per_peer(server: Server, where: str = "") -> dict:
    rows = server.query("SELECT peer, sum(bytes), sum(packets), count() FROM "
                        f"ncs.ncsniffer_traffic FINAL {where} GROUP BY peer")
    return {peer: (b, c) for peer, b, c, _ in rows}


def stats_totals(path: str) -> dict:
    return {peer: (r["B"], r["C"]) for peer, r in plain_read(path)[1].items()}


def replay(workdir: str, cap: str, url: str, **ch):
    conf = write_config(workdir, bpf=f"host {ME}",
                        clickhouse={"url": url, "sniffer": "test-sniffer", **ch})
    return run_cli("-c", conf, "-r", cap, "start")


def test_replay_rows_sum_to_the_stats_file(workdir, chserver):
    cap = os.path.join(workdir, "in.pcap")
    capture(cap)
    result = replay(workdir, cap, chserver.url, interval=10)
    assert result.returncode == 0, result.stderr
    assert "rows lost" in result.stderr and ", 0 rows lost" in result.stderr, result.stderr
    stats = stats_totals(os.path.join(workdir, "nc.sniffer.stats"))
    assert per_peer(chserver) == stats
    with open(os.path.join(workdir, "nc.sniffer.stats"), "rb") as a, \
            open(cap_stats(workdir, cap), "rb") as b:
        assert a.read() == b.read()                 # the export changes no byte of the stats
    starts = chserver.query("SELECT DISTINCT start, end FROM ncs.ncsniffer_traffic ORDER BY start")
    bounds = [(int(s.timestamp()), int(e.timestamp())) for s, e in starts]
    assert bounds[0][0] == T0 and all(e - s == 10 for s, e in bounds[:-1])
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))     # intervals tile the time
    assert chserver.query("SELECT DISTINCT sniffer, instance FROM ncs.ncsniffer_traffic") == \
        [("test-sniffer", "nc.sniffer")]
    assert chserver.query("EXISTS TABLE ncs.ncsniffer_connections") == [(1,)]
    assert not os.path.exists(os.path.join(workdir, "nc.sniffer.spool"))   # nothing failed


OLD_TRAFFIC = """CREATE TABLE ncs.ncsniffer_traffic (
    sniffer String, instance String, peer String, start DateTime, end DateTime,
    bytes UInt64, packets UInt64, rate Float64, bw Float64, names Array(String), batch String
) ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(start)
ORDER BY (sniffer, instance, peer, start, batch)"""


def test_a_table_of_an_older_version_gets_the_new_column(workdir, chserver):
    """A traffic table made before ``epoch`` existed: the export adds the column."""
    chserver.query("CREATE DATABASE ncs")
    chserver.query(OLD_TRAFFIC)
    cap = os.path.join(workdir, "in.pcap")
    capture(cap, n=300)
    result = replay(workdir, cap, chserver.url, interval=60)
    assert result.returncode == 0 and ", 0 rows lost" in result.stderr, result.stderr
    stats = plain_read(os.path.join(workdir, "nc.sniffer.stats"))[1]
    got = dict(chserver.query("SELECT peer, toUInt32(argMax(epoch, end)) FROM "
                              "ncs.ncsniffer_traffic FINAL GROUP BY peer"))
    assert got == {peer: r["E"] for peer, r in stats.items()}


@pytest.mark.slow
def test_replay_with_the_server_down_spools_then_delivers(workdir, tmp_path_factory):
    server = Server(str(tmp_path_factory.mktemp("clickhouse")))
    cap = os.path.join(workdir, "in.pcap")
    capture(cap, n=600)
    try:
        result = replay(workdir, cap, server.url, interval=30, timeout=2)
        assert result.returncode == 0, result.stderr
        spool = os.path.join(workdir, "nc.sniffer.spool")
        assert len(os.listdir(spool)) >= 8, result.stderr       # one file per interval
        assert "batches are spooled" in result.stderr
        server.start()
        empty = os.path.join(workdir, "empty.pcap")
        pcapgen.write_pcap(empty, decode.DLT_EN10MB, [])
        result = replay(workdir, empty, server.url, interval=30)   # the next run sends the spool
        assert result.returncode == 0, result.stderr
        assert os.listdir(spool) == []
        assert per_peer(server) == stats_totals(cap_stats(workdir, cap))
    finally:
        server.kill()


def cap_stats(workdir: str, cap: str) -> str:
    """The stats of ``cap`` alone (the empty replay overwrote the file)."""
    other = os.path.join(workdir, "again")
    os.mkdir(other)
    conf = write_config(other, bpf=f"host {ME}")
    assert run_cli("-c", conf, "-r", cap, "start").returncode == 0
    return os.path.join(other, "nc.sniffer.stats")


@pytest.mark.slow
def test_spool_past_its_bound_counts_losses(workdir):
    url = f"clickhouse://127.0.0.1:{free_port(socket.SOCK_STREAM)}/ncs"    # no server there
    cap = os.path.join(workdir, "in.pcap")
    pairs = capture(cap, n=2000)
    result = replay(workdir, cap, url, interval=1, spool_max=20_000, timeout=1)
    assert result.returncode == 0, result.stderr
    spool = os.path.join(workdir, "nc.sniffer.spool")
    files = os.listdir(spool)
    size = sum(os.path.getsize(os.path.join(spool, f)) for f in files)
    assert 0 < size <= 20_000
    assert "spool over 20000 bytes: oldest batch dropped" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    lost = int(last.split(", ")[-1].split()[0])
    kept = sum(int(f.split(".")[1]) for f in files)
    assert lost > 0 and kept > 0, last
    assert lost + kept == len(pairs), (lost, kept)      # a row per peer and second with packets


@pytest.mark.slow
def test_live_daemon_server_killed_and_restarted(workdir, chserver):
    sender = RawSender()
    try:
        d = LiveDaemon(workdir, clickhouse={"url": chserver.url, "interval": 1, "timeout": 2})
        d.start()
        try:
            sent: dict[str, list[int]] = {}

            def wave(count):
                for i in range(count):
                    src = f"127.0.0.{2 + i % 4}"
                    sent.setdefault(src, []).append(sender.send(src, d.dport, b"p" * (i % 50)))
                    time.sleep(0.01)
            wave(100)
            wait_for(lambda: per_peer(chserver), timeout=15)
            chserver.kill()                       # mid-run, as a crash
            for _ in range(4):
                wave(40)
                time.sleep(0.5)
            spool = os.path.join(workdir, "nc.sniffer.spool")
            wait_for(lambda: os.path.isdir(spool) and len(os.listdir(spool)) >= 2, timeout=15)
            chserver.start()                      # same data, same port
            wave(60)
            wait_for(lambda: not os.listdir(spool), timeout=30)
        finally:
            d.stop()
        wait_for(lambda: not os.path.exists(d.pidfile), timeout=15)
        stats = stats_totals(d.stats)
        assert stats == {src: (sum(n), len(n)) for src, n in sent.items()}
        assert per_peer(chserver) == stats                # none lost, none doubled
        dup = chserver.query("SELECT count() FROM (SELECT peer, start, count() AS c FROM "
                             "ncs.ncsniffer_traffic FINAL GROUP BY peer, start HAVING c > 1)")
        assert dup == [(0,)]
        log_file = os.path.join(workdir, "nc.sniffer.log")      # the log without syslog
        if os.path.exists(log_file):
            with open(log_file) as fh:
                text = fh.read()
            assert "Connection refused" in text and "answers again" in text, text
            assert "batches sent, 0 batches spooled, 0 rows lost" in text, text
    finally:
        sender.close()


@pytest.mark.slow
def test_live_daemon_sighup_ends_the_interval_with_its_records(workdir, chserver):
    """SIGHUP clears the records: what they counted before it is exported, none twice."""
    import signal
    sender = RawSender()
    try:
        d = LiveDaemon(workdir, clickhouse={"url": chserver.url, "interval": 3600})
        d.start()
        try:
            before = sum(sender.send("127.0.0.2", d.dport, b"a" * 10) for _ in range(5))
            time.sleep(0.3)
            old = os.stat(d.stats).st_mtime_ns if os.path.exists(d.stats) else 0
            os.kill(d.pid, signal.SIGHUP)
            wait_for(lambda: os.path.exists(d.stats) and os.stat(d.stats).st_mtime_ns > old)
            assert stats_totals(d.stats) == {"127.0.0.2": (before, 5)}
            after = sum(sender.send("127.0.0.2", d.dport, b"b" * 20) for _ in range(3))
            time.sleep(0.3)
        finally:
            d.stop()
        wait_for(lambda: not os.path.exists(d.pidfile), timeout=15)
        assert stats_totals(d.stats) == {"127.0.0.2": (after, 3)}
        assert per_peer(chserver) == {"127.0.0.2": (before + after, 8)}
        assert chserver.query("SELECT count() FROM ncs.ncsniffer_traffic FINAL") == [(2,)]
    finally:
        sender.close()


# --------------------------------------------------------------------------- connections

CONN_ROW = ("start, end, proto, me, me_port, peer, peer_port, dir, state, orig_packets, "
            "orig_bytes, resp_packets, resp_bytes")


def connection_rows(server: Server) -> list[tuple]:
    """The rows of ncsniffer_connections (FINAL: a batch sent twice is one), sorted."""
    return sorted(server.query(f"SELECT sniffer, instance, {CONN_ROW} FROM "
                               "ncs.ncsniffer_connections FINAL"))


def exported(server: Server) -> bool:
    """Whether a connection row is in (the export makes the database with its first batch)."""
    return server.query("EXISTS TABLE ncs.ncsniffer_connections") == [(1,)] and \
        bool(connection_rows(server))


def event_lines(path: str, sniffer: str = "test-sniffer") -> list[tuple]:
    """The events log's lines as rows of that table, sorted."""
    import json
    with open(path) as fh:
        return sorted((sniffer, "nc.sniffer", *json.loads(line).values()) for line in fh)


def test_replay_connection_rows_are_the_events_log(workdir, chserver):
    """Ended connections (closed, refused, unanswered, drained at the end) go to
    ncsniffer_connections: the rows are the events log's lines."""
    from tests.test_wiring import captures
    cap = os.path.join(workdir, "conn.pcap")
    pcapgen.write_pcap(cap, decode.DLT_EN10MB, captures())
    events = os.path.join(workdir, "events.jsonl")
    conf = write_config(workdir, bpf=f"host {ME}", connections=True, events=events,
                        clickhouse={"url": chserver.url, "sniffer": "test-sniffer",
                                    "interval": 2})
    result = run_cli("-c", conf, "-r", cap, "start")
    assert result.returncode == 0, result.stderr
    lines = event_lines(events)
    assert len(lines) == 6 and {r[10] for r in lines} == \
        {"closed", "refused", "unanswered", "drained"}
    assert connection_rows(chserver) == lines
    again = run_cli("-c", conf, "-r", cap, "start")           # another run: its own batch ids
    assert again.returncode == 0, again.stderr
    assert len(connection_rows(chserver)) == 12


@pytest.mark.slow
def test_live_daemon_connection_rows_are_the_events_log(workdir, chserver):
    """The daemon on lo: a UDP flow timed out by the tick, one drained after SIGTERM,
    each a row equal to its events-log line; the traffic rows as before."""
    import signal
    events = os.path.join(workdir, "events.jsonl")
    sender = RawSender()
    try:
        d = LiveDaemon(workdir, connections=True, events=events, timeouts={"udp": 1},
                       clickhouse={"url": chserver.url, "sniffer": "test-sniffer",
                                   "interval": 1})
        d.start()
        pid = d.pid
        try:
            sender.send("127.0.0.2", d.dport, b"first", sport=41000)
            wait_for(lambda: exported(chserver), timeout=10)   # timed out, exported
            sender.send("127.0.0.3", d.dport, b"second", sport=41001)
            time.sleep(0.3)
        finally:
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(d.pidfile), timeout=15)
    finally:
        sender.close()
    lines = event_lines(events)
    assert [(r[7], r[10]) for r in lines] == [("127.0.0.2", "timedout"),
                                              ("127.0.0.3", "drained")]
    assert connection_rows(chserver) == lines
    assert per_peer(chserver) == stats_totals(d.stats)
