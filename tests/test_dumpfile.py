"""SPEC 7: the stats file in Python, Perl and JSON formats; safe reading; atomic writes."""

import ast
import json
import os
import subprocess
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ncsniffer import dumpfile, table
from ncsniffer.dumpfile import Header
from ncsniffer.errors import DumpFileError

ROWS = [
    # rows carry whole numbers: R and W already rounded as "%.0f" would (723.4, 43359.5,
    # 2.5 and 3.5 here; see test_rounding_is_printf_rounding)
    ("10.1.2.3", 240, 4, 1145760699, ["host.example.com"], 723, 1145757331, 1145790478, 43360),
    ("192.168.100.200", 60, 1, 1145760700, [], 2, 1145757331, 0, 4),
    ("2001:db8::1", 1, 1, 5, ["a", "b"], 0, 5, 0, 0),
]


def header(**kw):
    base = dict(start=1145923212, current=1145923334, hits=3832, bytes=5927,
                users=3, device="eth1", promiscuous=False, bpf="dst host my.host.com")
    base.update(kw)
    return Header(**base)


def test_header_layout():
    text = dumpfile.header_text(header())
    lines = text.split("\n")
    assert lines[0] == "" and lines[1] == f"# ncsniffer version {dumpfile.__version__}"
    assert lines[2] == f"# start:\t1145923212,\t{time.ctime(1145923212)}"
    assert lines[3] == f"# current:\t1145923334,\t{time.ctime(1145923334)}"
    assert lines[4:9] == ["# hits:\t\t3832 per minute", "# bytes:\t5927 per second",
                          "# users:\t3", "# device:\teth1\tnon-promiscuous",
                          "# bpf:\t\tdst host my.host.com"]


def test_header_match_lines_escape_bytes():
    text = dumpfile.header_text(header(payload=54, snaplen=90, match=b"\nsomedomain\x03com",
                                       nomatch=b"a\x7f\xa7\xa8\xfe\xff", promiscuous=True))
    assert "# device:\teth1\tpromiscuous\n" in text
    assert "# fragment:\t54 - 90\n# contains:\t\\x{a}somedomain\\x{3}com\n" in text
    assert "# excludes:\ta\\x{7f}\\x{a7}\xa8\xfe\\x{ff}\n" in text


def test_perl_body_is_byte_exact():
    text = "".join(dumpfile.render(header(), ROWS[:2], "perl"))
    body = text[text.index("{\n"):]
    assert body == (
        "{\n  my $dump = {\n"
        "\t'10.1.2.3'\t=> {\n\t\tB\t=> 240,\n\t\tC\t=> 4,\n\t\tE\t=> 1145760699,\n"
        "\t\tN\t=> ['host.example.com',],\n\t\tR\t=> 723,\n\t\tS\t=> 1145757331,\n"
        "\t\tT\t=> 1145790478,\n\t\tW\t=> 43360,\n\t},\n"
        "\t'192.168.100.200' => {\n\t\tB\t=> 60,\n\t\tC\t=> 1,\n\t\tE\t=> 1145760700,\n"
        "\t\tN\t=> [],\n\t\tR\t=> 2,\n\t\tS\t=> 1145757331,\n\t\tT\t=> 0,\n\t\tW\t=> 4,\n\t},\n"
        "  };\n}\n")


def test_perl_empty_dump_has_header_and_empty_body():
    text = "".join(dumpfile.render(header(users=0), [], "perl"))
    assert text.startswith("\n# ncsniffer") and text.endswith("# bpf:\t\tdst host my.host.com\n{\n  my $dump = {\n  };\n}\n")


def test_python_body_is_a_literal_with_ordered_keys():
    text = "".join(dumpfile.render(header(), ROWS, "python"))
    assert text.startswith("\n# ncsniffer version")
    body = "\n".join(x for x in text.splitlines() if not x.startswith("#"))
    data = ast.literal_eval(body)
    assert list(data) == ["10.1.2.3", "192.168.100.200", "2001:db8::1"]
    assert list(data["10.1.2.3"]) == list("BCENRSTW")
    assert data["10.1.2.3"]["R"] == 723 and data["10.1.2.3"]["W"] == 43360   # %.0f: half to even
    assert data["192.168.100.200"]["R"] == 2 and data["192.168.100.200"]["W"] == 4
    assert data["2001:db8::1"]["N"] == ["a", "b"]


def test_json_document():
    text = "".join(dumpfile.render(header(match=b"x", payload=40, snaplen=90), ROWS, "json"))
    doc = json.loads(text)
    assert doc["users"] == 3 and doc["contains"] == "x" and doc["fragment"] == [40, 90]
    assert doc["records"]["10.1.2.3"]["W"] == 43360


@pytest.mark.parametrize("fmt", ["python", "perl", "json"])
def test_round_trip(tmp_path, fmt):
    path = str(tmp_path / "x.stats")
    dumpfile.write_file(path, header(payload=40, snaplen=90, match=b"m"), ROWS, fmt)
    got = dumpfile.read_stats(path)
    assert got.format == fmt
    assert list(got.records) == ["10.1.2.3", "192.168.100.200", "2001:db8::1"]
    assert got.records["10.1.2.3"] == {"B": 240, "C": 4, "E": 1145760699, "N": ["host.example.com"],
                                       "R": 723, "S": 1145757331, "T": 1145790478, "W": 43360}
    assert got.header_value("users") == "3"
    assert got.header_number("hits") == 3832
    assert got.header_value("contains") == "m"
    assert [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")] == []


PERL_ORIGINAL = """
# Net::Connection::Sniffer version 0.31
# start:\t1145923212,\tMon Apr 24 17:00:12 2006
# current:\t1145923334,\tMon Apr 24 17:02:14 2006
# hits:\t\t3832 per minute
# bytes:\t5927 per second
# users:\t2
# device:\teth1:1\tnon-promiscuous
# bpf:\t\tdst host my.host.com
{
  my $dump = {
\t'69.3.95.131'\t=> {
\t\tB\t=> 240,
\t\tC\t=> 4,
\t\tE\t=> 1145760699,
\t\tN\t=> ['hostname1','host\\'q',],
\t\tR\t=> 723,
\t\tS\t=> 1145757331,
\t\tT\t=> 1145790478,
\t\tW\t=> 43359,
\t},
\t'69.3.95.132'\t=> {
\t\tB\t=> 1,
\t\tC\t=> 1,
\t\tE\t=> 1145760699,
\t\tN\t=> [':ns.dialtoneinternet.net',],
\t\tR\t=> 0,
\t\tS\t=> 1145757331,
\t\tT\t=> 1145790478,
\t\tW\t=> 0,
\t},
  };
}
"""


def test_reads_original_perl_daemon_output(tmp_path):
    path = tmp_path / "perl.stats"
    path.write_text(PERL_ORIGINAL)
    got = dumpfile.read_stats(str(path))
    assert got.format == "perl" and got.header_value("users") == "2"
    assert got.records["69.3.95.131"]["N"] == ["hostname1", "host'q"]
    assert got.records["69.3.95.132"]["N"] == [":ns.dialtoneinternet.net"]


def test_reads_other_perl_layouts(tmp_path):
    path = tmp_path / "dumper.stats"
    path.write_text("# x\n{\n  my $dump = { '1.2.3.4' => { 'B' => 5, C => 1, E => 2, N => [], "
                    "R => 0, S => 2, T => 0, W => 0 } };\n}\n")
    assert dumpfile.read_stats(str(path)).records["1.2.3.4"]["B"] == 5


def test_reads_hand_edited_python(tmp_path):
    path = tmp_path / "hand.stats"
    path.write_text("# edited\n{\n '1.2.3.4': {'B': 5, 'C': 1, 'E': 2, 'N': ['x'], 'R': 0,\n"
                    " 'S': 2, 'T': 0, 'W': 0},\n}\n")
    assert dumpfile.read_stats(str(path)).records["1.2.3.4"]["N"] == ["x"]


HOSTILE = {
    "code": "{\n__import__('os').system('touch /tmp/ncs-pwned'): 1,\n}\n",
    "perl code": "{\n  my $dump = {\n\t'1.2.3.4'\t=> { B => `touch /tmp/ncs-pwned` },\n  };\n}\n",
    "truncated": "\n# users:\t1\n{\n\"1.2.3.4\": {\"B\": 1, \"C\": 1, \"E\": 1, \"N\": [], \"R\": 0,\n",
    "empty": "",
    "text": "hello world\n",
    "bad ip": "{\n\"1.2.3\": {\"B\": 1},\n}\n",
    "bad value": "{\n\"1.2.3.4\": {\"B\": \"x\"},\n}\n",
    "extra key": "{\n\"1.2.3.4\": {\"B\": 1, \"Z\": 2},\n}\n",
    "nested": "{\n  my $dump = " + "[" * 200 + "\n",
    "names": "{\n\"1.2.3.4\": {\"N\": [1, 2]},\n}\n",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_files_give_one_clear_error(tmp_path, kind):
    path = tmp_path / "bad.stats"
    path.write_text(HOSTILE[kind])
    with pytest.raises(DumpFileError) as info:
        dumpfile.read_stats(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not os.path.exists("/tmp/ncs-pwned")


def test_huge_file_refused_without_reading(tmp_path):
    path = tmp_path / "huge.stats"
    with open(path, "wb") as fh:
        fh.truncate(1 << 30)              # 1 GiB sparse file
    with pytest.raises(DumpFileError, match="more than a stats file may hold"):
        dumpfile.read_stats(str(path))


def test_long_line_refused(tmp_path):
    path = tmp_path / "long.stats"
    path.write_bytes(b"{\n" + b"x" * (2 << 20))
    with pytest.raises(DumpFileError, match="longer than 1 MiB"):
        dumpfile.read_stats(str(path))


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_other_errors(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "f.stats"
    path.write_bytes(data)
    try:
        dumpfile.read_stats(str(path))
    except DumpFileError:
        pass


def test_failed_write_keeps_previous_file(tmp_path):
    path = str(tmp_path / "x.stats")
    dumpfile.write_file(path, header(), ROWS, "python")
    before = open(path).read()
    os.mkdir(f"{path}.{os.getpid()}.tmp")  # makes the temporary file impossible to create
    with pytest.raises(DumpFileError, match="cannot write"):
        dumpfile.write_file(path, header(users=0), [], "python")
    assert open(path).read() == before


@pytest.mark.integration
def test_full_disk_keeps_previous_file(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        path = str(mnt / "x.stats")
        dumpfile.write_file(path, header(), ROWS, "python")
        before = open(path).read()
        many = [(f"10.0.{i // 256}.{i % 256}", 1, 1, 1, [], 0, 1, 0, 0) for i in range(5000)]
        with pytest.raises(DumpFileError, match="No space left"):
            dumpfile.write_file(path, header(users=5000), many, "python")
        assert open(path).read() == before
        assert [name for name in os.listdir(mnt) if name.endswith(".tmp")] == []
    finally:
        subprocess.run(["umount", str(mnt)])


@pytest.mark.slow
@given(st.lists(st.one_of(st.floats(0, 1e30), st.integers(0, 10**6).map(lambda i: i + 0.5)),
                max_size=50))
def test_rounding_is_printf_rounding(values):
    """Accounting rows and rows read from files round R and W exactly as %.0f prints."""
    expected = [int("%.0f" % v) for v in values]
    assert table.whole(np.array(values, np.float64)) == expected
    assert [dumpfile.printed(v) for v in values] == expected


def planted(tmp_path, *names: str) -> tuple[str, str]:
    """Symlinks at ``names`` to a file of the test's own; returns (that file, its text)."""
    mine = str(tmp_path / "mine")
    with open(mine, "w") as fh:
        fh.write("the test's own file\n")
    for name in names:
        os.symlink(mine, name)
    return mine, "the test's own file\n"


def test_planted_symlink_as_temporary_file_is_not_followed(tmp_path):
    """Whoever may write the stats directory cannot make root overwrite a file (11.14)."""
    path = str(tmp_path / "x.stats")
    mine, text = planted(tmp_path, path + ".tmp", f"{path}.{os.getpid()}.tmp")
    dumpfile.write_file(path, header(), ROWS, "python")
    assert open(mine).read() == text
    assert not os.path.islink(path) and "10.1.2.3" in open(path).read()


def test_a_fifo_at_the_temporary_name_is_replaced_not_waited_on(tmp_path):
    """A FIFO planted as the temporary file hung the dump forever (issue 11.19a)."""
    import signal

    def hung(signum, frame):
        raise TimeoutError("the write waited on the FIFO")
    path = str(tmp_path / "x.stats")
    os.mkfifo(path + ".tmp")
    os.mkfifo(f"{path}.{os.getpid()}.tmp")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(3)
    try:
        dumpfile.write_file(path, header(), ROWS, "python")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert "10.1.2.3" in open(path).read()


# --------------------------------------------------------------------------- crafted files (11.12, 11.18)

from tests import hostile  # noqa: E402


@pytest.mark.parametrize("kind,fmt", hostile.BAD_CASES)
def test_crafted_files_give_one_line_naming_the_file(tmp_path, kind, fmt):
    path = hostile.write(tmp_path / f"{kind}.{fmt}.stats", kind, fmt)
    started = time.monotonic()
    with pytest.raises(DumpFileError) as info:
        dumpfile.read_stats(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable stats file: ")
    assert "\n" not in message and len(message) < 300 + len(path), message
    assert message.isprintable(), message
    assert time.monotonic() - started < 5
    assert not os.path.exists("/tmp/ncs-hostile-ran")


@pytest.mark.parametrize("fmt", hostile.FORMATS)
def test_names_with_html_and_escapes_are_read_as_data(tmp_path, fmt):
    got = dumpfile.read_stats(hostile.write(tmp_path / "odd.stats", "odd_names", fmt))
    names = got.records["1.2.3.4"]["N"]
    assert names[:len(hostile.EVIL_NAMES)] == hostile.EVIL_NAMES
    if fmt != "perl":
        assert names[-1] == "\ufffdlone.evil.org"       # a lone surrogate cannot be written out
    for name in names:
        name.encode("utf-8")


def test_duplicate_ip_names_the_ip(tmp_path):
    path = hostile.write(tmp_path / "dup.stats", "duplicate_ip", "python")
    with pytest.raises(DumpFileError, match="1.2.3.4 appears twice"):
        dumpfile.read_stats(path)


@pytest.mark.slow
def test_hand_edited_literal_is_read_record_by_record(tmp_path):
    """A dict literal a person edited (single quotes, records over several lines) is still
    read, one record at a time, and duplicates are caught there too."""
    lines = [f"'10.0.{i // 256}.{i % 256}': {{'B': {i}, 'C': 1, 'E': 2,\n 'N': ['x'], 'R': 0, "
             f"'S': 2, 'T': 0, 'W': 0}},\n" for i in range(3000)]
    path = tmp_path / "hand.stats"
    path.write_text("# edited\n{\n" + "".join(lines) + "}\n")
    got = dumpfile.read_stats(str(path))
    assert len(got.records) == 3000 and got.records["10.0.11.183"]["B"] == 2999
    path.write_text("# edited\n{\n" + "".join(lines) + lines[5] + "}\n")
    with pytest.raises(DumpFileError, match="10.0.0.5 appears twice"):
        dumpfile.read_stats(str(path))


MEASURE = """
import json, resource, sys
from ncsniffer import dumpfile
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()
def peak():
    # VmHWM is this process image's own high-water mark; ru_maxrss would also hold
    # the RSS of the (big) pytest process this child was forked from
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
base = rss()
stats = dumpfile.read_stats(sys.argv[1])
print(json.dumps({"base": base, "after": rss(), "records": len(stats.records),
                  "peak": peak()}))
"""


def big_file(path: str, fmt: str, count: int) -> None:
    rows = ((f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 1000 + i, 7, 1700000000 + i,
             [f"h{i}.d{i % 999}.example.com"] if i % 5 else [], 3600 + i, 1699990000,
             1700086400 + i, 72000 + i) for i in range(count))
    dumpfile.write_file(path, header(users=count), rows, fmt)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", hostile.FORMATS)
def test_memory_in_proportion_to_the_records(tmp_path, fmt):
    """Reading costs the records kept (a dict each), not the file's text several times over."""
    import json as _json
    import sys
    path = str(tmp_path / f"big.{fmt}.stats")
    big_file(path, fmt, 350_000)
    size = os.path.getsize(path)
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-c", MEASURE, path], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    took = time.monotonic() - started
    got = _json.loads(run.stdout)
    assert got["records"] == 350_000
    extra = got["peak"] - got["after"]
    assert extra < 32 << 20, (fmt, size, got)            # before: 62 to 247 MB here
    assert got["peak"] - got["base"] < 7 * size, (fmt, size, got)
    assert took < 60


def test_a_long_non_json_record_is_refused_before_parsing(tmp_path):
    """ast needs ~150 bytes per byte of text: a long line that is not JSON is not parsed."""
    path = tmp_path / "long.stats"
    path.write_text("# x\n{\n'1.2.3.4': {'B': " + "1+" * 400_000 + "1},\n}\n")
    started = time.monotonic()
    with pytest.raises(DumpFileError, match="line 3: a record of more than 64 KiB"):
        dumpfile.read_stats(str(path))
    assert time.monotonic() - started < 2


# --------------------------------------------------------------------------- K: connection counts (10.3)

from ncsniffer import accounting, conncounts, conntrack as ct  # noqa: E402

K_ONE = {**dumpfile.K_ZERO, "tcp": 3, "in": 1, "out": 2, "active": 1, "closed": 1, "reset": 1}
ROWS_K = [row + (K_ONE if i == 0 else dumpfile.K_ZERO,) for i, row in enumerate(ROWS)]
CONN_SUMS = ("tcp", "udp", "icmp"), ("in", "out"), (
    "active", "closed", "reset", "refused", "unanswered", "timedout", "evicted")


def test_k_keys_are_the_twelve_counters_sorted():
    assert dumpfile.K_KEYS == tuple(sorted(conncounts.K_FIELDS))


def test_python_line_has_k_in_sorted_place_and_is_json():
    text = "".join(dumpfile.render(header(connections=(1, 3, 0)), ROWS_K, "python"))
    line = text.split("\n")[text.split("\n").index("{") + 1]
    assert line.startswith('"10.1.2.3": {"B": 240, "C": 4, "E": 1145760699, "K": {"active": 1, '
                           '"closed": 1, "evicted": 0, "icmp": 0, "in": 1, "out": 2, ')
    rec = json.loads("{" + line[:-1] + "}")["10.1.2.3"]
    assert list(rec) == list("BCEKNRSTW") and list(rec["K"]) == list(dumpfile.K_KEYS)
    assert ast.literal_eval(text.split("\n", 10)[-1].split("\n#")[0])["10.1.2.3"]["K"] == K_ONE


def test_connections_header_line_follows_bpf_and_match_lines():
    text = dumpfile.header_text(header(payload=54, snaplen=90, match=b"x", evicted=0,
                                       connections=(4, 10, 2)))
    assert ("# contains:\tx\n# connections:\t4 active, 10 started, 2 evicted\n# evicted:\t0\n"
            in text)
    assert "connections" not in dumpfile.header_text(header())


def test_perl_record_with_k_layout():
    text = "".join(dumpfile.render(header(), ROWS_K[:1], "perl"))
    assert ("\t\tE\t=> 1145760699,\n\t\tK\t=> {active => 1, closed => 1, evicted => 0, "
            "icmp => 0, in => 1, out => 2, refused => 0, reset => 1, tcp => 3, timedout => 0, "
            "udp => 0, unanswered => 0},\n\t\tN\t=> ['host.example.com',],\n") in text


@pytest.mark.parametrize("fmt", ["python", "perl", "json"])
def test_k_round_trip(tmp_path, fmt):
    path = str(tmp_path / f"k.{fmt}")
    dumpfile.write_file(path, header(connections=(1, 3, 0)), ROWS_K, fmt)
    got = dumpfile.read_stats(path)
    assert got.records["10.1.2.3"]["K"] == K_ONE
    assert all(r["K"] == dumpfile.K_ZERO for ip, r in got.records.items() if ip != "10.1.2.3")
    assert got.header_value("connections") == "1 active, 3 started, 0 evicted"
    assert dumpfile.rows_from_dicts(got.records) == [tuple(r[:4]) + (list(r[4]),) + r[5:]
                                                     for r in ROWS_K]


def test_perl_layout_with_k_takes_the_fast_reader(tmp_path, monkeypatch):
    path = str(tmp_path / "k.perl")
    dumpfile.write_file(path, header(), ROWS_K, "perl")
    monkeypatch.setattr(dumpfile, "_read_perl_general", None)
    assert dumpfile.read_stats(path).records["10.1.2.3"]["K"] == K_ONE


def test_perl_itself_reads_k(tmp_path):
    """Perl's own ``do FILE`` takes the Perl layout with K as a nested hash."""
    path = str(tmp_path / "k.perl")
    dumpfile.write_file(path, header(), ROWS_K, "perl")
    script = ('my $d = do $ARGV[0]; die "no: $@ $!" unless $d; my $k = $d->{"10.1.2.3"}{K}; '
              'print join(",", map {"$_=$k->{$_}"} sort keys %$k), ";", '
              'scalar(keys %{$d->{"2001:db8::1"}{K}}), "\\n"')
    out = subprocess.run(["perl", "-e", script, path], capture_output=True, text=True, check=True)
    assert out.stdout == ",".join(f"{k}={K_ONE[k]}" for k in dumpfile.K_KEYS) + ";12\n"


@pytest.mark.parametrize("name", ["mixed.stats", "mixed.perl.stats", "mixed.json.stats",
                                  "perl_original.stats", "empty.stats"])
def test_old_files_without_k_read_without_k(name):
    got = dumpfile.read_stats(os.path.join(os.path.dirname(__file__), "data", "report", name))
    assert all("K" not in r for r in got.records.values())
    assert got.header_value("connections") is None
    assert all(len(row) == 9 for row in dumpfile.rows_from_dicts(got.records))


def _k_text(value, fmt: str) -> str:
    """A K value in a format's own spelling (nested junk included)."""
    if fmt != "perl":
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} => {_k_text(v, fmt)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_k_text(v, fmt) for v in value) + "]"
    return json.dumps(value)


HOSTILE_K = {
    "negative": ({**dumpfile.K_ZERO, "tcp": -1}, "K tcp of 10.1.2.3 is not a whole number"),
    "huge": ({**dumpfile.K_ZERO, "udp": 10 ** 30}, "K udp of 10.1.2.3 is not a whole number"),
    "fraction": ({**dumpfile.K_ZERO, "in": 1.5}, "K in of 10.1.2.3 is not a whole number"),
    "missing": ({k: 0 for k in dumpfile.K_KEYS[1:]}, "K of 10.1.2.3 lacks the counters "
                                                     "active"),
    "extra": ({**dumpfile.K_ZERO, "zz": 1}, "K of 10.1.2.3 has unknown keys 'zz'"),
    "nested": ({**dumpfile.K_ZERO, "out": {"a": [1, {"b": 2}]}},
               "K out of 10.1.2.3 is not a whole number"),
    "list": ([1, 2, 3], "K of 10.1.2.3 is not a mapping"),
    "number": (7, "K of 10.1.2.3 is not a mapping"),
}


@pytest.mark.parametrize("fmt", ["python", "perl", "json"])
@pytest.mark.parametrize("case", sorted(HOSTILE_K))
def test_hostile_k_is_one_line_naming_the_file(tmp_path, fmt, case):
    value, problem = HOSTILE_K[case]
    path = str(tmp_path / f"bad.{fmt}")
    dumpfile.write_file(path, header(), ROWS_K[:1], fmt)
    with open(path) as fh:
        text = fh.read()
    good = dumpfile.K_PERL if fmt == "perl" else dumpfile.K_JSON
    text = text.replace(good % dumpfile._K_VALUES(K_ONE), _k_text(value, fmt))
    with open(path, "w") as fh:
        fh.write(text)
    with pytest.raises(DumpFileError) as info:
        dumpfile.read_stats(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable stats file: {problem}"), message
    assert "\n" not in message and len(message) < 300 + len(path)


def test_hostile_connections_in_json_header(tmp_path):
    path = str(tmp_path / "bad.json")
    dumpfile.write_file(path, header(connections=(1, 3, 0)), ROWS_K[:1], "json")
    text = open(path).read().replace('"active": 1, "started"', '"active": -1, "started"')
    open(path, "w").write(text)
    with pytest.raises(DumpFileError, match="'active' is not a whole number"):
        dumpfile.read_stats(path)


def test_connections_off_output_has_no_k():
    """A Table made without connections writes exactly what it always wrote."""
    for conns in (False, True):
        acct = accounting.Accounting(1000, connections=conns)
        acct.count(bytes([10, 0, 0, 1]), 60, 1000)
        rows = list(dumpfile.rows_from_records(acct.records))
        assert len(rows[0]) == (10 if conns else 9)
        assert ('"K": ' in "".join(dumpfile.render(header(), rows))) is conns
        assert (acct.records.conn_totals() is None) is not conns
    assert "cols" in vars(acct.records) and "conn" not in accounting.Accounting(0).records.cols


ME_ADDR, PEERS4 = 0x7F000001, (0x0A000001, 0x0A000002, 0x0A000003)


@st.composite
def packet_streams(draw):
    """Random packets between "me" and a few peers, in time order, in a few batches."""
    n = draw(st.integers(0, 60))
    sec, rows = 1000, []
    for _ in range(n):
        sec += draw(st.integers(0, 8))
        peer = draw(st.sampled_from(PEERS4))
        proto = draw(st.sampled_from(ct.TRACKED[:3]))
        flags = draw(st.sampled_from([ct.SYN, ct.SYN | ct.ACK, ct.ACK, ct.FIN | ct.ACK, ct.RST,
                                      ct.RST | ct.ACK])) if proto == ct.TCP else 0
        rows.append((sec, 0, ME_ADDR, 0, peer, 0, 60, draw(st.sampled_from([40000, 40001])),
                     80, proto, int(draw(st.booleans())), 0, flags))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3)))
    return [rows[a:b] for a, b in zip([0] + cuts, cuts + [n])]


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(packet_streams(), st.sampled_from(["python", "perl", "json"]), st.booleans())
def test_k_sums_hold_in_written_files(tmp_path_factory, batches, fmt, sighup):
    """Events of the reference tracker, counted by conncounts into the records, give files
    where tcp+udp+icmp == in+out == active+ended, for every record, also after a SIGHUP."""
    tracker = ct.Tracker(max_connections=3, reference=True)
    acct = accounting.Accounting(1000, connections=True)
    for i, rows in enumerate(batches):
        if sighup and i == 1:
            acct.reset(rows[0][0] if rows else 1000)
        if not rows:
            continue
        for row in rows:
            acct.count(row[4].to_bytes(4, "big"), row[6], row[0])
        acct.count_connections(*conncounts.count(tracker.process(ct.packets(rows))))
    path = str(tmp_path_factory.mktemp("k") / "k.stats")
    dumpfile.write_file(path, header(connections=acct.records.conn_totals()),
                        dumpfile.rows_from_records(acct.records), fmt)
    got = dumpfile.read_stats(path)
    active = started = evicted = 0
    for rec in got.records.values():
        k = rec["K"]
        sums = [sum(k[f] for f in group) for group in CONN_SUMS]
        assert sums[0] == sums[1] == sums[2], k
        active, started, evicted = active + k["active"], started + sums[0], evicted + k["evicted"]
    assert got.header_value("connections") == \
        f"{active} active, {started} started, {evicted} evicted"
    if not sighup:
        assert active == tracker.live


def test_duplicate_ip_among_k_records_is_caught_whatever_the_names(tmp_path):
    """The block fast path counts '}' per record; a name must not make up for a duplicate."""
    rows = [ROWS_K[0], ROWS_K[0][:4] + (['"K": {x'],) + ROWS_K[0][5:]]
    path = str(tmp_path / "dup.stats")
    dumpfile.write_file(path, header(), rows, "python")
    with pytest.raises(DumpFileError, match="10.1.2.3 appears twice"):
        dumpfile.read_stats(path)


# --------------------------------------------------------------------------- compiled lines
NUMBER = st.integers(0, 2 ** 63 - 1)
NAME = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@st.composite
def column_chunks(draw):
    """A ``Table.columns`` chunk: packed addresses of one family and the fields, as
    lists or as arrays."""
    n = draw(st.integers(1, 12))
    width = draw(st.sampled_from([4, 16]))
    packed = draw(st.binary(min_size=n * width, max_size=n * width))
    cols = [draw(st.lists(NUMBER, min_size=n, max_size=n)) for _ in range(3)]
    names = draw(st.lists(st.one_of(st.just(()), st.lists(NAME, max_size=3).map(tuple)),
                          min_size=n, max_size=n))
    rest = [draw(st.lists(NUMBER, min_size=n, max_size=n)) for _ in range(4)]
    k = [draw(st.lists(st.tuples(*[NUMBER] * len(dumpfile.K_KEYS)), min_size=n,
                       max_size=n))] if draw(st.booleans()) else []
    if draw(st.booleans()):          # Table.columns(arrays=True): int64 arrays
        cols, rest, k = ([np.array(c, np.int64) for c in part] for part in (cols, rest, k))
    return (packed, *cols, names, *rest, *k)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(column_chunks())
def test_compiled_lines_equal_the_plain_twin(chunk):
    """_dumptext writes every record line byte for byte as dumpfile's % formats do."""
    rows = list(dumpfile.chunk_rows(chunk))
    assert dumpfile._dumptext.python_lines(chunk, json.dumps) == dumpfile._python_lines(rows)
    assert dumpfile._dumptext.json_lines(chunk, json.dumps) == dumpfile._json_lines(rows)
    assert dumpfile._dumptext.python_lines(chunk, json.dumps, True) == \
        dumpfile._python_lines(rows).encode()
    assert dumpfile._dumptext.json_lines(chunk, json.dumps, True) == \
        dumpfile._json_lines(rows).encode()


def test_compiled_lines_refuse_numbers_past_64_bits_and_the_dump_falls_back(monkeypatch):
    """R and W are whole floats: one past 2**63 raises, and that chunk is the twin's."""
    acct = accounting.Accounting(1000)
    for i in range(5):
        acct.count(bytes([10, 0, 0, i]), 60, 1000)
    acct.records.cols["W"][acct.records.occupied()[2]] = 1e30
    chunk = next(dumpfile.rows_from_records(acct.records).chunks())
    with pytest.raises(OverflowError):
        dumpfile._dumptext.python_lines(chunk, json.dumps)
    rendered = {}
    for fmt in ("python", "json"):
        rendered[fmt] = "".join(dumpfile.render(header(), dumpfile.rows_from_records(acct.records), fmt))
        assert "1000000000000000019884624838656" in rendered[fmt]
    monkeypatch.setattr(dumpfile, "_dumptext", None)
    for fmt in ("python", "json"):
        assert "".join(dumpfile.render(header(), dumpfile.rows_from_records(acct.records),
                                       fmt)) == rendered[fmt]


@pytest.mark.parametrize("connections", [False, True])
def test_dump_of_records_is_the_plain_twins(monkeypatch, tmp_path, connections):
    """A table of IPv4 and IPv6 records, names and K: the compiled and the plain
    dump are the same bytes in every format (Perl has no compiled path)."""
    acct = accounting.Accounting(1000, connections=connections)
    for i in range(300):
        acct.count(bytes([10, 0, i % 7, i % 251]), 60 + i, 1000 + i)
        acct.count(bytes(15) + bytes([i % 200]), 70, 1000 + i)
    acct.records.set_names(bytes([10, 0, 1, 1]), ['a"b\\c.example', "ünï.example"], 0)
    if connections:
        acct.records.cols["conn"]["k"][acct.records.occupied()[:50]] = 3
    fast = {fmt: "".join(dumpfile.render(header(), dumpfile.rows_from_records(acct.records),
                                         fmt)) for fmt in ("python", "json", "perl")}
    assert ('"K": ' in fast["python"]) is connections and "\\u00fcn" in fast["python"]
    monkeypatch.setattr(dumpfile, "DUMP_CHUNK", 97)         # many chunks, of both families
    written = {}
    for fmt in fast:
        path = tmp_path / f"{fmt}.stats"
        dumpfile.write_file(str(path), header(), dumpfile.rows_from_records(acct.records), fmt)
        written[fmt] = path.read_bytes()
    monkeypatch.setattr(dumpfile, "_dumptext", None)
    for fmt, text in fast.items():
        assert "".join(dumpfile.render(header(), dumpfile.rows_from_records(acct.records),
                                       fmt)) == text
        assert written[fmt] == text.encode()          # the file: bytes from the C lines


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), max_size=40),
       st.lists(st.lists(st.integers(0, 2 ** 32 - 1), min_size=len(dumpfile.K_KEYS),
                         max_size=len(dumpfile.K_KEYS)), min_size=5, max_size=5),
       st.sampled_from([dumpfile.K_JSON, dumpfile.K_PERL]))
def test_k_texts_formatted_once_per_shared_k_equal_the_plain_twin(picks, ks, template):
    """Rows sharing K tuples (as ``Table.conn_values`` makes them), rows with a K of
    their own, equal or not, and dicts as a file read gives them: the same text."""
    shared = [tuple(k) for k in ks]
    rows = []
    for which, own in picks:
        k = tuple(list(shared[which])) if own else shared[which]
        rows.append(("10.0.0.1", 1, 1, 1, (), 0, 0, 0, 0,
                     dict(zip(dumpfile.K_KEYS, k)) if own and which % 2 else k))
    assert dumpfile.k_texts(rows, template) == dumpfile.k_texts_plain(rows, template)
