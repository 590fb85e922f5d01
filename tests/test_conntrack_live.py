"""Issue 13, live (SPEC 10): the daemon follows real connections between two network
namespaces joined by a veth, and the stats file, the feed and the events log show
exactly those connections.

The namespaces and the veth are bench/live.py's ``Testbed`` (unique names per run,
deleted even on failure; no IPv6, no route beyond the /30, so nothing leaves them).
In the peer namespace run a Python HTTP server and a dnsmasq; from the sniffer
namespace, where the daemon sniffs its own address, go: complete HTTP requests,
connections to a closed port (the peer's kernel answers RST), DNS queries over UDP,
pings, and one TCP connection left open until after SIGTERM.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, NC_SNIFFER, plain_read, stop_process, write_config
from tests.daemonutil import mtime_ns, wait_for

sys.path.insert(0, os.path.join(ROOT, "bench"))
import live as benchlive  # noqa: E402  (bench/live.py: the namespaces and the veth)

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")]

ME, PEER = benchlive.ME, benchlive.PEER
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
PYTHON = sys.executable
HTTP_PORT, CLOSED_PORT, DNS_PORT = 8080, 8081, 53
N_HTTP, N_REFUSED, N_DNS, N_PINGS = 3, 2, 4, 3

# Run in the sniffer namespace: the HTTP requests, the refused connects, the DNS queries.
CLIENT = """
import json, socket, sys, urllib.request
import dns.message, dns.query
peer, http, closed, dnsport, n_http, n_refused, n_dns = sys.argv[1:]
bodies = [len(urllib.request.urlopen(f"http://{peer}:{http}/", timeout=5).read())
          for _ in range(int(n_http))]
refused = 0
for _ in range(int(n_refused)):
    try:
        socket.create_connection((peer, int(closed)), timeout=5).close()
    except ConnectionRefusedError:
        refused += 1
answers = [dns.query.udp(dns.message.make_query("www.example.test", "A"), peer,
                         port=int(dnsport), timeout=5).answer[0][0].to_text()
           for _ in range(int(n_dns))]
print(json.dumps({"bodies": bodies, "refused": refused, "answers": answers}))
"""

# Run in the sniffer namespace: one connection held open; prints its local port.
HOLDER = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(s.getsockname()[1], flush=True)
time.sleep(60)
"""


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def k(**counts) -> dict:
    out = dict.fromkeys(("tcp", "udp", "icmp", "in", "out", "active", "closed", "reset",
                         "refused", "unanswered", "timedout", "evicted"), 0)
    out.update(counts)
    return out


def lines_of(path: str) -> list[dict]:
    try:
        with open(path) as fh:
            return [json.loads(line) for line in fh if line.endswith("\n")]
    except FileNotFoundError:
        return []


@pytest.fixture
def bed():
    with benchlive.Testbed() as testbed:
        yield testbed


@pytest.fixture
def servers(bed, tmp_path):
    """The HTTP server and dnsmasq in the peer namespace, answering (checked from
    inside that namespace, so the checks never cross the veth)."""
    if not os.path.exists(DNSMASQ):
        pytest.skip("dnsmasq is not installed (tools/ensure-test-system installs it)")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello from the peer\n")
    procs = []
    try:
        procs.append(subprocess.Popen(
            in_ns(bed.send_ns, PYTHON, "-m", "http.server", "--bind", PEER,
                  "--directory", str(site), str(HTTP_PORT)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(
            in_ns(bed.send_ns, DNSMASQ, "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                  "--keep-in-foreground", "--pid-file=", "--user=root", "--group=root",
                  f"--port={DNS_PORT}", f"--listen-address={PEER}", "--bind-interfaces",
                  f"--log-facility={tmp_path / 'dnsmasq.log'}",
                  "--host-record=www.example.test,192.0.2.80"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        probe = ("import socket, time, dns.message, dns.query\n"
                 "for _ in range(100):\n"
                 "    try:\n"
                 f"        socket.create_connection(('{PEER}', {HTTP_PORT}), 1).close()\n"
                 "        dns.query.udp(dns.message.make_query('www.example.test', 'A'),\n"
                 f"                      '{PEER}', port={DNS_PORT}, timeout=0.2)\n"
                 "        break\n"
                 "    except Exception:\n"
                 "        time.sleep(0.05)\n"
                 "else:\n"
                 "    raise SystemExit('servers not up')\n")
        subprocess.run(in_ns(bed.send_ns, PYTHON, "-c", probe), check=True, timeout=20)
        yield
    finally:
        for proc in procs:
            stop_process(proc, 5)


def subscribers(bed, feed: str) -> int:
    """Connected clients of the daemon's feed socket (``ss`` in the sniffer namespace)."""
    out = subprocess.run(in_ns(bed.sniff_ns, "ss", "-xH", "state", "connected"),
                         capture_output=True, text=True, timeout=10).stdout
    return sum(1 for line in out.splitlines() if feed in line.split())


def test_live_connections_between_namespaces(bed, servers, tmp_path):
    """K in the dump, the feed's new and end events, and the drain at SIGTERM: exactly
    the connections made."""
    work = str(tmp_path)
    events_log = os.path.join(work, "events.jsonl")
    feed_out = os.path.join(work, "feed.jsonl")
    daemon = benchlive.Daemon(bed, work)
    write_config(work, bpf=f"host {ME}", connections=True, events=events_log,
                 timeouts={"udp": 1, "icmp": 1})          # the UDP and ICMP flows time out
    feed_path = os.path.join(work, "nc.sniffer.events")
    pid_path = os.path.join(work, "nc.sniffer.pid")
    subscriber = holder = None
    try:
        daemon.start()
        subscriber = subprocess.Popen(in_ns(bed.sniff_ns, NC_SNIFFER, "-c", daemon.conf, "events"),
                                      stdout=open(feed_out, "wb"), stderr=subprocess.PIPE)
        wait_for(lambda: subscribers(bed, feed_path) >= 1, timeout=5)

        holder = subprocess.Popen(in_ns(bed.sniff_ns, PYTHON, "-c", HOLDER, PEER, str(HTTP_PORT)),
                                  stdout=subprocess.PIPE, text=True)
        open_port = int(holder.stdout.readline())
        done = subprocess.run(in_ns(bed.sniff_ns, PYTHON, "-c", CLIENT, PEER, str(HTTP_PORT),
                                    str(CLOSED_PORT), str(DNS_PORT), str(N_HTTP),
                                    str(N_REFUSED), str(N_DNS)),
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        client = json.loads(done.stdout)
        assert client == {"bodies": [20] * N_HTTP, "refused": N_REFUSED,
                          "answers": ["192.0.2.80"] * N_DNS}
        ping = subprocess.run(in_ns(bed.sniff_ns, "ping", "-n", "-q", "-c", str(N_PINGS),
                                    "-i", "0.2", "-W", "2", PEER),
                              capture_output=True, text=True, timeout=15)
        assert ping.returncode == 0, ping.stdout + ping.stderr

        ends = N_HTTP + N_REFUSED + N_DNS + 1          # the UDP flows and the pings time out
        wait_for(lambda: sum(e["event"] == "end" for e in lines_of(feed_out)) >= ends,
                 timeout=6)
        before = mtime_ns(daemon.stats)
        daemon.command("dump")
        wait_for(lambda: mtime_ns(daemon.stats) > before, timeout=5)
        header, records = plain_read(daemon.stats)
        started = N_HTTP + N_REFUSED + 1 + N_DNS + 1
        assert set(records) == {PEER}
        assert records[PEER]["K"] == k(tcp=N_HTTP + N_REFUSED + 1, udp=N_DNS, icmp=1,
                                       out=started, active=1, closed=N_HTTP,
                                       refused=N_REFUSED, timedout=N_DNS + 1)
        assert f"# connections:\t1 active, {started} started, 0 evicted" in header

        os.kill(daemon.pid, signal.SIGTERM)                 # the open one is drained
        wait_for(lambda: not os.path.exists(pid_path), timeout=15)
        daemon.pid = None
        subscriber.wait(timeout=10)                          # the feed ends with the daemon
    finally:
        for proc in (holder, subscriber):
            if proc is not None:
                stop_process(proc, 5)
        if daemon.pid is None and os.path.exists(pid_path):    # started, never seen ready
            with open(pid_path) as fh:
                daemon.pid = int(fh.readline())
        daemon.stop()

    feed = lines_of(feed_out)
    assert all(e["me"] == ME and e["peer"] == PEER and e["dir"] == "out" for e in feed)
    new = collections.Counter(e["proto"] for e in feed if e["event"] == "new")
    assert new == {"tcp": N_HTTP + N_REFUSED + 1, "udp": N_DNS, "icmp": 1}
    ended = [e for e in feed if e["event"] == "end"]
    assert collections.Counter((e["proto"], e["state"]) for e in ended) == {
        ("tcp", "closed"): N_HTTP, ("tcp", "refused"): N_REFUSED,
        ("udp", "timedout"): N_DNS, ("icmp", "timedout"): 1, ("tcp", "drained"): 1}
    by_state = collections.defaultdict(list)
    for e in ended:
        by_state[e["state"]].append(e)
    # a refused connect is its SYN and the peer's RST; a DNS query one datagram each way
    assert all((e["peer_port"], e["orig_packets"], e["resp_packets"]) == (CLOSED_PORT, 1, 1)
               for e in by_state["refused"])
    assert all((e["peer_port"], e["orig_packets"], e["resp_packets"]) == (DNS_PORT, 1, 1)
               for e in ended if e["proto"] == "udp")
    icmp, = (e for e in ended if e["proto"] == "icmp")
    assert (icmp["orig_packets"], icmp["resp_packets"]) == (N_PINGS, N_PINGS)
    drained, = by_state["drained"]
    assert (drained["me_port"], drained["peer_port"]) == (open_port, HTTP_PORT)
    # the log holds the same end events as the feed (without its "event" field)
    assert sorted(json.dumps(e, sort_keys=True) for e in lines_of(events_log)) == \
        sorted(json.dumps({f: v for f, v in e.items() if f != "event"}, sort_keys=True)
               for e in ended)
