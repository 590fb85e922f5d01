"""Coalescing: fetch the stats files of several hosts over ssh + rsync, merge them, report.

``nc.sniffer.coalesce.cgi`` (web host) runs, for every configured source and all
in parallel, ``ssh HOST EXEC`` (``nc.sniffer.dump`` over there refreshes the
host's stats file) and then ``rsync -utz -e ssh HOST:FETCH CACHEDIR/HOST.stats``;
it refreshes the local daemon too if ``update`` is set, merges every stats file
into ``CACHEDIR/composite.stats`` and writes the by-name report into
``CACHE.1`` (and the /24 report into ``CACHE.0``).  ``nc.sniffer.dump`` is the
remote half.

With ``source: 'clickhouse'`` no host is fetched: ``fleet`` reads the
sniffers' rows from the store and the same merge and report follow.

The merge is pure and lives apart (``merge``), as do the configuration
(``coalesceconf``) and the remote half (``dumpcmd``).  ssh and
rsync run from argument lists, never through a shell, with timeouts; host names
are validated and the remote command is quoted word by word, so neither a
source name nor a command can smuggle shell code.  A host that fails is named
in the report's header and its last good stats file is used.
"""

from __future__ import annotations

import html
import os
import shlex
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Iterable, Mapping, Sequence

from ncsniffer import dumpfile
from ncsniffer.coalesceconf import (CGI_CONF_ENV, COMPOSITE, COMPOSITE_FORMATS,
                                    DEFAULT_COALESCE_CONF, FETCH_TIMEOUT, LOCAL_NAME, PROG_CGI,
                                    Coalesce, Source, check_host, find_config, load_config,
                                    local_copy_name, rem_wchk)
from ncsniffer.dumpcmd import (DEFAULT_DUMP_CONF, DUMP_AGE, DUMP_CONF_ENV, PROG_DUMP,
                               dump_local, dump_main)
from ncsniffer.dumpfile import read_stats, rows_from_dicts
from ncsniffer.dumprequest import chkcache, rqst_dump
from ncsniffer.errors import CoalesceError, DumpFileError, NcSnifferError, StoreError
from ncsniffer.layout import report_text
from ncsniffer.lock import LOCK_WAIT, FileLock, lock_holder, take_lock, try_lock
from ncsniffer.merge import (Part, bounded_line, composite_header, header_number,
                             host_line, merge_all, merge_record)
from ncsniffer.webconf import tool_parser
from ncsniffer.webreport import read_cache

KILL_GRACE = 5.0           # after killing a timed-out command, wait this long for it
MAX_WORKERS = 32
CoalesceLock = FileLock    # the lock's old name here

__all__ = [  # the Perl names (rem_*) and what tests and scripts import from here
    "CGI_CONF_ENV", "COMPOSITE", "COMPOSITE_FORMATS", "DEFAULT_COALESCE_CONF", "DEFAULT_DUMP_CONF",
    "DUMP_AGE", "DUMP_CONF_ENV", "FETCH_TIMEOUT", "LOCAL_NAME", "LOCK_WAIT", "PROG_CGI",
    "PROG_DUMP", "Coalesce", "CoalesceError", "CoalesceLock", "Outcome", "Part", "Source",
    "cgi_main", "check_host", "composite_header", "dump_local", "dump_main", "fetch_source",
    "find_config", "header_number", "host_line", "load_config", "local_copy_name", "lock_holder",
    "merge_all", "merge_record", "read_parts", "rem_dump", "rem_report", "rem_update", "rem_wchk",
    "rsync_argv", "run_bounded", "ssh_argv", "take_lock", "try_lock", "write_composite",
    "write_report",
]


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
    try:
        return rqst_dump(cfg.update, cfg.stats, cfg.refresh, cfg.updto) or ""
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
    """Write the report of ``stats_file`` into a cache file atomically."""
    _write_atomic(cache_file, [report_text(stats_file, by_name)])


def rem_update(conf: Mapping | Coalesce, failures: Mapping[str, str] | None = None) -> list[Part]:
    """Merge all fetched stats into composite.stats and rebuild both report caches."""
    cfg = conf if isinstance(conf, Coalesce) else rem_wchk(conf)
    if cfg.store is not None:                # source 'clickhouse': one query, no hosts
        from ncsniffer import fleet
        header, merged = fleet.fetch(cfg.store)
        parts = []
    else:
        parts = read_parts(cfg, failures or {})
        merged = merge_all(p.records for p in parts if p.used)
        header = composite_header(parts, len(merged))
    write_composite(cfg.composite, header, merged, cfg.format)
    write_report(cfg.cache_file(True), cfg.composite, True)
    write_report(cfg.cache_file(False), cfg.composite, False)
    return parts


# --------------------------------------------------------------------------- the web report

def _fresh(path: str, refresh: int) -> bool:
    return bool(chkcache(path, refresh))


def rem_report(conf: Mapping | Coalesce, out: IO[str] | None = None, by_name: bool = True,
               wait: float = LOCK_WAIT, escape: bool = False) -> int:
    """Print the composite report, rebuilding it when older than ``refresh``; 0, 1, or
    2 when the store (source 'clickhouse') cannot answer.

    Only one coalescer builds: the others wait for its lock and serve its result.
    Errors are printed as one line, as the web page shows whatever we print.
    """
    out = out or sys.stdout
    try:
        cfg = conf if isinstance(conf, Coalesce) else rem_wchk(conf)
        out.write(_html(_composite_report(cfg, by_name, wait), escape))
    except NcSnifferError as exc:
        out.write(_html(bounded_line(str(exc), 1000) + "\n", escape))
        return 2 if isinstance(exc, StoreError) else 1
    except Exception as exc:  # noqa: BLE001 - the page shows a line, never nothing
        out.write(_html(bounded_line(f"internal error: {type(exc).__name__}: {exc}", 1000) + "\n",
                        escape))
        return 1
    finally:
        out.flush()
    return 0


def _composite_report(cfg: Coalesce, by_name: bool, wait: float) -> str:
    cfile = cfg.cache_file(by_name)
    if _fresh(cfile, cfg.refresh):
        return read_cache(cfile)
    lockfile = cfg.cache_file(True) + ".lock"
    lock = take_lock(lockfile, wait)
    if lock is None:
        return _busy(cfile, lock_holder(lockfile), wait)
    with lock:
        if not _fresh(cfile, cfg.refresh):      # unless the coalescer we waited for built it
            rem_update(cfg, rem_dump(cfg))
        return read_cache(cfile)


def _busy(cfile: str, pid: int | None, wait: float) -> str:
    """Another coalescer kept the lock too long: show the previous report, if any."""
    who = f"pid {pid}" if pid and pid > 0 else "another process"
    note = f"note: another coalescer ({who}) is still busy after {wait:g} s"
    if os.path.exists(cfile):
        return f"# {note}; showing the previous report\n" + read_cache(cfile)
    raise CoalesceError(note)


# --------------------------------------------------------------------------- entry point

def cgi_main(argv: Sequence[str] | None = None, config: Mapping | None = None,
             out: IO[str] | None = None, environ: Mapping[str, str] | None = None,
             program: str | None = None) -> int:
    """``nc.sniffer.coalesce.cgi [-c CONF] [1|0]``: the composite report (1, the
    default: by sub-domain; 0: by /24), HTML-escaped unless ``html_escape`` is false."""
    out = sys.stdout if out is None else out
    argv = list(sys.argv[1:] if argv is None else argv)
    program = (sys.argv[0] if sys.argv else PROG_CGI) if program is None else program
    parser = tool_parser(PROG_CGI, "The composite report of several hosts' stats files, "
                         "fetched with ssh/rsync and merged, or of their rows in "
                         "ClickHouse (source 'clickhouse'); an SSI exec line.",
                         CGI_CONF_ENV, DEFAULT_COALESCE_CONF, CoalesceError)
    parser.add_argument("type", nargs="?", default="1", metavar="TYPE",
                        help="1 (default): the report by sub-domain; 0: by /24 network "
                        "(IPv6: /64)")
    try:
        args = parser.parse_args(argv)
        conf = config if config is not None else load_config(find_config(
            args.config, CGI_CONF_ENV, program, DEFAULT_COALESCE_CONF,
            os.environ if environ is None else environ))
    except NcSnifferError as exc:
        out.write(_html(bounded_line(str(exc), 1000) + "\n", True))
        return 1
    by_name = bool(args.type) and args.type != "0"      # the original's test
    return rem_report(conf, out, by_name=by_name,
                      escape=bool(conf.get("html_escape", True)))


def _html(text: str, escape: bool) -> str:
    """Host names come from PTR records anyone can write: escape them for the page."""
    return html.escape(text, quote=False) if escape else text
