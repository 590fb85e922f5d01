"""Reverse DNS end to end, against real name server processes on loopback.

dnsmasq (authoritative mode) serves PTR records for some peers and NXDOMAIN
with an SOA for the others; ``tests/dnsserver.py`` (dnspython) serves several
PTRs per address and logs every query with its arrival time, for the flood
test.  Captures are replayed with ``nc.sniffer -r``; the live daemon test
sends real packets on lo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import dns.message
import dns.query
import dns.reversename
import pytest

from ncsniffer import decode, dumpfile, pcapgen
from tests.conftest import ROOT, is_root, run_cli, stop_process, write_config
from tests.daemonutil import LiveDaemon, free_port, wait_for

pytestmark = pytest.mark.integration

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
ME4, ME6 = "192.0.2.10", "2001:db8::10"
START = 1_700_000_000
AUTH_TTL = 1234
SERVER_TTL = 3600


# --------------------------------------------------------------------------- servers

def _answers(port: int, timeout: float = 5.0) -> None:
    """Wait until a name server on 127.0.0.1:port answers a PTR query."""
    query = dns.message.make_query(dns.reversename.from_address("127.0.0.1"), "PTR")

    def ask():
        try:
            return dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2)
        except Exception:        # not up yet: any failure means "try again"
            return None
    wait_for(ask, timeout=timeout, step=0.1)


@pytest.fixture
def dnsmasq(tmp_path):
    """dnsmasq, authoritative for example.com and reverse zones of our test peers."""
    if not os.path.exists(DNSMASQ):
        pytest.skip("dnsmasq is not installed (tools/ensure-test-system installs it)")
    port = free_port()
    log = tmp_path / "dnsmasq.log"
    hosts = {"198.51.100.1": "peer1.example.com", "198.51.100.2": "peer2.example.com",
             "198.51.100.3": "peer3.example.com", "2001:db8::5": "peer6.example.com",
             "127.1.0.1": "live1.example.com", "127.1.0.2": "live2.example.com"}
    cmd = [DNSMASQ, "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--keep-in-foreground",
           "--pid-file=", "--user=root", "--group=root", f"--port={port}",
           "--listen-address=127.0.0.1", "--bind-interfaces", "--log-queries",
           f"--log-facility={log}", "--auth-server=ns1.example.com,127.0.0.1",
           "--auth-zone=example.com,198.51.100.0/24,2001:db8::/64,127.1.0.0/16",
           "--auth-soa=2026,hostmaster.example.com,1200,120,604800", f"--auth-ttl={AUTH_TTL}"]
    cmd += [f"--host-record={name},{ip}" for ip, name in hosts.items()]
    with open(tmp_path / "dnsmasq.err", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        _answers(port)
        yield port
    finally:
        stop_process(proc, 5)


def start_dnsserver(tmp_path, *args: str) -> tuple[subprocess.Popen, int, str]:
    port = free_port()
    log = str(tmp_path / "queries.log")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "dnsserver.py"),
                             "--port", str(port), "--log", log, "--lifetime", "240", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        _answers(port)
    except BaseException:
        stop_process(proc, 5)
        raise
    return proc, port, log


@pytest.fixture
def dnsserver(tmp_path):
    """A factory for tests/dnsserver.py processes, all stopped afterwards."""
    procs = []

    def start(*args: str) -> tuple[int, str]:
        proc, port, log = start_dnsserver(tmp_path, *args)
        procs.append(proc)
        return port, log
    try:
        yield start
    finally:
        for proc in procs:
            stop_process(proc, 5)


PROBES = {dns.reversename.from_address(a).to_text() for a in ("127.0.0.1", "::1")}


def server_queries(log: str) -> list[tuple[float, str]]:
    """(arrival time, query name) of every query the test server received, but the probes."""
    out = []
    with open(log) as fh:
        for line in fh:
            t, name = line.split()
            if name not in PROBES:
                out.append((float(t), name))
    return out


# --------------------------------------------------------------------------- captures

def capture(path: str, peers: list[str], seconds: int, per_peer: int = 1) -> None:
    """Each peer sends ``per_peer`` packets to "me", spread over ``seconds`` from START."""
    frames = []
    total = len(peers) * per_peer
    for n in range(total):
        peer = peers[n % len(peers)]
        me = ME6 if ":" in peer else ME4
        pkt = pcapgen.ip_packet(peer, me, "udp", b"x" * 20, dport=9)
        frames.append((START + n * seconds / total, pcapgen.frame(decode.DLT_EN10MB, pkt)))
    pcapgen.write_pcap(path, decode.DLT_EN10MB, frames)


def replay(tmp_path, pcap: str, **cfg) -> tuple[subprocess.CompletedProcess, dict]:
    cfg.setdefault("bpf", f"host {ME4} or dst host {ME6}")
    conf = write_config(str(tmp_path), resolve=True, **cfg)
    result = run_cli("-c", conf, "-r", pcap, "-q", "start", timeout=120)
    assert result.returncode == 0, result.stderr
    stats = dumpfile.read_stats(os.path.join(str(tmp_path), "nc.sniffer.stats"))
    return result, stats.records


# --------------------------------------------------------------------------- replay

def test_replay_names_from_dnsmasq(tmp_path, dnsmasq):
    peers = ["198.51.100.1", "198.51.100.2", "198.51.100.3", "2001:db8::5",
             "198.51.100.50", "198.51.100.51", "203.0.113.7"]
    pcap = str(tmp_path / "peers.pcap")
    capture(pcap, peers, seconds=60, per_peer=5)
    result, records = replay(tmp_path, pcap, nameserver=f"127.0.0.1:{dnsmasq}")
    assert set(records) == set(peers)
    end = START + 60

    def ttl_from(rec, ttl):
        assert START <= rec["T"] - ttl <= end, rec
    for ip, name in (("198.51.100.1", "peer1.example.com"), ("198.51.100.2", "peer2.example.com"),
                     ("198.51.100.3", "peer3.example.com"), ("2001:db8::5", "peer6.example.com")):
        assert records[ip]["N"] == [name]
        ttl_from(records[ip], AUTH_TTL)
    for ip in ("198.51.100.50", "198.51.100.51"):   # NXDOMAIN + SOA of the reverse zone
        assert records[ip]["N"] == [":ns1.example.com"]
        ttl_from(records[ip], AUTH_TTL)
    # not dnsmasq's zone: REFUSED, not accepted; retried in a day
    assert records["203.0.113.7"]["N"] == []
    ttl_from(records["203.0.113.7"], 86400)
    assert f"dns 127.0.0.1:{dnsmasq}: 7 sent, 6 answered" in result.stderr
    assert "1 rejected" in result.stderr


def test_replay_several_ptrs_and_in_addr_arpa_filter(tmp_path, dnsserver):
    port, log = dnsserver("--ptr", "198.51.100.1=a.example.org,b.example.org",
                          "--ptr", "198.51.100.2=1.100.51.198.in-addr.arpa.example,c.example.org",
                          "--ptr", "198.51.100.3=3.0-25.100.51.198.in-addr.arpa")
    peers = ["198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4"]
    pcap = str(tmp_path / "peers.pcap")
    capture(pcap, peers, seconds=0)           # all in one second: exact T
    _, records = replay(tmp_path, pcap, nameserver=f"127.0.0.1:{port}")
    assert sorted(records["198.51.100.1"]["N"]) == ["a.example.org", "b.example.org"]
    assert records["198.51.100.2"]["N"] == ["c.example.org"]
    assert records["198.51.100.3"]["N"] == ["3.0-25.100.51.198.in-addr.arpa"]
    assert records["198.51.100.4"]["N"] == [":ns.soa.test"]
    for ip in peers[:3]:
        assert records[ip]["T"] == START + SERVER_TTL
    assert records["198.51.100.4"]["T"] == START + 900
    assert len(server_queries(log)) == 4


def test_replay_with_a_silent_nameserver_looks_nothing_up(tmp_path):
    import socket
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        pcap = str(tmp_path / "peers.pcap")
        capture(pcap, ["198.51.100.1"], seconds=1)
        began = time.monotonic()
        result, records = replay(tmp_path, pcap, nameserver=f"127.0.0.1:{silent.getsockname()[1]}")
        assert time.monotonic() - began < 10
    finally:
        silent.close()
    assert "does not answer; names are not looked up" in result.stderr
    assert records["198.51.100.1"]["N"] == [] and records["198.51.100.1"]["T"] == 0


# --------------------------------------------------------------------------- flood

SERVER_LAG = 2.0    # seconds the test's DNS server may fall behind on a loaded machine


def _max_per_second(times: list[float]) -> int:
    """The most queries that arrived within any window of one second."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


@pytest.mark.slow
@pytest.mark.parametrize("qps", [50, 1000])
def test_flood_of_new_sources_is_rate_limited(tmp_path, dnsserver, qps):
    port, log = dnsserver("--synth", "10.")
    peers = [f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(20000)]
    pcap = str(tmp_path / "flood.pcap")
    capture(pcap, peers, seconds=200)
    began = time.time()
    result, records = replay(tmp_path, pcap, nameserver=f"127.0.0.1:{port}", dns_max_qps=qps)
    elapsed = time.time() - began
    queries = server_queries(log)
    names = [name for _, name in queries]
    wanted = {dns.reversename.from_address(p).to_text() for p in peers}
    print(f"qps {qps}: {len(names)} queries for {len(peers)} addresses in {elapsed:.1f} s, "
          f"max {_max_per_second([t for t, _ in queries])} in one second")
    assert len(set(names)) == len(names), "an address was queried twice"
    assert set(names) <= wanted
    assert 0 < len(names) <= qps * (elapsed + 1)
    # the client never has more than qps queries in any one-second window; arrival
    # times at the server may bunch by a few milliseconds
    assert _max_per_second([t for t, _ in queries]) <= qps * 1.02 + 5
    # every query set T (answered: TTL; else a day); the others were never sent
    looked_up = {ip for ip, rec in records.items() if rec["T"]}
    assert len(looked_up) == len(names)
    assert {dns.reversename.from_address(ip).to_text() for ip in looked_up} == set(names)
    answered = [ip for ip in looked_up if records[ip]["N"]]
    # Every query that reached the server SERVER_LAG s before the replay ended was
    # answered (none dropped by a full receive buffer), and nearly all of them were:
    # only those the test's server answers after the replay's bounded final wait
    # (FINISH_WAIT) may miss.
    early = {name for t, name in queries if t < began + elapsed - SERVER_LAG}
    got = {dns.reversename.from_address(ip).to_text() for ip in answered}
    assert early <= got, f"{len(early - got)} of {len(early)} early queries unanswered"
    assert len(answered) >= len(names) * 0.95
    assert len(early) >= len(names) // 2
    for ip in answered:
        assert records[ip]["N"] == ["h-" + ip.replace(".", "-") + ".flood.test"]
        assert START <= records[ip]["T"] - SERVER_TTL <= START + 200
    assert f"{len(names)} sent" in result.stderr


# --------------------------------------------------------------------------- live daemon

@pytest.mark.skipif(not is_root(), reason="live capture needs root")
def test_live_daemon_names_from_dnsmasq(tmp_path, dnsmasq):
    from tests.netutil import RawSender
    daemon = LiveDaemon(str(tmp_path), resolve=True, nameserver=f"127.0.0.1:{dnsmasq}")
    sender = RawSender()
    try:
        daemon.start()
        before = int(time.time())
        for src in ("127.1.0.1", "127.1.0.2", "127.1.0.9"):
            for _ in range(3):
                sender.send(src, daemon.dport, b"hello")

        def named():
            records = daemon.dump()
            if all(records.get(ip, {}).get("N") for ip in ("127.1.0.1", "127.1.0.2", "127.1.0.9")):
                return records
            return None
        records = wait_for(named, timeout=15, step=0.2)
        after = int(time.time())
        assert records["127.1.0.1"]["N"] == ["live1.example.com"]
        assert records["127.1.0.2"]["N"] == ["live2.example.com"]
        assert records["127.1.0.9"]["N"] == [":ns1.example.com"]       # NXDOMAIN + SOA
        for ip in ("127.1.0.1", "127.1.0.2", "127.1.0.9"):
            assert before <= records[ip]["T"] - AUTH_TTL <= after
        # more packets do not cause more queries: one query per address
        for _ in range(3):
            sender.send("127.1.0.1", daemon.dport, b"again")
        daemon.dump()
    finally:
        sender.close()
        daemon.stop()
    with open(tmp_path / "dnsmasq.log") as fh:
        asked = [line for line in fh if "auth[PTR]" in line and ".1.127.in-addr.arpa" in line]
    assert len(asked) == 3, asked


@pytest.mark.skipif(not is_root(), reason="live capture needs root")
def test_live_daemon_bounds_an_answer_of_thousands_of_names(tmp_path, dnsserver):
    """Issue 11.17: one answer of thousands of long PTR names was stored whole
    (3,406 names, 3.3 MB in the stats file); names per address and the length of
    a name are bounded, and the stats file stays readable by our reader."""
    from ncsniffer.resolver import MAX_NAME_CHARS, MAX_NAMES
    from tests.netutil import RawSender
    port, _ = dnsserver("--many", "127.1.0.7=3000", "--ptr", "127.1.0.8=ok.example.com")
    daemon = LiveDaemon(str(tmp_path), resolve=True, nameserver=f"127.0.0.1:{port}")
    sender = RawSender()
    try:
        daemon.start()
        for src in ("127.1.0.7", "127.1.0.8"):
            sender.send(src, daemon.dport, b"hello")

        def named():
            records = daemon.dump()
            return records if all(records.get(ip, {}).get("N")
                                  for ip in ("127.1.0.7", "127.1.0.8")) else None
        wait_for(named, timeout=15, step=0.2)
    finally:
        sender.close()
        daemon.stop()
    stats = dumpfile.read_stats(daemon.stats)
    many = stats.records["127.1.0.7"]["N"]
    assert stats.records["127.1.0.8"]["N"] == ["ok.example.com"]
    assert len(many) == MAX_NAMES and all(len(n) <= MAX_NAME_CHARS for n in many)
    suffix = "." + ".".join(c * 60 for c in "abc") + ".many.test"
    assert all(n.endswith(suffix) and int(n[1:-len(suffix)]) % 2 for n in many)  # ~780 chars: dropped
    assert os.path.getsize(daemon.stats) < 64 << 10
