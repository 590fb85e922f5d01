"""The replay's read path in C (``ncsniffer._fastread``): whether it runs, and the
arrays it fills; and the accounting's per-IP rule in C.

The C module walks a classic pcap file's records and, per batch, filters,
decodes and finds the targets (and the FLOW records) in one pass, where the
numpy path (``pcapfile.Chain``, ``batch.prepare_numpy``) takes a dozen array
steps.  The numpy path is the plain twin: ``NCSNIFFER_FASTREAD=0`` selects
it, and so does a missing extension; tests/test_fastread.py holds the two
equal.  This module knows the C calls' argument order (into numpy arrays; into
plain buffers, without numpy: ``ncsniffer.pcapread``, which also has the walk)
and nothing of batches.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ncsniffer import decode, pcapread

try:
    from ncsniffer import _fastread
except ImportError:           # not built: the numpy path
    _fastread = None

ENV = pcapread.FAST_ENV       # "0": the numpy path
MAX_ME = 16                    # longer "me" addresses: the numpy path (not two words)
enabled = pcapread.fast_enabled   # whether the C path runs (built, and not switched off)
program = pcapread.program        # a filter program as the C interpreter reads it


def _check_flow_layout() -> None:
    """The C record must be decode.FLOW byte for byte (the tracker reads it as is)."""
    size, offsets = _fastread.flow_layout()
    expected = tuple(decode.FLOW.fields[name][1] for name in decode.FLOW.names)
    if size != decode.FLOW.itemsize or offsets != expected:
        raise ImportError(f"_fastread's FLOW layout {size} {offsets} is not decode.FLOW's")


if _fastread is not None:
    _check_flow_layout()


class Filled(NamedTuple):
    """What ``prepare`` filled: per passed packet its second; per counted one its
    row, wire length, family, target and FLOW record; the undecoded counts."""

    sec: np.ndarray
    good: np.ndarray
    lengths: np.ndarray
    is6: np.ndarray
    v4: np.ndarray
    hi: np.ndarray
    lo: np.ndarray
    flows: np.ndarray | None
    truncated: int
    not_ip: int
    invalid: int


def prepare(buf, offs: np.ndarray, caplen: np.ndarray, wirelen: np.ndarray, sec: np.ndarray,
            usec: np.ndarray | None, prog: bytes | None, link: tuple, me: bytes,
            flows: bool) -> Filled | None:
    """One pass over a batch's packets; None where only the numpy path can (a
    program the C interpreter does not run, an odd "me").  ``link``: (by type
    field, header length, type field offset, VLAN types)."""
    if len(me) > MAX_ME:
        return None
    n = len(offs)
    out = [np.empty(n, np.int64) for _ in range(3)]
    out += [np.empty(n, np.bool_), np.empty(n, np.uint32), np.empty(n, np.uint64),
            np.empty(n, np.uint64)]
    records = np.empty(n, decode.FLOW) if flows else None
    arrays = [np.ascontiguousarray(a, np.int64) for a in (offs, caplen, wirelen, sec)]
    micros = None if usec is None else np.ascontiguousarray(usec, np.int64)
    got = _fastread.prepare(buf, *arrays, micros, *pcapread.pass_arguments(prog, link, me), *out,
                            records)
    if got is None:
        return None
    seen, counted, n4, n6, *undecoded = got
    sizes = (seen, counted, counted, counted, n4, n6, n6)
    return Filled(*(a[:k] for a, k in zip(out, sizes)),
                  None if records is None else records[:counted], *undecoded)


def first_packets(which: np.ndarray, keys: int) -> np.ndarray:
    """Per address 0..keys-1, the index of its first packet in ``which`` (-1: none)."""
    first = np.empty(keys, np.int64)
    _fastread.first_packets(np.ascontiguousarray(which, np.int64), first)
    return first


def number_last(slots: np.ndarray, q: np.ndarray, base: int) -> None:
    """``np.maximum.at(q, slots, base + np.arange(len(slots)))`` in place: each
    record numbered by its last packet."""
    _fastread.number_last(np.ascontiguousarray(slots, np.int64), q, base)


RULE_COLUMNS = ("B", "C", "E", "S", "R", "W")


def count_records(slots: np.ndarray, secs: np.ndarray, lengths: np.ndarray, cols: dict,
                  interval: int, first_packets: int, hour: int) -> None:
    """The per-IP rule for each packet in order (``accounting.count_one``), on the
    record columns ``cols`` in place."""
    packets = [np.ascontiguousarray(a, np.int64) for a in (slots, secs, lengths)]
    _fastread.count_records(*packets, *(cols[name] for name in RULE_COLUMNS), interval,
                            first_packets, hour)


def distinct(is6: np.ndarray, v4: np.ndarray, hi: np.ndarray, lo: np.ndarray):
    """(distinct IPv4 targets, IPv6 ones as hi and lo words, each packet's index):
    ``batch.distinct``'s numbers, by radix sort (IPv4) and a hash (IPv6)."""
    is6 = np.ascontiguousarray(is6, np.bool_)
    v4 = np.ascontiguousarray(v4, np.uint32)
    hi, lo = (np.ascontiguousarray(a, np.uint64) for a in (hi, lo))
    which = np.empty(len(is6), np.int64)
    u4, uhi, ulo = np.empty(len(v4), np.uint32), np.empty(len(hi), np.uint64), \
        np.empty(len(hi), np.uint64)
    k4, k6 = _fastread.distinct(is6, v4, hi, lo, which, u4, uhi, ulo)
    return u4[:k4], uhi[:k6], ulo[:k6], which
