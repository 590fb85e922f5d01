"""nc.sniffer top: deltas between dumps, ordering, the frame's layout, escape stripping."""

import copy
import io
import random

import pytest

from ncsniffer import top
from ncsniffer.errors import ConfigError, UsageError
from tests import reference

T0 = 1_700_000_000


def snap(records, taken, **kw):
    return top.Snapshot(taken=taken, records=copy.deepcopy(records), instance="nc.sniffer",
                        device="lo non-promiscuous", start=T0, **kw)


def rec(B, C, E, R=0, W=0, S=T0, N=()):
    return {"B": B, "C": C, "E": E, "N": list(N), "R": R, "S": S, "T": 0, "W": W}


# --------------------------------------------------------------------------- traffic between dumps

def test_same_epoch_counts_the_growth_of_b_and_c():
    assert top.traffic_between(rec(1000, 10, T0 + 5), rec(1600, 13, T0 + 5)) == (600, 3)


def test_a_new_record_counts_all_its_b_and_c():
    assert top.traffic_between(None, rec(420, 3, T0 + 9)) == (420, 3)


def test_a_new_data_set_counts_all_its_b_and_c():
    """S changed (restart or SIGHUP): the old record says nothing about the new one."""
    assert top.traffic_between(rec(9000, 90, T0), rec(70, 1, T0 + 99, S=T0 + 50)) == (70, 1)


def test_no_traffic_no_rate():
    r = rec(500, 5, T0 + 1, R=12, W=3400)
    assert top.traffic_between(r, dict(r)) == (0, 0)


def run_model(packets, dumps):
    """Feed (second, ip, length) packets to the plain SPEC 4 model; records at each dump second."""
    st = reference.new_state(T0)
    shots, sent, i = [], [], 0
    total = {}
    for second in dumps:
        while i < len(packets) and packets[i][0] <= second:
            now, ip, length = packets[i]
            reference.account(st, ip, length, now)
            b, c = total.get(ip, (0, 0))
            total[ip] = (b + length, c + 1)
            i += 1
        shots.append(reference.rounded(st))
        sent.append(dict(total))
    return shots, sent


@pytest.mark.parametrize("seed", range(20))
def test_deltas_across_rate_updates_match_the_traffic_sent(seed):
    """E moves (first update after S, then every 300 s): the traffic is still derived exactly
    (give or take one for the rounding of W and R in the file)."""
    rnd = random.Random(seed)
    packets = []
    for second in range(T0, T0 + 1500):
        for ip in ("10.0.0.1", "10.0.0.2", "2001:db8::7"):
            if rnd.random() < 0.6:
                packets.append((second, ip, rnd.randrange(60, 1500)))
    dumps = list(range(T0 + 1, T0 + 1500, 2))
    shots, sent = run_model(packets, dumps)
    moved = 0
    for k in range(1, len(shots)):
        for ip, now in shots[k].items():
            old = shots[k - 1].get(ip)
            moved += bool(old and old["E"] != now["E"])
            want = tuple(a - b for a, b in zip(sent[k][ip], sent[k - 1].get(ip, (0, 0))))
            got = top.traffic_between(old, now)
            assert abs(got[0] - want[0]) <= 1 and abs(got[1] - want[1]) <= 1, (ip, k, got, want)
    assert moved >= 9            # the updates really were crossed (3 IPs, >= 3 updates each)


def test_rates_are_per_second_over_the_time_between_dumps():
    prev = snap({"10.0.0.1": rec(100, 1, T0 + 1)}, T0 + 10.0)
    cur = snap({"10.0.0.1": rec(5100, 11, T0 + 1), "10.0.0.2": rec(60, 1, T0 + 12)}, T0 + 12.5)
    peers = {p.ip: p for p in top.peers_of(cur, prev)}
    assert (peers["10.0.0.1"].bps, peers["10.0.0.1"].pps) == (2000.0, 4.0)
    assert (peers["10.0.0.2"].bps, peers["10.0.0.2"].pps) == (24.0, 0.4)


def test_first_frame_has_no_current_rates_but_the_hourly_ones():
    cur = snap({"10.0.0.1": rec(100, 1, T0 + 1, R=120, W=7200)}, T0 + 10.0)
    (peer,) = top.peers_of(cur)
    assert (peer.bps, peer.pps, peer.avg_bps, peer.avg_ppm) == (None, None, 2.0, 2.0)


# --------------------------------------------------------------------------- ordering

def peer(ip, bps, pps, avg_bps=0.0, avg_ppm=0.0):
    return top.Peer(ip, "", bps, pps, avg_bps, avg_ppm)


def test_order_by_bytes_packets_and_hourly_rate_then_address():
    peers = [peer("10.0.0.9", 100, 1, 5), peer("10.0.0.10", 50, 9, 50),
             peer("10.0.0.2", 100, 1, 1), peer("::1", 0, 0, 900, 1)]
    ips = lambda key: [p.ip for p in top.order(peers, key)]
    assert ips("b") == ["10.0.0.9", "10.0.0.2", "10.0.0.10", "::1"]
    assert ips("p") == ["10.0.0.10", "10.0.0.2", "10.0.0.9", "::1"]     # a tie: address order
    assert ips("r") == ["::1", "10.0.0.10", "10.0.0.9", "10.0.0.2"]


def test_equal_peers_keep_numeric_address_order():
    peers = [peer(ip, None, None) for ip in ("10.0.0.10", "::2", "10.0.0.9")]
    assert [p.ip for p in top.order(peers, "b")] == ["10.0.0.9", "10.0.0.10", "::2"]


# --------------------------------------------------------------------------- text

def test_clean_strips_terminal_escapes_and_control_characters():
    evil = "evil\x1b]0;owned\x07\x1b[2J\r\nx\x9b31m\u200bok"
    cleaned = top.clean(evil)
    assert cleaned == "evil?]0;owned??[2J??x?31m?ok"
    assert all(ch.isprintable() for ch in cleaned) and "\x1b" not in cleaned


def test_clean_keeps_one_column_characters_only():
    assert top.clean("caf\u00e9.example") == "caf\u00e9.example"
    assert top.clean("\u4f8b\u3048.jp") == "??.jp"            # wide
    assert top.clean("e\u0301") == "e?"                        # combining


def test_fit_truncates_with_a_mark():
    assert top.fit("a-very-long-host-name.example.com", 10) == "a-very-lo~"
    assert top.fit("short", 10) == "short"


@pytest.mark.parametrize("value, text", [
    (None, "-"), (0, "0"), (0.25, "0.2"), (3.5, "3.5"), (12, "12"), (99.96, "100.0"),
    (123.4, "123"), (99999, "99999"), (123456, "123k"), (4_560_000, "4.56M"),
    (999_600, "1M"), (7.5e9, "7.5G"), (3e13, "30T"),
])
def test_human_numbers_fit_their_column(value, text):
    assert top.human(value) == text
    assert len(text) <= top.NUM_W


def many_peers_snapshot(n=40, ipv6=True, names=True):
    records = {}
    for i in range(n):
        ip = f"2001:db8:ffff:ffff:ffff:ffff:ffff:{i:x}" if ipv6 and i % 2 else f"10.1.2.{i}"
        name = ("host-%d." % i + "sub." * 10 + "example.com") if names else None
        records[ip] = rec(1000 * i, i + 1, T0 + 1, R=60 * i, W=3600 * i, N=[name] if name else [])
    return records


def test_frame_fits_80x24_never_wraps_and_ipv6_fits():
    records = many_peers_snapshot()
    records["10.9.9.9"] = rec(1, 1, T0 + 1, N=["bad\x1b[31m\x1b]2;title\x07name"])
    prev = snap(records, T0 + 2.0)
    later = copy.deepcopy(records)
    for r in later.values():
        r["B"] += r["C"] * 100
        r["C"] += 1
    lines = top.frame(snap(later, T0 + 4.0, hits=12, bytes=3456, users=41), prev, "b", (80, 24))
    assert len(lines) == 24
    assert all(len(line) <= 80 for line in lines)
    assert all(ch.isprintable() for line in lines for ch in line)
    assert "2001:db8:ffff:ffff:ffff:ffff:ffff:27" in lines[4]       # the busiest, in full
    assert lines[0].startswith("nc.sniffer on lo non-promiscuous")
    assert "users 41" in lines[0]
    assert "12 hits/min 3456 B/s" in lines[1] and "last 2.00 s:" in lines[1]


def test_frame_in_a_narrow_terminal_still_shows_the_numbers():
    lines = top.frame(snap(many_peers_snapshot(5, ipv6=False), T0 + 2.0), None, "r", (50, 10))
    assert len(lines) == 9 and all(len(line) <= 50 for line in lines)      # 5 peers
    assert lines[4].split()[0] == "10.1.2.4" and lines[4].split()[-4:] == ["-", "-", "4", "4"]


def test_table_columns():
    lines = top.table_lines([peer("10.0.0.1", 2000.0, 4.0, 2.0, 0.5)], 80, 5)
    assert lines[0].split() == ["address", "name", "B/s", "pkt/s", "avgB/s", "pkt/min"]
    assert lines[1].split() == ["10.0.0.1", "2000", "4", "2", "0.5"]


# --------------------------------------------------------------------------- options

def test_options():
    args = top.parse_args(["--once", "--interval", "0.5", "--count", "3", "--sort", "p"])
    assert (args.once, args.interval, args.count, args.sort) == (True, 0.5, 3, "p")
    assert top.parse_args([]).interval == 2.0


@pytest.mark.parametrize("argv", [["--interval", "0"], ["--count", "0"], ["--bogus"],
                                  ["--sort", "x"], ["--interval", "soon"]])
def test_bad_options_are_usage_errors(argv):
    with pytest.raises(UsageError):
        top.parse_args(argv)


def test_dump_address_from_the_configuration():
    assert top.dump_address({}) is None
    assert top.dump_address({"port": 9999}) == ("127.0.0.1", 9999)
    assert top.dump_address({"port": "9999", "host": "INADDR_ANY"}) == ("127.0.0.1", 9999)
    assert top.dump_address({"port": 9999, "host": "::"}) == ("::1", 9999)
    with pytest.raises(ConfigError, match="invalid port number 'x'"):
        top.dump_address({"port": "x"})


def test_a_config_without_sniffer_directory_is_a_config_error():
    with pytest.raises(ConfigError, match="sniffer directory missing"):
        top.source_for({"piddir": "/tmp"}, "nc.sniffer")


@pytest.mark.integration
def test_plain_loop_prints_count_frames():
    class Fake:
        n = 0

        def snapshot(self):
            self.n += 1
            return snap({"10.0.0.1": rec(100 * self.n, self.n, T0 + 1)}, T0 + self.n)

    out = io.StringIO()
    args = top.parse_args(["--count", "3", "--interval", "0.5"])
    assert top.plain_loop(Fake(), args, out) == 0
    text = out.getvalue()
    assert text.count("address") == 3 and "\x1b" not in text
    assert text.splitlines()[-1].split()[:3] == ["10.0.0.1", "100", "1"]


# --------------------------------------------------------------------------- through the CLI

def run_cli(argv):
    from ncsniffer import cli
    env = cli.Env(stdout=io.StringIO(), stderr=io.StringIO(), program="nc.sniffer")
    code = cli.main(argv, env)
    return code, env.stdout.getvalue(), env.stderr.getvalue()


@pytest.fixture
def conf(tmp_path):
    from tests.conftest import write_config
    return write_config(str(tmp_path), bpf="host 127.0.0.1")


def test_top_help_and_bad_option(conf):
    code, out, _ = run_cli(["-c", conf, "top", "--help"])
    assert code == 0 and out.startswith("usage: nc.sniffer [-c CONFIG] top [--once]")
    code, out, err = run_cli(["-c", conf, "top", "--bogus"])
    assert code == 1 and err.startswith("top: unrecognized arguments: --bogus")


def test_an_unreadable_stats_file_is_one_line_and_exit_2(conf, tmp_path, monkeypatch):
    damaged = tmp_path / "nc.sniffer.stats"
    damaged.write_text("# header\nnot a stats file\n")

    class FileSource:
        def snapshot(self):
            return top.read_snapshot(str(damaged), "nc.sniffer")
    monkeypatch.setattr(top, "source_for", lambda config, name: FileSource())
    code, out, err = run_cli(["-c", conf, "top", "--once", "--interval", "0.5"])
    assert (code, out) == (2, "")
    assert err.startswith(f"nc.sniffer: {damaged}: not a readable stats file")
    assert err.count("\n") == 1


def test_plain_frames_name_no_keys():
    cur = snap({"10.0.0.1": rec(100, 1, T0 + 1)}, T0 + 1.0)
    assert top.frame(cur, None, "p")[2] == "sort: packets/s" + top.KEYS_HINT
    assert top.frame(cur, None, "p", keys=False)[2] == "sort: packets/s"
