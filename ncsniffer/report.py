"""Reports from stats files, and the SSI/CGI web report (Net::Connection::Sniffer::Report).

The names are the original module's (``read_stf``, ``by_cidr24``, ``by_name``,
``report``, ``presync``, ``sync``, ``chkcache``, ``get_lock``, ``chk_wconf``,
``rqst_dump``, ``web_report``, ``my_time``) so that Perl users find their way.
Grouping and formatting are pure functions; reading files, waiting for the
daemon and locking are kept in small separate functions.

Return values follow the original where it matters to callers (``rqst_dump``
and ``chk_wconf`` return '' or an error text, ``presync``/``sync``/``chkcache``
return a ctime or None); everything else raises ``ReportError`` or
``DumpFileError``, both ``NcSnifferError``.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import html
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Iterable, Optional, Union

from ncsniffer import config, dumpfile, safetext
from ncsniffer.errors import ConfigError, NcSnifferError

DEFAULT_UPDTO = 15
DEFAULT_REFRESH = 300
DEFAULT_LOCK_TIMEOUT = 15
DEFAULT_UMASK = 0o117
POLL = 0.05                      # seconds between ctime checks while waiting
PROG = "nc.sniffer.cgi"
CONF_ENV = "NCSNIFFER_CGI_CONF"
SYSTEM_CONF = "/etc/nc.sniffer/nc.sniffer.cgi.conf"

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")

Address = Union[str, int, "tuple[str, int]", None]


class ReportError(NcSnifferError):
    """A report, dump request, lock or web configuration failed."""


class LockTimeout(ReportError):
    """Another process held the lock for longer than the timeout."""


# --------------------------------------------------------------------------- grouping

@dataclass
class Group:
    """IPs reported together: their rate and bandwidth sums, newest contact, IPs.

    ``R`` packets/hour, ``W`` bytes/hour, ``E`` newest E of the members, ``A`` the
    IPs in numeric order; ``key`` the network (``10.1.2``, or the /64 for IPv6) or,
    from ``by_name``, the reversed domain key.
    """

    key: object
    R: float
    W: float
    E: float
    A: list = field(default_factory=list)


def ip_order(ip: str) -> tuple:
    """Numeric order of IP texts, IPv4 before IPv6 (as the daemon sorts its dump)."""
    if ":" in ip:
        return (6, socket.inet_pton(socket.AF_INET6, ip))
    return (4, socket.inet_aton(ip))


def network_of(ip: str) -> tuple:
    """The /24 of an IPv4 address or the /64 of an IPv6 address, as a sortable key."""
    if ":" in ip:
        return (6, socket.inet_pton(socket.AF_INET6, ip)[:8])
    return (4, socket.inet_aton(ip)[:3])


def network_text(net: tuple) -> str:
    """Show a network key: ``10.1.2.0/24`` or ``2001:db8::/64``."""
    version, prefix = net
    if version == 4:
        return socket.inet_ntoa(prefix + b"\0") + "/24"
    return socket.inet_ntop(socket.AF_INET6, prefix + b"\0" * 8) + "/64"


def by_cidr24(records: dict) -> tuple:
    """Group records by /24 (IPv6: /64).

    Returns ``(groups, rate, bw)``: ``groups`` a list of ``Group`` (key = network,
    see ``network_of``) in numeric order of their first IP, each with ``A`` in
    numeric order; ``rate`` and ``bw`` the sums of R and W over all records (per
    hour).  Unlike the original, the last group is never dropped.
    """
    nets: dict = {}
    for ip in sorted(records, key=ip_order):
        rec = records[ip]
        net = network_of(ip)
        group = nets.get(net)
        if group is None:
            nets[net] = Group(net, rec["R"], rec["W"], rec["E"], [ip])
        else:
            group.R += rec["R"]
            group.W += rec["W"]
            if rec["E"] > group.E:
                group.E = rec["E"]
            group.A.append(ip)
    groups = list(nets.values())
    return groups, sum(g.R for g in groups), sum(g.W for g in groups)


_CC_DOMAIN = re.compile(r"[\w-]{2}\.[\w-]{3}\.[\w-]+", re.ASCII)
_DOMAIN = re.compile(r"[\w-]+\.[\w-]+", re.ASCII)


def domain_key(name: str) -> str:
    """The reversed domain a host name is grouped under (``moc.elpmaxe``).

    The name is lower-cased and reversed character by character, then the
    original's two patterns are tried: ``cc.xxx.name`` (e.g. ``example.com.au``),
    then ``ext.name``; otherwise the whole reversed name is the key.
    """
    rev = name.lower()[::-1]
    m = _CC_DOMAIN.match(rev) or _DOMAIN.match(rev)
    return m.group() if m else rev


def first_name(records: dict, ip: str) -> str:
    """The lower-cased first name of an IP, '' if it has none."""
    names = records[ip]["N"]
    return names[0].lower() if names else ""


def by_name(records: dict, cidr: Optional[list] = None) -> tuple:
    """Group the /24 groups by the domain of the first name of their first IP.

    Returns ``(groups, rate, bw)`` like ``by_cidr24``; a group's ``key`` is the
    reversed domain (``domain_key``) or, for a /24 whose first IP has no name,
    ``('', network)`` so that it is never merged.  Groups are visited in order of
    (first name, first IP); all groups of a key merge (sums, newest E, IP lists
    joined in visiting order), not only adjacent ones as in the original.
    ``cidr`` is the list from ``by_cidr24`` (computed when not given).
    """
    if cidr is None:
        cidr = by_cidr24(records)[0]
    ordered = sorted(cidr, key=lambda g: (first_name(records, g.A[0]), ip_order(g.A[0])))
    merged: dict = {}
    for g in ordered:
        name = first_name(records, g.A[0])
        key = domain_key(name) if name else ("", g.key)
        have = merged.get(key)
        if have is None:
            merged[key] = Group(key, g.R, g.W, g.E, list(g.A))
        else:
            have.R += g.R
            have.W += g.W
            if g.E > have.E:
                have.E = g.E
            have.A.extend(g.A)
    groups = list(merged.values())
    return groups, sum(g.R for g in groups), sum(g.W for g in groups)


# --------------------------------------------------------------------------- the report

def my_time(t: float) -> str:
    """Local time as ``apr 24 17:02:14`` (lower-case month, the original's layout)."""
    try:
        tm = time.localtime(int(t))
    except (OverflowError, OSError, ValueError):
        return "?"          # a time no clock can show: the report goes on
    return "%s %02d %02d:%02d:%02d" % (MONTHS[tm.tm_mon - 1], tm.tm_mday, tm.tm_hour,
                                       tm.tm_min, tm.tm_sec)


TITLE = "\n   IP addr\t    host name\n qrys/mn -- bytes/sec -- #IP's\tlast contact time\n\n"


def report_order(groups: Iterable[Group]) -> list:
    """Biggest bandwidth first (whole bytes/second), then lowest first IP."""
    return sorted(groups, key=lambda g: (-int(g.W / 3600), ip_order(g.A[0])))


def render_report(header: list, records: dict, by_domain: bool) -> Iterable[str]:
    """The report's text in pieces: header, groups by bandwidth, totals (SPEC 8.2)."""
    groups, rate, bw = by_cidr24(records)
    if by_domain:
        groups, rate, bw = by_name(records, groups)
    # names and header lines are shown stripped: no escape sequence, no forged line
    strip = safetext.strip_controls
    yield "\n" + "".join(strip(line, "\t") + "\n" for line in header)
    yield "\nComposite report, %s ordered by BANDWIDTH\n" % ("SUB DOMAIN" if by_domain else "CIDR/24")
    yield TITLE
    for g in report_order(groups):
        ips = sorted(g.A, key=ip_order)
        yield "".join("%s\t%s\n" % (ip, "\n\t\t".join(map(strip, records[ip]["N"])))
                      for ip in ips)
        yield " %6.0f\t -- %.0f\t -- %d\t%s\n" % (g.R / 60, g.W / 3600, len(ips), my_time(g.E))
    yield TITLE
    yield ("rate\t\t= %.0f connections per minute\nbandwidth\t= %.0f bytes per second\n"
           "users\t\t= %d\n" % (rate / 60, bw / 3600, len(records)))


def read_stf(file: str) -> dumpfile.StatsFile:
    """Read a stats file of any format (Python, Perl, JSON) without executing it.

    Returns a ``dumpfile.StatsFile``: ``.records`` maps IP text to a dict with
    the keys B C E N R S T W; ``.header`` holds the '#' lines (no newline).
    Raises ``DumpFileError`` naming the file if it is missing, damaged or hostile.
    """
    return dumpfile.read_stats(file)


def report_text(file: str, by_domain: bool) -> str:
    """The whole report of a stats file as one string."""
    stats = read_stf(file)
    return "".join(render_report(stats.header, stats.records, by_domain))


def report(handle: IO[str], file: str, by_name: bool) -> None:
    """Write the /24 report (``by_name`` false) or the sub-domain report of ``file``.

    The file is read completely before anything is written, so an unreadable
    file raises ``DumpFileError`` and leaves ``handle`` untouched; the report is
    then written piece by piece (no second copy of a big report's text).
    """
    stats = read_stf(file)
    for piece in render_report(stats.header, stats.records, bool(by_name)):
        handle.write(piece)


# --------------------------------------------------------------------------- file times

def _ctime(file: str) -> Optional[int]:
    try:
        return int(os.stat(file).st_ctime)
    except OSError:
        return None


def presync(file: str) -> Optional[int]:
    """The file's ctime once it is older than now, so a newer dump can be told apart.

    If the ctime is this very second, wait for the next second. None if the file
    is missing or its ctime lies in the future.
    """
    ctime = _ctime(file)
    if ctime is None:
        return None
    now = int(time.time())
    if ctime < now:
        return ctime
    if ctime > now:
        return None
    deadline = time.monotonic() + 1.5
    while int(time.time()) <= ctime and time.monotonic() < deadline:
        time.sleep(POLL)
    return ctime


def _dir_of(path: str) -> str:
    """The directory part of a path with its trailing slash, './' if none (Perl's $`)."""
    cut = path.rfind("/")
    return path[:cut + 1] if cut >= 0 else "./"


def _readable_dir(directory: str) -> bool:
    return os.path.isdir(directory) and os.access(directory, os.R_OK)


def wait_newer(file: str, old: Optional[int], timeout: float) -> tuple:
    """Wait until ``file`` exists with a ctime above ``old``: ``(ctime, '')`` or ``(None, error)``."""
    directory = _dir_of(file)
    if not _readable_dir(directory):
        return None, f"stats directory missing or not readable: '{directory}'"
    old = old or 0
    deadline = time.monotonic() + max(timeout, 0)
    while True:
        ctime = _ctime(file)
        if ctime is not None and ctime > old:
            return ctime, ""
        if time.monotonic() >= deadline:
            return None, f"'{file}' timeout: not updated within {timeout:g} seconds"
        time.sleep(POLL)


def sync(file: str, old: Optional[int], timeout: float = 30) -> Optional[int]:
    """Wait until the file's ctime is newer than ``old`` (0/None: until it exists).

    Returns the new ctime, or None after ``timeout`` seconds, or None at once if
    the file's directory is missing.
    """
    return wait_newer(file, old, timeout or 30)[0]


def chkcache(file: str, age: float = 300) -> Optional[int]:
    """The file's ctime if it is younger than ``age`` seconds, else None (also if missing)."""
    ctime = _ctime(file)
    if ctime is None or ctime + (age or 300) < time.time():
        return None
    return ctime


# --------------------------------------------------------------------------- locking

class Lock:
    """An exclusive lock on ``FILE.lock`` (holding our pid) and ``FILE`` opened read/write.

    Use as a context manager or call ``release()``; both close the two files.
    """

    def __init__(self, path: str, lock_fd: int, handle: IO[str]):
        self.path = path
        self.lock_path = path + ".lock"
        self._lock_fd: Optional[int] = lock_fd
        self.handle = handle

    def release(self) -> None:
        """Close the file, then drop the lock."""
        if self.handle is not None and not self.handle.closed:
            self.handle.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _flock_within(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)


def _open_rw(path: str, mode: int) -> int:
    """Open read/write; a file we create gets exactly ``mode`` whatever the process umask."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return os.open(path, os.O_RDWR)
    try:
        os.fchmod(fd, mode)
    except OSError:
        pass
    return fd


def get_lock(file: str, timeout: float = 15, umask: int = 0o117) -> Lock:
    """Lock ``file.lock`` exclusively (waiting up to ``timeout`` s), then open ``file``.

    ``file`` is opened read/write and created if missing, with permissions
    ``0o666 & ~umask``; nothing is truncated.  The lock file holds our pid, so
    a person can see who holds it.  Raises ``LockTimeout`` if another process
    keeps the lock, ``ReportError`` if a file cannot be opened.
    """
    timeout = DEFAULT_LOCK_TIMEOUT if timeout is None else timeout
    mode = 0o666 & ~(DEFAULT_UMASK if umask is None else umask)
    lock_path = file + ".lock"
    try:
        fd = _open_rw(lock_path, mode)
    except OSError as exc:
        raise ReportError(f"could not open lock file '{lock_path}': {exc.strerror}") from exc
    try:
        if not _flock_within(fd, timeout):
            raise LockTimeout(f"can not lock '{file}' within {timeout:g} seconds")
        os.ftruncate(fd, 0)
        os.write(fd, b"%d\n" % os.getpid())
        handle = open(_open_rw(file, mode), "r+", encoding="utf-8")
    except OSError as exc:
        os.close(fd)
        raise ReportError(f"could not open '{file}' after lock: {exc.strerror}") from exc
    except BaseException:
        os.close(fd)
        raise
    return Lock(file, fd, handle)


# --------------------------------------------------------------------------- dump request

def parse_update(spec) -> tuple:
    """``'host:port'``, ``'[v6addr]:port'`` or a bare port -> ``(ip, port)``.

    Raises ``ReportError`` with the original's ``chk_wconf`` messages.
    """
    if isinstance(spec, tuple) and len(spec) == 2:
        return str(spec[0]), int(spec[1])
    text = str(spec)
    m = re.fullmatch(r"\[([^\]]*)\]:(\d+)", text)
    if m:
        try:
            socket.inet_pton(socket.AF_INET6, m.group(1))
        except OSError:
            raise ReportError(f"invalid characters in host address: '{m.group(1)}'") from None
        return m.group(1), int(m.group(2))
    m = re.search(r"([\w.-]+):(\d+)", text)
    if m:
        try:
            return socket.gethostbyname(m.group(1)), int(m.group(2))
        except (OSError, UnicodeError):
            raise ReportError(f"invalid characters in host address: '{m.group(1)}'") from None
    if re.fullmatch(r"\d+", text):
        return "127.0.0.1", int(text)
    raise ReportError(f"invalid update specification '{text}'")


def _send_dump(addr: tuple) -> socket.socket:
    """A connected UDP socket that has sent ``dump``; connected so that a refusal shows."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.connect(addr)
        sock.send(b"dump")
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _reply(sock: socket.socket) -> tuple:
    """``(text, error)`` of the daemon's reply so far; both '' if none arrived yet."""
    try:
        return sock.recv(256).decode("ascii", "replace"), ""
    except BlockingIOError:
        return "", ""
    except ConnectionRefusedError:
        return "", "connection refused"
    except OSError as exc:
        return "", exc.strerror or str(exc)


def _await_dump(sock: socket.socket, addr: tuple, file: str, old: Optional[int],
                timeout: float) -> str:
    """Wait for a stats file newer than ``old``; '' or an error text.

    The reply is read while waiting: a refused request or a ``??`` answer ends
    the wait at once instead of after the whole timeout.
    """
    where = "%s:%d" % addr
    deadline = time.monotonic() + timeout
    answer = ""
    while True:
        text, problem = _reply(sock)
        if problem:
            return f"dump request to {where} failed: {problem}"
        answer = text or answer
        if answer and not answer.startswith("OK"):
            return f"dump request to {where} refused: {answer.strip()[:40]!r}"
        ctime = _ctime(file)
        if ctime is not None and ctime > (old or 0):
            return _check_promise(answer or _reply(sock)[0], ctime)
        if time.monotonic() >= deadline:
            return f"'{file}' timeout: no update within {timeout:g} seconds after 'dump' to {where}"
        time.sleep(POLL)


def _check_promise(answer: str, ctime: int) -> str:
    """The daemon's ``OK <epoch>`` promises a file not older than epoch."""
    m = re.match(r"OK\s*(\d+)", answer)
    if m and int(m.group(1)) > ctime:
        return f"statistics update error OK {m.group(1)} > file {ctime}"
    return ""


def rqst_dump(addr: Address, file: str, age: float, timeout: float) -> str:
    """Ask the daemon at ``addr`` for a dump and wait for a newer ``file``.

    ``addr``: ``'host:port'``, a bare port, or ``(ip, port)``; false means
    dumps are disabled and nothing is done.  The request is sent only if the
    file is older than ``age`` seconds, or always when ``age`` is 0.  Returns ''
    on success, else an error text (timeout, refused, bad address).
    """
    if not addr:
        return ""
    try:
        target = parse_update(addr)
    except ReportError as exc:
        return str(exc)
    directory = _dir_of(file)
    if not _readable_dir(directory):
        return f"stats directory missing or not readable: '{directory}'"
    old = presync(file) or 0
    if age and old + age >= time.time():
        return ""
    try:
        sock = _send_dump(target)
    except OSError as exc:
        return f"could not send dump request to {target[0]}:{target[1]}: {exc.strerror or exc}"
    try:
        return _await_dump(sock, target, file, old, timeout or DEFAULT_UPDTO)
    finally:
        sock.close()


# --------------------------------------------------------------------------- web configuration

def _number_setting(conf: dict, key: str, default: int, what: str) -> str:
    """Check a whole-number setting (digits only, as the original) and fill its default."""
    value = conf.get(key)
    if value is None or value == "" or value == 0 or value is False:
        conf[key] = default
        return ""
    if isinstance(value, bool) or re.search(r"\D", str(value)):
        return f"invalid characters in {what}: '{value}'"
    conf[key] = int(str(value))
    return ""


def _check_dirs(conf: dict) -> str:
    """The stats directory must be readable; the cache directory and file writable."""
    stats = str(conf["stats"])
    directory = _dir_of(stats)
    if not _readable_dir(directory):
        return f"stats directory missing or not readable: '{directory}'"
    cache = conf.get("cache")
    if cache:
        cache = str(cache)
        directory = _dir_of(cache)
        if not (os.path.isdir(directory) and os.access(directory, os.W_OK)):
            return f"cache directory not writable: '{directory}'"
        if os.path.exists(cache) and not os.access(cache, os.W_OK):
            return f"invalid permissions on '{cache}': not writable"
    return ""


def chk_wconf(conf: dict) -> str:
    """Check a web configuration; '' if good, else the original's error text.

    Like the original it completes ``conf`` in place: ``updto`` (default 15) and
    ``refresh`` (default 300) become ints, ``update`` (``host:port``,
    ``[v6addr]:port`` or a bare port on 127.0.0.1) becomes an ``(ip, port)`` tuple.
    Without ``update`` no dump is requested (the daemon may be dumped by
    SIGUSR1 or cron instead).
    """
    if not conf.get("stats"):
        return "required statistics file specification missing"
    problem = (_check_dirs(conf)
               or _number_setting(conf, "updto", DEFAULT_UPDTO, "update timeout")
               or _number_setting(conf, "refresh", DEFAULT_REFRESH, "refresh"))
    if problem:
        return problem
    umask = conf.get("umask", DEFAULT_UMASK)
    if isinstance(umask, bool) or not isinstance(umask, int) or not 0 <= umask <= 0o777:
        return f"invalid umask '{umask}'"
    if conf.get("update") is not None:
        try:
            conf["update"] = parse_update(conf["update"])
        except ReportError as exc:
            return str(exc)
    return ""


# --------------------------------------------------------------------------- the web report

def read_cache(path: str) -> str:
    """A cached report's text (the web report's and the coalescer's caches)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError as exc:
        raise ReportError(f"could not open cache '{path}': {exc.strerror}") from exc


def _refresh_cache(conf: dict, cfile: str, by_domain: bool) -> str:
    """Under the lock: dump, regenerate ``cfile`` atomically, return its text.

    The lock is taken before the dump request so that ten visitors arriving
    together cause one dump, not ten; whoever waited finds a fresh cache.
    """
    with get_lock(cfile + ".tmp", conf["updto"] * 2, conf.get("umask", DEFAULT_UMASK)) as lock:
        if chkcache(cfile, conf["refresh"]):
            return read_cache(cfile)
        problem = rqst_dump(conf.get("update"), conf["stats"], 0, conf["updto"])
        if problem:
            raise ReportError(problem)
        text = report_text(conf["stats"], by_domain)
        lock.handle.seek(0)
        lock.handle.truncate()
        lock.handle.write(text)
        lock.handle.flush()
        try:
            os.replace(cfile + ".tmp", cfile)
        except OSError as exc:
            raise ReportError(f"could not write cache '{cfile}': {exc.strerror}") from exc
    return text


def web_text(conf: dict, by_domain: bool) -> str:
    """The text a web page shows (SPEC 8.4); raises an NcSnifferError on failure.

    With ``cache``: ``CACHE.0``/``CACHE.1`` is served while younger than
    ``refresh``; else a dump is requested and the cache regenerated.  Without
    ``cache``: a dump is requested if the stats file is older than ``refresh``.
    """
    problem = chk_wconf(conf)
    if problem:
        raise ReportError(problem)
    if conf.get("cache"):
        cfile = "%s.%d" % (conf["cache"], 1 if by_domain else 0)
        if chkcache(cfile, conf["refresh"]):
            return read_cache(cfile)
        return _refresh_cache(conf, cfile, by_domain)
    problem = rqst_dump(conf.get("update"), conf["stats"], conf["refresh"], conf["updto"])
    if problem:
        raise ReportError(problem)
    return report_text(conf["stats"], by_domain)


def one_line(text: str) -> str:
    """An error as one printable line, whatever it contains."""
    return safetext.one_line(text) or "failed: nothing processed"


def web_report(conf: dict, by_domain: bool = False, out: Optional[IO[str]] = None,
               escape: Optional[bool] = None) -> str:
    """Print the web report, or one error line, to ``out`` (stdout); return '' or the error.

    ``escape`` (default: the config's ``html_escape``, true) turns ``& < >`` into
    entities, because host names come from PTR records anyone can write.
    """
    out = sys.stdout if out is None else out
    escape = conf.get("html_escape", True) if escape is None else escape
    try:
        text, error = web_text(conf, by_domain), ""
    except NcSnifferError as exc:
        error = one_line(exc)
        text = error + "\n"
    except Exception as exc:  # noqa: BLE001 - a web page must show a line, not a traceback
        error = one_line(f"internal error: {type(exc).__name__}: {exc}")
        text = error + "\n"
    out.write(html.escape(text, quote=False) if escape else text)
    out.flush()
    return error


# --------------------------------------------------------------------------- configuration file



def load_wconf(path: str) -> dict:
    """Read a web configuration (a dict literal, or an old Perl ``nc.sniffer.cgi``
    whose ``my $NAME = {...};`` hash is read without running Perl)."""
    try:
        return config.load_file(path)
    except ConfigError as exc:
        raise ReportError(str(exc).removeprefix("config: ")) from None


def find_wconf(program: str, environ: dict) -> str:
    """Where the web configuration is: $NCSNIFFER_CGI_CONF, ``PROGRAM.conf`` next to
    the script as invoked (symlinks not followed, so each docroot has its own),
    then /etc/nc.sniffer/nc.sniffer.cgi.conf."""
    candidates = [environ.get(CONF_ENV, "")]
    if program:
        candidates.append(os.path.abspath(program) + ".conf")
    candidates.append(SYSTEM_CONF)
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    raise ReportError(f"no configuration: set {CONF_ENV}, or create "
                      f"'{os.path.abspath(program or PROG)}.conf' or '{SYSTEM_CONF}'")


# --------------------------------------------------------------------------- command line

USAGE = f"""\
usage: {PROG} [-c CONF] [0|1]
       {PROG} --stats FILE [--update [HOST:]PORT] [--refresh S] [--updto S] [0|1]

  0 (default)  report by /24 (IPv6: /64), biggest bandwidth first
  1            report by sub-domain

Web page (SSI):  <!--#exec cmd="./{PROG} 0" -->
  The configuration (stats, cache, updto, refresh, update) is read from -c CONF,
  else ${CONF_ENV}, else {PROG}.conf next to the script, else {SYSTEM_CONF}.
  Output is HTML-escaped; errors are printed as one line.

Terminal (--stats FILE): print the report of FILE; with --update, first ask
  the daemon for a dump if FILE is older than --refresh seconds (default 0:
  always). No cache, no HTML escaping; errors go to stderr.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ReportError(message)


def parse_args(argv: list) -> argparse.Namespace:
    p = _Parser(prog=PROG, add_help=False, allow_abbrev=False)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("-c", "--config")
    p.add_argument("--stats")
    p.add_argument("--update")
    p.add_argument("--refresh", default="0")
    p.add_argument("--updto")
    p.add_argument("type", nargs="?", default="0")
    return p.parse_args(argv)


def report_type(arg: str) -> bool:
    """The original's test: '0', '' or no argument is the /24 report, anything else by name."""
    return bool(arg) and arg != "0"


def terminal_report(args: argparse.Namespace, out: IO[str]) -> None:
    """``--stats FILE``: the report on a terminal, after an optional dump request."""
    conf = {"stats": args.stats, "updto": args.updto, "refresh": args.refresh}
    if args.update:
        conf["update"] = args.update
    problem = chk_wconf(conf)
    if not problem and args.update:
        problem = rqst_dump(conf["update"], conf["stats"],
                            0 if str(args.refresh) == "0" else conf["refresh"], conf["updto"])
    if problem:
        raise ReportError(problem)
    report(out, conf["stats"], report_type(args.type))


def cgi_main(argv: Optional[list] = None, out: Optional[IO[str]] = None,
             err: Optional[IO[str]] = None, environ: Optional[dict] = None,
             program: Optional[str] = None) -> int:
    """``nc.sniffer.cgi``: the SSI web report, or ``--stats FILE`` on a terminal.

    Exit 0 on success, 1 on any error.  In web mode the error is printed on
    stdout as one line (it shows in the page); in terminal mode on stderr.
    """
    argv = sys.argv[1:] if argv is None else argv
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    environ = os.environ if environ is None else environ
    program = (sys.argv[0] if sys.argv else PROG) if program is None else program
    terminal = "--stats" in argv or any(a.startswith("--stats=") for a in argv)
    try:
        args = parse_args(argv)
        if args.help:
            out.write(USAGE)
            return 0
        if args.stats:
            terminal_report(args, out)
            return 0
        conf = load_wconf(args.config or find_wconf(program, environ))
    except NcSnifferError as exc:
        return _fail(one_line(exc), terminal, out, err)
    except Exception as exc:  # noqa: BLE001 - one line, as for any error, not a traceback
        return _fail(one_line(f"internal error: {type(exc).__name__}: {exc}"), terminal, out, err)
    return 1 if web_report(conf, report_type(args.type), out) else 0


def _fail(line: str, terminal: bool, out: IO[str], err: IO[str]) -> int:
    """The error line: on stderr on a terminal, HTML-escaped on stdout for a page."""
    if terminal:
        err.write(f"{PROG}: {line}\n")
    else:
        out.write(html.escape(line, quote=False) + "\n")
    return 1
