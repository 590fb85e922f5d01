"""A replay's reading process, forked before numpy is imported.

Importing numpy is a third of the wall time of a replay (issue 16), and the
counting process cannot count before it.  The reading process of the default
rules needs no numpy: it reads a classic pcap file, walks its records, filters
and decodes them in C (``ncsniffer.pcapread``).  So ``start`` forks it first,
and it reads and prepares the first batches while the counting process imports
numpy and sets up; up to SLOTS batches wait for it.

The batches cross in memory both processes map (``Ring``), as the C pass filled
them; the pipe carries a fixed header per batch, which names its slot.  Where the C
pass does not apply (match / nomatch, connection tracking, pcapng, a filter
only libpcap or numpy runs), ``start`` or the first message says so and the
replay takes its usual path (``replay._two_processes`` forks after numpy; the
two give the same batches, which tests/test_headstart.py checks).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import signal
import stat
import struct
from typing import Callable, Iterator

from ncsniffer import linktypes, pcaplib, pcapread
from ncsniffer.config import Settings
from ncsniffer.errors import CaptureError

PIPE_SIZE = 1 << 20    # the pipe between a replay's two processes: a prepared batch is 1-2 MB
FREE_CPU = 1.0         # CPUs other tasks must leave idle for a second process (no tracker)
SLOTS = 8              # prepared batches the reading process holds for a busy counting
#                        process (each at most MAX_PACKETS * 52 bytes: 27 MB in all; 8
#                        were 5 ms faster than 16 on the bench capture and 10 MB less at
#                        the peak: the slots' pages fault in once, in both processes)
ENV = "NCSNIFFER_HEADSTART"   # "0": fork after numpy as before (tests compare the two)
# A message: its kind, then per batch the counts of the C pass (passed, counted, IPv4,
# IPv6, truncated, non-IP, invalid), of the distinct targets (IPv4, IPv6), and its
# slot in the ring; CAPTURE and CRASH: a text of the first count's length follows.
COUNTS = 10
HEAD = struct.Struct(f"=B{COUNTS}q")
READY, FALLBACK, BATCH, END, CAPTURE, CRASH = range(6)
# What the C pass fills, in its order: (item size, the count that sizes it).
FILLED = ((8, 0), (8, 1), (8, 1), (1, 1), (4, 2), (8, 3), (8, 3))
SEC, GOOD, LENGTHS, IS6, V4, HI, LO = range(len(FILLED))
# What finding the distinct targets fills: each packet's index among them, the IPv4
# ones, the IPv6 ones' two words: (item size, the count that bounds it, the count
# that sizes it).
DISTINCT = ((8, 1, 1), (4, 2, 7), (8, 3, 8), (8, 3, 8))
# What a batch leaves in its slot of the ring: the seconds, ``good`` (read only when
# some passed packet is not counted, else it is every index), the lengths, then the
# distinct targets: (item size, the count that sizes it).
SENT = (SEC, GOOD, LENGTHS)
IN_SLOT = tuple(FILLED[i] for i in SENT) + tuple((size, at) for size, _, at in DISTINCT)


def pipeline(tracking: bool) -> bool:
    """Whether to prepare batches in a second process: with a second CPU, and
    either the connection tracker to run there (its CPU is the larger part) or a
    CPU free to run it (``busy_cpus`` leaves one: on a busy machine the second
    process's own cost, its copy of the batches through the pipe and its page
    faults, outweighs the overlap).  ``NCSNIFFER_REPLAY=serial``: one process;
    ``NCSNIFFER_REPLAY=batch``: two whenever there are two CPUs (the tests
    compare the two)."""
    mode = os.environ.get("NCSNIFFER_REPLAY")
    cpus = len(os.sched_getaffinity(0))
    if mode == "serial" or cpus < 2:
        return False
    return mode == "batch" or tracking or cpus - busy_cpus() >= FREE_CPU


def busy_cpus() -> float:
    """The CPUs other tasks keep busy now: the runnable ones besides this process
    (``/proc/loadavg``), else the 1-minute load average.  Not the load average
    first: it lags by a minute, so each of the replays of a batch of files run
    one after another would count the one before it as load."""
    try:
        with open("/proc/loadavg") as fh:
            return runnable_others(fh.read())
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]


def runnable_others(loadavg: str) -> int:
    """The runnable tasks besides the reader of ``loadavg`` (the text of
    /proc/loadavg: its fourth field is "runnable/all")."""
    return max(int(loadavg.split()[3].split("/")[0]) - 1, 0)


def applies(settings: Settings) -> bool:
    """The settings whose batches the C pass prepares with nothing of numpy."""
    return (settings.payload is None and not settings.connections
            and pcapread.fast_enabled() and os.environ.get(ENV) != "0"
            and os.environ.get("NCSNIFFER_REPLAY") != "libpcap" and pipeline(False))


class Early:
    """The counting process's end of a reading process started by ``start``."""

    def __init__(self, pid: int, rfd: int, linktype: int, path: str, ring: Ring | None = None):
        self.pid = pid
        self.pipe = os.fdopen(rfd, "rb", buffering=0)
        self.linktype = linktype
        self.path = path
        self.ring = ring

    def ready(self) -> bool:
        """Whether the reading process prepares the batches (it compiled the filter,
        and the C pass runs it); if not, it has ended."""
        try:
            kind = self._head()[0]
        except CaptureError:           # it died: the usual path reads the file
            kind = FALLBACK
        if kind != READY:
            self.close()
        return kind == READY

    def batches(self) -> Iterator:
        """The prepared batches (``batch.Prepared``), in file order; a reading error
        ends them as the usual path's does."""
        import numpy as np             # the counting process has it by now

        from ncsniffer import batch
        from ncsniffer.table import Addresses
        dtypes = (np.int64, np.int64, np.int64, np.int64, np.uint32, np.uint64, np.uint64)
        try:
            while True:
                kind, *counts = self._head()
                if kind == BATCH:
                    seen, counted, slot = counts[0], counts[1], counts[-1]
                    sec, good, lengths, which, u4, uhi, ulo = (
                        self.ring.copied(slot, field, dtype, counts[at])
                        if field != GOOD or counted != seen else np.arange(seen, dtype=np.int64)
                        for field, (dtype, (_, at)) in enumerate(zip(dtypes, IN_SLOT)))
                    self.ring.give_back(slot)
                    undecoded = dict(zip(batch.C_REASONS, counts[4:7]))
                    yield batch.Prepared(seen, undecoded, 0, None, sec, good, lengths,
                                         found=(Addresses(u4, batch.packed_v6(uhi, ulo)), which))
                elif kind == END:
                    return
                elif kind == CAPTURE:
                    raise CaptureError(self._text(counts[0]))
                else:
                    raise RuntimeError(f"the reading process failed:\n{self._text(counts[0])}")
        finally:
            self.close()

    def close(self) -> None:
        """End the reading process (gone already unless the replay stopped early)."""
        self.pipe.close()
        if self.ring is not None:
            self.ring.close()
        if self.pid:
            stop_reader(self.pid)
            self.pid = 0

    def _head(self) -> tuple:
        return HEAD.unpack(self._fill(bytearray(HEAD.size)))

    def _text(self, size: int) -> str:
        return bytes(self._fill(bytearray(size))).decode("utf-8", errors="replace")

    def _fill(self, into):
        """``into`` filled from the pipe; the reading process's end is an error here."""
        view = memoryview(into).cast("B")
        got = 0
        while got < len(view):
            n = self.pipe.readinto(view[got:])
            if not n:
                raise self._ended()
            got += n
        return into

    def _ended(self) -> CaptureError:
        """The error of a reading process gone before its last message (reaped)."""
        pid, self.pid = self.pid, 0
        return reader_ended(pid, self.path)


def stop_reader(pid: int) -> None:
    """End a replay's reading process (gone already unless the replay stopped early)
    and reap it."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def reader_ended(pid: int, path: str) -> CaptureError:
    """How a replay's reading process ended before its last message, reaped here: a
    SIGBUS is the file cut under its map (``pcapread.mapped``, pcapfile's), or a read
    error of the disk; any other end is named."""
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGBUS:
        return CaptureError(f"{path}: file shrank or could not be read while mapped (SIGBUS)")
    how = (signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status)
           else f"exit status {os.WEXITSTATUS(status)}")
    return CaptureError(f"the reading process ended unexpectedly ({how})")


def start(settings: Settings, path: str) -> Early | None:
    """Fork the reading process of ``path`` if it applies (the settings, two CPUs,
    a classic pcap file); None where the replay takes its usual path."""
    if not applies(settings):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None                     # the usual path says what is wrong
    try:
        header = _classic(fd)
        if header is None:
            return None
        try:
            ring = Ring(SLOTS, pcapread.MAX_PACKETS)
        except OSError:
            return None                 # no memory or descriptors to spare: the usual path
        pid, rfd = fork_reader(lambda wfd: _child(wfd, fd, path, header, settings, ring))
        ring.counting_side()
        return Early(pid, rfd, header.linktype, path, ring)
    finally:
        os.close(fd)


def fork_reader(child: Callable[[int], None]) -> tuple[int, int]:
    """(pid, read end of its pipe) of a replay's reading process, which runs
    ``child`` on the pipe's write end and never returns."""
    rfd, wfd = os.pipe()
    try:
        fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        child(wfd)
    os.close(wfd)
    return pid, rfd


def _classic(fd: int) -> pcapread.Classic | None:
    """The header of a regular file that is a classic pcap, else None."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return pcapread.classic_header(os.pread(fd, pcapread.FILE_HEADER_SIZE, 0))
    except (OSError, pcapread.Truncated, pcapread.Unsupported):
        return None


def _child(wfd: int, fd: int, path: str, header: pcapread.Classic, settings: Settings,
           ring: Ring) -> None:
    """The reading process: READY (or FALLBACK), the batches, then END, CAPTURE or
    CRASH; then exit without Python's clean-up (the parent's buffers and atexit
    handlers are not ours)."""
    code = 0
    ring.reading_side()

    def send(pieces: list) -> None:
        _write_all(wfd, pieces)

    try:
        try:
            args = _pass_arguments(header, settings)
            send([_head(READY if args else FALLBACK)])
            if args:
                _prepare_all(send, fd, header, args, ring)
                send([_head(END)])
        except pcapread.Truncated as exc:
            send(_text(CAPTURE, f"{path}: {exc}"))
        except Exception:
            import traceback
            send(_text(CRASH, traceback.format_exc()))
    except BaseException:          # the parent went away, or an interrupt
        code = 1
    finally:
        os._exit(code)


def _pass_arguments(header: pcapread.Classic, settings: Settings) -> tuple | None:
    """The C pass's arguments after the packets' (program, link, "me" and its two
    words), or None where it does not run them (the usual path then does)."""
    link = linktypes.c_decoding(header.linktype)
    if link is None:
        return None
    try:
        prog = pcapread.program(pcaplib.compile_filter(header.linktype, settings.bpf,
                                                     header.swapped))
    except CaptureError:
        return None                               # the usual path reports it
    args = pcapread.pass_arguments(prog, link, settings.me_packed)
    empty = bytearray(0)
    if pcapread.prepare(b"", [empty] * pcapread.COLUMNS, 0, args, [empty] * len(FILLED)) is None:
        return None                               # a program the C pass does not run
    return args


def _prepare_all(send, fd: int, header: pcapread.Classic, args: tuple, ring: Ring) -> None:
    """Every batch of the file, prepared into a free slot of the ring, its distinct
    targets found; each message to ``send`` names its slot.  The file is mapped (a
    SIGBUS here if it is cut meanwhile: ``Early`` says so)."""
    limit = pcapread.MAX_PACKETS
    columns = [bytearray(8 * limit) for _ in range(pcapread.COLUMNS)]
    kept = {i: bytearray(size * limit) for i, (size, _) in enumerate(FILLED) if i not in SENT}
    end = os.fstat(fd).st_size
    source = pcapread.mapped if pcapread.mappable(fd) else pcapread.read
    for buf, n, _ in source(fd, pcapread.FILE_HEADER_SIZE, end, header, limit, pcapread.MAX_BYTES,
                            pcapread.spans(pcapread.MAX_BYTES, False), columns):
        slot = ring.take()
        out = [ring.field(slot, field) for field in range(len(IN_SLOT))]
        filled = [out[SENT.index(i)] if i in SENT else kept[i] for i in range(len(FILLED))]
        counts = pcapread.prepare(buf, columns, n, args, filled)
        views = [memoryview(f)[:size * counts[at]] for f, (size, at) in zip(filled, FILLED)]
        counts += pcapread.distinct(views[IS6], views[V4], views[HI], views[LO],
                                    *out[len(SENT):])
        send([_head(BATCH, *counts, slot)])


class Ring:
    """The slots that prepared batches cross in: memory both processes map (a page
    takes memory once written).  The reading process fills a free slot and names it
    in the batch's message; the counting process copies the batch out and hands the
    slot back through a pipe of its own.  The pipe that carried the batches copied
    each in and out, into new memory each time: about 10 ms of the 0.27 s of CPU
    of a replay of the bench capture (issue 16)."""

    def __init__(self, slots: int, limit: int):
        if not 0 < slots <= 256:
            raise ValueError("a slot is handed back as one byte")
        self.offsets = [0]
        for size, _ in IN_SLOT:
            self.offsets.append(self.offsets[-1] + size * limit)
        self.size = self.offsets[-1]
        self.mm = mmap.mmap(-1, slots * self.size)       # shared, anonymous
        self.spare = list(range(slots))                  # the reading side's free slots
        self.back_r, self.back_w = os.pipe()             # slots handed back, a byte each

    def reading_side(self) -> None:
        os.close(self.back_w)

    def counting_side(self) -> None:
        os.close(self.back_r)

    def field(self, slot: int, field: int) -> memoryview:
        """The slot's room for ``IN_SLOT[field]``: ``limit`` items."""
        at = slot * self.size + self.offsets[field]
        return memoryview(self.mm)[at:at + self.offsets[field + 1] - self.offsets[field]]

    def take(self) -> int:
        """A free slot; waits for the counting process to hand one back."""
        if not self.spare:
            back = os.read(self.back_r, 256)
            if not back:
                raise BrokenPipeError("the counting process is gone")
            self.spare.extend(back)
        return self.spare.pop()

    def copied(self, slot: int, field: int, dtype, count: int):
        """A copy of the first ``count`` items of a slot's field."""
        import numpy as np             # the counting process has it by now
        return np.frombuffer(self.mm, dtype, count,
                             slot * self.size + self.offsets[field]).copy()

    def give_back(self, slot: int) -> None:
        try:
            os.write(self.back_w, bytes([slot]))
        except BrokenPipeError:        # the reading process is done: it needs no more
            pass

    def close(self) -> None:
        if not self.mm.closed:
            os.close(self.back_w)
            self.mm.close()


def _head(kind: int, *counts: int) -> bytes:
    return HEAD.pack(kind, *counts, *[0] * (COUNTS - len(counts)))


def _text(kind: int, text: str) -> list:
    data = text.encode("utf-8", errors="replace")
    return [_head(kind, len(data)), data]


def _write_all(fd: int, pieces: list) -> None:
    views = [memoryview(p).cast("B") for p in pieces]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]
