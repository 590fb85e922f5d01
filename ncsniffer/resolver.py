"""Reverse DNS lookups: the PTR names of each peer, with the SOA fallback (SPEC 5).

Two layers, as in dnspython itself.  :class:`Lookups` makes every decision
(which IP is looked up when, which response is accepted, what it means for
the record) and never touches a socket, so its tests need no network.
:class:`Resolver` owns one non-blocking UDP socket and drives ``Lookups``
from the daemon's event loop; :func:`offline_lookups` drives a ``Resolver``
while a capture file is replayed (``nc.sniffer -r``).

Two clocks are involved.  ``now`` (epoch seconds, packet time when replaying)
only sets a record's ``T``.  Everything that protects the name server, the
query rate, the 300 s query timeout and its 15 s sweep, runs on
``time.monotonic()``: a replay goes through hours of packets per second of wall
time, and the server must not see hours' worth of queries per second; in the
daemon a monotonic clock also survives the wall clock being set back.

This is the only module that imports dnspython.
"""

from __future__ import annotations

import ipaddress
import itertools
import secrets
import select
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import IO, Callable, Iterable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename

from ncsniffer import config as configmod
from ncsniffer.accounting import ONEDAY, Accounting
from ncsniffer.errors import ResolverError
from ncsniffer.table import Table

QUERY_TIMEOUT = 300       # seconds a query waits for its answer (SPEC 5)
EXPIRE_EVERY = 15         # seconds between sweeps of timed-out queries (SPEC 5)
EDNS_PAYLOAD = 1232       # advertised UDP size: fewer TC answers for hosts with many PTRs
RECV_BATCH = 1000         # datagrams read per on_readable() call, at most
# receive buffer asked per query in flight: a 512-byte answer's share with the kernel's
# overhead (it doubles what is asked); the default buffer held fewer than 500 answers
ANSWER_ROOM = 1024
MAX_OUTSTANDING = 4096    # upper bound of dns_max_outstanding (ids are 16 bits)
ID_TRIES = 64             # random ids tried before giving up on a query for this tick
RESOLV_CONF = "/etc/resolv.conf"
# One 64 KB answer can carry thousands of compressed PTR names of ~1,000
# characters each as text: keep what a report can use.  A name in plain text is
# at most 253 characters; a longer one is mostly \DDD escapes, and is dropped.
MAX_NAMES = 16            # names kept per address
MAX_NAME_CHARS = 255      # longest name kept, as text

# Outcomes of one datagram, also the names of the counters.
ANSWERED = "answered"     # accepted, names stored in the record
EMPTY = "empty"           # accepted, but no PTR target / no SOA: nothing to store
REJECTED = "rejected"     # a response to our query that SPEC 5 does not accept
IGNORED = "ignored"       # not a response to an outstanding query of ours
GONE = "gone"             # accepted, but the IP's record no longer exists


# --------------------------------------------------------------------------- messages

def reverse_name(key: bytes) -> dns.name.Name:
    """``d.c.b.a.in-addr.arpa.`` for a packed IPv4 key, the ``ip6.arpa.`` nibbles for IPv6."""
    return dns.reversename.from_address(str(ipaddress.ip_address(key)))


def make_query(qname: dns.name.Name, qid: int) -> bytes:
    """The wire form of a recursive PTR query for ``qname`` with id ``qid``."""
    query = dns.message.make_query(qname, dns.rdatatype.PTR, dns.rdataclass.IN,
                                   use_edns=0, payload=EDNS_PAYLOAD, id=qid)
    return query.to_wire()


def parse(wire: bytes) -> dns.message.Message | None:
    """A message from the wire, or None if it is garbage."""
    try:
        return dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError, TypeError, KeyError, IndexError,
            UnicodeError, OverflowError) as exc:
        del exc   # garbage from the network is expected; it is counted, not raised
        return None


def asks(msg: dns.message.Message, qname: dns.name.Name) -> bool:
    """True if ``msg`` carries exactly our question: ``qname`` PTR IN, nothing else."""
    if len(msg.question) != 1:
        return False
    q = msg.question[0]
    return q.name == qname and q.rdtype == dns.rdatatype.PTR and q.rdclass == dns.rdataclass.IN


@dataclass(frozen=True)
class Verdict:
    """What a response to our query means: an outcome and, if ANSWERED, names and TTL."""

    outcome: str
    names: tuple[str, ...] = ()
    ttl: int = 0


def judge(msg: dns.message.Message) -> Verdict:
    """Apply the acceptance rules of SPEC 5 to a response whose id and question are ours.

    Accepted: QR set, opcode QUERY, TC clear, rcode not SERVFAIL, and either NOERROR
    with answers (names: the PTR targets; TTL of the last answer record) or NXDOMAIN
    with authority records (name: ``':' + MNAME`` of the first SOA; its TTL).
    dnspython gathers the records of an RRset, which share one TTL (RFC 2181 5.2;
    it keeps the smallest if they differ), so "the last record" is the last RRset.
    """
    flags = msg.flags
    if not flags & dns.flags.QR or msg.opcode() != dns.opcode.QUERY or flags & dns.flags.TC:
        return Verdict(REJECTED)
    rcode = msg.rcode()
    names: list[str] = []
    ttl = 0
    if rcode == dns.rcode.NOERROR and msg.answer:
        targets = []
        for rrset in msg.answer:
            ttl = rrset.ttl
            if rrset.rdtype == dns.rdatatype.PTR:
                targets.extend(rdata.target for rdata in rrset)
        names = filter_names(_text(t) for t in targets)
    elif rcode == dns.rcode.NXDOMAIN and msg.authority:
        for rrset in msg.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                ttl = rrset.ttl
                names = filter_names([":" + _text(rrset[0].mname)])
                break
    else:
        return Verdict(REJECTED)
    if not names:
        return Verdict(EMPTY)
    return Verdict(ANSWERED, tuple(names), ttl)


def filter_names(names: Iterable[str]) -> list[str]:
    """Drop names containing ``in-addr.arpa`` (any case), unless that would leave none;
    keep at most MAX_NAMES names of at most MAX_NAME_CHARS characters."""
    kept: list[str] = []
    arpa: list[str] = []
    for name in names:
        if len(name) > MAX_NAME_CHARS:
            continue
        if "in-addr.arpa" not in name.lower():
            kept.append(name)
            if len(kept) == MAX_NAMES:
                break
        elif len(arpa) < MAX_NAMES:
            arpa.append(name)
    return kept or arpa


def _text(name: dns.name.Name) -> str:
    # No trailing dot; odd bytes come out as \DDD escapes, so the text is printable ASCII.
    return name.to_text(omit_final_dot=True)


# --------------------------------------------------------------------------- decisions

class LookupQueue:
    """The IPs waiting for a name, in the order their names fell due; the
    accounting's ``Names`` sink (``want``, ``drop``), owned by the resolver."""

    def __init__(self) -> None:
        self._keys: dict[bytes, None] = {}

    def want(self, key: bytes) -> None:
        """Queue ``key`` at the end, unless it waits already."""
        self._keys.setdefault(key)

    put_back = want

    def drop(self, key: bytes) -> None:
        """``key``'s record is gone: it needs no name."""
        self._keys.pop(key, None)

    def take(self, limit: int) -> list[bytes]:
        """Remove up to ``limit`` keys from the head and return them."""
        keys = list(itertools.islice(self._keys, limit))
        for key in keys:
            del self._keys[key]
        return keys

    def clear(self) -> None:
        self._keys.clear()

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self):
        return iter(self._keys)

    def __contains__(self, key) -> bool:
        return key in self._keys


@dataclass
class Pending:
    """One outstanding query."""

    key: bytes
    qname: dns.name.Name
    deadline: float      # monotonic time after which it is forgotten
    old_t: int           # the record's T before sending, restored if the send fails


class Lookups:
    """The resolver's state and decisions, without I/O.

    ``queue`` holds the IPs whose names are due (the accounting says which);
    the names go to the records of ``acct``, reached through it each time
    because a SIGHUP reset replaces its table.  ``reset`` (SIGHUP) empties the
    queue; queries already sent still answer into the new records.
    """

    def __init__(self, acct: Accounting, server: tuple[str, int], max_outstanding: int,
                 max_qps: int, clock: Callable[[], float] = time.monotonic,
                 random_id: Callable[[], int] | None = None):
        self.acct = acct
        self.queue = LookupQueue()
        self.server = server
        # Ids are 16 bits: keep the table sparse so that a random id is free at once.
        self.max_outstanding = max(1, min(max_outstanding, MAX_OUTSTANDING))
        self.max_qps = max(1, max_qps)
        self.clock = clock
        self.random_id = random_id or (lambda: secrets.randbelow(65536))
        self.outstanding: dict[int, Pending] = {}    # by id; insertion order = deadline order
        self.pending_keys: dict[bytes, int] = {}     # key -> id of its outstanding query
        self.recent: deque[float] = deque()          # send times within the last second
        self.next_expire = clock() + EXPIRE_EVERY
        self.counters = dict.fromkeys(("sent", ANSWERED, EMPTY, REJECTED, IGNORED, GONE,
                                       "timed out", "skipped", "errors"), 0)

    @property
    def records(self) -> Table:
        return self.acct.records

    def reset(self) -> None:
        """SIGHUP: the counters start over, so no IP waits for a name any more."""
        self.queue.clear()

    # ----------------------------------------------------------------- sending
    def budget(self) -> int:
        """How many queries may go out now: bounded by outstanding room and the rate."""
        t = self.clock()
        recent = self.recent
        while recent and recent[0] <= t - 1.0:
            recent.popleft()
        return max(0, min(self.max_qps - len(recent),
                          self.max_outstanding - len(self.outstanding)))

    def take(self, limit: int) -> list[bytes]:
        """Remove up to ``limit`` keys from the head of the lookup queue and return them."""
        return self.queue.take(limit)

    def start(self, key: bytes, now: int) -> tuple[int, bytes] | None:
        """Begin the lookup of ``key``: set T = now + 1 day, register the query.

        Returns ``(id, wire)`` to send, or None when there is nothing to send (the
        record is gone, its query is already outstanding, or no free id was found).
        """
        old_t = self.records.set_expiry(key, now + ONEDAY)   # retry in a day if nothing
        if old_t is None:                                     # usable answers
            self.counters["skipped"] += 1
            return None
        if key in self.pending_keys:   # e.g. queued again after a SIGHUP reset
            self.counters["skipped"] += 1
            return None
        for _ in range(ID_TRIES):
            qid = self.random_id() & 0xFFFF
            if qid not in self.outstanding:
                break
        else:
            self.records.set_expiry(key, old_t)
            self.queue.put_back(key)
            return None
        qname = reverse_name(key)
        t = self.clock()
        self.outstanding[qid] = Pending(key, qname, t + QUERY_TIMEOUT, old_t)
        self.pending_keys[key] = qid
        self.recent.append(t)
        self.counters["sent"] += 1
        return qid, make_query(qname, qid)

    def cancel(self, qid: int) -> None:
        """The query ``qid`` could not be sent: forget it, queue its key again, restore T."""
        p = self.outstanding.pop(qid, None)
        if p is None:
            return
        self.pending_keys.pop(p.key, None)
        self.counters["sent"] -= 1
        if self.recent:
            self.recent.pop()
        if self.records.set_expiry(p.key, p.old_t) is not None:
            self.queue.put_back(p.key)

    def expire(self) -> int:
        """Every EXPIRE_EVERY seconds, forget queries whose deadline has passed."""
        t = self.clock()
        if t < self.next_expire:
            return 0
        self.next_expire = t + EXPIRE_EVERY
        expired = []
        for qid, p in self.outstanding.items():   # deadlines grow with insertion order
            if p.deadline >= t:
                break
            expired.append(qid)
        for qid in expired:
            p = self.outstanding.pop(qid)
            self.pending_keys.pop(p.key, None)
        self.counters["timed out"] += len(expired)
        return len(expired)

    # ----------------------------------------------------------------- receiving
    def receive(self, wire: bytes, source: tuple, now: int) -> str:
        """Handle one datagram from ``source``; return its outcome (a counter name)."""
        outcome = self._receive(wire, source, now)
        self.counters[outcome] += 1
        return outcome

    def _receive(self, wire: bytes, source: tuple, now: int) -> str:
        if not _same_address(source, self.server) or len(wire) < 12:
            return IGNORED
        qid = int.from_bytes(wire[:2], "big")
        p = self.outstanding.get(qid)
        if p is None:                      # unknown id, duplicate or late answer
            return IGNORED
        msg = parse(wire)
        if msg is None or not msg.flags & dns.flags.QR or not asks(msg, p.qname):
            return IGNORED                 # garbage or not an answer to this query
        del self.outstanding[qid]          # answered, acceptable or not
        self.pending_keys.pop(p.key, None)
        verdict = judge(msg)
        if verdict.outcome != ANSWERED:
            return verdict.outcome
        if not self.records.set_names(p.key, list(verdict.names), now + verdict.ttl):
            return GONE
        return ANSWERED

    def text(self) -> str:
        """The counters on one line, for the log."""
        c = self.counters
        return (f"{_endpoint(self.server)}: {c['sent']} sent, {c[ANSWERED]} answered, "
                f"{c[EMPTY]} without name, {c[REJECTED]} rejected, {c['timed out']} timed out, "
                f"{c[GONE]} for records gone, {c[IGNORED]} ignored, {c['errors']} socket errors; "
                f"{len(self.outstanding)} outstanding, {len(self.queue)} queued")


def _same_address(source: tuple, server: tuple[str, int]) -> bool:
    try:
        return source[1] == server[1] and ipaddress.ip_address(source[0]) == \
            ipaddress.ip_address(server[0])
    except (ValueError, IndexError, TypeError):
        return False


def _endpoint(server: tuple[str, int]) -> str:
    ip, port = server
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# --------------------------------------------------------------------------- configuration

def system_nameserver(path: str = RESOLV_CONF) -> str | None:
    """The first usable ``nameserver`` of resolv.conf, or None."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read(1 << 16).splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            address = fields[1].split("%", 1)[0]     # drop an IPv6 zone index
            try:
                return str(ipaddress.ip_address(address))
            except ValueError:
                continue
    return None


def server_address(settings, resolv_conf: str = RESOLV_CONF) -> tuple[str, int]:
    """(IP, port) of the name server: the ``nameserver`` key, else resolv.conf's first."""
    text = settings.nameserver or system_nameserver(resolv_conf)
    if not text:
        raise ResolverError(f"no 'nameserver' configured and none in {resolv_conf}; "
                            f"set 'nameserver' or 'resolve': False")
    ip, port = configmod.parse_nameserver(text)
    if ip is None:
        raise ResolverError(f"invalid nameserver '{text}'")
    return ip, port


def _open_socket(server: tuple[str, int], answers: int = 0) -> socket.socket:
    """A non-blocking UDP socket connected to the server, on a kernel-chosen random port,
    with room for ``answers`` answers waiting to be read (the kernel drops what does
    not fit; it caps the room at net.core.rmem_max).

    Connecting makes the kernel drop datagrams from any other address or port.
    """
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        raise ResolverError(f"cannot open a DNS socket: {exc.strerror or exc}") from exc
    try:
        sock.setblocking(False)
        if answers * ANSWER_ROOM > sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, answers * ANSWER_ROOM)
        sock.connect(server)
    except OSError as exc:
        sock.close()
        raise ResolverError(f"cannot reach nameserver {_endpoint(server)}: "
                            f"{exc.strerror or exc}") from exc
    return sock


# --------------------------------------------------------------------------- I/O

class Resolver:
    """One UDP socket to the name server, driven by the daemon's event loop.

    The daemon registers ``fileno()`` for reading and calls ``on_readable(now)``
    when it is readable, and ``tick(now)`` at least once a second and after each
    batch of packets; it makes ``queue`` the accounting's ``names``.  Nothing
    here ever blocks.
    """

    def __init__(self, settings, acct: Accounting, clock: Callable[[], float] = time.monotonic,
                 resolv_conf: str = RESOLV_CONF):
        self.server = server_address(settings, resolv_conf)
        self.lookups = Lookups(acct, self.server, settings.dns_max_outstanding,
                               settings.dns_max_qps, clock=clock)
        self.sock = _open_socket(self.server, settings.dns_max_outstanding)
        self._buf = bytearray(65535)

    @property
    def queue(self) -> LookupQueue:
        """The IPs waiting for a name: the accounting's ``names`` sink."""
        return self.lookups.queue

    def reset(self) -> None:
        """SIGHUP: empty the queue (the accounting starts over)."""
        self.lookups.reset()

    def fileno(self) -> int:
        """The UDP socket, to register for reading."""
        return self.sock.fileno()

    def on_readable(self, now: int) -> None:
        """Read and handle every datagram waiting on the socket (a bounded number)."""
        lookups, buf, sock = self.lookups, self._buf, self.sock
        for _ in range(RECV_BATCH):
            try:
                n, source = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:            # e.g. ICMP port unreachable reported on a connected socket
                lookups.counters["errors"] += 1
                continue
            lookups.receive(bytes(buf[:n]), source, now)

    def tick(self, now: int) -> None:
        """Forget timed-out queries (every 15 s); send queued lookups within the limits."""
        lookups = self.lookups
        lookups.expire()
        budget = lookups.budget()
        remaining = len(lookups.queue)   # each key is looked at once per tick
        while budget > 0 and remaining > 0:
            keys = lookups.take(min(budget, remaining))
            if not keys:
                break
            remaining -= len(keys)
            for i, key in enumerate(keys):
                started = lookups.start(key, now)
                if started is None:
                    continue
                qid, wire = started
                if not self._send(qid, wire):
                    for rest in keys[i + 1:]:         # back in the queue, for the next tick
                        lookups.queue.put_back(rest)
                    return
                budget -= 1

    def _send(self, qid: int, wire: bytes) -> bool:
        try:
            self.sock.send(wire)
            return True
        except OSError:      # full buffer or an ICMP error from an earlier datagram
            self.lookups.cancel(qid)
            self.lookups.counters["errors"] += 1
            return False

    @property
    def busy(self) -> bool:
        """True while queries are outstanding."""
        return bool(self.lookups.outstanding)

    def counters_text(self) -> str:
        """sent / answered / timed out / rejected / dropped counters on one line, for the log."""
        return self.lookups.text()

    def close(self) -> None:
        """Close the socket; outstanding queries are forgotten."""
        self.sock.close()


# --------------------------------------------------------------------------- offline

PROBE_WAIT = 2.0       # seconds to wait for the name server to answer the probe
FINISH_WAIT = 5.0      # seconds the final dump of a replay waits for lookups, at most
FINISH_SEND_STOP = 1.0  # ... of which the last second only collects answers


def probe(server: tuple[str, int], wait: float | None = None) -> bool:
    """True if the name server answers a PTR query (any rcode) within ``wait`` seconds."""
    wait = PROBE_WAIT if wait is None else wait
    try:
        sock = _open_socket(server)
    except ResolverError:
        return False
    try:
        loopback = "::1" if ":" in server[0] else "127.0.0.1"
        qname = reverse_name(ipaddress.ip_address(loopback).packed)
        qid = secrets.randbelow(65536)
        wire = make_query(qname, qid)
        deadline = time.monotonic() + wait
        for attempt in range(2):            # one retry, half way
            try:
                sock.send(wire)
            except OSError:
                pass
            until = min(deadline, time.monotonic() + wait / 2) if attempt == 0 else deadline
            for _ in range(100):            # bounded even if junk keeps arriving
                left = until - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    break
                try:
                    data = sock.recv(65535)
                except OSError:
                    continue
                msg = parse(data)
                if msg is not None and msg.id == qid and msg.flags & dns.flags.QR \
                        and asks(msg, qname):
                    return True
        return False
    finally:
        sock.close()


class OfflineLookups:
    """Lookups while replaying a capture: ``attach``, then ``tick``/``poll``, then ``finish``.

    T uses packet time (the ``now`` passed in), like every other number of a
    replay.  The query rate and timeouts use wall time (monotonic): the limit
    exists to protect the name server, which lives in real time.  A replay is
    usually much faster than the capture, so with the default rate only some
    hundreds of peers get a name; raise ``dns_max_qps`` for more.
    """

    def __init__(self, settings, log: IO[str] | None = None):
        self.settings = settings
        self.log = log
        self.resolver: Resolver | None = None

    def attach(self, sniffer) -> None:
        """Open the socket; ``sniffer.acct`` says which names are due, and gets them."""
        self.resolver = Resolver(self.settings, sniffer.acct)
        sniffer.acct.names = self.resolver.queue

    def tick(self, now: int) -> None:
        """A new second of packet time: read answers, send what the limits allow."""
        if self.resolver is not None:
            self.resolver.on_readable(now)
            self.resolver.tick(now)

    poll = tick

    def finish(self, now: int, wait: float | None = None) -> None:
        """End of the file: go on sending and reading for at most ``wait`` seconds."""
        r = self.resolver
        if r is None:
            return
        wait = FINISH_WAIT if wait is None else wait
        began = time.monotonic()
        stop_sending = began + max(0.0, wait - FINISH_SEND_STOP)
        deadline = began + wait
        for _ in range(int(wait * 1000) + 10):          # bounded; each round waits <= 50 ms
            t = time.monotonic()
            if t >= deadline:
                break
            sending = t < stop_sending and bool(r.lookups.queue)
            if sending:
                r.tick(now)
            else:
                r.lookups.expire()
            if not r.busy and not sending:
                break
            timeout = min(0.05, max(0.0, deadline - t))
            if select.select([r.sock], [], [], timeout)[0]:
                r.on_readable(now)
        r.close()

    def counters_text(self) -> str:
        return self.resolver.counters_text() if self.resolver else "not used"

    def close(self) -> None:
        if self.resolver is not None:
            self.resolver.close()


def offline_lookups(settings, log: IO[str] | None = None,
                    resolv_conf: str = RESOLV_CONF) -> OfflineLookups | None:
    """Lookups for a replay, or None when ``resolve`` is off or no name server answers.

    A warning goes to ``log`` (default stderr) when names were wanted but the
    name server cannot be used, so the user knows why N stays empty.
    """
    if not settings.resolve:
        return None
    log = log if log is not None else sys.stderr
    try:
        server = server_address(settings, resolv_conf)
    except ResolverError as exc:
        log.write(f"nc.sniffer: {exc}; names are not looked up\n")
        return None
    if not probe(server):
        log.write(f"nc.sniffer: nameserver {_endpoint(server)} does not answer; "
                  f"names are not looked up\n")
        return None
    return OfflineLookups(settings, log)
