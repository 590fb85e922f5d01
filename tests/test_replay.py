"""SPEC 6.4: ``nc.sniffer -r FILE start`` end to end, checked against the plain model."""

import faulthandler
import importlib.util
import io
import ipaddress
import struct
import os
import random
import re
import subprocess
import sys
import time

import pytest

from ncsniffer import decode, pcapgen
from tests import reference
from tests.conftest import plain_read, run_cli, write_config

# every replay here runs the real nc.sniffer program as a process
pytestmark = pytest.mark.integration

ME = "192.0.2.10"


@pytest.fixture(autouse=True, params=["batch", "serial", "libpcap"])
def replay_path(request, monkeypatch):
    """Every test runs through each replay path: the batch path with its two
    processes, in one process, and libpcap's; they must give the same numbers."""
    monkeypatch.setenv("NCSNIFFER_REPLAY", request.param)
    return request.param
T0 = 1_600_000_000


def build(specs, link=decode.DLT_EN10MB):
    """specs: (ts, src, dst, payload, extra) -> (file records, model packets)."""
    records, model = [], []
    for ts, src, dst, payload, *extra in specs:
        opts = extra[0] if extra else {}
        pkt = pcapgen.ip_packet(src, dst, opts.get("proto", "udp"), payload,
                                options=opts.get("options", b""))
        data = pcapgen.frame(link, pkt, opts.get("vlans", ()))
        wirelen = opts.get("wirelen", len(data))
        records.append((ts, data, wirelen))
        model.append((ts, ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed,
                      wirelen, data))
    return records, model


def replay(workdir, records, link=decode.DLT_EN10MB, fmt="pcap", snaplen_file=65535, **cfg):
    cap = os.path.join(workdir, "in." + fmt)
    writer = pcapgen.write_pcapng if fmt == "pcapng" else pcapgen.write_pcap
    writer(cap, link, records, snaplen=snaplen_file)
    cfg.setdefault("bpf", f"host {ME}")
    conf = write_config(workdir, **cfg)
    return run_cli("-c", conf, "-r", cap, "start"), os.path.join(workdir, "nc.sniffer.stats")


def expected(model, me=ME, **kw):
    st = reference.replay(model, ipaddress.ip_address(me).packed, **kw)
    return {ipaddress.ip_address(k).compressed: v for k, v in reference.rounded(st).items()}, st


def traffic(n=400, seed=1, peers=20, spread=7):
    rnd = random.Random(seed)
    ts = T0 + 0.25
    out = []
    for _ in range(n):
        ts += rnd.choice((0, 0.3, 1, 2, 30, 61, 299, 301)) * spread / 7
        peer = f"198.51.100.{rnd.randrange(1, peers + 1)}"
        payload = bytes(rnd.randrange(0, 300))
        out.append((ts, ME, peer, payload) if rnd.random() < 0.5 else (ts, peer, ME, payload))
    return out


@pytest.mark.parametrize("link", [decode.DLT_EN10MB, decode.DLT_LINUX_SLL, decode.DLT_LINUX_SLL2,
                                  decode.DLT_NULL, decode.DLT_LOOP, decode.DLT_RAW])
def test_every_link_type_gives_exact_numbers(workdir, link):
    records, model = build(traffic(), link)
    result, stats = replay(workdir, records, link)
    assert result.returncode == 0, result.stderr
    header, got = plain_read(stats)
    want, st = expected(model)
    assert got == want
    assert f"# users:\t{len(want)}" in header
    assert "# hits:\t\t%.0f per minute" % (st["rate"] / 60) in header
    assert "# bytes:\t%.0f per second" % (st["bw"] / 3600) in header
    assert header[1].startswith(f"# start:\t{int(model[0][0])},")


@pytest.mark.parametrize("stored,me,peer", [(12, ME, "198.51.100.{}"), (101, ME, "198.51.100.{}"),
                                            (228, ME, "198.51.100.{}"),
                                            (229, "2001:db8::10", "2001:db8:9::{}")])
def test_raw_ip_files_by_every_link_type_number(workdir, stored, me, peer):
    specs = [(T0 + i * 11, me if i % 3 else peer.format(i % 5 + 1),
              peer.format(i % 5 + 1) if i % 3 else me, b"r" * i) for i in range(150)]
    records, model = build(specs, decode.DLT_RAW)
    cap = os.path.join(workdir, "raw.pcap")
    pcapgen.write_pcap(cap, decode.DLT_RAW, records, stored_linktype=stored)
    conf = write_config(workdir, bpf=f"host {me}")
    result = run_cli("-c", conf, "-r", cap, "start")
    assert result.returncode == 0, result.stderr
    assert plain_read(os.path.join(workdir, "nc.sniffer.stats"))[1] == expected(model, me=me)[0]


def test_pcapng_vlan_and_ip_options(workdir):
    specs = [(T0 + i * 7, "198.51.100.9", ME, b"x" * i, {"vlans": (10, 20) if i % 2 else (5,),
             "options": b"\x01\x01\x01\x00" if i % 3 == 0 else b""}) for i in range(200)]
    records, model = build(specs)
    result, stats = replay(workdir, records, fmt="pcapng")
    assert result.returncode == 0, result.stderr
    assert plain_read(stats)[1] == expected(model)[0]


def test_ipv6_host(workdir):
    me6 = "2001:db8::10"
    specs = [(T0 + i * 13, me6 if i % 2 else f"2001:db8:{i % 3}::1",
              f"2001:db8:{i % 3}::1" if i % 2 else me6, b"y" * 10) for i in range(120)]
    records, model = build(specs)
    result, stats = replay(workdir, records, bpf=f"host {me6}")
    assert result.returncode == 0, result.stderr
    got = plain_read(stats)[1]
    assert got == expected(model, me=me6)[0]
    assert set(got) == {"2001:db8::1", "2001:db8:1::1", "2001:db8:2::1"}


def test_loopback_host_counts_peer_not_itself(workdir):
    """The original's string copy stopped at the 0 byte of 127.0.0.1; we compare all 4 bytes."""
    specs = [(T0 + i, "127.0.0.1", "127.0.0.7", b"a") for i in range(10)]
    records, model = build(specs)
    result, stats = replay(workdir, records, bpf="host 127.0.0.1")
    assert list(plain_read(stats)[1]) == ["127.0.0.7"]


def test_wire_length_not_captured_length(workdir):
    specs = [(T0 + i, "198.51.100.1", ME, b"z" * 1000) for i in range(10)]
    records, model = build(specs)
    result, stats = replay(workdir, records, snaplen_file=60)
    got = plain_read(stats)[1]
    assert got["198.51.100.1"]["B"] == 10 * (14 + 20 + 8 + 1000)


def test_bpf_applies_to_file(workdir):
    specs = [(T0 + i, "198.51.100.1", ME if i % 2 else "203.0.113.1", b"") for i in range(20)]
    records, model = build(specs)
    result, stats = replay(workdir, records)
    got = plain_read(stats)[1]
    assert got["198.51.100.1"]["C"] == 10


MATCH = b"\x07Example\x03com\x00"


def dns_like(name_bytes):
    return b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name_bytes + b"\x00\x01\x00\x01"


def test_match_and_nomatch_binary_with_nuls(workdir):
    payloads = [dns_like(b"\x07EXAMPLE\x03COM\x00"), dns_like(b"\x03www\x07example\x03com\x00"),
                dns_like(b"\x05other\x03net\x00"), dns_like(b"\x07example\x03com\x00") + b"bad"]
    specs = [(T0 + i * 3, f"198.51.100.{i % 4 + 1}", ME, payloads[i % 4]) for i in range(200)]
    records, model = build(specs)
    kw = dict(match=MATCH, nomatch=b"BAD", payload=42, snaplen=120)
    result, stats = replay(workdir, records, **kw)
    assert result.returncode == 0, result.stderr
    got = plain_read(stats)[1]
    want = expected(model, match=MATCH, nomatch=b"bad", payload=42, snaplen=120)[0]
    assert got == want and set(got) == {"198.51.100.1", "198.51.100.2"}


def test_match_window_ends_at_snaplen_even_with_full_frames(workdir):
    """The file holds whole frames; the window is [payload, snaplen), as live."""
    specs = [(T0 + i, "198.51.100.1", ME, b"." * 30 + b"needle") for i in range(5)] + \
            [(T0 + 10 + i, "198.51.100.2", ME, b"needle" + b"." * 30) for i in range(5)]
    records, model = build(specs)
    result, stats = replay(workdir, records, match="needle", payload=42, snaplen=60)
    got = plain_read(stats)[1]
    assert set(got) == {"198.51.100.2"}


def test_short_frame_cannot_match_but_nomatch_keeps_it(workdir):
    specs = [(T0 + i, "198.51.100.1", ME, b"") for i in range(5)]
    records, model = build(specs)
    result, stats = replay(workdir, records, match="x", payload=100, snaplen=200)
    assert plain_read(stats)[1] == {}
    result, stats = replay(workdir, records, nomatch="x", payload=100, snaplen=200)
    assert plain_read(stats)[1]["198.51.100.1"]["C"] == 5


def test_start_is_first_bpf_packet_even_if_match_drops_it(workdir):
    specs = [(T0, "198.51.100.1", ME, b"nope")] + \
            [(T0 + 100 + i, "198.51.100.2", ME, b"yes!") for i in range(3)]
    records, model = build(specs)
    result, stats = replay(workdir, records, match="yes", payload=42, snaplen=60)
    header, got = plain_read(stats)
    assert got["198.51.100.2"]["S"] == T0 and got["198.51.100.2"]["E"] == T0 + 100
    assert header[1].startswith(f"# start:\t{T0},")


def test_purge_after_a_day_of_idleness(workdir):
    specs = [(T0 + i, "198.51.100.1", ME, b"a") for i in range(6)]
    specs += [(T0 + 600 * i, "198.51.100.2", ME, b"b") for i in range(1, 200)]   # ~33 hours
    specs += [(T0 + 200000, "198.51.100.1", ME, b"a")]                          # comes back
    records, model = build(specs)
    result, stats = replay(workdir, records)
    got = plain_read(stats)[1]
    want, _ = expected(model)
    assert got == want
    assert got["198.51.100.1"]["C"] == 1 and got["198.51.100.1"]["E"] == T0 + 200000


def test_long_run_every_branch(workdir):
    records, model = build(traffic(n=6000, seed=9, peers=60, spread=40))
    result, stats = replay(workdir, records)
    assert plain_read(stats)[1] == expected(model)[0]


def test_perl_format_and_stderr(workdir):
    records, model = build(traffic(n=50))
    result, stats = replay(workdir, records, dump_format="perl")
    text = open(stats).read()
    assert "{\n  my $dump = {\n\t'198.51.100." in text and text.endswith("\t},\n  };\n}\n")
    conf = os.path.join(workdir, "nc.sniffer.conf")
    out = run_cli("-c", conf, "-r", os.path.join(workdir, "in.pcap"), "-d", "start")
    assert out.returncode == 0 and "my $dump = {" in out.stderr


def test_truncated_file_exit_2_and_stats_written(workdir):
    records, model = build(traffic(n=100))
    cap = os.path.join(workdir, "in.pcap")
    pcapgen.write_pcap(cap, decode.DLT_EN10MB, records)
    size = os.path.getsize(cap)
    with open(cap, "r+b") as fh:
        fh.truncate(size - 7)
    conf = write_config(workdir, bpf=f"host {ME}")
    result = run_cli("-c", conf, "-r", cap, "start")
    assert result.returncode == 2
    assert cap in result.stderr and "stats of the packets read so far were written" in result.stderr
    got = plain_read(os.path.join(workdir, "nc.sniffer.stats"))[1]
    assert sum(r["C"] for r in got.values()) >= 1


def test_corrupt_file_clear_error(workdir):
    cap = os.path.join(workdir, "junk.pcap")
    with open(cap, "wb") as fh:
        fh.write(b"this is not a capture file at all" * 10)
    conf = write_config(workdir, bpf=f"host {ME}")
    result = run_cli("-c", conf, "-r", cap, "start")
    assert result.returncode == 2 and cap in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_undecodable_frames_are_counted_in_the_log(workdir):
    arp = b"\xff" * 6 + b"\x00\x11\x22\x33\x44\x55" + b"\x08\x06" + bytes(28)
    good = pcapgen.frame(decode.DLT_EN10MB, pcapgen.ip_packet("198.51.100.1", ME))
    records = [(T0, good), (T0 + 1, arp), (T0 + 2, good[:20])]
    # BPF rejects a frame as soon as a test reads past its end: test the length first
    result, _ = replay(workdir, records, bpf=f"len < 30 or arp or host {ME}")
    assert "3 packets, 1 counted" in result.stderr
    assert "1 truncated, 1 non-IP, 0 invalid" in result.stderr


def test_unsupported_link_type_is_a_clear_error(workdir):
    frame = pcapgen.frame(decode.DLT_EN10MB, pcapgen.ip_packet("198.51.100.1", ME))
    cap = os.path.join(workdir, "wifi.pcap")
    pcapgen.write_pcap(cap, decode.DLT_EN10MB, [(T0, frame)], stored_linktype=105)
    conf = write_config(workdir, bpf=f"host {ME}")
    result = run_cli("-c", conf, "-r", cap, "start")
    assert result.returncode == 2
    assert result.stderr.strip() == f"nc.sniffer: {cap}: link type IEEE802_11 (105) is not supported"


def test_broken_pcapng_mid_file_is_a_clear_error(workdir):
    records, model = build(traffic(n=30))
    cap = os.path.join(workdir, "in.pcapng")
    pcapgen.write_pcapng(cap, decode.DLT_EN10MB, records)
    with open(cap, "ab") as fh:       # an interface of an unsupported link type after the packets
        body = struct.pack("<HHI", 105, 0, 65535)
        fh.write(struct.pack("<II", 1, 12 + len(body)) + body + struct.pack("<I", 12 + len(body)))
    conf = write_config(workdir, bpf=f"host {ME}")
    result = run_cli("-c", conf, "-r", cap, "start")
    assert result.returncode == 2 and cap in result.stderr and "Traceback" not in result.stderr
    assert plain_read(os.path.join(workdir, "nc.sniffer.stats"))[1] == expected(model)[0]


def test_each_prepared_batch_reaches_the_counting_process_at_once(workdir, replay_path,
                                                                 monkeypatch):
    """The reading process sends a batch when it is ready, not when the next one has
    filled its buffer: it prepares the second only once the first has been counted
    (else the first batch of a replay waits for the second, tens of milliseconds)."""
    if replay_path != "batch":
        pytest.skip("only the two-process path has a reading process")
    from ncsniffer import batch, config, pcapfile, replay as replay_mod
    counted = os.path.join(workdir, "first-counted")
    real_prepare, real_apply = batch.prepare, batch.apply
    calls, applied = [], []

    def prepare(*args):                 # in the reading process
        calls.append(1)
        if len(calls) == 2:
            deadline = time.monotonic() + 10
            while not os.path.exists(counted):
                if time.monotonic() > deadline:
                    raise ValueError("the first batch was not counted before the second")
                time.sleep(0.01)
        return real_prepare(*args)

    def apply(*args, **kw):              # in the counting process
        open(counted, "w").close()
        applied.append(1)
        return real_apply(*args, **kw)
    monkeypatch.setattr(batch, "prepare", prepare)
    monkeypatch.setattr(batch, "apply", apply)
    monkeypatch.setattr(pcapfile, "MAX_BYTES", 4096)
    records, model = build([(T0 + i, "198.51.100.1", ME, b"x") for i in range(200)])
    cap = os.path.join(workdir, "in.pcap")
    pcapgen.write_pcap(cap, decode.DLT_EN10MB, records)
    settings = config.validate(config.load_file(write_config(workdir, bpf=f"host {ME}")),
                               "nc.sniffer", offline=True)
    assert replay_mod.replay(settings, cap, io.StringIO(), quiet=True) == 0
    assert len(applied) > 2
    assert plain_read(os.path.join(workdir, "nc.sniffer.stats"))[1] == expected(model)[0]


def test_read_ahead_keeps_the_order_and_raises_in_place(replay_path):
    """The tracking reading process's reader thread: items in order, its error after
    the items before it, and a consumer that stops early leaves no thread behind."""
    if replay_path != "batch":
        pytest.skip("pure logic, once")
    import threading
    from ncsniffer.errors import CaptureError
    from ncsniffer.replay import _read_ahead

    def items(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise CaptureError(f"bad at {i}")
            yield i
    assert list(_read_ahead(items(50), depth=3)) == list(range(50))
    got = []
    with pytest.raises(CaptureError, match="bad at 7"):
        for i in _read_ahead(items(50, fail_at=7), depth=3):
            got.append(i)
    assert got == list(range(7))
    before = threading.active_count()
    ahead = _read_ahead(items(10 ** 6), depth=2)
    assert next(ahead) == 0
    time.sleep(0.2)                     # the producer is blocked on the full queue
    ahead.close()
    assert threading.active_count() == before


@pytest.mark.parametrize("failure, message", [
    ("raise", "the reading process failed"),
    ("exit", "the reading process ended unexpectedly"),
])
def test_a_failing_reading_process_is_an_error_not_a_hang(workdir, replay_path, monkeypatch,
                                                          failure, message):
    """The second process dies or raises in its third batch: the replay says so."""
    if replay_path != "batch":
        pytest.skip("only the two-process path has a reading process")
    from ncsniffer import batch, config, replay as replay_mod
    calls = []
    real = batch.prepare

    def flaky(*args):
        calls.append(1)
        if len(calls) == 3:
            if failure == "exit":
                os._exit(3)
            raise ValueError("boom")
        return real(*args)
    monkeypatch.setattr(batch, "prepare", flaky)
    records, _ = build([(T0 + i, "198.51.100.1", ME, b"x") for i in range(2000)])
    cap = os.path.join(workdir, "in.pcap")
    pcapgen.write_pcap(cap, decode.DLT_EN10MB, records)
    from ncsniffer import pcapfile
    monkeypatch.setattr(pcapfile, "MAX_BYTES", 4096)
    settings = config.validate(config.load_file(write_config(workdir, bpf=f"host {ME}")),
                               "nc.sniffer", offline=True)
    log = io.StringIO()
    if failure == "raise":
        with pytest.raises(RuntimeError, match=message) as err:
            replay_mod.replay(settings, cap, log, quiet=True)
        assert "ValueError: boom" in str(err.value)
    else:
        assert replay_mod.replay(settings, cap, log, quiet=True) == 2
        assert message in log.getvalue()


@pytest.mark.parametrize("kind, message", [
    ("pcapng", "{cap}: file shrank or could not be read while mapped (SIGBUS)"),
    ("pcap", "{cap}: file shrank while read"),
])
def test_a_file_cut_while_replayed_is_named_and_what_came_before_counted(
        workdir, replay_path, monkeypatch, kind, message):
    """Another process cuts the file in the middle of a replay: the reading process
    maps a pcapng file (a SIGBUS there) and reads a classic one; either way the
    replay says the file shrank, exits 2 and writes the stats of what it read."""
    if replay_path != "batch":
        pytest.skip("only the two-process path has a reading process")
    from ncsniffer import batch, config, pcapfile, replay as replay_mod
    cap = os.path.join(workdir, f"in.{kind}")
    calls = []
    real = batch.prepare

    def cutting(*args):
        calls.append(1)
        if len(calls) == 3:
            faulthandler.disable()        # pytest's, inherited: it would print the SIGBUS
            os.truncate(cap, 0)
        return real(*args)
    monkeypatch.setattr(batch, "prepare", cutting)
    records, _ = build([(T0 + i, "198.51.100.1", ME, b"x") for i in range(2000)])
    write = pcapgen.write_pcapng if kind == "pcapng" else pcapgen.write_pcap
    write(cap, decode.DLT_EN10MB, records)
    monkeypatch.setattr(pcapfile, "MAX_BYTES", 4096)
    settings = config.validate(config.load_file(write_config(workdir, bpf=f"host {ME}")),
                               "nc.sniffer", offline=True)
    log = io.StringIO()
    assert replay_mod.replay(settings, cap, log, quiet=True) == 2
    assert message.format(cap=cap) in log.getvalue()
    assert "stats of the packets read so far were written" in log.getvalue()
    assert plain_read(os.path.join(workdir, "nc.sniffer.stats"))[1]


# ---------------------------------------------------------------- the capture corpus
# Files of tests/data/captures (made by its make_captures.py): each is replayed
# through the CLI and compared with tcpdump where tcpdump reads it.
CAPTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "captures")


def _load_corpus():
    spec = importlib.util.spec_from_file_location(
        "make_captures", os.path.join(CAPTURES, "make_captures.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


corpus = _load_corpus()
CORPUS = corpus.corpus()


def tcpdump_count(path, bpf=""):
    """(packets tcpdump counts, its error line or None); on Ethernet, with the
    filter also applied inside a VLAN tag, as a replay applies it (README)."""
    def run(text):
        return subprocess.run(["tcpdump", "-r", path, "-n", "--count", *text.split()],
                              capture_output=True, text=True, timeout=60)
    out = run(bpf)
    if bpf and "link-type EN10MB" in out.stderr:
        out = run(f"({bpf}) or (vlan and ({bpf}))")
    counted = re.search(r"^(\d+) packets?$", out.stdout, re.M)
    error = [line for line in out.stderr.splitlines() if line.startswith("tcpdump:")]
    return (int(counted.group(1)) if counted else None), (error[0] if error else None)


def replay_capture(workdir, name, bpf=corpus.BPF, **cfg):
    """(CLI result, stats file, path) of replaying a corpus file."""
    path = os.path.join(CAPTURES, name)
    conf = write_config(workdir, bpf=bpf, **cfg)
    return run_cli("-c", conf, "-r", path, "start"), os.path.join(workdir, "nc.sniffer.stats"), path


def corpus_expected(name, count=None, me=corpus.ME4):
    """The plain model's stats of the corpus file's first ``count`` packets that pass BPF."""
    packets = CORPUS[name].packets[:count]
    model = [(p.ts, ipaddress.ip_address(p.src).packed, ipaddress.ip_address(p.dst).packed,
              p.wirelen, p.frame) for p in packets if p.passes]
    return expected(model, me=me)[0]


def counted_line(path, n):
    return f"nc.sniffer: {path}: {n} packets, {n} counted, "


LOOPBACK = ["null-le.pcap", "null-be.pcap", "loop-le.pcap", "loop-be.pcap", "null-be.pcapng"]


@pytest.mark.parametrize("name", LOOPBACK)
@pytest.mark.parametrize("bpf", [corpus.BPF, f"host {corpus.ME6}", f"host {corpus.ME4} and udp"])
def test_bsd_loopback_every_family_and_byte_order_counts_like_tcpdump(workdir, name, bpf):
    """Issue 11.1: AF_INET6 is 24, 28 or 30 in BSD files, and a NULL file's family
    word is in its writer's byte order; the filter must be the one libpcap
    compiles for that file."""
    result, stats, path = replay_capture(workdir, name, bpf)
    assert result.returncode == 0, result.stderr
    n, error = tcpdump_count(path, bpf)
    assert error is None and n > 0
    assert counted_line(path, n) in result.stderr
    if bpf == corpus.BPF:
        assert plain_read(stats)[1] == corpus_expected(name)


@pytest.mark.parametrize("name", ["version-2.5.pcap", "version-3.0.pcap", "version-2.0.pcapng",
                                  "version-1.1.pcapng"])
def test_unknown_file_version_is_refused_in_one_line(workdir, name):
    """Issue 11.2: libpcap, tcpdump and tshark refuse these headers; so do we."""
    result, stats, path = replay_capture(workdir, name)
    assert tcpdump_count(path)[1] is not None
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and path in lines[0] and "version" in lines[0], result.stderr
    assert not os.path.exists(stats)


def test_pcapng_version_1_2_is_read(workdir):
    """Version 1.2 is 1.0 (the pcapng draft; libpcap 1.10 reads it, 1.9 does not)."""
    result, stats, path = replay_capture(workdir, "version-1.2.pcapng")
    assert result.returncode == 0, result.stderr
    assert counted_line(path, tcpdump_count(path, corpus.BPF)[0]) in result.stderr
    assert plain_read(stats)[1] == corpus_expected("version-1.2.pcapng")


@pytest.mark.parametrize("name, good, what", [
    ("trailer-mid.pcapng", 20, "trailer"),
    ("trailer-first.pcapng", 0, "trailer"),
    ("section-version-2.0.pcapng", 20, "version( number)? 2"),
])
def test_damaged_pcapng_block_mid_file_exit_2_stats_of_what_came_before(workdir, name, good,
                                                                          what):
    """Issue 11.2: a block whose trailer disagrees with its header, or a section of
    an unknown version: the packets before it are counted (as tcpdump counts
    them), then one line names the file and the damage, exit 2."""
    result, stats, path = replay_capture(workdir, name)
    assert tcpdump_count(path)[0] == good
    n, error = tcpdump_count(path, corpus.BPF)
    assert error is not None
    assert result.returncode == 2
    assert f"nc.sniffer: {path}: {n} packets, {n} counted, " in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert path in last and re.search(what, last), result.stderr
    assert plain_read(stats)[1] == (corpus_expected(name, good) if good else {})


def test_times_past_2_to_the_31_stay_positive(workdir):
    """Issue 11.3: the file's seconds are unsigned 32-bit, on every replay path."""
    result, stats, path = replay_capture(workdir, "ts-2038.pcap")
    assert result.returncode == 0, result.stderr
    header, got = plain_read(stats)
    assert got == corpus_expected("ts-2038.pcap")
    assert min(r["S"] for r in got.values()) == 2 ** 31 - 200
    assert max(r["E"] for r in got.values()) > 2 ** 31
    assert header[1].startswith(f"# start:\t{2 ** 31 - 200},")


@pytest.mark.parametrize("name", ["linktype-999.pcap", "linktype-999.pcapng"])
def test_link_type_unknown_to_libpcap_is_named_not_blamed_on_the_filter(workdir, name):
    """Issue 11.4: the file's link type is the problem, not the user's filter."""
    result, stats, path = replay_capture(workdir, name)
    assert result.returncode == 2
    assert result.stderr.strip() == \
        f"nc.sniffer: {path}: link type 999 (unknown to libpcap) is not supported"


def split_by_interface(workdir, name):
    """Per-interface classic pcap files of a corpus file (tcpdump reads those)."""
    cap = CORPUS[name]
    out = []
    for i, iface in enumerate(cap.interfaces):
        part = corpus.Capture([p for p in cap.packets if p.iface == i], [iface], "pcap")
        path = os.path.join(workdir, f"{name}.{i}.pcap")
        with open(path, "wb") as fh:
            fh.write(corpus.file_bytes(part))
        out.append(path)
    return out


@pytest.mark.parametrize("name", ["mixed-links.pcapng", "mixed-snaplen.pcapng",
                                  "mixed-byte-order.pcapng"])
def test_pcapng_interfaces_that_differ_replay_exactly(workdir, name):
    """Issue 11.5: interfaces of different link types, snapshot lengths or byte
    orders (tcpdump refuses the file; tshark reads it): each packet is filtered
    and decoded by its own interface, as tcpdump does each interface's packets."""
    result, stats, path = replay_capture(workdir, name)
    assert result.returncode == 0, result.stderr
    assert tcpdump_count(path, corpus.BPF)[1] is not None
    n = sum(tcpdump_count(part, corpus.BPF)[0] for part in split_by_interface(workdir, name))
    assert counted_line(path, n) in result.stderr
    assert plain_read(stats)[1] == corpus_expected(name)


def test_pcapng_interface_of_an_unsupported_link_type_mid_file(workdir):
    """Issue 11.5: the packets before it are counted; the line names the link type."""
    result, stats, path = replay_capture(workdir, "mixed-unsupported.pcapng")
    assert result.returncode == 2
    n, error = tcpdump_count(path, corpus.BPF)       # tcpdump stops there too
    assert error is not None and counted_line(path, n) in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"nc.sniffer: {path}: link type IEEE802_11 (105) is not supported")
    assert plain_read(stats)[1] == corpus_expected("mixed-unsupported.pcapng", 20)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_file_is_what_make_captures_writes(name, replay_path):
    """The committed files are exactly what tests/data/captures/make_captures.py makes."""
    if replay_path != "batch":
        pytest.skip("no replay here: once is enough")
    with open(os.path.join(CAPTURES, name), "rb") as fh:
        assert fh.read() == corpus.file_bytes(CORPUS[name])


# --------------------------------------------------------------------------- issue 13

def flow_traffic():
    """TCP and UDP both ways, some ICMP and a fragment, at sub-second times."""
    out = []
    for i, (ts, src, dst, payload) in enumerate(traffic(120, seed=13)):
        proto = ("tcp", "udp", "icmp")[i % 3]
        out.append((ts + (i % 7) * 0.000123, src, dst, payload, {"proto": proto}))
    return out


def micros(ts: float) -> tuple[int, int]:
    """(second, microseconds) as pcapgen's writer stores a time."""
    sec, usec = int(ts), int(round((ts - int(ts)) * 1e6))
    return (sec + 1, usec - 10**6) if usec >= 10**6 else (sec, usec)


def test_connections_hand_flow_records_to_the_consumer(workdir):
    """Issue 13: with connections on, every counted packet's FLOW record reaches the
    consumer, in packet order, on every replay path (two processes: pickled)."""
    from ncsniffer import config, replay as replay_module
    specs = flow_traffic()
    records, model = build(specs)
    cap = os.path.join(workdir, "in.pcap")
    pcapgen.write_pcap(cap, decode.DLT_EN10MB, records)
    cfg = {"bpf": f"host {ME}", "sniffer": workdir, "resolve": False, "connections": True}
    got = []
    settings = config.validate(cfg, "nc.sniffer", offline=True)
    assert replay_module.replay(settings, cap, io.StringIO(), quiet=True,
                                flows=lambda f, clock: got.append(f.copy())) == 0
    import numpy as np
    flows = np.concatenate(got)
    assert len(flows) == len(specs)
    assert list(zip(flows["sec"].tolist(), flows["usec"].tolist())) == \
        [micros(s[0]) for s in specs]
    assert flows["proto"].tolist() == [{"tcp": 6, "udp": 17, "icmp": 1}[s[4]["proto"]]
                                       for s in specs]
    assert flows["from_me"].tolist() == [s[1] == ME for s in specs]
    me = int(ipaddress.ip_address(ME))
    assert set(flows["me_lo"].tolist()) == {me} and set(flows["me_hi"].tolist()) == {0}
    assert flows["peer_lo"].tolist() == [int(ipaddress.ip_address(s[2] if s[1] == ME else s[1]))
                                         for s in specs]
    assert flows["length"].tolist() == [r[2] for r in records]


def test_connections_change_no_byte_of_the_stats_file(workdir):
    """Issue 13: without ``connections`` (off or absent) the stats file is byte for byte
    what it was; with it on, only the K counters and the ``# connections:`` line are new."""
    from ncsniffer import dumpfile
    records, _ = build(flow_traffic())
    outputs, read = [], []
    for on in (None, False, True):
        cfg = {} if on is None else {"connections": on}
        result, stats = replay(workdir, records, **cfg)
        assert result.returncode == 0, result.stderr
        with open(stats, "rb") as fh:
            outputs.append((fh.read(), result.stdout, result.stderr))
        read.append(dumpfile.read_stats(stats))
    assert outputs[0] == outputs[1]
    off, on = read[1], read[2]
    assert [h for h in on.header if not h.startswith("# connections:")] == off.header
    assert on.header_value("connections") is not None
    assert {ip: {k: v for k, v in r.items() if k != "K"} for ip, r in on.records.items()} \
        == off.records
    assert all("K" in r for r in on.records.values())


@pytest.mark.parametrize("mode, cpus, load, tracking, two", [
    (None, 2, 0, False, True),          # a CPU idle: the second process overlaps
    (None, 2, 2, False, False),         # a busy machine: one process
    (None, 2, 2, True, True),           # the tracker's CPU: always worth a second process
    (None, 1, 0.0, True, False),        # one CPU: one process
    ("batch", 2, 2, False, True),       # forced (the tests of the two-process path)
    ("serial", 2, 0.0, True, False),
])
def test_second_process_when_a_cpu_is_free_or_the_tracker_runs(monkeypatch, replay_path, mode,
                                                               cpus, load, tracking, two):
    if replay_path != "batch":
        pytest.skip("the choice, once")
    from ncsniffer import headstart
    monkeypatch.delenv("NCSNIFFER_REPLAY", raising=False)
    if mode:
        monkeypatch.setenv("NCSNIFFER_REPLAY", mode)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setattr(headstart, "busy_cpus", lambda: load)
    assert headstart.pipeline(tracking) is two


def test_busy_cpus_are_the_other_runnable_tasks(replay_path):
    """Now, not the last minute's average: a replay right after another one still
    finds the CPU that one used free."""
    if replay_path != "batch":
        pytest.skip("pure logic, once")
    from ncsniffer import headstart
    assert headstart.runnable_others("1.98 1.02 0.40 1/123 4567\n") == 0
    assert headstart.runnable_others("0.10 0.02 0.00 3/123 4567\n") == 2
    assert headstart.runnable_others("0.10 0.02 0.00 0/12 4567\n") == 0
    assert 0 <= headstart.busy_cpus() < 1000
