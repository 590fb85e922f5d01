"""``nc.sniffer top``: a refreshing terminal view of the running daemon's busiest peers.

The view is built by pure functions (snapshot -> peers -> lines) that the tests
drive without a terminal; the data comes from a ``Source`` (today: a fresh
stats file, asked for by UDP ``dump`` request or SIGUSR1), and the screen loop
(curses, plain ANSI, or plain frames) stays thin.
"""

from __future__ import annotations

import argparse
import functools
import os
import select
import shutil
import signal
import socket
import sys
import time
import unicodedata
from dataclasses import dataclass
from typing import IO, Callable, Iterable, Protocol

from ncsniffer import dumpfile, pidfile, report
from ncsniffer.errors import ConfigError, NcSnifferError, UsageError

ONEHOUR = 3600
DEFAULT_INTERVAL = 2.0
MIN_INTERVAL = 0.5
DUMP_TIMEOUT = 15.0           # seconds a dump may take before top gives up
POLL = 0.02                   # seconds between stats file checks after SIGUSR1
KEY_POLL_MS = 100             # how often the screen loop looks at the keyboard
HEADER_LINES = 4              # lines above the table (the last one is the column titles)
MIN_WIDTH = 40
FALLBACK_SIZE = (80, 24)
ADDR_MAX = 39                 # the longest IPv6 text
PLAIN_LIMIT = 99999.5        # rates below this are shown in full
NUM_W = 7                     # width of each number column
NUM_COLUMNS = (("B/s", "bps"), ("pkt/s", "pps"), ("avgB/s", "avg_bps"), ("pkt/min", "avg_ppm"))
SORTS = {"b": "bytes/s", "p": "packets/s", "r": "hourly rate"}
QUIT_KEYS = ("q", "Q")
KEYS_HINT = "   keys: b bytes  p packets  r hourly  q quit"
CLEAR = "\x1b[H\x1b[2J"

USAGE = """\
usage: nc.sniffer [-c CONFIG] top [--once] [--interval N] [--count K] [--sort b|p|r]

  --once        print one plain frame (rates over one interval) and exit
  --interval N  seconds between dumps (default 2)
  --count K     stop after K frames
  --sort KEY    b bytes/s (default), p packets/s, r hourly rate
keys: b, p, r sort; q quits
"""


class TopError(NcSnifferError):
    """The live view cannot get data from the daemon (not running, no dump, unreadable file)."""


# --------------------------------------------------------------------------- data

@dataclass(frozen=True)
class Snapshot:
    """One dump of the daemon: when it was written, its header values and records."""

    taken: float
    records: dict
    instance: str = ""
    device: str = ""
    hits: float = 0.0          # per minute (the daemon's slow global rate)
    bytes: float = 0.0         # per second
    users: int = 0
    start: float = 0.0


@dataclass(frozen=True)
class Peer:
    """One row: the IP, its first name, current rates (None before a second dump), hourly rates."""

    ip: str
    name: str
    bps: float | None
    pps: float | None
    avg_bps: float             # W / 3600
    avg_ppm: float             # R / 60


def snapshot_of(stats: dumpfile.StatsFile, instance: str, taken: float) -> Snapshot:
    """A Snapshot from a stats file as read."""
    device = (stats.header_value("device") or "").replace("\t", " ")
    return Snapshot(taken=taken, records=stats.records, instance=instance, device=device,
                    hits=stats.header_number("hits"), bytes=stats.header_number("bytes"),
                    users=int(stats.header_number("users")), start=stats.header_number("start"))


def traffic_between(old: dict | None, new: dict) -> tuple[int, int]:
    """(bytes, packets) one IP sent or received between two dumps, from B/C/E/R/W/S.

    While E stays, B and C only grew.  When E moved, one rate update at second
    E folded the old B/C and the traffic before it into W/R (SPEC 4.2:
    ``W' = (W + B) * 3600 / dt``), then B/C restarted with the packet of E; so
    the traffic before the update is ``W' * dt / 3600 - W - B``.  W and R are
    rounded in the file, which can make this one byte or packet off.  A record
    that is new, or of a new data set (S changed), counts all its B/C.
    """
    if old is None or old["S"] != new["S"] or new["E"] < old["E"]:
        return int(new["B"]), int(new["C"])
    if new["E"] == old["E"]:
        return max(int(new["B"] - old["B"]), 0), max(int(new["C"] - old["C"]), 0)
    dt = new["E"] - old["S"] if old["E"] == old["S"] else ONEHOUR + new["E"] - old["E"]
    if dt <= 0:
        return int(new["B"]), int(new["C"])
    before_b = round(new["W"] * dt / ONEHOUR - old["W"] - old["B"])
    before_c = round(new["R"] * dt / ONEHOUR - old["R"] - old["C"])
    return max(before_b, 0) + int(new["B"]), max(before_c, 0) + int(new["C"])


def peers_of(cur: Snapshot, prev: Snapshot | None = None) -> list[Peer]:
    """Every record of ``cur`` as a Peer, with rates over the time since ``prev``."""
    span = cur.taken - prev.taken if prev is not None else 0.0
    out = []
    for ip, rec in cur.records.items():
        bps = pps = None
        if span > 0:
            nbytes, npackets = traffic_between(prev.records.get(ip), rec)
            bps, pps = nbytes / span, npackets / span
        names = rec.get("N") or []
        out.append(Peer(ip, names[0] if names else "", bps, pps,
                        rec["W"] / ONEHOUR, rec["R"] / 60))
    return out


def order(peers: Iterable[Peer], key: str = "b") -> list[Peer]:
    """Busiest first by the chosen key (b bytes/s, p packets/s, r hourly), then by address."""
    def number(value: float | None) -> float:
        return value or 0.0

    keys: dict[str, Callable[[Peer], tuple]] = {
        "b": lambda p: (number(p.bps), number(p.pps), p.avg_bps),
        "p": lambda p: (number(p.pps), number(p.bps), p.avg_ppm),
        "r": lambda p: (p.avg_bps, p.avg_ppm, number(p.bps)),
    }
    by_ip = sorted(peers, key=lambda p: report.ip_order(p.ip))
    return sorted(by_ip, key=keys[key], reverse=True)


# --------------------------------------------------------------------------- text

def clean(text: str) -> str:
    """Text anyone can write (PTR names) made safe to print: one column per character.

    Control characters (ESC included), and characters that are not one column
    wide (wide, combining, format), become '?', so nothing reaches the terminal
    as a command and columns stay aligned.
    """
    out = []
    for ch in text:
        if ch.isprintable() and ch.isascii():
            out.append(ch)
        elif (ch.isprintable() and not unicodedata.combining(ch)
              and unicodedata.east_asian_width(ch) not in ("W", "F")):
            out.append(ch)
        else:
            out.append("?")
    return "".join(out)


def fit(text: str, width: int) -> str:
    """Clean ``text`` and cut it to ``width`` columns, a '~' marking the cut."""
    text = clean(text)
    if width <= 0:
        return ""
    return text if len(text) <= width else text[:width - 1] + "~"


def human(value: float | None) -> str:
    """A rate in at most NUM_W columns: 3.5, 12, 99999, 123k, 4.56M; '-' when not known yet."""
    if value is None:
        return "-"
    if value < PLAIN_LIMIT:
        return f"{value:.1f}" if value < 100 and value != int(value) else f"{value:.0f}"
    for limit, suffix in ((1e3, "k"), (1e6, "M"), (1e9, "G")):
        if value / limit < 999.5:
            return f"{value / limit:.3g}{suffix}"
    return f"{value / 1e12:.0f}T"


def uptime(seconds: float) -> str:
    """``3d 04:05`` or ``04:05:06``."""
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}:{minutes:02d}"
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def header_lines(cur: Snapshot, prev: Snapshot | None, peers: list[Peer], key: str,
                 keys: bool = True) -> list[str]:
    """The lines above the table: instance, device, daemon rates, current totals, sort."""
    clock = time.strftime("%H:%M:%S", time.localtime(cur.taken))
    first = (f"{cur.instance} on {cur.device}  up {uptime(cur.taken - cur.start)}"
             f"  users {cur.users}  {clock}")
    second = f"daemon: {cur.hits:.0f} hits/min {cur.bytes:.0f} B/s"
    if prev is not None and cur.taken > prev.taken:
        total_b = sum(p.bps or 0 for p in peers)
        total_p = sum(p.pps or 0 for p in peers)
        second += (f"   last {cur.taken - prev.taken:.2f} s: {human(total_b)} B/s"
                   f" {human(total_p)} pkt/s")
    else:
        second += "   current rates from the next refresh"
    third = f"sort: {SORTS[key]}" + (KEYS_HINT if keys else "")
    return [first, second, third]


def columns(peers: list[Peer], width: int) -> tuple[int, int]:
    """(address width, name width) for a table ``width`` columns wide."""
    addr = max([len("address")] + [len(p.ip) for p in peers])
    addr = min(addr, ADDR_MAX)
    name = width - addr - 1 - len(NUM_COLUMNS) * (NUM_W + 1)
    return addr, max(name, 0)


def table_lines(peers: list[Peer], width: int, rows: int) -> list[str]:
    """The column titles and up to ``rows`` peers, each line at most ``width`` columns."""
    shown = peers[:max(rows, 0)]
    addr_w, name_w = columns(shown, width)

    def line(addr: str, name: str, numbers: list[str]) -> str:
        text = fit(addr, addr_w).ljust(addr_w) + " " + fit(name, name_w).ljust(name_w)
        text += "".join(" " + n.rjust(NUM_W) for n in numbers)
        return fit(text.rstrip(), width)

    out = [line("address", "name" if name_w else "", [title for title, _ in NUM_COLUMNS])]
    for p in shown:
        out.append(line(p.ip, p.name, [human(getattr(p, attr)) for _, attr in NUM_COLUMNS]))
    return out


def frame(cur: Snapshot, prev: Snapshot | None, key: str = "b",
          size: tuple[int, int] = FALLBACK_SIZE, keys: bool = True) -> list[str]:
    """The whole screen as lines: at most ``size`` = (columns, lines), never wider.

    ``keys``: name the keys (not in plain frames, where there are none to press)."""
    width, height = max(size[0], MIN_WIDTH), max(size[1], HEADER_LINES + 1)
    peers = order(peers_of(cur, prev), key)
    head = [fit(text, width) for text in header_lines(cur, prev, peers, key, keys)]
    return head + table_lines(peers, width, height - HEADER_LINES)


# --------------------------------------------------------------------------- sources

class Source(Protocol):
    """Where snapshots come from (a metrics-JSON source can be added beside these)."""

    def snapshot(self) -> Snapshot:
        """A fresh snapshot of the daemon's records; raises TopError."""


def _mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def read_snapshot(stats_path: str, instance: str) -> Snapshot:
    """Read the stats file just written (DumpFileError names the file if unreadable)."""
    taken = _mtime_ns(stats_path) / 1e9 or time.time()
    return snapshot_of(dumpfile.read_stats(stats_path), instance, taken)


@dataclass
class DumpFileSource:
    """Have the daemon rewrite its stats file (``request``), then read it."""

    request: Callable[[], None]
    stats_path: str
    instance: str

    def snapshot(self) -> Snapshot:
        self.request()
        return read_snapshot(self.stats_path, self.instance)


def udp_request(address: tuple, stats_path: str, timeout: float = DUMP_TIMEOUT) -> None:
    """A ``dump`` datagram to the daemon's listener (``port``); back once the file is newer."""
    problem = report.rqst_dump(address, stats_path, 0, timeout)
    if problem:
        raise TopError(f"{problem} (is this host in 'allowed'?)" if "timeout" in problem
                       else problem)


def signal_request(pid_path: str, instance: str, stats_path: str,
                   timeout: float = DUMP_TIMEOUT) -> None:
    """No dump port: SIGUSR1 the daemon (as ``nc.sniffer dump``), wait for the new file."""
    pid = running_pid(pid_path, instance)
    before = _mtime_ns(stats_path)
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        raise TopError(f"{instance} not running (pid file '{pid_path}')") from None
    except PermissionError:
        raise TopError(f"not allowed to signal {instance} (pid {pid}): run as root or "
                       f"the daemon's user, or configure a dump 'port'") from None
    deadline = time.monotonic() + timeout
    while _mtime_ns(stats_path) == before:
        if time.monotonic() >= deadline:
            raise TopError(f"'{stats_path}' not rewritten within {timeout:g} s "
                           f"of SIGUSR1 to {instance} (pid {pid})")
        time.sleep(POLL)


def running_pid(pid_path: str, instance: str) -> int:
    """The daemon's pid, or TopError saying it is not running."""
    pid = pidfile.running_pid(pid_path, instance)
    if not pid:
        raise TopError(f"{instance} not running (pid file '{pid_path}')")
    return pid


def dump_address(config: dict) -> tuple | None:
    """Where to send dump requests: the configured ``host``/``port``, a wildcard as loopback."""
    port = config.get("port")
    if port in (None, "", 0, "0"):
        return None
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid port number '{port}'") from None
    listen = str(config.get("host") or "127.0.0.1")
    listen = {"INADDR_LOOPBACK": "127.0.0.1", "INADDR_ANY": "127.0.0.1", "0.0.0.0": "127.0.0.1",
              "::": "::1"}.get(listen, listen)
    try:
        family = socket.AF_INET6 if ":" in listen else socket.AF_INET
        listen = socket.getaddrinfo(listen, port, family, socket.SOCK_DGRAM)[0][4][0]
    except (OSError, UnicodeError):
        raise ConfigError(f"bad dump host '{listen}'") from None
    return listen, port


def source_for(config: dict, instance: str) -> Source:
    """A UDP dump source when a ``port`` is configured, else the SIGUSR1 source."""
    sniffer = config.get("sniffer")
    if not sniffer or not isinstance(sniffer, str):
        raise ConfigError("sniffer directory missing from configuration")
    piddir = config.get("piddir")
    if not piddir or not isinstance(piddir, str):
        raise ConfigError("pid directory missing from configuration")
    stats_path = os.path.join(os.path.abspath(sniffer), instance + ".stats")
    pid_path = os.path.join(os.path.abspath(piddir), instance + ".pid")
    running_pid(pid_path, instance)
    address = dump_address(config)
    if address:
        request = functools.partial(udp_request, address, stats_path)
    else:
        request = functools.partial(signal_request, pid_path, instance, stats_path)
    return DumpFileSource(request, stats_path, instance)


# --------------------------------------------------------------------------- command line

def parse_args(argv: list[str]) -> argparse.Namespace:
    """``top`` options; a UsageError for anything else."""
    p = argparse.ArgumentParser(prog="nc.sniffer top", add_help=False, allow_abbrev=False)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("--once", action="store_true")
    p.add_argument("--interval", "-n", type=float, default=DEFAULT_INTERVAL)
    p.add_argument("--count", type=int)
    p.add_argument("--sort", choices=sorted(SORTS), default="b")

    def error(message: str):
        raise UsageError(f"top: {message}")
    p.error = error  # type: ignore[method-assign]
    args = p.parse_args(argv)
    if args.interval < MIN_INTERVAL:
        raise UsageError(f"top: --interval must be at least {MIN_INTERVAL:g} seconds")
    if args.count is not None and args.count < 1:
        raise UsageError("top: --count must be at least 1")
    return args


def run(argv: list[str], config: dict, instance: str, out: IO[str] | None = None) -> int:
    """``nc.sniffer top``: exit 0 after q, --count frames, --once or Ctrl-C; TopError else."""
    args = parse_args(argv)
    out = out or sys.stdout
    if args.help:
        out.write(USAGE)
        return 0
    source = source_for(config, instance)
    if args.once:
        prev = source.snapshot()
        time.sleep(args.interval)
        lines = frame(source.snapshot(), prev, args.sort, screen_size(), keys=False)
        out.write("\n".join(lines) + "\n")
        return 0
    try:
        if not out.isatty() or os.environ.get("TERM", "dumb") in ("dumb", ""):
            return plain_loop(source, args, out)
        try:
            import curses
        except ImportError:
            return ansi_loop(source, args, out)
        return curses.wrapper(curses_loop, source, args)
    except KeyboardInterrupt:
        return 0


def screen_size() -> tuple[int, int]:
    """The terminal's (columns, lines); 80x24 when there is no terminal."""
    size = shutil.get_terminal_size(FALLBACK_SIZE)
    return size.columns, size.lines


class Ticker:
    """Snapshots every interval, the previous one kept for the rates; stops after --count."""

    def __init__(self, source: Source, args: argparse.Namespace):
        self.source, self.args = source, args
        self.prev: Snapshot | None = None
        self.cur = source.snapshot()
        self.frames = 1
        self.due = time.monotonic() + args.interval

    def done(self) -> bool:
        return self.args.count is not None and self.frames >= self.args.count

    def advance(self) -> None:
        """The next snapshot; the deadline counts from the previous one, so drift stays small."""
        self.prev, self.cur = self.cur, self.source.snapshot()
        self.frames += 1
        self.due = max(self.due + self.args.interval, time.monotonic())


def plain_loop(source: Source, args: argparse.Namespace, out: IO[str]) -> int:
    """Not a terminal (or TERM=dumb): plain frames one after the other, blank lines between."""
    tick = Ticker(source, args)
    while True:
        lines = frame(tick.cur, tick.prev, args.sort, screen_size(), keys=False)
        out.write("\n".join(lines) + "\n")
        out.flush()
        if tick.done():
            return 0
        time.sleep(max(tick.due - time.monotonic(), 0))
        tick.advance()
        out.write("\n")


def handle_key(key: str, args: argparse.Namespace) -> bool:
    """Apply a key press; True when it asks to quit."""
    if key in QUIT_KEYS:
        return True
    if key.lower() in SORTS:
        args.sort = key.lower()
    return False


def curses_loop(stdscr, source: Source, args: argparse.Namespace) -> int:
    """The interactive view; curses.wrapper restores the terminal on exit, Ctrl-C and errors."""
    import curses
    try:
        curses.curs_set(0)
    except curses.error:
        pass                                # a terminal without an invisible cursor
    stdscr.timeout(KEY_POLL_MS)
    tick = Ticker(source, args)
    while True:
        draw(stdscr, frame(tick.cur, tick.prev, args.sort, _curses_size(stdscr)))
        while time.monotonic() < tick.due:
            code = stdscr.getch()
            if code == -1 or code == curses.KEY_RESIZE:
                if code == curses.KEY_RESIZE:
                    draw(stdscr, frame(tick.cur, tick.prev, args.sort, _curses_size(stdscr)))
                continue
            if 0 <= code < 256 and handle_key(chr(code), args):
                return 0
            draw(stdscr, frame(tick.cur, tick.prev, args.sort, _curses_size(stdscr)))
        if tick.done():
            return 0
        tick.advance()


def _curses_size(stdscr) -> tuple[int, int]:
    lines, cols = stdscr.getmaxyx()
    return cols, lines


def draw(stdscr, lines: list[str]) -> None:
    """Put the lines on the screen; the frame already fits, so nothing wraps."""
    import curses
    height, width = stdscr.getmaxyx()
    stdscr.erase()
    for y, text in enumerate(lines[:height]):
        try:
            stdscr.addnstr(y, 0, text, width)
        except curses.error:
            pass                # the bottom-right cell: written, but the cursor cannot move on
    stdscr.refresh()


def ansi_loop(source: Source, args: argparse.Namespace, out: IO[str]) -> int:
    """No curses module: clear and redraw with ANSI codes, keys read in cbreak mode."""
    import termios
    import tty
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        tick = Ticker(source, args)
        while True:
            out.write(CLEAR + "\r\n".join(frame(tick.cur, tick.prev, args.sort, screen_size())))
            out.flush()
            while (wait := tick.due - time.monotonic()) > 0:
                ready, _, _ = select.select([fd], [], [], wait)
                if ready and handle_key(os.read(fd, 1).decode("latin-1"), args):
                    return 0
                if ready:
                    break
            if tick.done():
                return 0
            if time.monotonic() >= tick.due:
                tick.advance()
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        out.write(CLEAR)
        out.flush()
