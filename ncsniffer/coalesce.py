"""Coalescing: fetch the stats files of several hosts over ssh + rsync, merge them, report.

``nc.sniffer.coalesce.cgi`` (web host) runs, for every configured source and all
in parallel, ``ssh HOST EXEC`` (``nc.sniffer.dump`` over there refreshes the
host's stats file) and then ``rsync -utz -e ssh HOST:FETCH CACHEDIR/HOST.stats``;
it refreshes the local daemon too if ``update`` is set, merges every stats file
into ``CACHEDIR/composite.stats`` and writes the by-name report into
``CACHE.1`` (and the /24 report into ``CACHE.0``).  ``nc.sniffer.dump`` is the
remote half.

The merge (``merge_records``) is pure and kept apart from the I/O.  ssh and
rsync run from argument lists, never through a shell, with timeouts; host names
are validated and the remote command is quoted word by word, so neither a
source name nor a command can smuggle shell code.  A host that fails is named
in the report's header and its last good stats file is used.
"""

from __future__ import annotations

import argparse
import fcntl
import html
import ipaddress
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Iterable, Mapping, Sequence

from ncsniffer import config, dumpfile, safetext
from ncsniffer.dumpfile import MAX_NUMBER, read_stats, rows_from_dicts
from ncsniffer.errors import ConfigError, DumpFileError, NcSnifferError

LOCK_WAIT = 120.0          # how long a coalescer waits for another one (the original's 2 min)
DUMP_AGE = 300             # nc.sniffer.dump refreshes a stats file older than this
FETCH_TIMEOUT = 60         # seconds for each ssh or rsync run of one host
KILL_GRACE = 5.0           # after killing a timed-out command, wait this long for it
MAX_WORKERS = 32
COMPOSITE = "composite.stats"
LOCAL_NAME = "localhost"
DEFAULT_COALESCE_CONF = "/etc/nc.sniffer/nc.sniffer.coalesce.conf"
DEFAULT_DUMP_CONF = "/etc/nc.sniffer/nc.sniffer.dump.conf"
CGI_CONF_ENV = "NCSNIFFER_COALESCE_CONF"
DUMP_CONF_ENV = "NCSNIFFER_DUMP_CONF"
PROG_CGI = "nc.sniffer.coalesce.cgi"
PROG_DUMP = "nc.sniffer.dump"
COMPOSITE_FORMATS = ("python", "perl")

# user@ optional; a DNS name / IPv4 / ssh config alias, or a bracketed IPv6 literal.
# Nothing may start with '-' (it would be an option) and no shell character fits.
_HOST = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]{0,63})@)?"
    r"(?:(?P<name>[A-Za-z0-9_][A-Za-z0-9._-]{0,252})|\[(?P<v6>[0-9A-Fa-f:.]{2,45})\])$")
_UNSAFE_WORD = re.compile(r"[\x00-\x1f\x7f]")


class CoalesceError(NcSnifferError):
    """The coalescing configuration or one of its steps failed."""

    exit_code = 1


# --------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class Source:
    """One remote host: how to reach it, what to run there, which file to fetch."""

    name: str                   # the config key, as the user wrote it
    ssh_host: str               # destination argument of ssh
    rsync_host: str             # HOST part of rsync's HOST:PATH
    command: tuple[str, ...]    # remote command words ('' = no dump request)
    fetch: str | None           # remote stats file (None: the file arrives another way)
    local: str                  # CACHEDIR/NAME.stats


@dataclass
class Coalesce:
    """A checked coalescer configuration."""

    cache: str
    cache_dir: str
    sources: list[Source]
    stats: str | None = None            # the local daemon's stats file (with update)
    update: object = None               # address for report.rqst_dump, or None
    updto: int = 15
    refresh: int = 300
    ssh: list[str] = field(default_factory=lambda: ["ssh"])
    rsync: list[str] = field(default_factory=lambda: ["rsync"])
    timeout: float = FETCH_TIMEOUT
    format: str = "python"

    @property
    def composite(self) -> str:
        return os.path.join(self.cache_dir, COMPOSITE)

    def cache_file(self, by_name: bool = True) -> str:
        return f"{self.cache}.{1 if by_name else 0}"


def check_host(name: object) -> tuple[str, str]:
    """Validate a source name; return (ssh destination, rsync host).

    Why so strict: the name reaches ssh and rsync as an argument, and rsync passes
    it to ssh again; a name that could be read as an option or by a shell is refused.
    """
    text = str(name)
    m = _HOST.match(text) if isinstance(name, str) else None
    if m is None:
        raise CoalesceError(f"invalid source host name {text[:80]!r}")
    user = m.group("user") + "@" if m.group("user") else ""
    if m.group("v6"):
        try:
            ipaddress.IPv6Address(m.group("v6"))
        except ValueError:
            raise CoalesceError(f"invalid source host name {text[:80]!r}") from None
        return user + m.group("v6"), user + "[" + m.group("v6") + "]"
    return text, text


def local_copy_name(name: str) -> str:
    """File name of a source's fetched stats (``HOST.stats``), safe for any valid name."""
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name) + ".stats"


def _words(value: object, what: str) -> list[str]:
    """A command given as a string (split like a shell would, not run by one) or a list."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise CoalesceError(f"invalid {what} {value!r}: {exc}") from None
    elif isinstance(value, (list, tuple)) and all(isinstance(w, str) for w in value):
        words = list(value)
    else:
        raise CoalesceError(f"invalid {what}: a string or a list of strings is needed")
    for word in words:
        if _UNSAFE_WORD.search(word):
            raise CoalesceError(f"invalid {what}: control characters in {word[:40]!r}")
    return words


def _digits(conf: Mapping, key: str, default: int, label: str) -> int:
    value = conf.get(key)
    if value in (None, "", 0):
        return default
    if isinstance(value, bool) or not re.fullmatch(r"\d+", str(value)):
        raise CoalesceError(f"invalid characters in {label}: '{value}'")
    return int(value)


def _source(name: object, spec: object, cache_dir: str) -> Source:
    ssh_host, rsync_host = check_host(name)
    if not isinstance(spec, Mapping):
        raise CoalesceError(f"source '{name}': needs {{'exec': ..., 'fetch': ...}}")
    fetch = spec.get("fetch")
    if fetch is not None and fetch != "" and (
            not isinstance(fetch, str) or not fetch.strip() or _UNSAFE_WORD.search(fetch)):
        raise CoalesceError(f"source '{name}': 'fetch' (the remote stats file) is invalid")
    command = _words(spec.get("exec"), f"'exec' of source '{name}'")
    return Source(str(name), ssh_host, rsync_host, tuple(command), fetch or None,
                  os.path.join(cache_dir, local_copy_name(str(name))))


def rem_wchk(conf: Mapping) -> Coalesce:
    """Check a coalescer configuration (the original's keys plus ours); raise CoalesceError."""
    if not isinstance(conf, Mapping):
        raise CoalesceError("the configuration must be a dict")
    cache = conf.get("cache")
    if not cache or not isinstance(cache, str):
        raise CoalesceError("missing cache file entry")
    cache_dir = os.path.dirname(cache) or "."
    if not (os.path.isdir(cache_dir) and os.access(cache_dir, os.W_OK | os.X_OK)):
        raise CoalesceError(f"cache directory not writable: '{cache_dir}/'")
    src = conf.get("src") or {}
    if not isinstance(src, Mapping):
        raise CoalesceError("'src' must map host names to {'exec': ..., 'fetch': ...}")
    cfg = Coalesce(cache=cache, cache_dir=cache_dir,
                   sources=[_source(name, spec, cache_dir) for name, spec in src.items()])
    cfg.updto = _digits(conf, "updto", 15, "update timeout")
    cfg.refresh = _digits(conf, "refresh", 300, "refresh")
    cfg.timeout = _digits(conf, "timeout", FETCH_TIMEOUT, "timeout")
    cfg.ssh = _words(conf.get("ssh", "ssh"), "ssh command") or ["ssh"]
    cfg.rsync = _words(conf.get("rsync", "rsync"), "rsync command") or ["rsync"]
    cfg.format = str(conf.get("format", "python"))
    if cfg.format not in COMPOSITE_FORMATS:
        raise CoalesceError(f"invalid composite format '{cfg.format}' (python or perl)")
    if conf.get("update"):
        cfg.stats, cfg.update = _local_daemon(conf, cfg)
    if not cfg.sources and cfg.stats is None:
        raise CoalesceError("nothing to coalesce: no 'src' hosts and no local 'update'")
    _check_clashes(cfg)
    return cfg


def _check_clashes(cfg: Coalesce) -> None:
    """Two sources must not share a fetched file, nor overwrite composite.stats."""
    taken = {cfg.composite: "composite.stats"}
    if cfg.stats is not None:
        taken[LOCAL_NAME] = "the local daemon ('update')"
    for src in cfg.sources:
        for key in (src.local, src.name):
            if key in taken:
                raise CoalesceError(f"source '{src.name}' clashes with {taken[key]}")
        taken[src.local] = taken[src.name] = f"source '{src.name}'"


def _local_daemon(conf: Mapping, cfg: Coalesce) -> tuple[str, object]:
    """Check ``stats``/``update`` with the web report's own rules (report.chk_wconf)."""
    from ncsniffer import report
    wconf = {"stats": conf.get("stats"), "update": conf.get("update"),
             "updto": cfg.updto, "refresh": cfg.refresh}
    if wconf["stats"] is None:
        del wconf["stats"]
    error = report.chk_wconf(wconf)
    if error:
        raise CoalesceError(error)
    return wconf["stats"], wconf["update"]


def load_config(path: str) -> dict:
    """Read a config without running it: a Python dict literal, a Python script with
    ``CONFIG = {...}`` (our samples), or an old Perl script with ``my $wconf = {...}``."""
    try:
        return config.load_file(path)
    except ConfigError as exc:
        raise CoalesceError(str(exc).removeprefix("config: ")) from None


# --------------------------------------------------------------------------- the merge (pure)

def _name_order(name: str) -> tuple:
    """Real PTR names before ':SOA' fall-backs, then alphabetical: the first name is
    the one the by-name report groups by."""
    return name.startswith(":"), name.lower(), name


def merge_record(a: Mapping, b: Mapping) -> dict:
    """One IP seen by two hosts: B, C, R, W summed, E the newest, names united.

    S is the earliest start and T the latest lookup time, so the result does not
    depend on the order of the hosts (the original kept the first file's values).
    """
    names = sorted(set(a["N"]) | set(b["N"]), key=_name_order)
    return {
        "B": _sum(a["B"], b["B"]), "C": _sum(a["C"], b["C"]), "E": max(a["E"], b["E"]),
        "N": names, "R": _sum(a["R"], b["R"]), "S": min(a["S"], b["S"]),
        "T": max(a["T"], b["T"]), "W": _sum(a["W"], b["W"]),
    }


def _sum(a, b):
    """A sum kept within what a stats file may hold, so that composite.stats stays
    readable even when a source sits at the limit (only absurd counters get there)."""
    total = a + b
    if -MAX_NUMBER <= total <= MAX_NUMBER:
        return total
    return MAX_NUMBER if total > 0 else -MAX_NUMBER


def merge_records(a: Mapping[str, Mapping], b: Mapping[str, Mapping]) -> dict[str, dict]:
    """Merge two IP -> record maps without changing either; associative and commutative."""
    return merge_all((a, b))


def merge_all(parts: Iterable[Mapping[str, Mapping]]) -> dict[str, dict]:
    """Merge any number of record maps into a new one (the inputs are left alone).

    One accumulator for all parts: merging ten hosts of 100,000 IPs each copies
    every record once, not once per host.
    """
    merged: dict[str, dict] = {}
    for part in parts:
        for ip, rec in part.items():
            have = merged.get(ip)
            merged[ip] = merge_record(have, rec) if have is not None else dict(rec, N=list(rec["N"]))
    return merged


@dataclass
class Part:
    """One host's contribution to the composite: its header, records and fate."""

    name: str
    header: list[str]
    records: dict
    failure: str = ""          # why fetching failed ('' = fresh)
    used: bool = True          # False when no stats file could be read at all


def _one_line(text: str, limit: int = 400) -> str:
    """Error text fit for one header line: printable, no tabs or newlines, bounded."""
    text = safetext.one_line(text)
    return text[:limit] + ("..." if len(text) > limit else "")


def host_line(part: Part) -> str:
    """The ``# host:`` line that opens a host's block in the composite header."""
    if not part.failure:
        return f"# host:\t{part.name}"
    fate = "its last stats file is used" if part.used else "no stats file"
    return f"# host:\t{part.name}\tFAILED ({_one_line(part.failure)}), {fate}"


def composite_header(parts: Sequence[Part], merged_users: int) -> list[str]:
    """Host headers concatenated, then the grand totals (hits and bytes summed)."""
    lines = [f"# ncsniffer composite of {len(parts)} hosts"]
    hits = total_bytes = 0.0
    for part in parts:
        lines.append("")
        lines.append(host_line(part))
        lines.extend(part.header)
        if part.used:
            hits += header_number(part.header, "hits")
            total_bytes += header_number(part.header, "bytes")
    lines += ["", "# grand total all hosts",
              "# hits:\t\t%.0f per minute" % hits,
              "# bytes:\t%.0f per second" % total_bytes,
              f"# users:\t{merged_users}"]
    failed = [p.name for p in parts if p.failure]
    if failed:
        lines.append("# failed hosts:\t" + " ".join(failed))
    return lines


def header_number(header: Sequence[str], name: str) -> float:
    """The leading number of the first ``# name:`` line (hits, bytes); 0 if none."""
    prefix = f"# {name}:"
    for line in header:
        if line.startswith(prefix):
            m = re.match(r"\s*(-?\d+(?:\.\d+)?)", line[len(prefix):])
            return float(m.group(1)) if m else 0.0
    return 0.0


# --------------------------------------------------------------------------- running ssh / rsync

@dataclass
class Outcome:
    """How a command ended: exit status (None if it could not run or timed out)."""

    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def reason(self, what: str, timeout: float) -> str:
        if self.timed_out:
            return f"{what} timed out after {timeout:g} s"
        detail = (self.stderr.strip() or self.stdout.strip()).splitlines()
        tail = detail[-1] if detail else ""
        if self.returncode is None:
            return f"{what}: {tail}"
        return f"{what} exit {self.returncode}" + (f": {tail}" if tail else "")


def run_bounded(argv: Sequence[str], timeout: float) -> Outcome:
    """Run a command (no shell) with stdin closed; kill its whole process group on timeout.

    A group, because rsync starts ssh: killing rsync alone would leave ssh running.
    """
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
    except OSError as exc:
        return Outcome(None, stderr=f"cannot run {argv[0]}: {exc.strerror or exc}")
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return Outcome(None, timed_out=True)
    return Outcome(proc.returncode, _text(out), _text(err))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.communicate(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:      # a descendant left the group and holds a pipe
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()
        proc.wait(KILL_GRACE)


def _text(data: bytes | None) -> str:
    return (data or b"")[-4096:].decode("utf-8", errors="replace")


def ssh_options(cfg: Coalesce) -> list[str]:
    """Options we add after the user's: never prompt (no terminal), bounded connect."""
    connect = max(1, min(int(cfg.timeout), 30))
    return ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect}"]


def ssh_argv(cfg: Coalesce, src: Source) -> list[str]:
    """``ssh [opts] -- HOST 'word' 'word'``: the remote shell sees each word quoted."""
    return [*cfg.ssh, *ssh_options(cfg), "--", src.ssh_host, shlex.join(src.command)]


def rsync_argv(cfg: Coalesce, src: Source) -> list[str]:
    """``rsync -utz -s -e 'ssh ...' -- HOST:FETCH CACHEDIR/HOST.stats``.

    ``-s`` (protect args) keeps the remote shell away from the path; the ``-e``
    value is split by rsync itself, which understands shlex-style quotes.
    """
    remote_shell = shlex.join([*cfg.ssh, *ssh_options(cfg)])
    return [*cfg.rsync, "-utz", "-s", f"--timeout={max(1, int(cfg.timeout))}",
            "-e", remote_shell, "--", f"{src.rsync_host}:{src.fetch}", src.local]


def fetch_source(cfg: Coalesce, src: Source, runner=None) -> str:
    """Ask a host for a fresh dump, then copy its stats file; '' or why it failed.

    If the dump request fails but the host answers (exit status other than ssh's
    255), the copy is still tried: the file is only older, and the failure is noted.
    Without ``fetch`` nothing is copied: CACHEDIR/HOST.stats is merged as it is.
    """
    runner = runner or run_bounded
    problem = ""
    if src.command:
        outcome = runner(ssh_argv(cfg, src), cfg.timeout)
        if not outcome.ok:
            problem = outcome.reason("ssh", cfg.timeout)
            if outcome.timed_out or outcome.returncode in (None, 255):
                return problem
    if src.fetch is None:
        return problem
    outcome = runner(rsync_argv(cfg, src), cfg.timeout)
    if not outcome.ok:
        return "; ".join(x for x in (problem, outcome.reason("rsync", cfg.timeout)) if x)
    return problem


def refresh_local(cfg: Coalesce) -> str:
    """Have the local daemon dump if its stats are older than ``refresh``; '' or an error."""
    from ncsniffer import report
    try:
        return report.rqst_dump(cfg.update, cfg.stats, cfg.refresh, cfg.updto) or ""
    except (OSError, NcSnifferError) as exc:
        return str(exc)


def rem_dump(conf: Mapping | Coalesce, runner=None) -> dict[str, str]:
    """Refresh and fetch every source in parallel (and the local daemon if configured).

    Returns host name -> '' (fresh) or the reason it failed.  ``runner`` stands
    in for ``run_bounded`` in tests.
    """
    cfg = conf if isinstance(conf, Coalesce) else rem_wchk(conf)
    runner = runner or run_bounded
    jobs = [(src.name, lambda s=src: fetch_source(cfg, s, runner)) for src in cfg.sources]
    if cfg.update is not None:
        jobs.append((LOCAL_NAME, lambda: refresh_local(cfg)))
    if not jobs:
        return {}
    with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(jobs))) as pool:
        futures = [(name, pool.submit(job)) for name, job in jobs]
        return {name: _result(future) for name, future in futures}


def _result(future) -> str:
    try:
        return future.result()
    except Exception as exc:     # a bug in one host's fetch must not lose the others
        return f"internal error: {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- composite files

def read_parts(cfg: Coalesce, failures: Mapping[str, str]) -> list[Part]:
    """Read every host's stats file in config order (local last); unreadable -> failure."""
    wanted = [(src.name, src.local) for src in cfg.sources]
    if cfg.stats is not None:
        wanted.append((LOCAL_NAME, cfg.stats))
    pushed = {src.name for src in cfg.sources if src.fetch is None}
    parts = []
    for name, path in wanted:
        failure = failures.get(name, "")
        try:
            stats = read_stats(path)
        except DumpFileError as exc:
            parts.append(Part(name, [], {}, _unread(failure, path, exc, name in pushed),
                              used=False))
            continue
        except Exception as exc:  # noqa: BLE001 - a reader bug must not lose the other hosts
            bug = f"internal error reading {path}: {type(exc).__name__}: {exc}"
            parts.append(Part(name, [], {}, "; ".join(x for x in (failure, bug) if x),
                              used=False))
            continue
        parts.append(Part(name, stats.header, stats.records, failure))
    return parts


def _unread(failure: str, path: str, exc: Exception, pushed: bool) -> str:
    """Why a host's stats file was not merged: the fetch failure and/or the file's problem."""
    if not os.path.exists(path):
        if failure:
            return failure
        return f"no stats file '{path}'" + (" (it has no 'fetch')" if pushed else "")
    return "; ".join(x for x in (failure, str(exc)) if x)


def write_composite(path: str, header: Sequence[str], records: Mapping[str, Mapping],
                    fmt: str = "python") -> None:
    """Write the composite stats file atomically, with our header and a standard body."""
    rows = rows_from_dicts(dict(records))
    _write_atomic(path, ["\n", "\n".join(header), "\n", *dumpfile.render_body(rows, fmt)])


def _write_atomic(path: str, pieces: Iterable[str]) -> None:
    """``FILE.PID.tmp`` then rename (dumpfile's writer): two coalescers never share a
    temporary file."""
    try:
        dumpfile.write_atomic(path, pieces)
    except DumpFileError as exc:
        raise CoalesceError(str(exc)) from exc


def write_report(cache_file: str, stats_file: str, by_name: bool) -> None:
    """Render report.report() into a cache file atomically."""
    import io
    from ncsniffer import report
    buf = io.StringIO()
    error = report.report(buf, stats_file, by_name)
    if isinstance(error, str) and error:
        raise CoalesceError(error)
    _write_atomic(cache_file, [buf.getvalue()])


def rem_update(conf: Mapping | Coalesce, failures: Mapping[str, str] | None = None) -> list[Part]:
    """Merge all fetched stats into composite.stats and rebuild both report caches."""
    cfg = conf if isinstance(conf, Coalesce) else rem_wchk(conf)
    parts = read_parts(cfg, failures or {})
    merged = merge_all(p.records for p in parts if p.used)
    write_composite(cfg.composite, composite_header(parts, len(merged)), merged, cfg.format)
    write_report(cfg.cache_file(True), cfg.composite, True)
    write_report(cfg.cache_file(False), cfg.composite, False)
    return parts


# --------------------------------------------------------------------------- the lock

class CoalesceLock:
    """An exclusive flock on ``CACHE.1.lock``, which holds the owner's pid.

    The kernel drops an flock when its process dies, so the lock of a crashed
    coalescer is taken over at once; the pid is there for people and messages.
    """

    def __init__(self, path: str, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        """Remove the file while still holding it, then unlock (waiters re-check the inode)."""
        if self.fd < 0:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> "CoalesceLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def try_lock(path: str) -> CoalesceLock | None:
    """Take the lock if nobody holds it; write our pid into it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not _same_file(fd, path):          # released and removed while we opened it
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return CoalesceLock(path, fd)


def lock_holder(path: str) -> int | None:
    """The pid of the live coalescer holding the lock, or None if the lock is free."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            text = os.read(fd, 32).decode("ascii", errors="replace").strip()
            return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)


def take_lock(path: str, wait: float = LOCK_WAIT, poll: float = 0.1) -> CoalesceLock | None:
    """Wait up to ``wait`` seconds for the lock; None if its holder is still busy then."""
    deadline = time.monotonic() + wait
    while True:
        lock = try_lock(path)
        if lock is not None:
            return lock
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll)


def chk_lock(path: str, wait: float = LOCK_WAIT, poll: float = 0.1) -> bool:
    """Wait while another coalescer holds the lock: True once it is free, False after ``wait``."""
    deadline = time.monotonic() + wait
    while lock_holder(path) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


# --------------------------------------------------------------------------- the web report

def _fresh(path: str, refresh: int) -> bool:
    from ncsniffer import report
    return bool(report.chkcache(path, refresh))


def _read_text(path: str) -> str:
    from ncsniffer import report
    return report.read_cache(path)


def rem_report(conf: Mapping | Coalesce, out: IO[str] | None = None, by_name: bool = True,
               wait: float = LOCK_WAIT, escape: bool = False) -> int:
    """Print the composite report, rebuilding it when older than ``refresh``; 0 or 1.

    Only one coalescer builds: the others wait for its lock and serve its result.
    Errors are printed as one line, as the web page shows whatever we print.
    """
    out = out or sys.stdout
    try:
        cfg = conf if isinstance(conf, Coalesce) else rem_wchk(conf)
        out.write(_html(_composite_report(cfg, by_name, wait), escape))
    except NcSnifferError as exc:
        out.write(_html(_one_line(str(exc), 1000) + "\n", escape))
        return 1
    except Exception as exc:  # noqa: BLE001 - the page shows a line, never nothing
        out.write(_html(_one_line(f"internal error: {type(exc).__name__}: {exc}", 1000) + "\n",
                        escape))
        return 1
    finally:
        out.flush()
    return 0


def _composite_report(cfg: Coalesce, by_name: bool, wait: float) -> str:
    cfile = cfg.cache_file(by_name)
    if _fresh(cfile, cfg.refresh):
        return _read_text(cfile)
    lockfile = cfg.cache_file(True) + ".lock"
    lock = take_lock(lockfile, wait)
    if lock is None:
        return _busy(cfile, lock_holder(lockfile), wait)
    with lock:
        if not _fresh(cfile, cfg.refresh):      # unless the coalescer we waited for built it
            rem_update(cfg, rem_dump(cfg))
        return _read_text(cfile)


def _busy(cfile: str, pid: int | None, wait: float) -> str:
    """Another coalescer kept the lock too long: show the previous report, if any."""
    who = f"pid {pid}" if pid and pid > 0 else "another process"
    note = f"note: another coalescer ({who}) is still busy after {wait:g} s"
    if os.path.exists(cfile):
        return f"# {note}; showing the previous report\n" + _read_text(cfile)
    raise CoalesceError(note)


# --------------------------------------------------------------------------- entry points

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise CoalesceError(message)


def find_config(explicit: str | None, env_name: str, program: str, system: str,
                environ: Mapping[str, str]) -> str:
    """-c FILE, else $ENV_NAME, else PROGRAM.conf next to the script, else SYSTEM
    (the web report's rule, so one docroot can hold several configured copies)."""
    if explicit:
        return explicit
    candidates = [environ.get(env_name, ""), os.path.abspath(program) + ".conf" if program else "",
                  system]
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    raise CoalesceError(f"no configuration: use -c FILE, set {env_name}, or create "
                        f"'{os.path.abspath(program)}.conf' or '{system}'")


def cgi_main(argv: Sequence[str] | None = None, config: Mapping | None = None,
             out: IO[str] | None = None, environ: Mapping[str, str] | None = None,
             program: str | None = None) -> int:
    """``nc.sniffer.coalesce.cgi [-c CONF] [1|0]``: the composite report (1, the
    default: by sub-domain; 0: by /24), HTML-escaped unless ``html_escape`` is false."""
    out = sys.stdout if out is None else out
    argv = list(sys.argv[1:] if argv is None else argv)
    program = (sys.argv[0] if sys.argv else PROG_CGI) if program is None else program
    parser = _Parser(prog=PROG_CGI, allow_abbrev=False)
    parser.add_argument("-c", "--config")
    parser.add_argument("type", nargs="?", default="1")
    try:
        args = parser.parse_args(argv)
        conf = config if config is not None else load_config(find_config(
            args.config, CGI_CONF_ENV, program, DEFAULT_COALESCE_CONF,
            os.environ if environ is None else environ))
    except NcSnifferError as exc:
        out.write(_html(_one_line(str(exc), 1000) + "\n", True))
        return 1
    by_name = bool(args.type) and args.type != "0"      # the original's test
    return rem_report(conf, out, by_name=by_name,
                      escape=bool(conf.get("html_escape", True)))


def _html(text: str, escape: bool) -> str:
    """Host names come from PTR records anyone can write: escape them for the page."""
    return html.escape(text, quote=False) if escape else text


def dump_main(argv: Sequence[str] | None = None, config: Mapping | None = None,
              err: IO[str] | None = None, environ: Mapping[str, str] | None = None,
              program: str | None = None) -> int:
    """``nc.sniffer.dump [-c CONF | --stats FILE --update [HOST:]PORT] [--age S]``:
    refresh this host's stats file through the local daemon if older than ``age``."""
    err = sys.stderr if err is None else err
    argv = list(sys.argv[1:] if argv is None else argv)
    program = (sys.argv[0] if sys.argv else PROG_DUMP) if program is None else program
    parser = _Parser(prog=PROG_DUMP, allow_abbrev=False)
    parser.add_argument("-c", "--config")
    parser.add_argument("--stats")
    parser.add_argument("--update")
    parser.add_argument("--updto")
    parser.add_argument("--age")
    try:
        args = parser.parse_args(argv)
        if config is not None:
            conf = dict(config)
        elif args.stats:
            conf = {"stats": args.stats, "update": args.update, "updto": args.updto}
        else:
            conf = load_config(find_config(args.config, DUMP_CONF_ENV, program,
                                           DEFAULT_DUMP_CONF,
                                           os.environ if environ is None else environ))
        if args.age is not None:
            conf["age"] = args.age
        message = dump_local(conf)
    except NcSnifferError as exc:
        message = str(exc)
    if message:
        err.write(f"{PROG_DUMP}: {_one_line(message, 1000)}\n")
        return 1
    return 0


def dump_local(conf: dict) -> str:
    """Ask the local daemon for a dump if its stats file is older than ``age``
    (default 300 s; 0: always) and wait for it; '' or an error text."""
    from ncsniffer import report
    age = conf.get("age", DUMP_AGE)
    if isinstance(age, bool) or not re.fullmatch(r"\d+", str(age)):
        return f"invalid characters in age: '{age}'"
    if not conf.get("update"):
        return "missing 'update': the daemon's dump port, as host:port or port"
    error = report.chk_wconf(conf)
    if error:
        return error
    return report.rqst_dump(conf["update"], conf["stats"], int(age), conf["updto"]) or ""
