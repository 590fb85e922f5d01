"""Connection events (spec 10.4): the JSON-lines log, the live feed, the drain.

The tracker hands each batch's events (``conntrack.EVENT_DTYPE`` rows) to one
``Events`` object.  Ended connections go to the log file (``events: PATH``),
written by a thread of their own from a bounded queue; new and ended ones go
to the subscribers of the Unix socket ``PIDDIR/NAME.events``, each with a
bounded output buffer served by the daemon's selector.  Neither ever blocks
the capture loop: a full queue drops lines and counts them, a subscriber that
falls behind is cut off and counted.

Log lines carry exactly the fields of 10.4.  Feed lines carry one more field
first, ``event``: ``new`` (a connection began; ``state`` is ``active``, the
counts are its first packet's) or ``end`` (the same object as the log's).

Order at the end (SIGTERM, end of a replay): the final dump, then ``drain``:
the connections still open go to the log and the feed with state
``drained``, then both are flushed and closed.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections import deque
from typing import Callable, Optional

import numpy as np

from ncsniffer import conntrack, safefile
from ncsniffer.errors import NcSnifferError

log = logging.getLogger("ncsniffer")

LOG_QUEUE_EVENTS = 1 << 20      # ended connections held for the writer thread (96 B each)
FEED_QUEUE_BYTES = 4 << 20      # unsent feed text per subscriber before it is cut off
MAX_SUBSCRIBERS = 64
ACCEPT_BATCH = 16               # connections accepted per readable turn
CLOSE_WAIT = 5.0                # seconds the writer thread may take to flush at the end
FEED_FLUSH_WAIT = 2.0           # seconds subscribers get to take their last lines
# (both within the 15 s that ``nc.sniffer stop`` waits before its SIGKILL)
RECV_SIZE = 65536
SENDS_PER_TURN = 16             # socket sends per subscriber per loop turn, at most
WARN_EVERY = 1000               # after the first ten, one warning per this many losses
SOCKET_MODE = 0o600
FEED_MAX_SHARE = 0.25           # of the loop's time the feed may spend formatting ...
FEED_WINDOW = 1.0               # ... over this many seconds, else its subscribers are cut off

_NAMES = np.array([conntrack.PROTO_NAMES.get(p, str(p)) for p in range(256)], object)
_STATES = np.array(conntrack.STATES, object)
_DIRS = np.array(conntrack.DIRS, object)
_KINDS = np.array(conntrack.KINDS, object)
_FIELDS = ('"start": %r, "end": %r, "proto": "%s", "me": "%s", "me_port": %d, '
           '"peer": "%s", "peer_port": %d, "dir": "%s", "state": "%s", '
           '"orig_packets": %d, "orig_bytes": %d, "resp_packets": %d, "resp_bytes": %d}\n')
LOG_LINE = "{" + _FIELDS
FEED_LINE = '{"event": "%s", ' + _FIELDS


class EventsError(NcSnifferError):
    """The events log or the events socket cannot be opened."""


# --------------------------------------------------------------------------- formatting

def addresses(hi: np.ndarray, lo: np.ndarray, v6: np.ndarray) -> list[str]:
    """Text of two-word addresses (table.py's form); each distinct address formatted once."""
    out = np.empty(len(lo), object)
    four = v6 == 0
    if four.any():
        uniq, inv = np.unique(lo[four].astype(np.uint32), return_inverse=True)
        raw = uniq.astype(">u4").tobytes()
        text = np.array([socket.inet_ntoa(raw[i:i + 4]) for i in range(0, len(raw), 4)], object)
        out[four] = text[inv]
    six = ~four
    if six.any():
        uniq, inv = _distinct_pairs(hi[six], lo[six])
        raw = uniq.tobytes()
        text = np.array([socket.inet_ntop(socket.AF_INET6, raw[i:i + 16])
                         for i in range(0, len(raw), 16)], object)
        out[six] = text[inv]
    return out.tolist()


def _distinct_pairs(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (hi, lo) pairs as big-endian 16-byte rows, and each row's index among
    them (a lexsort: numpy's unique on a structured array is many times slower)."""
    order = np.lexsort((lo, hi))
    hs, ls = hi[order], lo[order]
    first = np.ones(len(order), bool)
    first[1:] = (hs[1:] != hs[:-1]) | (ls[1:] != ls[:-1])
    inv = np.empty(len(order), np.int64)
    inv[order] = np.cumsum(first) - 1
    uniq = np.empty(int(first.sum()), [("hi", ">u8"), ("lo", ">u8")])
    uniq["hi"], uniq["lo"] = hs[first], ls[first]
    return uniq, inv


def columns(events: np.ndarray) -> list[list]:
    """The 10.4 fields of ``events`` as columns, in LOG_LINE's order."""
    icmp = np.isin(events["proto"], (conntrack.ICMP, conntrack.ICMP6))
    port = lambda name: np.where(icmp, 0, events[name]).tolist()   # noqa: E731
    return [events["start"].tolist(), events["end"].tolist(), _NAMES[events["proto"]].tolist(),
            addresses(events["me_hi"], events["me_lo"], events["v6"]), port("me_port"),
            addresses(events["peer_hi"], events["peer_lo"], events["v6"]), port("peer_port"),
            _DIRS[events["dir"]].tolist(), _STATES[events["state"]].tolist(),
            events["orig_packets"].tolist(), events["orig_bytes"].tolist(),
            events["resp_packets"].tolist(), events["resp_bytes"].tolist()]


def ended(events: np.ndarray) -> np.ndarray:
    """The end events among ``events`` (the log has no ``new`` lines)."""
    return events[events["kind"] == conntrack.END]


def log_lines(events: np.ndarray) -> str:
    """The log's JSON lines for the ended connections among ``events``."""
    rows = ended(events)
    if not len(rows):
        return ""
    return "".join(LOG_LINE % row for row in zip(*columns(rows)))


def feed_lines(events: np.ndarray) -> str:
    """The feed's JSON lines for all ``events``: the log's fields after ``event``."""
    if not len(events):
        return ""
    return "".join(FEED_LINE % row
                   for row in zip(_KINDS[events["kind"]].tolist(), *columns(events)))


# The fast path: the same lines, encoded, from the compiled formatter (_eventtext.c, one
# pass over the rows at ~0.3 us an event where the plain twins above take 5-15 us);
# property tests hold the two byte-identical.
try:
    from ncsniffer import _eventtext
except ImportError:          # not built: the plain twins serve
    _eventtext = None


def log_bytes(events: np.ndarray) -> bytes:
    """``log_lines(events)``, encoded."""
    if _eventtext is None:
        return log_lines(events).encode()
    return _eventtext.lines(_rows(events), False, True)


def feed_bytes(events: np.ndarray) -> bytes:
    """``feed_lines(events)``, encoded."""
    if _eventtext is None:
        return feed_lines(events).encode()
    return _eventtext.lines(_rows(events), True, False)


def _rows(events: np.ndarray) -> np.ndarray:
    """``events`` as contiguous rows of the C struct (np.concatenate packs the dtype,
    dropping its padding: the fields are copied back by name)."""
    if events.dtype == conntrack.EVENT_DTYPE:
        return np.ascontiguousarray(events)
    return conntrack.by_name(events, conntrack.EVENT_DTYPE)


def as_drained(events: np.ndarray) -> np.ndarray:
    """The connections still open at the end, as end events with state ``drained``."""
    out = np.array(events, conntrack.EVENT_DTYPE, copy=True)
    out["kind"], out["state"] = conntrack.END, conntrack.DRAINED
    return out


class Losses:
    """A count of lost lines, warned about without flooding the log."""

    def __init__(self, what: str):
        self.what, self.count = what, 0

    def add(self, n: int, why: str) -> None:
        before, self.count = self.count, self.count + n
        if before < 10 or before // WARN_EVERY != self.count // WARN_EVERY:
            log.warning("%s: %s (%d lost so far)", self.what, why, self.count)


# --------------------------------------------------------------------------- the log

def open_log(path: str) -> int:
    """Append to ``path``; a planted symlink, a FIFO or a device is refused."""
    try:
        return safefile.open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except safefile.UnsafeFileError as exc:
        raise EventsError(f"events file: {exc}") from exc
    except OSError as exc:
        raise EventsError(f"cannot open events file '{path}': {exc.strerror}") from exc


class EventLog:
    """The ``events: PATH`` file, formatted and written by a thread from a bounded queue
    of event arrays (the loop only copies them)."""

    def __init__(self, path: str, limit: int = LOG_QUEUE_EVENTS):
        self.path, self.limit = path, limit
        self.fd = open_log(path)
        self.written = 0                      # lines, by the writer thread
        self.dropped = Losses(f"events file '{path}'")
        self._cond = threading.Condition()
        self._queue: deque[np.ndarray] = deque()
        self._pending = 0
        self._reopen = self._closing = False
        self._thread = threading.Thread(target=self._run, name="events-log", daemon=True)
        self._thread.start()

    def write(self, ended: np.ndarray) -> bool:
        """Queue the ended connections ``ended``; never blocks (a full queue drops and
        counts them)."""
        with self._cond:
            if self._closing or not len(ended):
                return False
            if self._pending + len(ended) > self.limit:
                self.dropped.add(len(ended), "the writer is behind, lines dropped")
                return False
            self._queue.append(ended.copy())
            self._pending += len(ended)
            self._cond.notify()
        return True

    def reopen(self) -> None:
        """Open PATH anew before the next write (after a log rotation's rename)."""
        with self._cond:
            self._reopen = True
            self._cond.notify()

    def close(self, timeout: float = CLOSE_WAIT) -> None:
        """Write what is queued, then close; a writer stuck longer than ``timeout`` is left."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("events file '%s': not flushed within %g s", self.path, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._queue or self._reopen or self._closing):
                    self._cond.wait()
                items, reopen, closing = list(self._queue), self._reopen, self._closing
                self._queue.clear()
                self._reopen = False
            if reopen:
                self._swap_file()
            if items:
                self._write_out(items)
            if closing and not items:
                break
        os.close(self.fd)

    def _write_out(self, items: list[np.ndarray]) -> None:
        ended = np.concatenate(items)
        data = log_bytes(ended)
        lines = len(ended)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
            self.written += lines
        except OSError as exc:
            self.dropped.add(lines, f"write failed: {exc.strerror}")
        with self._cond:
            self._pending -= lines

    def _swap_file(self) -> None:
        try:
            fd = open_log(self.path)
        except EventsError as exc:
            log.error("%s; writing on to the old file", exc)
            return
        os.close(self.fd)
        self.fd = fd


# --------------------------------------------------------------------------- the feed

def feed_path(piddir: str, name: str) -> str:
    return os.path.join(piddir, name + ".events")


def bind_socket(path: str) -> socket.socket:
    """Listen on ``path`` (mode 0600); a dead daemon's socket is replaced, anything
    else there (a symlink, a file, a live daemon's socket) refused."""
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~SOCKET_MODE)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise EventsError(f"cannot create events socket '{path}': {exc.strerror or exc}") from exc
    finally:
        os.umask(old)
    sock.listen(MAX_SUBSCRIBERS)
    sock.setblocking(False)
    return sock


def _clear_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a socket"
        raise EventsError(f"events socket '{path}' is {kind}; remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)              # nobody listens: a dead daemon's
        return
    except OSError as exc:
        raise EventsError(f"events socket '{path}': {exc.strerror}") from exc
    finally:
        probe.close()
    raise EventsError(f"events socket '{path}' is in use by another daemon")


class _Subscriber:
    """One ``nc.sniffer events`` connection and its unsent text."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.out = bytearray()


class EventFeed:
    """The live feed: subscribers on ``PIDDIR/NAME.events``, served by a selector."""

    def __init__(self, path: str, limit: int = FEED_QUEUE_BYTES):
        self.path, self.limit = path, limit
        self.sock = bind_socket(path)
        self.sel: Optional[selectors.BaseSelector] = None
        self.clients: dict[int, _Subscriber] = {}
        self.cut_off = 0
        self.sent = 0                 # lines handed to subscribers' buffers
        self.max_share = FEED_MAX_SHARE
        self._window, self._spent = time.monotonic(), 0.0

    def attach(self, sel: selectors.BaseSelector) -> None:
        """Register in the loop's selector; the key's data is the handler to call."""
        self.sel = sel
        sel.register(self.sock, selectors.EVENT_READ, self._on_listener)

    def _on_listener(self, mask: int) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("events socket '%s': %s", self.path, exc)
                return
            if len(self.clients) >= MAX_SUBSCRIBERS:
                conn.close()
                log.warning("events socket '%s': %d subscribers, one more refused",
                            self.path, MAX_SUBSCRIBERS)
                continue
            conn.setblocking(False)
            sub = _Subscriber(conn)
            self.clients[conn.fileno()] = sub
            self.sel.register(conn, selectors.EVENT_READ, lambda m, s=sub: self._on_client(s, m))

    def _on_client(self, sub: _Subscriber, mask: int) -> None:
        if sub.sock.fileno() not in self.clients:
            return
        if mask & selectors.EVENT_READ:
            try:
                data = sub.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                data = b"-"
            except OSError:
                data = b""
            if not data:
                self._drop(sub)
                return
        if mask & selectors.EVENT_WRITE:
            self._send(sub)

    def publish(self, data: bytes) -> None:
        """Hand ``data`` (JSON lines) to every subscriber; one too far behind is cut off."""
        if not self.clients or not data:
            return
        lines = data.count(b"\n")
        for sub in list(self.clients.values()):
            if len(sub.out) + len(data) > self.limit:
                self.cut_off += 1
                log.warning("events feed: a subscriber fell %d bytes behind and was cut off "
                            "(%d so far)", len(sub.out) + len(data), self.cut_off)
                self._drop(sub)
                continue
            was_idle = not sub.out
            sub.out += data
            self.sent += lines
            if was_idle:
                self._send(sub)

    def charge(self, seconds: float, now: float | None = None) -> None:
        """Count the loop's time spent on the feed; when it is more than ``max_share``
        of a window, every subscriber is cut off: the feed never slows capture."""
        now = time.monotonic() if now is None else now
        self._spent += seconds
        if now - self._window < FEED_WINDOW:
            return
        share = self._spent / (now - self._window)
        self._window, self._spent = now, 0.0
        if share > self.max_share and self.clients:
            self.cut_off += len(self.clients)
            log.warning("events feed: formatting took %d%% of the loop's time; %d subscribers "
                        "cut off (%d so far)", round(share * 100), len(self.clients), self.cut_off)
            for sub in list(self.clients.values()):
                self._drop(sub)

    def _send(self, sub: _Subscriber) -> None:
        # Several sends a turn: one socket buffer (~200 kB) a loop turn is less than a
        # reader keeps up with at 200,000 events/s (~50 MB/s); bounded, never blocking.
        for _ in range(SENDS_PER_TURN):
            if not sub.out:
                break
            try:
                n = sub.sock.send(sub.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(sub)
                return
            del sub.out[:n]
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if sub.out else 0)
        if self.sel is not None and sub.sock.fileno() in self.clients:
            self.sel.modify(sub.sock, want, self.sel.get_key(sub.sock).data)

    def _drop(self, sub: _Subscriber) -> None:
        fd = sub.sock.fileno()
        if self.clients.pop(fd, None) is None:
            return
        if self.sel is not None:
            self.sel.unregister(sub.sock)
        sub.sock.close()

    def flush(self, timeout: float) -> None:
        """At the end: send what the subscribers' buffers hold, for ``timeout`` at most."""
        deadline = time.monotonic() + timeout
        while any(s.out for s in self.clients.values()) and time.monotonic() < deadline:
            waiting = [s for s in self.clients.values() if s.out]
            sel = selectors.DefaultSelector()
            for s in waiting:
                sel.register(s.sock, selectors.EVENT_WRITE, s)
            for key, _ in sel.select(min(0.05, max(0.0, deadline - time.monotonic()))):
                self._send(key.data)
            sel.close()

    def close(self) -> None:
        for sub in list(self.clients.values()):
            self._drop(sub)
        if self.sel is not None:
            self.sel.unregister(self.sock)
        self.sock.close()
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except OSError:
            pass


# --------------------------------------------------------------------------- together

class Events:
    """What the daemon and the replay hand each batch's events to, and drain at the end."""

    def __init__(self, log_path: str | None = None, feed_socket: str | None = None,
                 export=None):
        self.log = EventLog(log_path) if log_path else None
        self.export = export          # export.Ended: the log's connections, to ClickHouse
        try:
            self.feed = EventFeed(feed_socket) if feed_socket else None
        except BaseException:
            if self.log is not None:
                self.log.close()
            raise
        self.closed = False

    def attach(self, sel: selectors.BaseSelector) -> None:
        if self.feed is not None:
            self.feed.attach(sel)

    def push(self, events: np.ndarray) -> None:
        """One batch's events: the ended ones to the log, all to the feed; never blocks."""
        if not len(events):
            return
        if self.log is not None or self.export is not None:
            gone = ended(events)
            for sink in (self.log, self.export):
                if sink is not None:
                    sink.write(gone)
        if self.feed is not None and self.feed.clients:
            # The feed is charged its own CPU time: waits for a core or for the GIL
            # (the log's writer thread) are other work's, not the feed's cost.
            began = time.thread_time()
            self.feed.publish(feed_bytes(events))
            self.feed.charge(time.thread_time() - began)

    def reopen(self) -> None:
        """SIGHUP: the log file is opened anew (log rotation)."""
        if self.log is not None:
            self.log.reopen()

    def drain(self, still_open: np.ndarray | None = None) -> None:
        """After the final dump: the open connections as ``drained``, then flush and close."""
        if self.closed:
            return
        if still_open is not None and len(still_open):
            self.push(as_drained(still_open))
        self.closed = True
        if self.feed is not None:
            self.feed.flush(FEED_FLUSH_WAIT)
            self.feed.close()
        if self.log is not None:
            self.log.close(CLOSE_WAIT)

    def counters_text(self) -> str:
        """For the dump and stop log lines."""
        parts = []
        if self.log is not None:
            parts.append(f"events logged {self.log.written}, dropped {self.log.dropped.count}")
        if self.feed is not None:
            parts.append(f"events feed {len(self.feed.clients)} subscribers, "
                         f"{self.feed.cut_off} cut off")
        if self.export is not None:
            parts.append(f"ended connections for clickhouse dropped {self.export.lost.count}")
        return "; ".join(parts)


def from_settings(settings, feed: bool = True, export=None) -> Events | None:
    """The events of ``settings`` (None if none are wanted): the log with ``events``,
    the feed with ``connections`` on a live daemon, the ClickHouse rows with ``export``
    (an ``export.Ended``)."""
    log_path = getattr(settings, "events", None)
    want_feed = feed and getattr(settings, "connections", False) and settings.piddir
    if not log_path and not want_feed and export is None:
        return None
    return Events(log_path, feed_path(settings.piddir, settings.name) if want_feed else None,
                  export)


def still_open(sniffer) -> np.ndarray | None:
    """The open connections at the end, drained (None without tracking):
    ``Sniffer.drain_connections`` knows where the tracker ran (a replay's reading process)."""
    return sniffer.drain_connections()


def drain(events: Events | None, still_open: np.ndarray | None = None) -> None:
    """The end of a run, after the final dump: drained events out, then flush and close."""
    if events is not None:
        events.drain(still_open)


# --------------------------------------------------------------------------- the client

def follow(path: str, name: str, write: Callable[[bytes], None],
           running: Callable[[], bool] = lambda: False) -> None:
    """``nc.sniffer events``: copy the feed to ``write`` until the daemon closes it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError as exc:
            why = ("runs without an events feed (it needs connections: True)" if running()
                   else "not running")
            raise EventsError(f"{name} {why}: no socket '{path}'") from exc
        except ConnectionRefusedError as exc:
            raise EventsError(f"{name} not running (stale socket '{path}')") from exc
        except PermissionError as exc:
            raise EventsError(f"permission denied on '{path}': run as root "
                              f"or as the daemon's user") from exc
        except OSError as exc:
            raise EventsError(f"cannot connect to '{path}': {exc.strerror or exc}") from exc
        while True:
            data = sock.recv(RECV_SIZE)
            if not data:
                return
            write(data)
    finally:
        sock.close()
