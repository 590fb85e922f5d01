"""/metrics and /stats.json (issue 14, SPEC 11): the collector from hand-made
snapshots, the top-N peers, the cardinality with 100,000 peers, and live
daemons scraped by urllib and by Debian's Prometheus."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ncsniffer import metrics, snapshot
from ncsniffer.accounting import Accounting
from ncsniffer.snapshot import PACKET_KINDS, PCAP_KINDS, Peer, Snapshot
from tests.chserver import chserver  # noqa: F401  (the fixture)
from tests.conftest import stop_process
from tests.daemonutil import LiveDaemon, free_port, wait_for
from tests.netutil import RawSender, loopback_source

root = pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root")


def small(**kw) -> Snapshot:
    values = dict(instance="nc.sniffer", start=1000, current=1060, hits_per_minute=1.5,
                  bytes_per_second=20.25, users=2, device="lo", bpf="host 127.0.0.1",
                  packets=dict(zip(PACKET_KINDS, (9, 7, 1, 1, 0, 0))),
                  pcap=dict(zip(PCAP_KINDS, (9, 0, 0))), evictions=3, dumps=2,
                  dump_seconds=0.125, dns={"sent": 4, "answered": 3, "rejected": 0, "timedout": 1},
                  top=(Peer("127.1.0.1", 7200.0, 4.0, ("a.example",)),
                       Peer("::1", 3600.0, 2.0)))
    values.update(kw)
    return Snapshot(**values)


def series(text: str) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value, through prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


EXPECTED = """\
# HELP ncsniffer_packets_total Packets by what became of them
# TYPE ncsniffer_packets_total counter
ncsniffer_packets_total{instance_name="nc.sniffer",kind="seen"} 9.0
ncsniffer_packets_total{instance_name="nc.sniffer",kind="counted"} 7.0
ncsniffer_packets_total{instance_name="nc.sniffer",kind="unmatched"} 1.0
ncsniffer_packets_total{instance_name="nc.sniffer",kind="truncated"} 1.0
ncsniffer_packets_total{instance_name="nc.sniffer",kind="non_ip"} 0.0
ncsniffer_packets_total{instance_name="nc.sniffer",kind="invalid"} 0.0
# HELP ncsniffer_pcap_packets_total libpcap statistics
# TYPE ncsniffer_pcap_packets_total counter
ncsniffer_pcap_packets_total{instance_name="nc.sniffer",kind="received"} 9.0
ncsniffer_pcap_packets_total{instance_name="nc.sniffer",kind="dropped"} 0.0
ncsniffer_pcap_packets_total{instance_name="nc.sniffer",kind="if_dropped"} 0.0
# HELP ncsniffer_hosts Tracked peers (the header's users)
# TYPE ncsniffer_hosts gauge
ncsniffer_hosts{instance_name="nc.sniffer"} 2.0
# HELP ncsniffer_evictions_total Records evicted at max_hosts
# TYPE ncsniffer_evictions_total counter
ncsniffer_evictions_total{instance_name="nc.sniffer"} 3.0
# HELP ncsniffer_dumps_total Stats files written
# TYPE ncsniffer_dumps_total counter
ncsniffer_dumps_total{instance_name="nc.sniffer"} 2.0
# HELP ncsniffer_dump_seconds Wall time of the last dump
# TYPE ncsniffer_dump_seconds gauge
ncsniffer_dump_seconds{instance_name="nc.sniffer"} 0.125
# HELP ncsniffer_dns_queries_total Reverse-DNS queries by result
# TYPE ncsniffer_dns_queries_total counter
ncsniffer_dns_queries_total{instance_name="nc.sniffer",result="sent"} 4.0
ncsniffer_dns_queries_total{instance_name="nc.sniffer",result="answered"} 3.0
ncsniffer_dns_queries_total{instance_name="nc.sniffer",result="rejected"} 0.0
ncsniffer_dns_queries_total{instance_name="nc.sniffer",result="timedout"} 1.0
# HELP ncsniffer_hits_per_minute The header's packet rate
# TYPE ncsniffer_hits_per_minute gauge
ncsniffer_hits_per_minute{instance_name="nc.sniffer"} 1.5
# HELP ncsniffer_bytes_per_second The header's byte rate
# TYPE ncsniffer_bytes_per_second gauge
ncsniffer_bytes_per_second{instance_name="nc.sniffer"} 20.25
# HELP ncsniffer_top_peer_bytes_per_hour W of the peers with most W
# TYPE ncsniffer_top_peer_bytes_per_hour gauge
ncsniffer_top_peer_bytes_per_hour{instance_name="nc.sniffer",peer="127.1.0.1"} 7200.0
ncsniffer_top_peer_bytes_per_hour{instance_name="nc.sniffer",peer="::1"} 3600.0
"""


def test_exposition_of_a_small_snapshot_is_exact():
    text = metrics.exposition(metrics.Published(small())).decode()
    assert text == EXPECTED
    got = series(text)
    assert got[("ncsniffer_packets_total", (("instance_name", "nc.sniffer"), ("kind", "counted")))] == 7
    assert all(dict(labels)["instance_name"] == "nc.sniffer" for _, labels in got)


def test_every_label_value_is_a_series_from_the_start():
    """A daemon that has seen nothing still shows each kind and result, at zero."""
    empty = small(packets=dict.fromkeys(PACKET_KINDS, 0), pcap=dict.fromkeys(PCAP_KINDS, 0),
                  dns=snapshot.dns_counts(None), top=(), users=0)
    got = series(metrics.exposition(metrics.Published(empty)).decode())
    kinds = {dict(l)["kind"] for n, l in got if n == "ncsniffer_packets_total"}
    results = {dict(l)["result"] for n, l in got if n == "ncsniffer_dns_queries_total"}
    assert kinds == set(PACKET_KINDS) and results == {"sent", "answered", "rejected", "timedout"}
    assert len(got) == 6 + 3 + 1 + 1 + 1 + 1 + 4 + 1 + 1


def test_nothing_published_yet_is_an_empty_page():
    assert metrics.exposition(metrics.Published()) == b""


def test_dns_counters_are_the_resolvers():
    counters = {"sent": 5, "answered": 2, "empty": 1, "rejected": 1, "timed out": 1, "errors": 9}
    assert snapshot.dns_counts(counters) == {"sent": 5, "answered": 2, "rejected": 1, "timedout": 1}


def table_of(n: int, seed: int = 1) -> Accounting:
    """An accounting with ``n`` IPv4 records and random W and R."""
    acct = Accounting(1000)
    keys = [int(0x7F010000 + i).to_bytes(4, "big") for i in range(n)]
    acct.count_run(keys, [100] * n, 1000)
    rng = np.random.default_rng(seed)
    cols, slots = acct.records.cols, acct.records.occupied()
    cols["W"][slots] = rng.integers(0, 10**9, len(slots)).astype(float)
    cols["R"][slots] = rng.integers(0, 10**6, len(slots)).astype(float)
    return acct


def test_top_peers_are_those_with_most_w_in_order():
    acct = table_of(500)
    acct.records[b"\x7f\x01\x00\x05"].N = ["five.example"]
    acct.records[b"\x7f\x01\x00\x05"].W = 2e9
    top = snapshot.top_peers(acct.records, 10)
    ws = sorted((v.W for v in acct.records.values()), reverse=True)[:10]
    assert [p.bytes_per_hour for p in top] == ws
    assert top[0] == Peer("127.1.0.5", 2e9, acct.records[b"\x7f\x01\x00\x05"].R, ("five.example",))
    assert len(snapshot.top_peers(acct.records, 1000)) == 500
    assert snapshot.top_peers(Accounting(0).records, 10) == ()


def test_100000_peers_stay_under_200_series_and_100_ms():
    """The cardinality bound: the top peers only, however many are tracked."""
    acct = table_of(100_000)
    assert len(acct.records) == 100_000
    began = time.perf_counter()
    top = snapshot.top_peers(acct.records, 10)
    ended = dict.fromkeys(snapshot.END_STATES, 10**6)
    text = metrics.exposition(metrics.Published(small(
        top=top, users=100_000, connections=ended, connections_active=10**5,
        export=EXPORT))).decode()
    took = time.perf_counter() - began
    got = series(text)
    assert len(got) < 200 and len([n for n, _ in got if "top_peer" in n]) == 10
    assert took < 0.1, f"snapshot and exposition took {took * 1000:.1f} ms"


EXPORT = {"sent_batches": 7, "sent_rows": 700, "failures": 2, "spooled_batches": 1,
          "spooled_rows": 40, "spool_bytes": 4000, "lost_batches": 1, "lost_rows": 9}


def test_connection_and_export_series_only_when_they_are_on():
    labels = (("instance_name", "nc.sniffer"),)
    off = series(metrics.exposition(metrics.Published(small())).decode())
    assert not [n for n, _ in off if "connections" in n or "export" in n]
    ended = dict.fromkeys(snapshot.END_STATES, 0) | {"closed": 4, "refused": 1}
    on = series(metrics.exposition(metrics.Published(
        small(connections=ended, connections_active=3, export=EXPORT))).decode())
    conns = {dict(l)["state"]: v for (n, l), v in on.items()
             if n == "ncsniffer_connections_total"}
    assert conns == ended and set(conns) == {"closed", "reset", "refused", "unanswered",
                                             "timedout", "evicted", "drained"}
    assert on[("ncsniffer_connections_active", labels)] == 3
    for what in ("batches", "rows"):
        got = {dict(l)["result"]: v for (n, l), v in on.items()
               if n == f"ncsniffer_export_{what}_total"}
        assert got == {"sent": EXPORT[f"sent_{what}"], "lost": EXPORT[f"lost_{what}"]}
    assert on[("ncsniffer_export_failures_total", labels)] == 2
    assert on[("ncsniffer_export_spooled_batches", labels)] == 1
    assert on[("ncsniffer_export_spooled_rows", labels)] == 40
    assert on[("ncsniffer_export_spool_bytes", labels)] == 4000
    assert len(on) - len(off) == 7 + 1 + 2 + 2 + 4
    d = small(connections=ended, connections_active=3, export=EXPORT).as_dict()
    assert d["connections"] == {"ended": ended, "active": 3} and d["export"] == EXPORT


def test_tracker_totals_feed_the_connection_metrics(workdir):
    """A replay's tracker: ended connections by state and the open ones, in the snapshot."""
    from ncsniffer import config, replay as replay_module
    from ncsniffer.clock import PacketClock
    from ncsniffer.sniffer import Sniffer
    from tests.test_wiring import ME, captures
    from ncsniffer import decode, pcapgen
    cap = os.path.join(workdir, "conn.pcap")
    pcapgen.write_pcap(cap, decode.DLT_EN10MB, captures())
    settings = config.validate({"bpf": f"host {ME}", "sniffer": workdir, "resolve": False,
                                "connections": True}, "nc.sniffer", offline=True)
    batches, linktype, prog, close = replay_module._open(cap, settings)
    sn = Sniffer(settings, linktype, PacketClock(), device=cap)
    for got in batches:
        sn.process(got, prog)
    close()
    snap = snapshot.take(sn, sn.clock.now, (0, 0, 0))
    assert snap.connections == dict.fromkeys(snapshot.END_STATES, 0) | {
        "closed": 1, "refused": 1, "unanswered": 1}
    assert snap.connections_active == 3 == sn.header(sn.clock.now).connections[0]
    sn.reset(sn.clock.now)                      # SIGHUP: the counters go on
    assert snapshot.take(sn, sn.clock.now, (0, 0, 0)).connections["closed"] == 1
    sn.tracker.drain()
    assert snapshot.take(sn, sn.clock.now, (0, 0, 0)).connections["drained"] == 3


def test_stats_json_holds_header_counters_and_top():
    d = small().as_dict()
    assert d["header"]["users"] == 2 and d["counters"]["packets"]["counted"] == 7
    assert d["counters"]["dns"]["timedout"] == 1 and d["counters"]["dump_seconds"] == 0.125
    assert d["top"][0] == {"peer": "127.1.0.1", "bytes_per_hour": 7200.0,
                           "packets_per_hour": 4.0, "names": ["a.example"]}
    assert json.loads(json.dumps(d)) == d


# --------------------------------------------------------------------------- live

def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[str, bytes]:
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:
        return r.headers["Content-Type"], r.read()


def stats_json(port: int, host: str = "127.0.0.1") -> dict:
    return json.loads(get(port, "/stats.json", host)[1])


@pytest.fixture
def sender():
    s = RawSender()
    yield s
    s.close()


def send_some(sender, dport: int, peers: int = 20, each: int = 3) -> int:
    for i in range(peers * each):
        sender.send(loopback_source(i % peers), dport, b"m" * (i % 50))
    return peers * each


def after_dump(mport: int, dumps: int, host: str = "127.0.0.1") -> dict:
    """The first snapshot published after the ``dumps``-th dump."""
    return wait_for(lambda: (lambda s: s if s["counters"]["dumps"] >= dumps else None)(
        stats_json(mport, host)), timeout=5)


@pytest.mark.integration
@root
@pytest.mark.parametrize("where", ["127.0.0.1", "[::1]"])
def test_live_daemon_serves_metrics_and_json(workdir, sender, where):
    mport = free_port()
    with LiveDaemon(workdir, metrics=f"{where}:{mport}", metrics_top=5) as d:
        n = send_some(sender, d.dport)
        body = d.dump()
        snap = after_dump(mport, 1, where)
        ctype, text = get(mport, "/metrics", where)
        page = get(mport, "/stats.json", where)[1]
    assert ctype.startswith("text/plain") and json.loads(page)["instance"] == "nc.sniffer"
    assert snap["counters"]["packets"]["counted"] == n == sum(r["C"] for r in body.values())
    assert snap["header"]["users"] == len(body) == 20 and len(snap["top"]) == 5
    assert snap["counters"]["dump_seconds"] > 0
    got = series(text.decode())
    counted = ("ncsniffer_packets_total", (("instance_name", "nc.sniffer"), ("kind", "counted")))
    assert got[counted] == n
    assert got[("ncsniffer_hosts", (("instance_name", "nc.sniffer"),))] == 20
    assert len([k for k in got if k[0] == "ncsniffer_top_peer_bytes_per_hour"]) == 5


@pytest.mark.integration
@pytest.mark.slow
@root
def test_live_daemon_connection_and_export_metrics(workdir, sender, chserver):
    """Connections and the ClickHouse export on: the tracker's totals and the export's
    counters in /metrics equal the stats file's K and the rows the server holds."""
    mport = free_port()
    with LiveDaemon(workdir, metrics=f"127.0.0.1:{mport}", connections=True,
                    timeouts={"udp": 1}, clickhouse={"url": chserver.url, "interval": 1}) as d:
        for i in range(5):
            sender.send(f"127.0.0.{2 + i}", d.dport, b"c" * i, sport=42000 + i)

        def settled():     # the five flows timed out, their rows sent and published
            if chserver.query("EXISTS TABLE ncs.ncsniffer_connections") != [(1,)]:
                return None
            (held,), = chserver.query(
                "SELECT (SELECT count() FROM ncs.ncsniffer_traffic FINAL) + "
                "(SELECT count() FROM ncs.ncsniffer_connections FINAL)")
            got = series(get(mport, "/metrics")[1].decode())
            ended = got.get(("ncsniffer_connections_total", one + (("state", "timedout"),)))
            sent = got.get(("ncsniffer_export_rows_total", one + (("result", "sent"),)))
            return got if ended == 5 and held >= 10 and sent == held else None

        one = (("instance_name", "nc.sniffer"),)
        got = wait_for(settled, timeout=15, step=0.2)
        body = d.dump()
    assert got[("ncsniffer_connections_active", one)] == 0
    assert sum(r["K"]["timedout"] for r in body.values()) == 5
    assert got[("ncsniffer_export_batches_total", one + (("result", "lost"),))] == 0
    assert got[("ncsniffer_export_spooled_batches", one)] == 0
    assert chserver.query("SELECT count() FROM ncs.ncsniffer_connections FINAL") == [(5,)]


@pytest.mark.integration
@root
def test_metrics_port_in_use_fails_the_start_in_one_line(workdir):
    mport = free_port(socket.SOCK_STREAM)
    taken = socket.socket()
    taken.bind(("127.0.0.1", mport))
    taken.listen()
    try:
        d = LiveDaemon(workdir, metrics=f"127.0.0.1:{mport}")
        result = d.cli("start")
        try:
            assert result.returncode == 2
            assert result.stderr == f"nc.sniffer: metrics port 127.0.0.1:{mport} already in use\n"
        finally:
            d.stop()
    finally:
        taken.close()


PROMETHEUS = shutil.which("prometheus")
PROM_CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: ncsniffer
    static_configs:
      - targets: ['127.0.0.1:{port}']
"""


@pytest.fixture
def prometheus(tmp_path):
    """Debian's prometheus on loopback with its own config and data dir; ``start(port)``."""
    procs = []

    def start(target: int) -> int:
        conf = tmp_path / "prometheus.yml"
        conf.write_text(PROM_CONFIG.format(port=target))
        web = free_port(socket.SOCK_STREAM)
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={conf}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{web}"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w")))
        wait_for(lambda: _ready(web), timeout=30, step=0.2)
        return web

    yield start
    for p in procs:
        stop_process(p)


def _ready(web: int) -> bool:
    try:
        return get(web, "/-/ready")[1].startswith(b"Prometheus")
    except OSError:
        return False


def query(web: int, expr: str) -> list:
    text = get(web, "/api/v1/query?query=" + urllib.parse.quote(expr))[1]
    reply = json.loads(text)
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


@pytest.mark.integration
@pytest.mark.slow
@root
@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (tools/ensure-test-system)")
def test_prometheus_scrapes_the_counters_of_the_stats_file(workdir, sender, prometheus):
    mport = free_port()
    with LiveDaemon(workdir, metrics=f"127.0.0.1:{mport}", connections=True) as d:
        web = prometheus(mport)
        n = send_some(sender, d.dport, peers=30)
        body = d.dump()
        after_dump(mport, 1)

        def scraped():
            rows = query(web, 'ncsniffer_packets_total{kind="counted"}')
            return rows if rows and float(rows[0]["value"][1]) == n else None

        rows = wait_for(scraped, timeout=20, step=0.5)
        hosts = query(web, "ncsniffer_hosts")
        seen = query(web, "ncsniffer_packets_total")
        active = query(web, "ncsniffer_connections_active")
    assert rows[0]["metric"]["instance_name"] == "nc.sniffer"
    assert float(rows[0]["value"][1]) == sum(r["C"] for r in body.values()) == n
    assert float(hosts[0]["value"][1]) == len(body) == 30
    assert {r["metric"]["kind"] for r in seen} == set(PACKET_KINDS)
    assert float(active[0]["value"][1]) == sum(r["K"]["active"] for r in body.values()) > 0
