"""The per-IP records, stored column-wise (numpy), and the addresses that key them.

A record is a slot in parallel arrays rather than a Python object: a batch
reads and writes the fields of all its addresses with a few numpy calls, and a
million records take about 110 bytes each.  ``Table`` still behaves as a
mapping from packed address to a live view of the record, for the resolver,
the tests and anyone reading one record at a time.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from ncsniffer.conncounts import K_FIELDS

try:
    from ncsniffer._conntrack import add_k as _add_k     # add_connections in C
except ImportError:         # not built: the plain twin serves
    _add_k = None

INTS = ("B", "C", "E", "S", "T")
FLOATS = ("R", "W")
# The connection counters of 10.3 a record stores (``active`` is begun - ended, at
# dump time), in ``conncounts.count``'s column order; one column group "conn".
CONN_STORED = tuple(f for f in K_FIELDS if f != "active")
CONN_DTYPE = np.dtype([("k", np.uint32, (len(CONN_STORED),))])
CONN_MAX = np.iinfo(np.uint32).max
_BEGUN = [CONN_STORED.index(f) for f in ("tcp", "udp", "icmp")]
_ENDED = [CONN_STORED.index(f) for f in ("closed", "reset", "refused", "unanswered",
                                          "timedout", "evicted")]
_FROM_DELTA = [K_FIELDS.index(f) for f in CONN_STORED]
K_SORTED = tuple(sorted(K_FIELDS))         # K's order in the stats files (10.3: keys sorted)
_SORTED_STORED = [K_SORTED.index(f) for f in CONN_STORED]
_K_INTS = (np.dtype(np.int32), np.dtype(np.int64))   # the K deltas add_k reads as they are
TOTALS = ("X", "P")     # bytes and packets the export has not taken yet (``ncsniffer.export``)


class RecordView:
    """One record of a ``Table``, read and written in place (the stats file's keys)."""

    __slots__ = ("_table", "_slot")

    def __init__(self, table: "Table", slot: int):
        self._table = table
        self._slot = slot

    def __getattr__(self, name: str):
        if name == "N":
            return self._table.cols["N"][self._slot] or ()
        if name in INTS or name in FLOATS:
            return self._table.cols[name].item(self._slot)
        raise AttributeError(name)

    def __setattr__(self, name: str, value) -> None:
        if name in ("_table", "_slot"):
            object.__setattr__(self, name, value)
        elif name == "N":
            self._table.cols["N"][self._slot] = value or None
        elif name in INTS or name in FLOATS:
            self._table.cols[name][self._slot] = value
        else:
            raise AttributeError(name)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("B", "C", "E", "R", "S", "T", "W")}
        d["N"] = list(self.N)
        return d


@dataclass
class Addresses:
    """Distinct addresses of a run of packets: IPv4 ones as numbers, then IPv6
    ones packed; address ``i`` is ``v4[i]``, or ``v6[i - len(v4)]``."""

    v4: np.ndarray                 # uint32
    v6: list[bytes]

    @classmethod
    def of(cls, keys: Sequence[bytes], which: np.ndarray) -> tuple["Addresses", np.ndarray]:
        """From distinct packed keys in any order, with ``which`` renumbered."""
        wide = np.fromiter(map(len, keys), np.int64, len(keys)) != 4
        i4, i6 = np.flatnonzero(~wide), np.flatnonzero(wide)
        renumber = np.empty(len(keys), np.int64)
        renumber[np.concatenate((i4, i6))] = np.arange(len(keys))
        return cls(_numbers([keys[i] for i in i4.tolist()]),
                   [keys[i] for i in i6.tolist()]), renumber[which]

    def __len__(self) -> int:
        return len(self.v4) + len(self.v6)

    def key(self, i: int) -> bytes:
        n4 = len(self.v4)
        return self.v4[i].item().to_bytes(4, "big") if i < n4 else self.v6[i - n4]

    def keys(self) -> list[bytes]:
        """All of them packed, in order."""
        return self.v4.astype(">u4").view("V4").tolist() + self.v6

    def take(self, idx: np.ndarray) -> "Addresses":
        """The addresses at the ascending indices ``idx``."""
        n4 = int(np.searchsorted(idx, len(self.v4)))
        return Addresses(self.v4[idx[:n4]], [self.v6[i] for i in (idx[n4:] - len(self.v4)).tolist()])


class Table(MutableMapping):
    """Records by packed address, stored column-wise.

    Columns ``cols[F][slot]``: the fields (B C E S T as int64, R W as float64,
    N the host names or None), the address as two 64-bit words H L, and K its
    length (4 or 16; 0 for a free slot).  IPv4 keys are found through a sorted
    array of their numbers (a batch looks all its addresses up with one
    ``searchsorted``, and a record costs no Python object); IPv6 keys through
    a dict.  Freed slots are reused.
    """

    DTYPES = {**{f: np.int64 for f in INTS}, **{f: np.float64 for f in FLOATS},
              "N": object, "H": np.uint64, "L": np.uint64, "K": np.uint8,
              "Q": np.int64}     # Q: when last seen, for max_hosts (``Accounting``)

    def __init__(self, capacity: int = 1024, connections: bool = False,
                 totals: bool = False):
        self.totals = totals         # columns X P as well (only the export needs them)
        self.v4 = np.zeros(0, np.uint32)      # sorted IPv4 numbers ...
        self.v4_slot = np.zeros(0, np.int64)  # ... their slots (stale ones are checked)
        self.stale = 0
        self.unindexed: dict[int, int] = {}   # IPv4 records added one by one, not yet sorted in
        self.v6: dict[bytes, int] = {}
        self.count = 0
        self.size = 0                # slots in use or free
        self.free: list[int] = []
        self.cols = {f: np.zeros(capacity, t) for f, t in self.DTYPES.items()}
        self.cols["N"][:] = None
        self.connections = connections
        if connections:
            self.cols["conn"] = np.zeros(capacity, CONN_DTYPE)
        if totals:
            self.cols.update({f: np.zeros(capacity, np.int64) for f in TOTALS})

    # --------------------------------------------------------------- mapping
    def __getitem__(self, key: bytes) -> RecordView:
        slot = int(self.find((key,))[0])
        if slot < 0:
            raise KeyError(key)
        return RecordView(self, slot)

    def __delitem__(self, key: bytes) -> None:
        slot = int(self.find((key,))[0])
        if slot < 0:
            raise KeyError(key)
        self.release(np.array([slot]))

    def __setitem__(self, key, value) -> None:
        raise TypeError("records are created by counting packets")

    def __iter__(self) -> Iterator[bytes]:
        return iter([self.key(s) for s in self.occupied().tolist()])

    def __len__(self) -> int:
        return self.count

    def __contains__(self, key) -> bool:
        return isinstance(key, bytes) and self.find((key,))[0] >= 0

    def key(self, slot: int) -> bytes:
        c = self.cols
        if c["K"][slot] == 16:
            return c["H"].item(slot).to_bytes(8, "big") + c["L"].item(slot).to_bytes(8, "big")
        return c["L"].item(slot).to_bytes(4, "big")

    def keys_at(self, slots: np.ndarray) -> list[bytes]:
        """The packed keys of many ``slots`` at once."""
        c = self.cols
        out = c["L"][slots].astype(">u4").view("V4").tolist()
        for i in np.flatnonzero(c["K"][slots] == 16).tolist():
            out[i] = self.key(int(slots[i]))
        return out

    def occupied(self) -> np.ndarray:
        return np.flatnonzero(self.cols["K"][:self.size])

    # --------------------------------------------------------------- names
    def set_names(self, key: bytes, names: list[str], expires: int) -> bool:
        """Store a lookup answer (N, and T: when to ask again); False if the record is gone."""
        slot = int(self.find((key,))[0])
        if slot < 0:
            return False
        self.cols["N"][slot] = list(names) or None
        self.cols["T"][slot] = expires
        return True

    def set_expiry(self, key: bytes, t: int) -> int | None:
        """Set when ``key``'s name is due again (T); the T it had, or None if the
        record is gone."""
        slot = int(self.find((key,))[0])
        if slot < 0:
            return None
        old = self.cols["T"].item(slot)
        self.cols["T"][slot] = t
        return old

    # --------------------------------------------------------------- storage
    def find(self, keys: Sequence[bytes]) -> np.ndarray:
        """Slot of each packed key, -1 where there is no record."""
        addrs, order = Addresses.of(keys, np.arange(len(keys)))
        return self.find_addresses(addrs)[order]

    def find_addresses(self, addrs: Addresses) -> np.ndarray:
        out = np.full(len(addrs), -1, np.int64)
        n4 = len(addrs.v4)
        if n4 and len(self.v4):
            pos = np.minimum(np.searchsorted(self.v4, addrs.v4), len(self.v4) - 1)
            slot = self.v4_slot[pos]
            c = self.cols
            ok = (self.v4[pos] == addrs.v4) & (c["K"][slot] == 4) & (c["L"][slot] == addrs.v4)
            out[:n4] = np.where(ok, slot, -1)
        if self.unindexed and n4:
            c, get = self.cols, self.unindexed.get
            for i in np.flatnonzero(out[:n4] < 0).tolist():
                slot = get(int(addrs.v4[i]), -1)
                if slot >= 0 and c["K"][slot] == 4 and c["L"][slot] == addrs.v4[i]:
                    out[i] = slot
        if addrs.v6:
            get = self.v6.get
            out[n4:] = [get(k, -1) for k in addrs.v6]
        return out

    def add_one(self, key: bytes) -> int:
        """A slot for a new record of ``key``, its name not looked up yet (T = 0, no
        names); the caller sets B C E S R W.  No numpy calls on whole arrays: for
        adding packet by packet.  ``flush`` sorts the IPv4 ones into the index."""
        if self.free:
            slot = self.free.pop()
        else:
            self._reserve(self.size + 1)
            slot, self.size = self.size, self.size + 1
        c = self.cols
        c["T"][slot], c["N"][slot] = 0, None
        if self.connections:
            c["conn"][slot] = 0
        if self.totals:
            c["X"][slot] = c["P"][slot] = 0
        if len(key) == 16:
            c["H"][slot], c["L"][slot] = int.from_bytes(key[:8], "big"), int.from_bytes(key[8:], "big")
            c["K"][slot] = 16
            self.v6[key] = slot
        else:
            number = int.from_bytes(key, "big")
            c["H"][slot], c["L"][slot], c["K"][slot] = 0, number, 4
            self.unindexed[number] = slot
        self.count += 1
        return slot

    def flush(self) -> None:
        """Sort the IPv4 records added one by one into the index."""
        self._compact()
        if not self.unindexed:
            return
        numbers = np.fromiter(self.unindexed, np.uint32, len(self.unindexed))
        slots = np.fromiter(self.unindexed.values(), np.int64, len(self.unindexed))
        self.unindexed.clear()
        live = (self.cols["K"][slots] == 4) & (self.cols["L"][slots] == numbers)
        self._index4(numbers[live], slots[live])

    def slots(self, addrs: Addresses, first_seen: np.ndarray, start: int) -> np.ndarray:
        """Slot of each address; an address without a record gets a fresh one
        (B = C = 0, E = its first second, S = start), so its first packet is
        counted by the ordinary rule."""
        slots = self.find_addresses(addrs)
        new = np.flatnonzero(slots < 0)
        if new.size:
            slots[new] = self._add(addrs.take(new), first_seen[new], start)
        return slots

    def _add(self, addrs: Addresses, first_seen: np.ndarray, start: int) -> np.ndarray:
        n = len(addrs)
        reuse = min(len(self.free), n)
        taken = self.free[len(self.free) - reuse:]
        del self.free[len(self.free) - reuse:]
        fresh = n - reuse
        self._reserve(self.size + fresh)
        slots = np.concatenate((np.array(taken, np.int64),
                                np.arange(self.size, self.size + fresh)))
        self.size += fresh
        self.count += n
        c = self.cols
        for f in INTS + FLOATS + (TOTALS if self.totals else ()):
            c[f][slots] = 0
        c["E"][slots] = first_seen
        c["S"][slots] = start
        c["N"][slots] = None
        if self.connections:
            c["conn"][slots] = 0
        n4 = len(addrs.v4)
        if n4:
            at = slots[:n4]
            c["H"][at], c["L"][at], c["K"][at] = 0, addrs.v4, 4
            self._index4(addrs.v4, at)
        if addrs.v6:
            at = slots[n4:]
            pairs = np.frombuffer(b"".join(addrs.v6), ">u8").reshape(-1, 2)
            c["H"][at], c["L"][at], c["K"][at] = pairs[:, 0], pairs[:, 1], 16
            self.v6.update(zip(addrs.v6, at.tolist()))
        return slots

    def _index4(self, numbers: np.ndarray, slots: np.ndarray) -> None:
        """Enter new IPv4 records in the sorted index (over the stale entry of the
        same address, if there is one)."""
        order = np.argsort(numbers)
        numbers, slots = numbers[order], slots[order]
        pos = np.searchsorted(self.v4, numbers)
        again = np.zeros(len(numbers), bool)
        inside = np.flatnonzero(pos < len(self.v4))
        again[inside] = self.v4[pos[inside]] == numbers[inside]
        self.v4_slot[pos[again]] = slots[again]
        self.stale -= int(np.count_nonzero(again))
        self.v4 = np.insert(self.v4, pos[~again], numbers[~again])
        self.v4_slot = np.insert(self.v4_slot, pos[~again], slots[~again])

    def release_one(self, slot: int) -> None:
        """Delete the record in ``slot`` (``release`` without whole-array calls)."""
        c = self.cols
        if c["K"][slot] == 16:
            del self.v6[self.key(slot)]
        else:
            self.stale += 1
        c["K"][slot], c["N"][slot] = 0, None
        self.free.append(slot)
        self.count -= 1

    def release(self, slots: np.ndarray) -> None:
        """Delete the records in ``slots``."""
        c = self.cols
        wide = c["K"][slots] == 16
        for slot in slots[wide].tolist():
            del self.v6[self.key(slot)]
        self.stale += int(np.count_nonzero(~wide))
        c["K"][slots] = 0
        c["N"][slots] = None
        self.free.extend(slots.tolist())
        self.count -= len(slots)
        self._compact()

    def _compact(self) -> None:
        """Drop the index entries of deleted IPv4 records once they are half of it."""
        if self.stale > 1024 and self.stale > len(self.v4) // 2:
            keep = self.find_addresses(Addresses(self.v4, [])) >= 0
            self.v4, self.v4_slot = self.v4[keep], self.v4_slot[keep]
            self.stale = 0

    def _reserve(self, size: int) -> None:
        cap = len(self.cols["B"])
        if size <= cap:
            return
        cap = max(size, cap + cap // 2)
        for f, col in self.cols.items():
            grown = np.zeros(cap, col.dtype)
            grown[:len(col)] = col
            if f == "N":
                grown[len(col):] = None
            self.cols[f] = grown

    def columns(self, chunk: int = 65536, arrays: bool = False) -> Iterator[tuple]:
        """Records in numeric address order, IPv4 first, in chunks of one family:
        (addresses, B, C, E, N, R, S, T, W[, K]): the addresses packed end to end (4
        or 16 bytes each), the fields as lists, R and W rounded to whole numbers as
        the stats files show them.  ``arrays``: the numbers as int64 arrays and K as
        one (records, 12) array instead (R or W past 2**62 stay an exact list), for
        the compiled formatter: no Python int per value."""
        c = self.cols
        ints = (lambda v: v.astype(np.int64, copy=False)) if arrays else np.ndarray.tolist
        rounded = whole_array if arrays else whole
        slots = self.occupied()
        slots = slots[np.lexsort((c["L"][slots], c["H"][slots], c["K"][slots]))]
        six = int(np.searchsorted(c["K"][slots], 16))
        for family in (slots[:six], slots[six:]):
            for at in range(0, len(family), chunk):
                sl = family[at:at + chunk]
                if c["K"][sl[0]] == 16:
                    packed = np.stack((c["H"][sl], c["L"][sl]), axis=1).astype(">u8").tobytes()
                else:
                    packed = c["L"][sl].astype(">u4").tobytes()
                names = [n or () for n in c["N"][sl].tolist()]
                row = (packed, ints(c["B"][sl]), ints(c["C"][sl]), ints(c["E"][sl]),
                       names, rounded(c["R"][sl]), ints(c["S"][sl]), ints(c["T"][sl]),
                       rounded(c["W"][sl]))
                if not self.connections:
                    yield row
                else:
                    yield row + ((self.conn_array(sl) if arrays else self.conn_values(sl)),)

    # --------------------------------------------------------------- connections (10.3)
    def add_connections(self, slots: np.ndarray, deltas: np.ndarray) -> None:
        """Add ``conncounts.count`` deltas (rows in ``K_FIELDS`` order, ``active``
        ignored) to the records in ``slots`` (-1: no record, skipped).  Ends beyond
        what a record began (connections of an earlier data set, before a SIGHUP or
        before the record was purged) are dropped, so the sums of 10.3 always hold.
        One pass in C over distinct slots (a tenth of the numpy steps' time);
        ``add_connections_plain`` is its twin, and serves slots that come twice."""
        slots, deltas = np.ascontiguousarray(slots, np.int64), np.asarray(deltas)
        deltas = np.ascontiguousarray(deltas, deltas.dtype if deltas.dtype in _K_INTS else np.int64)
        if _add_k is None or not _add_k(self.cols["conn"]["k"], slots, deltas):
            self.add_connections_plain(slots, deltas)

    def add_connections_plain(self, slots: np.ndarray, deltas: np.ndarray) -> None:
        """``add_connections`` in numpy steps: the deltas summed per slot first."""
        keep = slots >= 0
        slots, deltas = slots[keep], np.asarray(deltas, np.int64)[keep]
        if not slots.size:
            return
        k = self.cols["conn"]["k"]
        at, add = sum_by_slot(slots, np.maximum(deltas[:, _FROM_DELTA], 0))
        now = k[at].astype(np.int64)
        room = (now[:, _BEGUN].sum(1) + add[:, _BEGUN].sum(1)) - now[:, _ENDED].sum(1)
        ends = np.cumsum(add[:, _ENDED], axis=1)
        add[:, _ENDED] = np.diff(np.minimum(ends, room[:, None]), axis=1, prepend=0)
        k[at] = np.minimum(now + add, CONN_MAX)        # saturate, never wrap

    def peer_slots(self, peers: np.ndarray) -> np.ndarray:
        """Slot of each peer of ``conncounts.count`` (v6, peer_hi, peer_lo: the H and L
        words of this table), -1 where there is no record.  Asked in address order (as
        ``count`` and the tracker's core give them), the index answers three times faster."""
        wide = peers["v6"] != 0
        i4, i6 = np.flatnonzero(~wide), np.flatnonzero(wide)
        words = np.stack((peers["peer_hi"][i6], peers["peer_lo"][i6]), axis=1)
        packed = words.astype(">u8").tobytes()
        addrs = Addresses(peers["peer_lo"][i4].astype(np.uint32),
                          [packed[j:j + 16] for j in range(0, len(packed), 16)])
        out = np.empty(len(peers), np.int64)
        out[np.concatenate((i4, i6))] = self.find_addresses(addrs)
        return out

    def conn_dicts(self, slots: np.ndarray) -> list[dict[str, int]]:
        """The twelve counters of the records in ``slots`` (``active`` = begun - ended)."""
        k = self.cols["conn"]["k"][slots].astype(np.int64)
        active = k[:, _BEGUN].sum(1) - k[:, _ENDED].sum(1)
        return [dict(zip(CONN_STORED, row), active=a)
                for row, a in zip(k.tolist(), active.tolist())]

    def conn_array(self, slots: np.ndarray) -> np.ndarray:
        """``conn_dicts`` as (records, 12) int64 in ``K_SORTED`` order: what the dump
        formats, without a dict per record (a 1,000,000-record dump would build a million)."""
        k = self.cols["conn"]["k"][slots].astype(np.int64)
        out = np.empty((len(k), len(K_SORTED)), np.int64)
        out[:, _SORTED_STORED] = k
        out[:, K_SORTED.index("active")] = k[:, _BEGUN].sum(1) - k[:, _ENDED].sum(1)
        return out

    def conn_values(self, slots: np.ndarray) -> list[tuple[int, ...]]:
        """``conn_dicts`` as tuples in ``K_SORTED`` order: what the dump formats, without a
        dict per record (a 1,000,000-record dump would build a million).  Records with
        the same counters share one tuple, made once (a dump holds a tenth as many
        distinct K as records), which the dump formats once (``dumpfile``);
        ``conn_values_plain`` is the twin, a tuple per record."""
        k = np.ascontiguousarray(self.cols["conn"]["k"][slots])
        if not len(k):
            return []
        rows = k.view(np.dtype((np.void, k.itemsize * k.shape[1]))).ravel()
        _, first, which = np.unique(rows, return_index=True, return_inverse=True)
        return list(map(self.conn_values_plain(slots[first]).__getitem__,
                        which.reshape(-1).tolist()))

    def conn_values_plain(self, slots: np.ndarray) -> list[tuple[int, ...]]:
        """``conn_values``, a tuple per record."""
        return list(map(tuple, self.conn_array(slots).tolist()))

    def conn_unbegun(self, slots: np.ndarray) -> np.ndarray:
        """Whether each slot is a record that counts no connection yet (-1: False)."""
        k = self.cols["conn"]["k"][np.maximum(slots, 0)]
        return (slots >= 0) & ~k[:, _BEGUN].any(1)

    def conn_totals(self) -> tuple[int, int, int] | None:
        """(active, started, evicted) over all records, for the header; None when off."""
        if not self.connections:
            return None
        k = self.cols["conn"]["k"][self.occupied()].astype(np.int64).sum(0)
        begun, ended = int(k[_BEGUN].sum()), int(k[_ENDED].sum())
        return begun - ended, begun, int(k[CONN_STORED.index("evicted")])


def sum_by_slot(slots: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``slots`` (sorted) and the sum of the ``rows`` of each.  Slots are
    distinct in the common case (``conncounts.count``'s peers): a scatter, where
    np.add.at (``sum_by_slot_plain``, the twin) costs 4 ms a batch of 18,000."""
    at, which = np.unique(slots, return_inverse=True)
    if len(at) != len(slots):
        return sum_by_slot_plain(slots, rows)
    add = np.empty_like(rows)
    add[which.reshape(-1)] = rows
    return at, add


def sum_by_slot_plain(slots: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sum_by_slot``'s plain twin: an unbuffered add per row."""
    at, which = np.unique(slots, return_inverse=True)
    add = np.zeros((len(at), rows.shape[1]), rows.dtype)
    np.add.at(add, which.reshape(-1), rows)
    return at, add


def _numbers(keys: list[bytes]) -> np.ndarray:
    """IPv4 keys as numbers."""
    return np.frombuffer(b"".join(keys), ">u4").astype(np.uint32)


def whole(values: np.ndarray) -> list[int]:
    """Floats as ``"%.0f"`` prints them (nearest, ties to even), as ints."""
    rounded = whole_array(values)
    return rounded if type(rounded) is list else rounded.tolist()


def whole_array(values: np.ndarray) -> np.ndarray | list[int]:
    """``whole`` as an int64 array, or as the exact ints when one is past 2**62."""
    if values.size and float(np.abs(values).max()) >= 2.0 ** 62:
        return [int("%.0f" % v) for v in values.tolist()]
    return np.rint(values).astype(np.int64)
