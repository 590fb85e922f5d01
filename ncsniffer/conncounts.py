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

PEER_DTYPE = np.dtype([("v6", "u1"), ("peer_hi", "<u8"), ("peer_lo", "<u8")])

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
    peers = np.empty(len(events), PEER_DTYPE)
    for f in PEER_DTYPE.names:
        peers[f] = events[f]
    unique, which = np.unique(peers, return_inverse=True)
    which = which.reshape(-1)
    width = len(K_FIELDS)
    new = events["kind"] == ct.NEW
    rows = which[new] * width
    column = _STATE_COLUMN[events["state"]]
    ended = ~new & (column >= 0)
    ends = which[ended] * width
    index = np.concatenate((
        rows + _PROTO_COLUMN[events["proto"][new]],
        rows + np.where(events["dir"][new] == ct.DIR_IN, _COLUMN["in"], _COLUMN["out"]),
        rows + _COLUMN["active"],
        ends + column[ended],
        ends + _COLUMN["active"]))
    weight = np.ones(len(index), np.int64)
    weight[len(index) - len(ends):] = -1
    flat = np.bincount(index, weight, len(unique) * width).astype(np.int64)
    return unique, flat.reshape(len(unique), width)


def as_dict(peers: np.ndarray, counts: np.ndarray) -> dict[tuple, dict[str, int]]:
    """``count``'s result keyed by (v6, peer_hi, peer_lo), for tests and small tools."""
    return {tuple(p): dict(zip(K_FIELDS, row)) for p, row in zip(peers.tolist(), counts.tolist())}
