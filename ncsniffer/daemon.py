"""The live daemon: event loop, signals, UDP dump listener, dumps, pid file.

One thread.  A selector watches the capture descriptor, the UDP listener, the
resolver's socket and a signal wake-up pipe; a one-second tick runs the purge
and the resolver's timers.  Dumps are written by a forked child from its
copy-on-write snapshot, so capture goes on while 100,000 records are written.
This is the only module that imports python-daemon.
"""

from __future__ import annotations

import errno
import gc
import grp
import logging
import logging.handlers
import os
import pwd
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import IO

import daemon as pydaemon

from ncsniffer import capture, events as eventsmod, host, notify, pidfile, safefile, snapshot
from ncsniffer.clock import WallClock
from ncsniffer.config import Settings
from ncsniffer.errors import NcSnifferError
from ncsniffer.sniffer import Sniffer

log = logging.getLogger("ncsniffer")

READY_TIMEOUT = 20.0
UDP_BATCH = 256          # datagrams served before capture gets its turn again
PCAP_BATCH = 5000        # packets per dispatch call
TICK = 1.0
# A packet waits in the kernel's ring block until the block timeout hands it over
# (TPACKET_V3 batching, kept for throughput): a dump starts once that has passed
# since its request, so it counts every packet received before the request.
FLUSH_WAIT = capture.BLOCK_TIMEOUT_MS / 1000 + 0.05
MAX_DUMP_DELAY = 1.0     # later requests join a waiting dump, for this long at most
FLUSH_STEP = 0.005
FLUSH_ROUNDS = 200       # PCAP_BATCH-packet reads while emptying the ring for a dump
EXPORT_WAIT = 5.0        # seconds SIGTERM waits for the export to be sent or spooled


# --------------------------------------------------------------------------- start-up

def start(settings: Settings, foreground: bool, log_stream: IO[str] | None = None) -> int:
    """Open the capture and sockets as root, then run (detached unless ``foreground``).

    In the background case the calling process waits until the daemon has
    written its pid file, so ``nc.sniffer start && nc.sniffer dump`` works and
    a failure is reported on the terminal.
    """
    stream = log_stream or sys.stderr
    check_directories(settings)
    remove_leftovers(settings)
    cap = capture.open_live(settings.interface, settings.snaplen, settings.promiscuous, settings.bpf,
                            settings.connections)
    listener = open_listener(settings) if settings.port else None
    sniffer = Sniffer(settings, cap.linktype, WallClock(interval=TICK), device=settings.interface)
    resolver = make_resolver(settings, sniffer.acct)
    server = open_metrics(settings)
    if foreground:
        setup_logging(foreground=True, settings=settings)
        return _run_holding_pid_file(settings, Daemon(settings, cap, listener, sniffer, resolver,
                                                      server))

    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child:
        os.close(ready_w)
        message = _read_ready(ready_r)
        os.waitpid(child, 0)
        if message.startswith("ok"):
            return 0
        stream.write(f"nc.sniffer: {message or 'the daemon exited during start-up'}\n")
        return 2
    os.close(ready_r)
    code = 2
    tell = _Teller(ready_w)
    try:
        keep = [ready_w, cap.fileno()] + ([listener.fileno()] if listener else []) + \
               ([resolver.fileno()] if resolver else []) + ([server.fileno()] if server else [])
        ctx = pydaemon.DaemonContext(files_preserve=keep, working_directory="/",
                                     umask=0o022, signal_map={}, prevent_core=False)
        ctx.open()
        setup_logging(foreground=False, settings=settings)
        d = Daemon(settings, cap, listener, sniffer, resolver, server)
        code = _run_holding_pid_file(settings, d, ready=lambda: tell("ok"))
    except NcSnifferError as exc:
        tell(str(exc))
    except BaseException as exc:  # the daemon must say why it died, then go
        tell(f"{type(exc).__name__}: {exc}")
        log.exception("daemon failed")
    finally:
        os._exit(code)


def _run_holding_pid_file(settings: Settings, daemon: "Daemon", ready=None) -> int:
    """Run with the pid file written, and removed however the run ends; a foreground
    daemon (``-d``, systemd) holds it like a detached one."""
    pidfile.write_pid(settings.pid_file, os.getpid())
    try:
        drop_privileges(settings)
        if ready is not None:
            ready()
        daemon.notifier.ready(f"capturing on {settings.interface}")
        return daemon.run()
    finally:
        pidfile.remove_pid(settings.pid_file, os.getpid())


def _read_ready(fd: int) -> str:
    deadline = time.monotonic() + READY_TIMEOUT
    chunks = []
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    while time.monotonic() < deadline:
        if sel.select(max(deadline - time.monotonic(), 0)):
            data = os.read(fd, 4096)
            if not data:
                break
            chunks.append(data)
            if b"".join(chunks).startswith(b"ok"):
                break
    os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")


class _Teller:
    """Tell the starting process once how the start went (the pipe is closed after,
    and its descriptor number may be reused: never written again)."""

    def __init__(self, fd: int):
        self.fd: int | None = fd

    def __call__(self, message: str) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.write(fd, message.encode()[:4000])
        except OSError:
            pass
        os.close(fd)


def open_listener(settings: Settings) -> socket.socket:
    """The dump-request socket, bound exclusively (no SO_REUSEADDR: a second daemon
    on the port would take the first one's requests)."""
    family = socket.AF_INET6 if ":" in settings.listen_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    where = f"{settings.listen_host}:{settings.port}"
    try:
        sock.bind((settings.listen_host, settings.port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise NcSnifferError(f"dump port {where} already in use") from exc
        raise NcSnifferError(f"cannot listen on {where}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


def make_resolver(settings: Settings, acct):
    """The reverse-DNS resolver, when names are wanted (its socket opens now, as root);
    ``acct`` tells its queue which names are due."""
    if not settings.resolve:
        return None
    from ncsniffer import resolver
    r = resolver.Resolver(settings, acct)
    acct.names = r.queue
    return r


def open_metrics(settings: Settings):
    """The /metrics listener, bound now (as root; a port in use fails the start)."""
    if not settings.metrics:
        return None
    from ncsniffer import metrics
    return metrics.MetricsServer(settings.metrics)


def setup_logging(foreground: bool, settings: Settings) -> None:
    """stderr in the foreground; syslog when detached (a file in piddir if no syslog)."""
    log.handlers[:] = []
    log.setLevel(logging.INFO)
    log.propagate = False
    if foreground:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{settings.name}: %(message)s"))
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log",
                                                 facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter(f"{settings.name}[%(process)d]: %(message)s"))
    else:
        handler = log_file_handler(os.path.join(settings.piddir, settings.name + ".log"))
        handler.setFormatter(logging.Formatter(f"%(asctime)s {settings.name}[%(process)d]: %(message)s"))
    log.addHandler(handler)


def log_file_handler(path: str) -> logging.Handler:
    """Append to the fallback log without following a symlink planted in piddir."""
    try:
        fd = safefile.open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except OSError as exc:
        raise NcSnifferError(f"cannot open log file '{path}': {exc.strerror}") from exc
    return logging.StreamHandler(open(fd, "a", encoding="utf-8", errors="replace"))


def remove_leftovers(settings: Settings) -> None:
    """Temporary files of writers that are gone (a dump child killed with its
    daemon, a crash) are removed at start, so none pile up."""
    for path in (settings.pid_file, settings.stats_file):
        if path:
            safefile.remove_stale_tmp(path, alive=host.process_exists)


def check_directories(settings: Settings) -> None:
    """Refuse a pid or stats directory every user may write (unless sticky):
    the root daemon writes there."""
    safefile.check_directory(settings.piddir, "pid directory")
    if settings.stats_file:
        safefile.check_directory(settings.sniffer, "sniffer directory")


def drop_privileges(settings: Settings) -> None:
    """Become ``user``/``group`` once the capture is open; keep our files writable."""
    if not settings.user and not settings.group:
        return
    try:
        uid = pwd.getpwnam(settings.user).pw_uid if settings.user else os.getuid()
        gid = (grp.getgrnam(settings.group).gr_gid if settings.group
               else pwd.getpwnam(settings.user).pw_gid)
    except KeyError as exc:
        raise NcSnifferError(f"unknown user or group: {exc.args[0]}") from exc
    for path in (settings.pid_file, settings.stats_file, getattr(settings, "events", None)):
        _chown_if_present(path, uid, gid)
    os.setgroups([gid])
    os.setgid(gid)
    os.setuid(uid)
    if settings.stats_file and not os.access(os.path.dirname(settings.stats_file), os.W_OK):
        raise NcSnifferError(f"sniffer directory '{settings.sniffer}' is not writable "
                             f"by user '{settings.user}'")


def _chown_if_present(path: str | None, uid: int, gid: int) -> None:
    """Hand our file to the daemon user, by descriptor (never a planted symlink's target)."""
    if not path:
        return
    try:
        safefile.chown_regular(path, uid, gid)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise NcSnifferError(f"cannot hand '{path}' to uid {uid}: {exc.strerror}") from exc


# --------------------------------------------------------------------------- the loop

DUMP_MIN_SECONDS = 60.0            # a dump child still writing after this is killed ...
DUMP_SECONDS_PER_RECORD = 50e-6    # ... plus this per record (1M records: 110 s)
KILL_GRACE = 5.0                   # after SIGKILL, then given up on (hung I/O)
WAIT_STEP = 0.05


def dump_limit(records: int) -> float:
    """How long a dump of ``records`` records may take: generous, so only a hung
    disk, a FIFO or a stopped child reaches it."""
    return DUMP_MIN_SECONDS + records * DUMP_SECONDS_PER_RECORD


@dataclass
class DumpChild:
    """The dump being written by a forked child, and what it is for."""

    pid: int
    hup: bool
    started: float
    limit: float
    killed: bool = False

    def failure(self, status: int) -> str | None:
        """Why the dump was not written (None: it was), from the child's wait status."""
        if self.killed:
            return f"killed after {self.limit:g} s"
        if os.WIFSIGNALED(status):
            return f"the dump process died of signal {os.WTERMSIG(status)}"
        if os.waitstatus_to_exitcode(status):
            return f"the dump failed, exit status {os.waitstatus_to_exitcode(status)}"
        return None


class Daemon:
    """The running daemon: owns the capture, the sockets, the sniffer and the dumps."""

    def __init__(self, settings: Settings, cap, listener, sniffer: Sniffer, resolver,
                 metrics=None):
        self.settings = settings
        self.cap = cap
        self.listener = listener
        self.sniffer = sniffer
        self.clock = sniffer.clock      # wall time: one now per loop turn; after the purge,
        self.clock.every_second(self._tick)     # the per-second jobs of the loop itself
        self.resolver = resolver
        self.allowed = {_norm(a) for a in settings.allowed}
        self.dump: DumpChild | None = None
        self.dump_wanted = False
        self.hup_wanted = False
        self.dump_due = 0.0           # monotonic time the wanted dump may start
        self.first_request = 0.0      # of those the wanted dump serves
        self.last_request = 0.0
        self.flags: set[int] = set()
        self.running = True
        self.refused = 0
        self.wake_r, self.wake_w = os.pipe()
        self.notifier = notify.Notifier()
        self.metrics = metrics         # a metrics.MetricsServer, or None
        self.dumps = 0                 # stats files written, and the last one's wall time
        self.dump_seconds = 0.0
        self.export = None
        if settings.clickhouse is not None:
            from ncsniffer import export    # only then (the driver too); its thread: after the fork
            self.export = export.start(settings, sniffer.acct, self.clock, replay=False)
        self.events = eventsmod.from_settings(    # the log, the feed (10.4), the export, or None
            settings, export=self.export and self.export.ended)
        sniffer.events = self.events       # the tracker's events reach them

    # signals only set flags; the loop acts on them
    def _on_signal(self, signum, frame) -> None:
        self.flags.add(signum)

    def _install_signals(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def run(self) -> int:
        self._install_signals()
        sel = selectors.DefaultSelector()
        sel.register(self.cap.fileno(), selectors.EVENT_READ, "pcap")
        sel.register(self.wake_r, selectors.EVENT_READ, "signal")
        if self.listener is not None:
            sel.register(self.listener, selectors.EVENT_READ, "udp")
        if self.resolver is not None:
            sel.register(self.resolver.fileno(), selectors.EVENT_READ, "dns")
        if self.events is not None:
            self.events.attach(sel)          # its keys' data: handlers to call
        s = self.settings
        log.info("started on %s (%s), bpf '%s'%s", s.interface,
                 "promiscuous" if s.promiscuous else "non-promiscuous", s.bpf,
                 f", dump requests on {s.listen_host}:{s.port}" if s.port else "")
        clock = self.clock
        if self.metrics is not None:
            self._publish()
            self.metrics.serve()
        while self.running:
            waiting = self.dump_wanted and self.dump_child is None    # else: no spinning
            until = min(clock.next_tick, self.dump_due) if waiting else clock.next_tick
            timeout = max(0.0, min(until - time.monotonic(), 0.1))
            selected = sel.select(timeout)
            ready = {key.data for key, _ in selected if isinstance(key.data, str)}
            now = clock.update()             # this turn's now, for every decision in it
            self._drain_capture()
            for key, mask in selected:
                if callable(key.data):
                    key.data(mask)           # the events feed's listener and subscribers
            if "signal" in ready:
                _drain(self.wake_r)
            if "udp" in ready:
                self._serve_requests()
            if "dns" in ready:
                self.resolver.on_readable(now)
            if self.resolver is not None:
                self.resolver.tick(now)
            self._handle_flags()
            self._start_dump_if_wanted()
            clock.tick_if_due()              # the purge, then ``_tick``
        return 0

    def _drain_capture(self, rounds: int = 20) -> None:
        for _ in range(rounds):       # bounded, so requests and signals get served
            got = self.cap.read_batch(PCAP_BATCH)
            if got is None:
                break
            self.sniffer.process(got)
            if len(got.offs) < PCAP_BATCH:
                break

    def _tick(self, now: int, elapsed: int = 1) -> None:
        """The loop's own per-second work (the clock ran the purge before it)."""
        self.notifier.ping()
        self._start_dump_if_wanted()     # reaps, and starts one that waited its turn
        if self.metrics is not None:
            self._publish()
        gc.freeze()          # records never form cycles: keep the collector off them

    def _publish(self) -> None:
        """Hand the metrics server this second's snapshot (it never reads live state)."""
        dns = self.resolver.lookups.counters if self.resolver is not None else None
        export = self.export.exporter.counters() if self.export is not None else None
        self.metrics.publish(snapshot.take(self.sniffer, self.clock.now, self.cap.stats(), dns,
                                           self.dumps, self.dump_seconds,
                                           self.settings.metrics_top, export))

    # ------------------------------------------------------------------ requests
    def _serve_requests(self) -> None:
        for _ in range(UDP_BATCH):
            try:
                data, addr = self.listener.recvfrom(512)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.warning("dump listener: %s", exc)
                break
            if _norm(addr[0]) not in self.allowed:
                self.refused += 1
                if self.refused <= 10 or self.refused % 1000 == 0:
                    log.warning("dump request from %s refused (not allowed; %d so far)",
                                addr[0], self.refused)
                continue
            if data.startswith(b"dump"):
                reply = f"OK {self.clock.now}".encode()
                self._want_dump()
            else:
                reply = b"??"
            try:
                self.listener.sendto(reply, addr)
            except OSError:
                pass
        self._start_dump_if_wanted()

    # ------------------------------------------------------------------ signals
    def _handle_flags(self) -> None:
        if not self.flags:
            return
        flags, self.flags = self.flags, set()
        if flags & {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}:
            self._terminate()
            return
        if signal.SIGHUP in flags:
            self.hup_wanted = True
            self._want_dump()
            if self.events is not None:
                self.events.reopen()           # log rotation: the events file anew
            flags.discard(signal.SIGUSR1)      # the HUP dump serves it
        if signal.SIGUSR1 in flags:
            self._want_dump()

    def _terminate(self) -> None:
        self.notifier.stopping()
        self._flush_capture()      # what the kernel already holds is counted too
        self._wait_dump()
        try:
            self.write_dump()
        except NcSnifferError as exc:
            log.error("final dump failed: %s", exc)
        # final dump, then drain (open connections as ``drained``) to the log and the
        # feed, then close
        eventsmod.drain(self.events, eventsmod.still_open(self.sniffer))
        if self.export is not None:
            log.info("%s", self.export.finish(self.clock.update(), EXPORT_WAIT))
        self._log_counters("stopped")
        if self.settings.pid_file:
            pidfile.remove_pid(self.settings.pid_file, os.getpid())
        self.running = False

    # ------------------------------------------------------------------ dumps
    def _want_dump(self) -> None:
        """A dump request (UDP or SIGUSR1): its dump waits out the ring's block timeout."""
        now = time.monotonic()
        if not self.dump_wanted:
            self.first_request = now
        self.dump_wanted = True
        self.last_request = now
        # one dump for requests close together (a flood cannot put it off for long)
        self.dump_due = min(now + FLUSH_WAIT, self.first_request + MAX_DUMP_DELAY)

    def _start_dump_if_wanted(self) -> None:
        """Start the wanted dump, unless one is being written (then it waits its turn)."""
        self._reap_dump()
        if self.dump_child is not None:
            return              # the wanted dump waits its turn
        now = time.monotonic()
        if not (self.dump_wanted or self.hup_wanted) or now < self.dump_due:
            return
        self._drain_capture(FLUSH_ROUNDS)
        now = self.clock.update()        # the drain took a while: the dump's own moment
        # requests of the last FLUSH_WAIT may lack packets still in a block: next dump
        self.dump_wanted = self.last_request + FLUSH_WAIT > now
        self.dump_due = self.last_request + FLUSH_WAIT
        self.first_request = self.last_request
        if self.hup_wanted:
            self.hup_wanted = False
            self._dump_in_child(now, hup=True)
            if self.export is not None:
                self.export.cutter.cut(now)    # the interval ends with the records it counted
            self.sniffer.reset(now)        # the child holds the snapshot
            if self.resolver is not None:
                self.resolver.reset()      # no name is due in the new records yet
        else:
            self._dump_in_child(now)

    def _flush_capture(self) -> None:
        """Count every packet received until now, waiting out the block timeout."""
        deadline = time.monotonic() + FLUSH_WAIT
        while time.monotonic() < deadline:
            self._drain_capture()
            time.sleep(FLUSH_STEP)
        self._drain_capture(FLUSH_ROUNDS)

    def _dump_in_child(self, current: int, hup: bool = False) -> None:
        """Fork: the child writes its copy-on-write snapshot and exits; capture goes on."""
        self._log_counters("dump")
        if self.settings.stats_file is None:      # -d: to stderr, in this process
            began = time.monotonic()
            self.write_dump(current)
            self._dump_done(hup, None, time.monotonic() - began)
            return
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _die_with_parent(parent)
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                    signal.signal(sig, signal.SIG_DFL)
                self.write_dump(current)
                code = 0
            except NcSnifferError as exc:
                log.error("%s", exc)
            except BaseException:
                log.exception("dump failed")
            finally:
                os._exit(code)
        self.dump = DumpChild(pid, hup, time.monotonic(), dump_limit(len(self.sniffer.acct.records)))

    @property
    def dump_child(self) -> int | None:
        return self.dump.pid if self.dump else None

    def write_dump(self, current: int | None = None) -> None:
        self.sniffer.dump(self.clock.update() if current is None else current)

    def _reap_dump(self) -> None:
        """Collect a finished dump child; kill one that is over its time limit."""
        dump = self.dump
        if dump is None:
            return
        try:
            pid, status = os.waitpid(dump.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = dump.pid, 0
        if pid:
            self.dump = None
            self._dump_done(dump.hup, dump.failure(status), time.monotonic() - dump.started)
        elif not dump.killed and time.monotonic() - dump.started > dump.limit:
            os.kill(dump.pid, signal.SIGKILL)
            dump.killed = True
            log.error("dump process killed after %g s (it had not finished)", dump.limit)

    def _wait_dump(self) -> None:
        """Wait for the dump child, killing it at its limit; give up on one that
        even SIGKILL does not end (a process stuck in a hung disk's I/O)."""
        while self.dump is not None:
            self._reap_dump()
            dump = self.dump
            if dump is not None and time.monotonic() - dump.started > dump.limit + KILL_GRACE:
                log.error("dump process %d does not exit; not waiting for it", dump.pid)
                self.dump = None
            elif dump is not None:
                time.sleep(WAIT_STEP)

    def _dump_done(self, hup: bool, failure: str | None, seconds: float = 0.0) -> None:
        """Log the outcome; a SIGHUP's line says whether its stats were written."""
        if failure is None:
            self.dumps, self.dump_seconds = self.dumps + 1, seconds
        if hup and failure is None:
            log.info("SIGHUP: stats written, counters reset")
        elif hup:
            log.error("SIGHUP: stats not written (%s), counters reset", failure)
        elif failure is not None:
            log.error("dump not written (%s)", failure)

    def _log_counters(self, what: str) -> None:
        received, dropped, ifdropped = self.cap.stats()
        line = (f"{what}: {self.sniffer.counters_text()}; pcap received {received}, "
                f"dropped {dropped}, interface dropped {ifdropped}")
        if self.refused:
            line += f"; {self.refused} dump requests refused"
        if self.resolver is not None:
            line += "; dns " + self.resolver.counters_text()
        if self.events is not None:
            line += "; " + self.events.counters_text()
        log.info("%s", line)


PR_SET_PDEATHSIG = 1        # prctl(2)


def _die_with_parent(parent: int) -> None:
    """A dump child must not outlive its daemon: after a ``kill -9`` and a restart
    it would write on while the new daemon dumps."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("dump child: prctl(PR_SET_PDEATHSIG): %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:        # the daemon died before prctl took effect
        os._exit(1)


def _norm(address: str) -> str:
    """Compare addresses as text, folding IPv4-mapped IPv6 (::ffff:a.b.c.d) to IPv4."""
    address = address.split("%")[0]
    if address.startswith("::ffff:") and "." in address:
        return address[7:]
    return address


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass
    except OSError as exc:
        if exc.errno != errno.EAGAIN:
            raise
