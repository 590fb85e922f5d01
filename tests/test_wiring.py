"""Issue 13 wired (SPEC 10): a replay with ``connections`` tracks connections,
counts K per peer in the stats file and writes the events file."""

import json
import os

import dpkt
import pytest

from ncsniffer import decode, dumpfile, pcapgen
from tests.conftest import run_cli, write_config

pytestmark = pytest.mark.integration

ME = "192.0.2.10"
T0 = 1_600_000_000
FULL, REFUSED, SILENT, UDP_PEER, PING = ("198.51.100.1", "198.51.100.2", "198.51.100.3",
                                        "198.51.100.4", "198.51.100.5")
F = dpkt.tcp
K_ZERO = dict.fromkeys(("tcp", "udp", "icmp", "in", "out", "active", "closed", "reset",
                        "refused", "unanswered", "timedout", "evicted"), 0)


def tcp(src, dst, sport, dport, flags, data=b""):
    import ipaddress
    seg = F.TCP(sport=sport, dport=dport, flags=flags, data=data)
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    ip = dpkt.ip.IP(src=a.packed, dst=b.packed, p=dpkt.ip.IP_PROTO_TCP, data=seg)
    ip.len = 20 + len(bytes(seg))
    return bytes(ip)


def captures():
    """(ts, ip packet): a complete TCP connection, a refused one, an unanswered SYN
    (then a gap > 5 s), a UDP flow, an ICMP echo."""
    c = []
    t = T0
    c += [(t, tcp(ME, FULL, 40001, 80, F.TH_SYN)),
          (t + 0.01, tcp(FULL, ME, 80, 40001, F.TH_SYN | F.TH_ACK)),
          (t + 0.02, tcp(ME, FULL, 40001, 80, F.TH_ACK)),
          (t + 0.03, tcp(ME, FULL, 40001, 80, F.TH_ACK | F.TH_PUSH, b"GET / HTTP/1.0\r\n\r\n")),
          (t + 0.04, tcp(FULL, ME, 80, 40001, F.TH_ACK | F.TH_PUSH, b"HTTP/1.0 200 OK\r\n\r\n")),
          (t + 0.05, tcp(ME, FULL, 40001, 80, F.TH_FIN | F.TH_ACK)),
          (t + 0.06, tcp(FULL, ME, 80, 40001, F.TH_FIN | F.TH_ACK)),
          (t + 0.07, tcp(ME, FULL, 40001, 80, F.TH_ACK))]
    c += [(t + 1, tcp(REFUSED, ME, 50000, 22, F.TH_SYN)),
          (t + 1.01, tcp(ME, REFUSED, 22, 50000, F.TH_RST | F.TH_ACK))]
    c += [(t + 2, tcp(ME, SILENT, 40002, 443, F.TH_SYN))]
    c += [(t + 3, pcapgen.ip_packet(ME, UDP_PEER, "udp", b"q", sport=40003, dport=53)),
          (t + 3.01, pcapgen.ip_packet(UDP_PEER, ME, "udp", b"answer", sport=53, dport=40003))]
    c += [(t + 4, pcapgen.ip_packet(ME, PING, "icmp", b"ping"))]
    c += [(t + 9, pcapgen.ip_packet(ME, UDP_PEER, "udp", b"late", sport=40009, dport=53))]
    return [(ts, pcapgen.frame(decode.DLT_EN10MB, pkt), len(pcapgen.frame(decode.DLT_EN10MB, pkt)))
            for ts, pkt in c]


def run(workdir, monkeypatch=None, mode=None, **cfg):
    cap = os.path.join(workdir, "conn.pcap")
    pcapgen.write_pcap(cap, decode.DLT_EN10MB, captures())
    events = os.path.join(workdir, "events.jsonl")
    if os.path.exists(events):
        os.unlink(events)
    conf = write_config(workdir, bpf=f"host {ME}", connections=True, events=events, **cfg)
    env = dict(os.environ)
    env.pop("NCSNIFFER_REPLAY", None)
    if mode:
        env["NCSNIFFER_REPLAY"] = mode
    result = run_cli("-c", conf, "-r", cap, "start", env=env)
    assert result.returncode == 0, result.stderr
    stats = os.path.join(workdir, "nc.sniffer.stats")
    with open(events) as fh:
        lines = [json.loads(line) for line in fh]
    return stats, lines


def k(**counts):
    return {**K_ZERO, **counts}


def test_replay_counts_connections_per_peer_and_writes_the_events(workdir):
    stats, lines = run(workdir)
    st = dumpfile.read_stats(stats)
    got = {ip: rec["K"] for ip, rec in st.records.items()}
    assert got[FULL] == k(tcp=1, out=1, closed=1)
    assert got[REFUSED] == k(tcp=1, **{"in": 1}, refused=1)
    assert got[SILENT] == k(tcp=1, out=1, unanswered=1)
    # the UDP flows (udp timeout 20 s) and the ICMP echo are still open at the final
    # dump: active there, drained afterwards
    assert got[UDP_PEER] == k(udp=2, out=2, active=2)
    assert got[PING] == k(icmp=1, out=1, active=1)
    for K in got.values():
        begun = K["tcp"] + K["udp"] + K["icmp"]
        assert begun == K["in"] + K["out"] == K["active"] + sum(
            K[s] for s in ("closed", "reset", "refused", "unanswered", "timedout", "evicted"))
    assert st.header_value("connections") == "3 active, 6 started, 0 evicted"
    by_peer = sorted((e["peer"], e["state"]) for e in lines)
    assert by_peer == sorted([(FULL, "closed"), (REFUSED, "refused"), (SILENT, "unanswered"),
                              (UDP_PEER, "drained"), (UDP_PEER, "drained"), (PING, "drained")])
    full = next(e for e in lines if e["peer"] == FULL)
    assert (full["proto"], full["dir"], full["me"], full["peer_port"]) == ("tcp", "out", ME, 80)
    # the last ACK comes after both FINs: the entry lingers, it counts in B/C only (10.2)
    assert (full["orig_packets"], full["resp_packets"]) == (4, 3)


def test_timedout_udp_flow_with_a_short_timeout(workdir):
    stats, lines = run(workdir, timeouts={"udp": 2})
    K = dumpfile.read_stats(stats).records[UDP_PEER]["K"]
    assert K == k(udp=2, out=2, active=1, timedout=1)
    states = sorted(e["state"] for e in lines if e["peer"] == UDP_PEER)
    assert states == ["drained", "timedout"]


def test_the_three_replay_modes_give_the_same_stats_file(workdir):
    outputs = []
    for mode in (None, "serial", "libpcap"):
        stats, lines = run(workdir, mode=mode)
        with open(stats, "rb") as fh:
            outputs.append((fh.read(), sorted(json.dumps(e, sort_keys=True) for e in lines)))
    assert outputs[0] == outputs[1] == outputs[2]


def test_a_reset_carries_the_open_connections_into_the_new_data_set(workdir):
    """SIGHUP (Sniffer.reset): K is cleared with the records; a connection open across
    the reset counts as begun in the new data set once its peer has a record and an
    event there, so that tcp + udp + icmp == in + out == active + ended always holds."""
    from ncsniffer import config, replay as replay_module
    from ncsniffer.clock import PacketClock
    from ncsniffer.sniffer import Sniffer
    packets = captures()
    first, second = packets[:3], packets[3:8]       # handshake | data and both FINs
    settings = config.validate({"bpf": f"host {ME}", "sniffer": workdir, "resolve": False,
                                "connections": True}, "nc.sniffer", offline=True)
    sn = None
    for i, part in enumerate((first, second)):
        cap = os.path.join(workdir, f"part{i}.pcap")
        pcapgen.write_pcap(cap, decode.DLT_EN10MB, part)
        batches, linktype, prog, close = replay_module._open(cap, settings)
        if sn is None:
            sn = Sniffer(settings, linktype, PacketClock(), device=cap)
            sn.carry_open = True          # as live, where a SIGHUP can come
        else:
            sn.reset(sn.clock.now)
            assert not len(sn.acct.records)
        for got in batches:
            sn.process(got, prog)
        close()
    st_path = os.path.join(workdir, "after.stats")
    sn.settings.stats_file = st_path
    sn.dump(sn.clock.now)
    assert dumpfile.read_stats(st_path).records[FULL]["K"] == k(tcp=1, out=1, closed=1)


# --------------------------------------------------------------------------- live, on lo

live = pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root")


@live
def test_live_daemon_counts_expires_on_idle_seconds_and_drains(workdir):
    """The daemon on lo: K in the dumps, a UDP flow timed out by the per-second tick
    (no packet after it), the open one drained to the events file after SIGTERM."""
    import signal
    import time
    from tests.daemonutil import LiveDaemon, wait_for
    from tests.netutil import RawSender
    events = os.path.join(workdir, "events.jsonl")
    sender = RawSender()
    try:
        d = LiveDaemon(workdir, connections=True, events=events, timeouts={"udp": 1})
        d.start()
        pid = d.pid
        try:
            sender.send("127.0.0.2", d.dport, b"first", sport=41000)
            time.sleep(3.5)                       # idle: the tick expires it
            sender.send("127.0.0.3", d.dport, b"second", sport=41001)
            d.dump()
            st = dumpfile.read_stats(d.stats)
            assert st.records["127.0.0.2"]["K"] == k(udp=1, **{"in": 1}, timedout=1)
            assert st.records["127.0.0.3"]["K"] == k(udp=1, **{"in": 1}, active=1)
            assert st.header_value("connections") == "1 active, 2 started, 0 evicted"
        finally:
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(d.pidfile))
    finally:
        sender.close()
    with open(events) as fh:
        lines = [json.loads(line) for line in fh]
    assert sorted((e["peer"], e["state"]) for e in lines) == \
        [("127.0.0.2", "timedout"), ("127.0.0.3", "drained")]


# ------------------------------------------- a record deleted while its peer has connections open

@pytest.fixture(params=[False, True], ids=["one-process", "tracked-ahead"])
def ahead(request):
    """Each test of records deleted with connections open runs both ways: the tracker in
    the counting process, and in a second Sniffer as a two-process replay's reading
    process runs it (its events and open-tally deltas sent with each batch)."""
    return request.param


def replay_parts(workdir, parts, ahead=False, **cfg):
    """One Sniffer fed each part (a list of (ts, ip packet)) as batches of its own, as
    a long replay or a live capture would; the stats file after the last.  ``ahead``:
    the tracking done in a second Sniffer (``Sniffer.track_ahead``), as the reading
    process of a two-process replay does."""
    from ncsniffer import batch, config, replay as replay_module
    from ncsniffer.clock import PacketClock
    from ncsniffer.sniffer import Sniffer
    settings = config.validate({"bpf": f"host {ME}", "sniffer": workdir, "resolve": False,
                                "connections": True, **cfg}, "nc.sniffer", offline=True)
    sn = None
    for i, part in enumerate(parts):
        cap = os.path.join(workdir, f"part{i}.pcap")
        pcapgen.write_pcap(cap, decode.DLT_EN10MB,
                           [(ts, pcapgen.frame(decode.DLT_EN10MB, p),
                             len(pcapgen.frame(decode.DLT_EN10MB, p))) for ts, p in part])
        batches, linktype, prog, close = replay_module._open(cap, settings)
        if sn is None:
            sn = Sniffer(settings, linktype, PacketClock(), device=cap)
            reader = Sniffer(settings, linktype, PacketClock(), device=cap)
            if ahead:
                assert sn.tracks_ahead()
        for got in batches:
            if not ahead:
                sn.process(got, prog)
                continue
            p = reader.track_ahead(batch.prepare(got, prog, sn.rules))
            batch.apply(p, sn.counters, sn.acct, sn.clock, sn.flows)
            if p.tracked is not None:
                sn.take_tracked(p.tracked)
        close()
    if ahead:
        sn.set_drained(reader.drain_ahead())
    sn.settings.stats_file = os.path.join(workdir, "parts.stats")
    sn.dump(sn.clock.now)
    return sn, dumpfile.read_stats(sn.settings.stats_file)


def handshake(t, peer, port=40001):
    return [(t, tcp(ME, peer, port, 80, F.TH_SYN)),
            (t + 0.01, tcp(peer, ME, 80, port, F.TH_SYN | F.TH_ACK)),
            (t + 0.02, tcp(ME, peer, port, 80, F.TH_ACK))]


def close(t, peer, port=40001):
    return [(t, tcp(ME, peer, port, 80, F.TH_FIN | F.TH_ACK)),
            (t + 0.01, tcp(peer, ME, 80, port, F.TH_FIN | F.TH_ACK))]


def udp_out(t, peer=UDP_PEER, sport=40003):
    return (t, pcapgen.ip_packet(ME, peer, "udp", b"q", sport=sport, dport=53))


def test_a_record_evicted_with_an_open_connection_counts_it_when_made_anew(workdir, ahead):
    """max_hosts 1: FULL's record goes (evicted by UDP_PEER's) while its connection is
    open, and comes back with the FINs; the new record counts the connection as begun
    (10.3), so its end is counted too, not dropped."""
    sn, st = replay_parts(workdir, [handshake(T0, FULL), [udp_out(T0 + 1)], close(T0 + 2, FULL)],
                          ahead, max_hosts=1)
    assert sn.acct.evicted == 2 and sn.carry_open      # from the first eviction on
    assert list(st.records) == [FULL]
    assert st.records[FULL]["K"] == k(tcp=1, out=1, closed=1)
    assert st.header_value("connections") == "0 active, 1 started, 0 evicted"


def test_a_replay_that_evicts_no_record_keeps_no_open_counts(workdir, ahead):
    """The per-peer open counts cost time: a replay keeps them only once records go."""
    sn, st = replay_parts(workdir, [handshake(T0, FULL), [udp_out(T0 + 1)]], ahead, max_hosts=2)
    assert not sn.carry_open and not sn._open and sn.acct.evicted == 0
    assert st.records[FULL]["K"] == k(tcp=1, out=1, active=1)


def test_a_record_purged_with_an_open_connection_counts_it_when_made_anew(workdir, ahead):
    """A TCP timeout over a day: FULL's record is purged (a day idle) while its
    connection is open; the FINs make a new record, which counts that connection."""
    ticks = [[udp_out(T0 + s)] for s in range(1000, 90_000, 1000)]   # the purge runs
    sn, st = replay_parts(workdir, [handshake(T0, FULL), *ticks, close(T0 + 90_001, FULL)], ahead,
                          timeouts={"tcp": 200_000, "udp": 5000})
    assert sn.acct.purged == 1                          # FULL's (UDP_PEER's E is recent)
    assert st.records[FULL]["K"] == k(tcp=1, out=1, closed=1)


def test_a_day_without_packets_then_the_peer_again(workdir, ahead):
    """A capture with a gap of over a day: its first packet after the gap purges FULL's
    record while the tracker (no packet, no expiry yet) still holds FULL's connection;
    FULL's SYN in that batch makes the record anew, the old connection times out at
    that packet: the new record counts both, the old one as begun there."""
    parts = [handshake(T0, FULL),
             [udp_out(T0 + 90_000), (T0 + 90_000.5, tcp(ME, FULL, 40002, 80, F.TH_SYN))]]
    sn, st = replay_parts(workdir, parts, ahead)
    assert sn.acct.purged == 1
    assert st.records[FULL]["K"] == k(tcp=2, out=2, active=1, timedout=1)


def test_a_record_made_anew_counts_only_the_connections_still_open(workdir, ahead):
    """Two connections open when FULL's record is evicted; one ends while FULL has no
    record (its end counted nowhere), the other is counted as begun by the new record,
    beside one begun there."""
    parts = [handshake(T0, FULL, 40001) + handshake(T0, FULL, 40002),
             [udp_out(T0 + 1)],                                       # evicts FULL
             close(T0 + 2, FULL, 40001)[:1] + [udp_out(T0 + 2)],      # FULL anew, then gone
             close(T0 + 2, FULL, 40001)[1:] + [udp_out(T0 + 3)],      # 40001 ends: no record
             handshake(T0 + 4, FULL, 40003) + close(T0 + 5, FULL, 40002)]
    sn, st = replay_parts(workdir, parts, ahead, max_hosts=1)
    assert list(st.records) == [FULL]
    assert st.records[FULL]["K"] == k(tcp=2, out=2, active=1, closed=1)


def test_the_readme_example_replay_of_samples_connections_pcap(workdir):
    """README, "Events": the shipped capture (real traffic recorded in a namespace)
    replayed with the shipped config gives the K, header and log shown there."""
    from tests.conftest import ROOT
    os.mkdir(os.path.join(workdir, "demo-out"))
    result = run_cli("-c", os.path.join(ROOT, "samples", "connections.conf"),
                     "-r", os.path.join(ROOT, "samples", "connections.pcap"), "start", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "59 packets, 57 counted, 0 unmatched, 0 truncated, 2 non-IP, 0 invalid, 1 hosts" \
        in result.stderr
    assert "events logged 11, dropped 0" in result.stderr
    st = dumpfile.read_stats(os.path.join(workdir, "demo-out", "nc.sniffer.stats"))
    assert st.records["10.213.77.2"]["K"] == k(tcp=6, udp=4, icmp=1, out=11, active=6,
                                               closed=3, refused=2)
    assert st.header_value("connections") == "6 active, 11 started, 0 evicted"
    with open(os.path.join(workdir, "demo-out", "connections.jsonl")) as fh:
        states = sorted((e["proto"], e["state"]) for e in map(json.loads, fh))
    assert states == sorted([("tcp", "closed")] * 3 + [("tcp", "refused")] * 2
                            + [("tcp", "drained")] + [("udp", "drained")] * 4
                            + [("icmp", "drained")])


def test_the_replay_modes_agree_when_records_go_with_connections_open_batches_later(workdir):
    """Three batches (over 65,536 packets each but the last); the first record goes in
    the second, while connections begun in the first are open: the two-process replay,
    whose tracker runs in the reading process, seeds its open tally from the deltas sent
    with the batches, and writes the same stats file and events as one process."""
    import random
    from functools import lru_cache
    rng = random.Random(13)
    flags = (F.TH_SYN, F.TH_SYN | F.TH_ACK, F.TH_ACK, F.TH_FIN | F.TH_ACK, F.TH_RST)

    @lru_cache(maxsize=None)
    def packet(peer, port, kind, out):
        if kind == len(flags):
            return pcapgen.ip_packet(ME, peer, "udp", b"q", sport=port, dport=53)
        a, b = (ME, peer) if out else (peer, ME)
        return pcapgen.frame(decode.DLT_EN10MB, tcp(a, b, port if out else 80,
                                                     80 if out else port, flags[kind]))

    records = []
    for i in range(140_000):
        few = i < 70_000 or rng.random() < 0.5    # five peers, then a hundred more too
        peer = f"198.51.100.{rng.randrange(5)}" if few else f"198.51.101.{rng.randrange(100)}"
        kind = rng.randrange(len(flags) + 1)
        data = packet(peer, 40000 + rng.randrange(4), kind, rng.random() < 0.6)
        if kind == len(flags):
            data = pcapgen.frame(decode.DLT_EN10MB, data)
        records.append((T0 + i * 0.002, data, len(data)))
    cap = os.path.join(workdir, "many.pcap")
    pcapgen.write_pcap(cap, decode.DLT_EN10MB, records)
    events = os.path.join(workdir, "events.jsonl")
    conf = write_config(workdir, bpf=f"host {ME}", connections=True, events=events,
                        max_hosts=10, timeouts={"udp": 30, "tcp_establish": 20})
    outputs = []
    for mode in (None, "serial"):
        env = {k: v for k, v in os.environ.items() if k != "NCSNIFFER_REPLAY"}
        if mode:
            env["NCSNIFFER_REPLAY"] = mode
        result = run_cli("-c", conf, "-r", cap, "start", env=env)
        assert result.returncode == 0, result.stderr
        with open(os.path.join(workdir, "nc.sniffer.stats"), "rb") as fh, \
                open(events, "rb") as ev:
            outputs.append((fh.read(), ev.read()))
        os.unlink(events)
    assert b"evicted" in outputs[0][0] and outputs[0][1].count(b"\n") > 1000
    assert outputs[0][0].count(b"\n\"198.51.100.") >= 3     # the five peers, records anew
    assert outputs[0] == outputs[1]
