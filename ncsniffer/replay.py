"""Offline mode (``nc.sniffer -r FILE start``): replay a capture file.

The clock is the packets' own timestamps (a ``PacketClock``), so the numbers
are exactly those a live run would have produced; the purge and the DNS, its
per-second jobs, run on packet time too.  At the end of the file, one dump.  With a second CPU, a
forked process reads and prepares the batches while this one accounts them.
"""

from __future__ import annotations

import gc
import os
import pickle
import struct
import time
import traceback
from typing import IO, Iterator

from ncsniffer import batch, bpfvm, pcapfile, pcaplib
from ncsniffer.headstart import Early, fork_reader, pipeline, reader_ended, stop_reader
from ncsniffer.clock import PacketClock
from ncsniffer.config import Settings
from ncsniffer.errors import CaptureError, NcSnifferError
from ncsniffer.pcaplib import check_link_type
from ncsniffer.sniffer import Sniffer

BATCH = 20000
PROGRESS_AFTER = 2.0   # seconds of wall time before progress lines appear
PIPE_BUFFER = 1 << 20  # bytes buffered on each side of the pipe between the processes
EXPORT_WAIT = 30.0     # seconds the end of a replay waits for its export to be sent or spooled
READ_AHEAD = 4         # batches the tracking reading process's reader may run ahead


class Progress:
    """Progress lines on stderr for files that take a while: packets and rate."""

    def __init__(self, stream: IO[str] | None, clock=time.monotonic):
        self.stream = stream
        self.clock = clock
        self.began = clock()
        self.last = self.began

    def update(self, packets: int, final: bool = False) -> None:
        if self.stream is None:
            return
        now = self.clock()
        if now - self.began < PROGRESS_AFTER or (not final and now - self.last < 1.0):
            return
        self.last = now
        rate = packets / max(now - self.began, 1e-9)
        self.stream.write(f"nc.sniffer: {packets:,} packets, {rate:,.0f} packets/s"
                          f"{' (done)' if final else ''}\n")
        self.stream.flush()


def replay(settings: Settings, path: str, log: IO[str], quiet: bool = False,
           lookups=None, flows: batch.FlowConsumer | None = None,
           early: Early | None = None) -> int:
    """Replay ``path``; write the stats; return the exit code (0, or 2 on a bad file).
    ``flows``: takes each batch's FLOW records (with ``connections`` set); ``early``:
    the reading process forked before numpy (``headstart.start``), if one was."""
    if early is not None and early.ready():
        batches, linktype, prog, close = None, early.linktype, None, early.close
    else:
        early = None
        batches, linktype, prog, close = _open(path, settings)
    error: NcSnifferError | None = None
    clock = PacketClock()
    exporting = None
    try:
        sniffer = Sniffer(settings, linktype, clock, device=path,   # the purge: its first job
                          flows=flows)
        if settings.clickhouse is not None:
            from ncsniffer import export    # only then: a plain replay imports nothing more
            exporting = export.start(settings, sniffer.acct, clock, replay=True)
        sink = _events_file(settings, exporting)   # the events file (and export), or None
        sniffer.events = sink              # the tracker's events reach the file (and export)
    except NcSnifferError:
        close()
        raise
    if lookups is not None:
        lookups.attach(sniffer)
        clock.every_second(lambda now, elapsed: lookups.tick(now))
    progress = Progress(None if quiet else log)
    counters = sniffer.counters
    ahead = sniffer.tracks_ahead()
    if early is not None:
        prepared = early.batches()
    elif prog is not None and pipeline(ahead):
        prepared = _two_processes(batches, prog, sniffer.rules, path,
                                  sniffer if ahead else None)
    else:
        prepared = _one_process(batches, prog, sniffer.rules)
    try:
        for ready in prepared:
            batch.apply(ready, counters, sniffer.acct, clock, sniffer.flows)
            if ready.tracked is not None:
                sniffer.take_tracked(ready.tracked)
            gc.freeze()      # records never form cycles: keep the collector off them
            if lookups is not None:
                lookups.poll(clock.now)
            progress.update(counters.seen)
    except CaptureError as exc:
        error = exc
    finally:
        prepared.close()
        close()
    progress.update(counters.seen, final=True)
    if lookups is not None:
        lookups.finish(clock.now)

    sniffer.dump(clock.now)
    # final dump, then drain: the open connections to the events file as ``drained``
    if sink is not None:
        from ncsniffer import events
        events.drain(sink, events.still_open(sniffer))
    log.write(f"nc.sniffer: {path}: {sniffer.counters_text()}\n")
    if exporting is not None:     # the last second's packets are in: the interval ends after it
        log.write(f"nc.sniffer: {exporting.finish(clock.now + 1, EXPORT_WAIT)}\n")
    if sink is not None:
        log.write(f"nc.sniffer: {sink.counters_text()}\n")
    if lookups is not None and hasattr(lookups, "counters_text"):
        log.write(f"nc.sniffer: dns {lookups.counters_text()}\n")
    if error is not None:
        log.write(f"nc.sniffer: {error}; stats of the packets read so far were written\n"
                  if counters.seen else f"nc.sniffer: {error}\n")
        return 2
    return 0


def _events_file(settings: Settings, exporting=None):
    """The writer of the events file and of the export's connection rows
    (``events.Events``), or None: events.py, its logging and threads, is imported
    only then (a plain replay's start-up; issue 16)."""
    ended = exporting.ended if exporting is not None else None
    if not settings.events and ended is None:
        return None
    from ncsniffer import events
    return events.from_settings(settings, feed=False, export=ended)


def _one_process(batches, prog, rules: batch.Rules) -> Iterator[batch.Prepared]:
    for got in batches:
        yield batch.prepare(got, prog, rules)


def _two_processes(batches, prog, rules: batch.Rules, path: str,
                   tracking: Sniffer | None = None) -> Iterator[batch.Prepared]:
    """Prepared batches from a forked child: it reads, filters, decodes and finds
    the targets of batch n + 1 while this process accounts batch n (the
    accounting stays in one process, in file order).  A reading error ends the
    stream as it would in one process; a child that dies is an error too, which
    says how it ended (``headstart.reader_ended``).
    ``tracking``: the child runs this sniffer's connection tracker too (its copy,
    on packet time only), and sends the events with each batch and the drained
    connections at the end (``Sniffer.track_ahead``): the two processes' CPU
    evens out; there a thread reads and prepares (``_read_ahead``) while the
    tracker runs."""
    pid, rfd = fork_reader(lambda wfd: _prepare_into(wfd, batches, prog, rules, tracking))
    try:
        with os.fdopen(rfd, "rb", PIPE_BUFFER) as inp:
            while True:
                try:
                    item = pickle.load(inp)
                except EOFError:
                    pid, ended = 0, pid
                    raise reader_ended(ended, path) from None
                if isinstance(item, batch.Prepared):
                    yield item
                    continue
                kind, text = item
                if kind == "end" and tracking is not None:
                    tracking.set_drained(text)
                if kind == "capture":
                    raise CaptureError(text)
                if kind == "crash":
                    raise RuntimeError(f"the reading process failed:\n{text}")
                return
    finally:
        if pid:
            stop_reader(pid)


def _read_ahead(items: Iterator, depth: int = READ_AHEAD) -> Iterator:
    """``items`` produced by a thread of their own, at most ``depth`` ahead, in
    order; an exception of theirs is raised here at its place in the stream.  The
    tracking reading process reads and prepares this way while its own thread
    tracks: the C steps of both run without the GIL, so they overlap."""
    import queue                   # only then: a plain replay's start-up (issue 16)
    import threading
    ready: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:       # raised in the consumer, in its place
            put((False, exc))

    worker = threading.Thread(target=produce, name="read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            more, item = ready.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        worker.join()


def _prepare_into(wfd: int, batches, prog, rules: batch.Rules,
                  tracking: Sniffer | None = None) -> None:
    """The child's work: prepared batches, then ("end", "") (with ``tracking``:
    ("end", the drained connections)), ("capture", message) or ("crash",
    traceback) into the pipe; then exit without Python's clean-up (the parent's
    buffers and atexit handlers are not ours)."""
    code = 0
    gc.freeze()            # the parent's objects, inherited: no collection walks them again
    try:
        with os.fdopen(wfd, "wb", PIPE_BUFFER) as out:
            try:
                prepared = _one_process(batches, prog, rules)
                if tracking is not None:         # the tracker's core beside the reading
                    prepared = _read_ahead(prepared)
                for ready in prepared:
                    if tracking is not None:
                        tracking.track_ahead(ready)
                    pickle.dump(ready, out, protocol=5)
                    out.flush()       # now: the counting process may be waiting for it
                pickle.dump(("end", "" if tracking is None else tracking.drain_ahead()), out)
            except CaptureError as exc:
                pickle.dump(("capture", str(exc)), out)
            except Exception:
                pickle.dump(("crash", traceback.format_exc()), out)
    except BaseException:          # the parent went away, or an interrupt
        code = 1
    finally:
        os._exit(code)


class Programs(dict):
    """The filter compiled for each link of a file (link type, byte order), as
    libpcap compiles it for a file of that kind: a pcapng file's interfaces may
    differ.  Compiled when a batch first has packets of that link."""

    def __init__(self, bpf: str, path: str):
        super().__init__()
        self.bpf = bpf
        self.path = path

    def __missing__(self, link: pcapfile.Link) -> list:
        try:
            prog = pcaplib.compile_filter(link[0], self.bpf, link[1])
        except CaptureError as exc:
            raise CaptureError(f"{self.path}: {exc}") from exc
        try:
            bpfvm.check(prog)
        except bpfvm.UnsupportedProgram as exc:
            raise CaptureError(f"{self.path}: the filter for link type {link[0]} has an "
                               f"instruction only libpcap runs ({exc}), and libpcap cannot "
                               "read this file") from exc
        self[link] = prog
        return prog


def _open(path: str, settings: Settings):
    """(batches, link type, filter programs or None, close) of the batch path, or
    of libpcap's (``prog`` None: libpcap filters).

    The batch path takes every file whose layout its reader knows, when the
    interpreter runs the filter program; ``NCSNIFFER_REPLAY=libpcap`` forces
    libpcap's (the tests compare the two), except for the files libpcap cannot
    read (``Reader.beyond_libpcap``): those only the batch path reads, in every
    mode.
    """
    reader = _reader(path)
    if reader is None:
        return _open_libpcap(path, settings)
    only_ours = None
    if os.environ.get("NCSNIFFER_REPLAY") == "libpcap":
        only_ours = reader.beyond_libpcap()
        if only_ours is None:
            reader.fh.close()
            return _open_libpcap(path, settings)
    programs = Programs(settings.bpf, path)
    try:
        programs[reader.links[0]]
    except CaptureError:           # a bad filter (libpcap says so), or one only libpcap runs
        to_libpcap = only_ours is None and reader.beyond_libpcap() is None
        reader.fh.close()
        if to_libpcap:
            return _open_libpcap(path, settings)
        raise
    return _read_batches(reader, settings.connections), reader.linktype, programs, \
        reader.fh.close


def _reader(path: str) -> pcapfile.Reader | None:
    """The batch reader on ``path`` (every interface's link type checked as it is
    declared), or None where libpcap is to read it (or to say what is wrong)."""
    try:
        fh = open(path, "rb")
    except OSError:
        return None
    try:
        return pcapfile.Reader(fh, path, lambda linktype: check_link_type(linktype, path))
    except (pcapfile.Unsupported, pcapfile.Truncated, struct.error):
        fh.close()
        return None
    except CaptureError:
        fh.close()
        raise


def _open_libpcap(path: str, settings: Settings):
    """(batches, link type, None, close): libpcap reads and filters (the program is
    applied already); the rest is the live daemon's own path."""
    from ncsniffer import capture      # only then: the batch path needs no pcapy
    cap = capture.open_offline(path, settings.bpf, lambda linktype: check_link_type(linktype, path))
    return iter(lambda: cap.read_batch(BATCH), None), cap.linktype, None, cap.close


def _read_batches(reader: pcapfile.Reader, ramp: bool):
    """The reader's batches, each valid until the next is asked for (every path here
    prepares a batch before it reads the next); ``ramp`` (connections: a batch is
    tracked too before the counting process gets it): the first ones smaller, so
    that it starts sooner.  A broken file becomes the CaptureError every path
    reports."""
    try:
        yield from reader.batches(reuse=True, ramp=ramp)
    except (pcapfile.Truncated, pcapfile.Unsupported, struct.error) as exc:
        raise CaptureError(f"{reader.name}: {exc}") from exc
