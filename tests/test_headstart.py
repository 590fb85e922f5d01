"""The reading process forked before numpy (``ncsniffer.headstart``): the batches and
errors of the usual path, and no numpy in it."""

import errno
import faulthandler
import filecmp
import ipaddress
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from ncsniffer import batch, config, decode, headstart, pcapfile, pcapgen, pcapread, replay
from ncsniffer.errors import CaptureError
from tests.conftest import run_cli, write_config

pytestmark = pytest.mark.skipif(not pcapread.fast_enabled(), reason="the C pass is not built")

ME = "192.0.2.10"
PEERS = ["198.51.100.1", "198.51.100.2", "2001:db8::7", "203.0.113.9"]
FIELDS = ("sec", "good", "lengths")


@pytest.fixture(autouse=True)
def two_processes(monkeypatch):
    """Two processes whatever the load; batches of a few records, so files are many;
    two slots in the ring, so they are handed back and filled again."""
    monkeypatch.setenv("NCSNIFFER_REPLAY", "batch")
    monkeypatch.delenv(headstart.ENV, raising=False)
    monkeypatch.setattr(headstart, "SLOTS", 2)
    for module in (pcapread, pcapfile):
        monkeypatch.setattr(module, "MAX_BYTES", 2048)
        monkeypatch.setattr(module, "MAX_PACKETS", 7)


def settings_of(workdir, **cfg):
    cfg.setdefault("bpf", f"host {ME} or host 2001:db8::10")
    return config.validate(config.load_file(write_config(workdir, **cfg)), "nc.sniffer",
                           offline=True)


def joined(prepared) -> dict:
    """A replay's prepared batches, field by field, with their counts and, per batch,
    the distinct targets as ``batch.apply`` takes them (found in the reading process,
    or from the targets)."""
    out = {name: [] for name in FIELDS}
    counts = {"seen": 0, "unmatched": 0, "distinct": []}
    undecoded: dict = {}
    for p in prepared:
        for name in FIELDS:
            out[name].append(getattr(p, name) + (counts["seen"] if name == "good" else 0))
        addresses, which = p.found or batch.distinct(p.targets)
        counts["distinct"].append((addresses.v4.tolist(), addresses.v6, which.tolist()))
        counts["seen"] += p.seen
        counts["unmatched"] += p.unmatched
        for reason, n in p.undecoded.items():
            undecoded[reason] = undecoded.get(reason, 0) + n
    got = {name: np.concatenate(parts).tolist() if parts else [] for name, parts in out.items()}
    return {**got, **counts, "undecoded": undecoded}


def usual(settings, path) -> dict:
    """The usual path's batches: the batch reader, and the C pass or numpy."""
    batches, linktype, prog, close = replay._open(path, settings)
    rules = batch.Rules(linktype, settings.me_packed, settings.snaplen)
    try:
        return joined(batch.prepare(b, prog, rules) for b in batches)
    finally:
        close()


def early_batches(settings, path) -> dict:
    early = headstart.start(settings, path)
    assert early is not None and early.ready()
    return joined(early.batches())


frames = st.tuples(st.sampled_from([ME, "2001:db8::10"]), st.sampled_from(PEERS),
                   st.booleans(), st.sampled_from(["udp", "tcp"]), st.integers(0, 400),
                   st.sampled_from([None, 20, 37]), st.integers(0, 3))


def capture(path, link, specs) -> None:
    """A classic pcap of ``specs`` on ``link``: IPv4 and IPv6 to and from "me" or
    not, cut short (a captured length), timed seconds apart."""
    records, t = [], 1_600_000_000.5
    for me, peer, outbound, proto, size, cut, gap in specs:
        if ipaddress.ip_address(me).version != ipaddress.ip_address(peer).version:
            peer = "2001:db8::7" if ":" in me else "198.51.100.1"
        src, dst = (me, peer) if outbound else (peer, me)
        data = pcapgen.frame(link, pcapgen.ip_packet(src, dst, proto, bytes(size)))
        t += gap
        records.append((t, data[:cut] if cut else data, len(data)))
    pcapgen.write_pcap(str(path), link, records)


@pytest.mark.slow                     # a reading process forked per example
@hsettings(max_examples=40, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(frames, max_size=60),
       link=st.sampled_from([decode.DLT_EN10MB, decode.DLT_LINUX_SLL, decode.DLT_RAW,
                             decode.DLT_NULL]),
       bpf=st.sampled_from([f"host {ME}", f"udp and host {ME}", "host 2001:db8::10",
                            f"host {ME} or host 2001:db8::10"]))
def test_its_batches_are_the_usual_paths(tmp_path, specs, link, bpf):
    path = tmp_path / "h.pcap"
    capture(path, link, specs)
    settings = settings_of(str(tmp_path), bpf=bpf)
    assert early_batches(settings, str(path)) == usual(settings, str(path))


FORK_WATCH = """
import atexit, os, sys
real_fork, parent = os.fork, os.getpid()

def fork():
    if os.getpid() == parent:
        sys.stderr.write(f"FORK numpy={'numpy' in sys.modules}\\n")
    return real_fork()
os.fork = fork
atexit.register(lambda: os.getpid() == parent and
                sys.stderr.write(f"EXIT pcapy={'pcapy' in sys.modules}\\n"))
sys.argv = ['nc.sniffer'] + sys.argv[1:]
from ncsniffer.cli import main
sys.exit(main())
"""


@pytest.mark.integration
def test_a_file_of_many_more_batches_than_slots_gives_the_usual_batches(tmp_path):
    """The reading process waits for slots handed back, and refills them only then:
    a batch is never overwritten before it is copied out."""
    path = tmp_path / "m.pcap"
    capture(path, decode.DLT_EN10MB, [(ME if i % 3 else "2001:db8::10", PEERS[i % 4], i % 2 == 0,
                                       "udp", i % 300, None, i % 5) for i in range(500)])
    settings = settings_of(str(tmp_path))
    got = early_batches(settings, str(path))
    assert len(got["distinct"]) > 20 * headstart.SLOTS
    assert got == usual(settings, str(path))


@pytest.mark.parametrize("mode, numpy_first", [("1", False), ("0", True)])
def test_the_command_forks_its_reader_before_numpy(workdir, mode, numpy_first):
    """``nc.sniffer -r``: the reading process is forked before numpy is imported
    (with NCSNIFFER_HEADSTART=0, after), and what it runs needs none; the counting
    process then compiles no filter, and never imports libpcap's binding."""
    path = os.path.join(workdir, "n.pcap")
    capture(path, decode.DLT_EN10MB, [(ME, PEERS[0], True, "udp", 10, None, 1)] * 30)
    conf = write_config(workdir, bpf=f"host {ME}")
    env = dict(os.environ, NCSNIFFER_REPLAY="batch", NCSNIFFER_HEADSTART=mode)
    done = subprocess.run([sys.executable, "-c", FORK_WATCH, "-c", conf, "-r", path, "start"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    forks = [line for line in done.stderr.splitlines() if line.startswith("FORK ")]
    assert forks and forks[0] == f"FORK numpy={numpy_first}"
    assert f"EXIT pcapy={numpy_first}" in done.stderr.splitlines()
    assert "30 packets, 30 counted" in done.stderr


def test_settings_and_files_it_does_not_take_go_the_usual_way(workdir, monkeypatch):
    path = os.path.join(workdir, "u.pcap")
    capture(path, decode.DLT_EN10MB, [(ME, PEERS[0], True, "udp", 10, None, 1)] * 3)
    assert headstart.start(settings_of(workdir, match="x", payload=10), path) is None
    assert headstart.start(settings_of(workdir, connections=True), path) is None
    ng = os.path.join(workdir, "u.pcapng")
    pcapgen.write_pcapng(ng, decode.DLT_EN10MB, [(1.0, bytes(60), 60)])
    assert headstart.start(settings_of(workdir), ng) is None
    assert headstart.start(settings_of(workdir), os.path.join(workdir, "missing")) is None
    for env, value in (("NCSNIFFER_REPLAY", "serial"), ("NCSNIFFER_REPLAY", "libpcap"),
                       (headstart.ENV, "0"), (pcapread.FAST_ENV, "0")):
        with monkeypatch.context() as m:
            m.setenv(env, value)
            assert headstart.start(settings_of(workdir), path) is None
    # a filter libpcap refuses: the reading process says so, and the usual path reports it
    early = headstart.start(settings_of(workdir, bpf=f"host {ME} and nosuchword"), path)
    assert early is not None and not early.ready() and not early.pid
    # no memory for the ring: nothing forked, the usual path reads the file
    def no_memory(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")
    with monkeypatch.context() as m:
        m.setattr(headstart.mmap, "mmap", no_memory)
        assert headstart.start(settings_of(workdir), path) is None


def test_a_reading_process_that_dies_is_an_error_not_a_hang(workdir):
    path = os.path.join(workdir, "d.pcap")
    capture(path, decode.DLT_EN10MB, [(ME, PEERS[0], True, "udp", 10, None, 1)] * 200)
    early = headstart.start(settings_of(workdir), path)
    assert early.ready()
    os.kill(early.pid, signal.SIGKILL)
    with pytest.raises(Exception, match="the reading process ended unexpectedly"):
        for _ in early.batches():
            pass
    assert not early.pid                      # waited for


@pytest.mark.parametrize("ending, said", [
    (signal.SIGBUS, "{path}: file shrank or could not be read while mapped (SIGBUS)"),
    (signal.SIGSEGV, "the reading process ended unexpectedly (SIGSEGV)"),
])
def test_how_the_reading_process_ended_is_said(ending, said):
    """It maps the file: a file cut under a batch's map is a SIGBUS there, and the
    replay says the file shrank (it counted what came before, as on any bad file);
    any other end is named."""
    path = "/some/capture.pcap"
    def child(wfd):
        faulthandler.disable()              # pytest's: it would print the signal
        os.kill(os.getpid(), ending)
    pid, rfd = headstart.fork_reader(child)
    early = headstart.Early(pid, rfd, decode.DLT_EN10MB, path)
    with pytest.raises(CaptureError) as caught:
        for _ in early.batches():
            pass
    assert str(caught.value) == said.format(path=path)
    assert not early.pid

@pytest.mark.integration
@pytest.mark.parametrize("cut", [0, 7])
def test_a_replay_writes_the_same_files_either_way(workdir, cut):
    """The command, with and without the head start: the stats file byte for byte,
    the exit code and the log (a file cut inside its last record: exit 2, the stats
    of what came before)."""
    path = os.path.join(workdir, "r.pcap")
    specs = [(ME if i % 3 else "2001:db8::10", PEERS[i % 4], i % 2 == 0, "udp", i % 300,
              None, i % 5) for i in range(3000)]
    capture(path, decode.DLT_EN10MB, specs)
    if cut:
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) - cut)
    results = []
    for mode in ("1", "0"):
        out = os.path.join(workdir, mode)
        os.mkdir(out)
        conf = write_config(out, bpf=f"host {ME} or host 2001:db8::10")
        env = dict(os.environ, NCSNIFFER_REPLAY="batch", NCSNIFFER_HEADSTART=mode)
        done = run_cli("-q", "-c", conf, "-r", path, "start", env=env)
        results.append((done.returncode, done.stderr.replace(out, "OUT")))
    assert results[0] == results[1]
    assert results[0][0] == (2 if cut else 0), results[0][1]
    assert filecmp.cmp(os.path.join(workdir, "1", "nc.sniffer.stats"),
                       os.path.join(workdir, "0", "nc.sniffer.stats"), shallow=False)
