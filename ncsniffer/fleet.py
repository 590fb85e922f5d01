"""The fleet report from ClickHouse (SPEC 11): the coalescer's composite, its sources
read from ``ncsniffer_traffic`` instead of ssh + rsync.

One query sums each sniffer's rows per peer over the window (FINAL: a batch sent
twice counts once) and takes the peer's latest row for what a stats file would
show (R, W, E, N); the records per sniffer then go through the coalescer's own
merge (``merge.merge_all``) and report layout, so both roads sum alike.  Only
``fetch`` does I/O (through ``ncsniffer.clickhouse``); the rest is pure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from ncsniffer.coalesceconf import Store
from ncsniffer.dumpfile import printed
from ncsniffer.errors import StoreError
from ncsniffer.merge import Part, merge_all

# per sniffer, instance and peer: the window's traffic, and the fields of its latest row
QUERY = """SELECT sniffer, instance, peer, sum(bytes), sum(packets),
    argMax(rate, (end, start)), argMax(bw, (end, start)), argMax(names, (end, start)),
    toUInt32(argMax(epoch, (end, start))), toUInt32(min(start)), toUInt32(max(end))
FROM {db}.ncsniffer_traffic FINAL
WHERE start >= toDateTime(%(begin)s) AND start < toDateTime(%(end)s){only}
GROUP BY sniffer, instance, peer"""


@dataclass
class Share:
    """One sniffer's (sniffer, instance) share of the window: its records and totals."""

    part: Part
    bytes: int = 0
    packets: int = 0
    last: int = 0                  # end of its latest interval in the window


def query_text(store: Store) -> str:
    """The query for ``store`` (the database is checked to be a plain name)."""
    only = " AND sniffer IN %(sniffers)s" if store.sniffers else ""
    return QUERY.format(db=f"`{store.database}`", only=only)


def sniffers_from_rows(rows: Iterable[Sequence]) -> list[Share]:
    """Rows of QUERY as one record map per sniffer, in name order; each record as a
    stats file holds it: B C the window's bytes and packets, R W E N those of its
    latest interval (R W rounded as the file prints them), S its first interval's
    start, T 0."""
    out: dict[str, Share] = {}
    for sniffer, instance, peer, b, c, r, w, names, e, s, last in rows:
        name = f"{sniffer}/{instance}"
        one = out.get(name)
        if one is None:
            one = out[name] = Share(Part(name, [], {}))
        # R and W as its stats file prints them: the sums are then the files' sums
        one.part.records[peer] = {"B": b, "C": c, "E": e, "N": list(names), "R": printed(r),
                                  "S": s, "T": 0, "W": printed(w)}
        one.bytes += b
        one.packets += c
        one.last = max(one.last, last)
    return [out[name] for name in sorted(out)]


def header(store: Store, bounds: tuple[int, int], sniffers: Sequence[Share],
           users: int) -> list[str]:
    """The composite's header: the store and window, each sniffer's traffic, the totals."""
    lines = [f"# ncsniffer composite of {len(sniffers)} sniffers from {store.url}",
             f"# window:\t{_utc(bounds[0])} - {_utc(bounds[1])} UTC"]
    for one in sniffers:
        lines += ["", f"# host:\t{one.part.name}", f"# last interval:\t{_utc(one.last)} UTC",
                  f"# traffic:\t{one.bytes} bytes, {one.packets} packets"]
    lines += ["", "# grand total all hosts",
              f"# traffic:\t{sum(s.bytes for s in sniffers)} bytes, "
              f"{sum(s.packets for s in sniffers)} packets",
              f"# users:\t{users}"]
    return lines


def _utc(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def composite(store: Store, rows: Iterable[Sequence],
              bounds: tuple[int, int]) -> tuple[list[str], dict]:
    """Header and merged records of the window's rows (the coalescer's merge)."""
    sniffers = sniffers_from_rows(rows)
    merged = merge_all(s.part.records for s in sniffers)
    return header(store, bounds, sniffers, len(merged)), merged


def fetch(store: Store, now: Callable[[], float] = time.time) -> tuple[list[str], dict]:
    """Query the store for the window ending now; StoreError if it cannot answer."""
    from ncsniffer.clickhouse import ClickHouse     # the driver only for this source
    bounds = store.bounds(now())
    client = ClickHouse(store.host, store.port, store.database, store.timeout, store.user,
                        store.password, create=False)
    params = {"begin": bounds[0], "end": bounds[1], "sniffers": tuple(store.sniffers)}
    try:
        rows = client.query(query_text(store), params)
    except StoreError as exc:
        raise StoreError(f"cannot read {store.url}: {exc}") from exc
    finally:
        client.close()
    return composite(store, rows, bounds)
