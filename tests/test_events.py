"""Connection events (10.4): formatting, the log writer, the live feed, the drain."""

from __future__ import annotations

import io
import ipaddress
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ncsniffer import conntrack as ct
from ncsniffer import events

FIELDS = ["start", "end", "proto", "me", "me_port", "peer", "peer_port", "dir", "state",
          "orig_packets", "orig_bytes", "resp_packets", "resp_bytes"]
NC_SNIFFER = os.path.join(os.path.dirname(sys.executable), "nc.sniffer")


def words(address: str) -> tuple[int, int, int]:
    """hi, lo, v6 of an address, as table.py and the core hold it."""
    ip = ipaddress.ip_address(address)
    n = int(ip)
    return (n >> 64, n & (2 ** 64 - 1), 1) if ip.version == 6 else (0, n, 0)


def event(me="10.0.0.1", peer="192.0.2.7", proto=ct.TCP, state=ct.CLOSED, kind=ct.END,
          direction=ct.DIR_OUT, ports=(40000, 443), start=1700000000.25, end=1700000003.5,
          counts=(3, 180, 2, 120)) -> tuple:
    me_hi, me_lo, v6 = words(me)
    peer_hi, peer_lo, _ = words(peer)
    return (start, end, me_hi, me_lo, peer_hi, peer_lo, *counts, *ports,
            kind, state, proto, direction, v6)


def array(*rows) -> np.ndarray:
    return np.array(list(rows), ct.EVENT_DTYPE)


def parsed(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


# --------------------------------------------------------------------------- formatting

def test_log_line_has_exactly_the_fields_of_10_4():
    (obj,) = parsed(events.log_lines(array(event())))
    assert list(obj) == FIELDS
    assert obj == {"start": 1700000000.25, "end": 1700000003.5, "proto": "tcp",
                   "me": "10.0.0.1", "me_port": 40000, "peer": "192.0.2.7", "peer_port": 443,
                   "dir": "out", "state": "closed", "orig_packets": 3, "orig_bytes": 180,
                   "resp_packets": 2, "resp_bytes": 120}


def test_ipv6_addresses_and_icmp_ports_zero():
    rows = array(event("2001:db8::1", "2001:db8:ffff::abcd", proto=ct.ICMP6, ports=(7, 9),
                       state=ct.TIMEDOUT, direction=ct.DIR_IN),
                 event("255.255.255.255", "0.0.0.1", proto=ct.ICMP, ports=(1, 2)),
                 event("::ffff:1.2.3.4", "::1", proto=ct.UDP, ports=(53, 5353)))
    a, b, c = parsed(events.log_lines(rows))
    assert (a["me"], a["peer"], a["proto"], a["me_port"], a["peer_port"], a["dir"]) == \
        ("2001:db8::1", "2001:db8:ffff::abcd", "icmp6", 0, 0, "in")
    assert (b["me"], b["peer"], b["proto"], b["me_port"]) == ("255.255.255.255", "0.0.0.1",
                                                              "icmp", 0)
    assert (c["me"], c["peer"], c["proto"], c["me_port"], c["peer_port"]) == \
        ("::ffff:1.2.3.4", "::1", "udp", 53, 5353)


@pytest.mark.parametrize("state", range(ct.CLOSED, ct.DRAINED + 1))
def test_every_end_state(state):
    (obj,) = parsed(events.log_lines(array(event(state=state))))
    assert obj["state"] == ct.STATES[state]


def test_log_skips_new_events_and_the_feed_marks_them():
    rows = array(event(kind=ct.NEW, state=ct.ACTIVE), event())
    assert [o["state"] for o in parsed(events.log_lines(rows))] == ["closed"]
    new, end = parsed(events.feed_lines(rows))
    assert list(new) == ["event"] + FIELDS
    assert (new["event"], new["state"], end["event"], end["state"]) == \
        ("new", "active", "end", "closed")
    assert events.log_lines(array()) == "" == events.feed_lines(array())


def test_drained_events():
    rows = events.as_drained(array(event(kind=ct.NEW, state=ct.ACTIVE)))
    (obj,) = parsed(events.log_lines(rows))
    assert obj["state"] == "drained"


def million(rng: np.random.Generator) -> np.ndarray:
    """A million events of the sniffed host with random peers."""
    rows = np.zeros(1_000_000, ct.EVENT_DTYPE)
    rows["me_lo"] = 0x0A000001
    rows["peer_lo"] = rng.integers(0, 2 ** 32, len(rows))
    return rows


@pytest.mark.slow
def test_a_million_events_in_seconds():
    rows = million(np.random.default_rng(1))
    rows["kind"], rows["state"], rows["proto"] = ct.END, ct.TIMEDOUT, ct.UDP
    began = time.process_time()
    text = events.log_lines(rows)
    assert text.count("\n") == len(rows)
    assert time.process_time() - began < 30


@pytest.mark.slow
def test_a_million_feed_lines_fast_in_batches():
    rng = np.random.default_rng(1)
    rows = million(rng)
    n = len(rows)
    for f, secs in (("start", 1), ("end", 100)):      # sec + usec / 1e6, as the core
        rows[f] = rng.integers(1.7e9, 1.7e9 + secs, n) + rng.integers(0, 10 ** 6, n) / 1e6
    rows["kind"] = np.arange(n) % 2
    rows["state"] = np.where(rows["kind"] == ct.END, ct.CLOSED, ct.ACTIVE)
    rows["proto"] = ct.TCP
    began = time.process_time()
    lines = sum(events.feed_bytes(rows[i:i + 2000]).count(b"\n") for i in range(0, n, 2000))
    spent = time.process_time() - began
    assert lines == n
    assert spent < 1.25          # 200,000 events/s within a quarter of the loop (10.4 guard)


# The fast formatter against its plain twin: random rows of every field, byte for byte.
U64 = st.integers(0, 2 ** 64 - 1)
TIMES = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                  st.integers(0, 2 ** 31).map(lambda s: s / 1e6 + 1.7e9),
                  st.integers(0, 10 ** 6).map(lambda u: 1700000000 + u / 1e6))
ROW = st.tuples(TIMES, TIMES, U64, U64, U64, U64,
                st.one_of(U64, st.integers(0, 1000)), U64, U64, st.one_of(U64, st.just(0)),
                st.integers(0, 65535), st.integers(0, 65535),
                st.integers(0, 1), st.integers(0, len(ct.STATES) - 1),
                st.one_of(st.sampled_from(ct.TRACKED), st.integers(0, 255)),
                st.integers(0, 1), st.integers(0, 1))


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(ROW, max_size=40))
def test_fast_lines_are_byte_identical_to_the_plain_twin(rows):
    assert events._eventtext is not None, "the compiled formatter was not built"
    batch = array(*rows)
    assert events.feed_bytes(batch) == events.feed_lines(batch).encode()
    assert events.log_bytes(batch) == events.log_lines(batch).encode()
    every_other = batch[::2]                  # a strided view, as a slice hands it over
    assert events.feed_bytes(every_other) == events.feed_lines(every_other).encode()
    packed = np.concatenate([batch, batch])   # the log thread's: padding dropped
    assert events.log_bytes(packed) == events.log_lines(packed).encode()


def test_fast_formatter_refuses_rows_out_of_range():
    rows = array(event())
    rows["state"] = len(ct.STATES)
    with pytest.raises(ValueError):
        events.feed_bytes(rows)


# --------------------------------------------------------------------------- the log

def read_lines(path: str) -> list[dict]:
    with open(path) as fh:
        return parsed(fh.read())


def test_log_appends_batches_and_reopens_after_rename(tmp_path):
    path = str(tmp_path / "conn.json")
    sink = events.Events(log_path=path)
    sink.push(array(event(peer="192.0.2.1"), event(kind=ct.NEW, state=ct.ACTIVE)))
    sink.push(array(event(peer="192.0.2.2")))
    deadline = time.monotonic() + 5
    while sink.log.written < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.rename(path, path + ".1")
    sink.reopen()
    sink.push(array(event(peer="192.0.2.3")))
    events.drain(sink, array(event(kind=ct.NEW, state=ct.ACTIVE, peer="192.0.2.4")))
    assert [o["peer"] for o in read_lines(path + ".1")] == ["192.0.2.1", "192.0.2.2"]
    assert [(o["peer"], o["state"]) for o in read_lines(path)] == \
        [("192.0.2.3", "closed"), ("192.0.2.4", "drained")]
    assert "events logged 4, dropped 0" in sink.counters_text()


def test_log_refuses_a_planted_symlink(tmp_path):
    target = tmp_path / "passwd"
    target.write_text("root\n")
    path = tmp_path / "conn.json"
    path.symlink_to(target)
    with pytest.raises(events.EventsError, match="symbolic link"):
        events.EventLog(str(path))
    assert target.read_text() == "root\n"


def test_reopen_onto_a_planted_symlink_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "conn.json")
    log = events.EventLog(path)
    os.rename(path, path + ".1")
    os.symlink(str(tmp_path / "elsewhere"), path)
    log.reopen()
    log.write(array(event()))
    log.close()
    assert len(read_lines(path + ".1")) == 1
    assert not os.path.exists(tmp_path / "elsewhere")


def test_full_queue_drops_and_counts(tmp_path, caplog):
    path = str(tmp_path / "fifo")
    os.mkfifo(path)
    with pytest.raises(events.EventsError, match="cannot open events file .*fifo"):
        events.EventLog(path)             # a FIFO never blocks the start either
    log = events.EventLog(str(tmp_path / "conn.json"), limit=10)
    log._cond.acquire()                       # the writer cannot take anything
    try:
        accepted = sum(log.write(array(event())) for _ in range(50))
    finally:
        log._cond.release()
    log.close()
    assert accepted == 10
    assert log.dropped.count == 50 - accepted
    assert "lines dropped" in caplog.text


# --------------------------------------------------------------------------- the feed

class Loop:
    """The daemon's selector loop in a thread, for a feed tested with real sockets."""

    def __init__(self, feed: events.EventFeed):
        self.sel = selectors.DefaultSelector()
        self.lock = threading.Lock()
        feed.attach(self.sel)
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop:
            with self.lock:
                for key, mask in self.sel.select(0.02):
                    key.data(mask)
            time.sleep(0.001)

    def close(self) -> None:
        self.stop = True
        self.thread.join(5)


def wait_for(cond, seconds=10.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_socket_is_0600_and_a_stale_one_replaced(tmp_path):
    path = str(tmp_path / "x.events")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()                       # a dead daemon's socket file
    feed = events.EventFeed(path)
    try:
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        with pytest.raises(events.EventsError, match="in use by another daemon"):
            events.EventFeed(path)
    finally:
        feed.close()
    assert not os.path.exists(path)


def test_socket_refuses_a_planted_symlink(tmp_path):
    path = tmp_path / "x.events"
    path.symlink_to(tmp_path / "target")
    with pytest.raises(events.EventsError, match="symbolic link"):
        events.EventFeed(str(path))


def test_a_feed_that_takes_too_much_of_the_loop_cuts_everyone_off(tmp_path, caplog):
    feed = events.EventFeed(str(tmp_path / "x.events"))
    sel = selectors.DefaultSelector()
    feed.attach(sel)
    clients = [socket.socket(socket.AF_UNIX) for _ in range(2)]
    try:
        for c in clients:
            c.connect(feed.path)
        wait_for(lambda: [key.data(mask) for key, mask in sel.select(0.01)] is None
                 or len(feed.clients) == 2)
        start = feed._window
        feed.charge(0.2, now=start + 0.5)       # a window not over yet
        feed.charge(0.1, now=start + 1.0)       # 30 % of it: over the 25 %
        assert (len(feed.clients), feed.cut_off) == (0, 2)
        assert "formatting took 30% of the loop's time; 2 subscribers cut off" in caplog.text
        assert all(c.recv(10) == b"" for c in clients)
    finally:
        for c in clients:
            c.close()
        feed.close()


@pytest.mark.integration
def test_slow_subscriber_cut_off_fast_one_keeps_receiving(tmp_path):
    path = str(tmp_path / "nc.sniffer.events")
    conf = tmp_path / "nc.conf"
    conf.write_text(repr({"piddir": str(tmp_path)}))
    feed = events.EventFeed(path)
    loop = Loop(feed)
    out = open(tmp_path / "out", "wb")
    client = subprocess.Popen([NC_SNIFFER, "-c", str(conf), "--name", "nc.sniffer", "events"],
                              stdout=out, stderr=subprocess.PIPE)
    slow = None
    try:
        wait_for(lambda: len(feed.clients) == 1)
        slow = socket.socket(socket.AF_UNIX)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(path)                # and never reads
        wait_for(lambda: len(feed.clients) == 2)
        text = events.feed_bytes(array(*[event(peer=f"192.0.2.{i % 250}") for i in range(1000)]))
        sent = 0
        began = time.monotonic()
        while sent < 100 and time.monotonic() - began < 30:
            with loop.lock:
                t0 = time.monotonic()
                feed.publish(text)
                assert time.monotonic() - t0 < 0.5        # never blocks
            sent += 1
            time.sleep(0.02)
        wait_for(lambda: feed.cut_off == 1)
        assert len(feed.clients) == 1
        with loop.lock:
            feed.flush(10)
            feed.close()
        assert client.wait(10) == 0
    finally:
        loop.close()
        if client.poll() is None:
            client.kill()
            client.wait()
        if slow is not None:
            slow.close()
        out.close()
    lines = (tmp_path / "out").read_text().splitlines()
    assert len(lines) == 1000 * sent
    assert json.loads(lines[-1])["peer"] == "192.0.2.249"


@pytest.mark.integration
def test_events_verb_errors(tmp_path):
    conf = tmp_path / "nc.conf"
    conf.write_text(repr({"piddir": str(tmp_path)}))
    run = lambda: subprocess.run([NC_SNIFFER, "-c", str(conf), "--name", "nc.x", "events"],  # noqa: E731
                                 capture_output=True, text=True, timeout=20)
    missing = run()
    assert (missing.returncode, missing.stderr.strip()) == \
        (2, f"nc.sniffer: nc.x not running: no socket '{tmp_path}/nc.x.events'")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "nc.x.events"))
    stale.close()
    refused = run()
    assert refused.returncode == 2 and "stale socket" in refused.stderr


# --------------------------------------------------------------------------- the drain

def test_replay_drains_after_the_final_dump(tmp_path, monkeypatch):
    from ncsniffer import config, decode, pcapgen, replay
    from tests.conftest import write_config
    me = "192.0.2.10"
    cap = str(tmp_path / "in.pcap")
    frame = pcapgen.frame(decode.DLT_EN10MB, pcapgen.ip_packet("198.51.100.1", me, "udp", b"x"))
    pcapgen.write_pcap(cap, decode.DLT_EN10MB, [(1_600_000_000, frame, len(frame))])
    settings = config.validate(config.load_file(write_config(str(tmp_path), bpf=f"host {me}")),
                               "nc.sniffer", offline=True)
    settings.events = str(tmp_path / "conn.json")      # the config key comes with the merge
    stats = os.path.join(str(tmp_path), "nc.sniffer.stats")
    seen = []

    def still_open(sniffer):
        seen.append(os.path.exists(stats))              # the final dump came first
        return array(event(kind=ct.NEW, state=ct.ACTIVE, me=me, peer="198.51.100.1"))
    monkeypatch.setattr(events, "still_open", still_open)
    log = io.StringIO()
    assert replay.replay(settings, cap, log, quiet=True) == 0
    assert seen == [True]
    assert [(o["peer"], o["state"]) for o in read_lines(settings.events)] == \
        [("198.51.100.1", "drained")]
    assert "events logged 1, dropped 0" in log.getvalue()


# --------------------------------------------------------------------------- a real daemon

# The daemon with the settings the config keys will give (connections, events) and,
# in the tracker's place until it is wired, a batch of events each loop turn while
# the file FLOW exists (at most one per 50 ms: the feed's formatting stays within its
# share of the loop's time, else every subscriber would be cut off).
DAEMON = r'''
import os, sys, time
import numpy as np
from ncsniffer import cli, config, conntrack as ct, daemon
conf, log_path, flow = sys.argv[1:4]
validate = config.validate
def with_events(*args, **kw):
    settings = validate(*args, **kw)
    settings.connections, settings.events = True, log_path
    return settings
config.validate = with_events
rows = np.zeros(500, ct.EVENT_DTYPE)
rows["me_lo"], rows["peer_lo"] = 0x7F000001, 0x7F000002 + np.arange(500)
rows["kind"] = np.arange(500) % 2
rows["state"] = np.where(rows["kind"] == ct.END, ct.CLOSED, ct.ACTIVE)
rows["proto"], rows["me_port"], rows["peer_port"] = ct.TCP, 40000, 443
drain_capture = daemon.Daemon._drain_capture
last = [0.0]
def with_flow(self, rounds=20):
    drain_capture(self, rounds)
    if os.path.exists(flow) and time.monotonic() > last[0] + 0.05:   # 10k events/s at most
        last[0] = time.monotonic()
        self.events.push(rows)
daemon.Daemon._drain_capture = with_flow
sys.exit(cli.main(["-c", conf, "--name", "nc.sniffer", "-f", "start"]))
'''


@pytest.mark.integration
@pytest.mark.slow
def test_daemon_feed_cuts_off_a_stalled_subscriber_and_sighup_reopens_the_log(tmp_path):
    from tests.conftest import write_config
    from tests.daemonutil import free_port
    work = str(tmp_path)
    conf = write_config(work, bpf=f"host 127.0.0.1 and udp port {free_port()}")
    log_path, flow, sock_path = (os.path.join(work, n) for n in
                                 ("conn.json", "flow", "nc.sniffer.events"))
    err = open(tmp_path / "daemon.err", "w+")
    out = open(tmp_path / "client.out", "wb")
    d = subprocess.Popen([sys.executable, "-c", DAEMON, conf, log_path, flow], stderr=err)
    client = stalled = None
    try:
        wait_for(lambda: os.path.exists(sock_path) or d.poll() is not None, 20)
        assert d.poll() is None, (tmp_path / "daemon.err").read_text()
        assert oct(os.stat(sock_path).st_mode & 0o777) == "0o600"
        client = subprocess.Popen([NC_SNIFFER, "-c", conf, "--name", "nc.sniffer", "events"],
                                  stdout=out)
        stalled = socket.socket(socket.AF_UNIX)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(sock_path)
        time.sleep(0.5)
        open(flow, "w").close()
        wait_for(lambda: "cut off" in (tmp_path / "daemon.err").read_text(), 30)
        os.rename(log_path, log_path + ".1")          # logrotate, then its SIGHUP
        d.send_signal(signal.SIGHUP)
        wait_for(lambda: os.path.exists(log_path), 10)
        time.sleep(0.3)
        os.unlink(flow)
        time.sleep(0.3)
        d.send_signal(signal.SIGTERM)
        assert d.wait(30) == 0
        assert client.wait(15) == 0
    finally:
        for p in (d, client):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        if stalled is not None:
            stalled.close()
        out.close()
        err.close()
    text = (tmp_path / "daemon.err").read_text()
    stopped = [line for line in text.splitlines() if "stopped:" in line][-1]
    logged = int(stopped.split("events logged ")[1].split(",")[0])
    assert "dropped 0" in stopped and ", 1 cut off" in stopped, stopped
    rotated, fresh = len(read_lines(log_path + ".1")), len(read_lines(log_path))
    assert rotated > 0 and fresh > 0 and rotated + fresh == logged
    lines = (tmp_path / "client.out").read_text().splitlines()
    assert len(lines) >= 2000 and {json.loads(x)["event"] for x in lines} == {"new", "end"}
    assert not os.path.exists(sock_path)
