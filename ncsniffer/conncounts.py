"""The per-peer connection counters ``K`` (spec 10.3), derived from a batch of events.

The core keeps no per-peer state: a ``new`` event counts as begun (by protocol,
by direction), an ``end`` event by how it ended; ``active`` is begun minus
ended, so the deltas of successive batches simply add up.  ``drained`` ends
come after the final dump and count nowhere.
"""

from __future__ import annotations

import numpy as np

from ncsniffer import conntrack as ct

K_FIELDS = ("tcp", "udp", "icmp", "in", "out", "active",
            "closed", "reset", "refused", "unanswered", "timedout", "evicted")
END_COUNTER = {ct.CLOSED: "closed", ct.RESET: "reset", ct.REFUSED: "refused",
               ct.UNANSWERED: "unanswered", ct.TIMEDOUT: "timedout", ct.EVICTED: "evicted"}

PEER_DTYPE = ct.PEER_DTYPE
assert len(K_FIELDS) == ct.K_WIDTH
assert K_FIELDS[ct.K_ENDS] == tuple(END_COUNTER[s] for s in range(ct.CLOSED, ct.DRAINED))

_COLUMN = {name: i for i, name in enumerate(K_FIELDS)}
_PROTO_COLUMN = np.zeros(256, np.int64)
_PROTO_COLUMN[[ct.TCP, ct.UDP, ct.ICMP, ct.ICMP6]] = [_COLUMN["tcp"], _COLUMN["udp"],
                                                     _COLUMN["icmp"], _COLUMN["icmp"]]
_STATE_COLUMN = np.full(len(ct.STATES), -1, np.int64)
for _state, _name in END_COUNTER.items():
    _STATE_COLUMN[_state] = _COLUMN[_name]


def count(events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct peers of ``events`` (``PEER_DTYPE``, sorted) and their ``K`` deltas,
    an int64 array of one row per peer, columns in ``K_FIELDS`` order."""
    unique, which = _peers(events)
    width = len(K_FIELDS)
    new = events["kind"] == ct.NEW
    rows = which[new] * width
    column = _STATE_COLUMN[events["state"]]
    ended = ~new & (column >= 0)
    ends = which[ended] * width
    up = np.concatenate((
        rows + _PROTO_COLUMN[events["proto"][new]],
        rows + np.where(events["dir"][new] == ct.DIR_IN, _COLUMN["in"], _COLUMN["out"]),
        rows + _COLUMN["active"],
        ends + column[ended]))
    size = len(unique) * width
    flat = np.bincount(up, minlength=size) - np.bincount(ends + _COLUMN["active"], minlength=size)
    return unique, flat.reshape(len(unique), width)


def open_tally(still_open: np.ndarray) -> dict[tuple, np.ndarray]:
    """Per peer (v6, peer_hi, peer_lo), the K row of the open connections ``still_open``
    (``Tracker.still_open()``: one ``new`` event each) counted as begun (tcp udp icmp in out
    active): the tally a replay starts with when its first record is about to go."""
    peers, deltas = count(still_open)
    return dict(zip(peers.tolist(), deltas))


def open_deltas(events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct peers of ``events`` (sorted) and the change each makes to its peer's
    open tally (``open_tally``'s K rows): a ``new`` adds its begun counts (tcp udp icmp,
    in out, active), an ``end`` takes them off.  Summed over every batch so far, the
    tally of ``Tracker.still_open()``."""
    unique, which = _peers(events)
    width = len(K_FIELDS)
    rows = which * width
    up = np.concatenate((rows + _PROTO_COLUMN[events["proto"]],
                         rows + np.where(events["dir"] == ct.DIR_IN, _COLUMN["in"], _COLUMN["out"]),
                         rows + _COLUMN["active"]))
    new = np.tile(events["kind"] == ct.NEW, 3)
    size = len(unique) * width
    flat = np.bincount(up[new], minlength=size) - np.bincount(up[~new], minlength=size)
    return unique, flat.reshape(len(unique), width)


def remember_open(tally: dict[tuple, np.ndarray], events: np.ndarray) -> None:
    """The same tally kept up event batch by event batch (``open_tally`` is its twin):
    ``new`` adds its begun counts, ``end`` takes them off; a peer with none open
    leaves ``tally``."""
    new = events["kind"] == ct.NEW
    ended = events[~new].copy()
    ended["kind"] = ct.NEW          # counted as begun, then subtracted
    rows = []
    if new.any():
        rows.append(count(events[new]))
    if len(ended):
        peers, d = count(ended)
        rows.append((peers, -d))
    for peers, d in rows:
        for peer, row in zip(peers.tolist(), d):
            key = tuple(peer)
            total = tally.get(key)
            total = row.copy() if total is None else total + row
            if total.any():
                tally[key] = total
            else:
                tally.pop(key, None)


def open_before(events: np.ndarray, rows: np.ndarray, open_after: np.ndarray) -> np.ndarray:
    """The K rows of ``open_tally`` before the batch ``events`` for its peers ``rows``
    (indices into ``count(events)``'s peers) from those after it
    (``Tracker.open_counts``): after, less the change the batch made (``open_deltas``)."""
    return open_after - open_deltas(events)[1][rows]


def _peers(events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct peers, sorted, and the peer of each event.  IPv4 peers (v6 and
    high word 0, the common case) by one np.unique of the low word; the others by a
    lexsort of the three columns (np.unique on the structured array compares raw
    bytes, many times slower)."""
    v6, hi, lo = (np.ascontiguousarray(events[f]) for f in PEER_DTYPE.names)
    plain = (v6 == 0) & (hi == 0)
    which = np.empty(len(events), np.int64)
    lo4, which4 = np.unique(lo[plain], return_inverse=True)
    which[plain] = which4.reshape(-1)
    rest = np.flatnonzero(~plain)
    columns = [v6[rest], hi[rest], lo[rest]]
    order = np.lexsort(columns[::-1])
    same = np.ones(len(rest), bool)
    for col in columns:
        ranked = col[order]
        same[1:] &= ranked[1:] == ranked[:-1]
    first = ~same
    first[:1] = True
    which[rest[order]] = len(lo4) + np.cumsum(first) - 1
    unique = np.zeros(len(lo4) + int(first.sum()), PEER_DTYPE)
    unique["peer_lo"][:len(lo4)] = lo4
    for f, col in zip(PEER_DTYPE.names, columns):
        unique[f][len(lo4):] = col[order[first]]
    return unique, which


def as_dict(peers: np.ndarray, counts: np.ndarray) -> dict[tuple, dict[str, int]]:
    """``count``'s result keyed by (v6, peer_hi, peer_lo), for tests and small tools."""
    return {tuple(p): dict(zip(K_FIELDS, row)) for p, row in zip(peers.tolist(), counts.tolist())}
