"""The stats file: write it in Python, Perl or JSON format, and read any of them safely.

Python format: '#' header lines, then a dict literal with one record per line.
Each record line is also a JSON fragment, so reading 100,000 records needs no
``eval`` and no big AST (``ast.literal_eval`` remains the fallback for files a
person edited).  Perl format: the original daemon's exact layout.  JSON: one
object, header fields included, for other tools.
"""

from __future__ import annotations

import ast
import gc
import json
import math
import os
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from operator import itemgetter
from typing import IO, Callable, Iterable, Iterator

from ncsniffer import __version__, safefile, safetext

# ipaddress and perlval are imported by the readers that use them: an empty
# replay's start writes a stats file and reads none (issue 16)
from ncsniffer.errors import DumpFileError

try:                    # the compiled record lines (_dumptext.c); the twin is below
    from ncsniffer import _dumptext
except ImportError:     # pragma: no cover - a checkout whose extension is not built
    _dumptext = None

FIELDS = ("B", "C", "E", "N", "R", "S", "T", "W")
# K (spec 10.3, with ``connections: True``): per-record connection counters, sorted
K_KEYS = ("active", "closed", "evicted", "icmp", "in", "out", "refused", "reset", "tcp",
          "timedout", "udp", "unanswered")
K_ZERO = dict.fromkeys(K_KEYS, 0)
_K_VALUES = itemgetter(*K_KEYS)
assert _dumptext is None or _dumptext.K_KEYS == K_KEYS, "_dumptext.c's K_KEYS differ"


def _k_values(k) -> tuple[int, ...]:
    """A row's K: a tuple in K_KEYS order (the records' dump) or a dict (a file read)."""
    return k if type(k) is tuple else _K_VALUES(k)

MAX_FILE_BYTES = 512 << 20
MAX_LITERAL_BYTES = 16 << 20
MAX_LINE = 1 << 20

Row = tuple  # (ip_text, B, C, E, N, R, S, T, W[, K]): the numbers as ints, R and W rounded
K_AT = len(FIELDS) + 1          # where a row holds its K


@dataclass
class Header:
    """What the '#' header lines say."""

    start: int
    current: int
    hits: float            # per minute
    bytes: float           # per second
    users: int
    device: str
    promiscuous: bool
    bpf: str
    payload: int | None = None
    snaplen: int | None = None
    match: bytes | None = None
    nomatch: bytes | None = None
    evicted: int | None = None
    connections: tuple[int, int, int] | None = None    # (active, started, evicted), 10.3
    extra: list[str] = field(default_factory=list)   # further lines, without '# '
    version: str = __version__


# --------------------------------------------------------------------------- writing

def escape_match(value: bytes) -> str:
    """Show a match string with unprintable bytes as ``\\x{hex}``, as the original did."""
    out = []
    for b in value:
        if b < 0x20 or b > 0xFE or 0x7E < b < 0xA8:
            out.append("\\x{%x}" % b)
        else:
            out.append(chr(b))
    return "".join(out)


def header_text(h: Header) -> str:
    """The header block; it starts with an empty line, each line begins with '#'."""
    lines = [
        "",
        f"# ncsniffer version {h.version}",
        f"# start:\t{h.start},\t{time.ctime(h.start)}",
        f"# current:\t{h.current},\t{time.ctime(h.current)}",
        "# hits:\t\t%.0f per minute" % h.hits,
        "# bytes:\t%.0f per second" % h.bytes,
        f"# users:\t{h.users}",
        f"# device:\t{h.device}\t{'promiscuous' if h.promiscuous else 'non-promiscuous'}",
        f"# bpf:\t\t{h.bpf}",
    ]
    if h.match or h.nomatch:
        lines.append(f"# fragment:\t{h.payload} - {h.snaplen}")
        if h.match:
            lines.append(f"# contains:\t{escape_match(h.match)}")
        if h.nomatch:
            lines.append(f"# excludes:\t{escape_match(h.nomatch)}")
    if h.connections is not None:
        lines.append(connections_line(*h.connections))
    if h.evicted is not None:
        lines.append(f"# evicted:\t{h.evicted}")
    lines.extend("# " + line for line in h.extra)
    return "\n".join(lines) + "\n"


def connections_line(active: int, started: int, evicted: int) -> str:
    """The header's ``# connections:`` line (10.3)."""
    return f"# connections:\t{active} active, {started} started, {evicted} evicted"


OCTETS = [str(i) for i in range(256)]
DUMP_CHUNK = 8192     # records the compiled formatter takes at a time: a few MB of text
                      # whose memory the next chunk reuses (fresh pages cost more)


class RecordRows:
    """Accounting records (a ``table.Table``) as rows in numeric address order,
    IPv4 first, made lazily: a dump of a million records never holds a second
    copy of them.  The Python and JSON formatters take its column ``chunks``
    whole (``_dumptext``); any other reader iterates the rows."""

    def __init__(self, records):
        self.records = records

    def chunks(self) -> Iterator[tuple]:
        return self.records.columns(chunk=DUMP_CHUNK, arrays=True)

    def __iter__(self) -> Iterator[Row]:
        for chunk in self.records.columns():
            yield from chunk_rows(chunk)


def rows_from_records(records) -> RecordRows:
    """Accounting records as rows (see ``RecordRows``)."""
    return RecordRows(records)


def chunk_rows(chunk: tuple) -> Iterator[Row]:
    """The rows of one ``Table.columns`` chunk: (packed addresses, B, C, ...), its
    numbers as lists or (``arrays``) as arrays."""
    packed, *fields = chunk
    fields = [f if type(f) is list else list(map(tuple, f.tolist())) if f.ndim > 1
              else f.tolist() for f in fields]
    if len(packed) == 16 * len(fields[0]):
        texts = map(partial(socket.inet_ntop, socket.AF_INET6),
                    [packed[i:i + 16] for i in range(0, len(packed), 16)])
    else:
        octets = zip(*[map(OCTETS.__getitem__, packed[i::4]) for i in range(4)])
        texts = map(".".join, octets)         # 2.5x faster than inet_ntop, same text
    return zip(texts, *fields)


def rows_from_dicts(records: dict[str, dict]) -> list[Row]:
    """Rows from records as read from a file (ip text -> field dict), sorted numerically."""
    import ipaddress

    def order(ip: str):
        a = ipaddress.ip_address(ip)
        return a.version, a.packed
    rows = []
    with_k = any("K" in r for r in records.values())
    for ip in sorted(records, key=order):
        r = records[ip]
        row = (ip, printed(r["B"]), printed(r["C"]), printed(r["E"]), list(r["N"]), printed(r["R"]),
               printed(r["S"]), printed(r["T"]), printed(r["W"]))
        rows.append(row + (r.get("K", K_ZERO),) if with_k else row)
    return rows


def printed(value) -> int:
    """A number of a file's record as the stats files print it (``%.0f``)."""
    return value if type(value) is int else int("%.0f" % value)


# One record of the Python format (followed by ",\n") and of the JSON one (joined by it)
RECORD_LINE = '"%s": {"B": %d, "C": %d, "E": %d, "N": %s, "R": %d, "S": %d, "T": %d, "W": %d}'
RECORD_LINE_K = ('"%s": {"B": %d, "C": %d, "E": %d, "K": %s, "N": %s, "R": %d, "S": %d, '
                 '"T": %d, "W": %d}')
K_JSON = "{" + ", ".join(f'"{k}": %d' for k in K_KEYS) + "}"
K_PERL = "{" + ", ".join(f"{k} => %d" for k in K_KEYS) + "}"
CHUNK = 4096    # rows formatted per piece: fewer generator steps and writes


def k_texts(chunk: list[Row], template: str) -> list[str]:
    """The K text of each row of ``chunk`` (``template`` % its counters), made once per
    distinct K object: records with the same counters share one tuple
    (``Table.conn_values``), a tenth as many as records.  ``k_texts_plain`` is the twin.
    The rows hold their K objects while this runs, so no id is reused."""
    memo: dict[int, str] = {}
    get = memo.get
    out = []
    for row in chunk:
        k = row[K_AT]
        text = get(id(k))
        if text is None:
            text = memo[id(k)] = template % _k_values(k)
        out.append(text)
    return out


def k_texts_plain(chunk: list[Row], template: str) -> list[str]:
    """``k_texts``, formatted row by row."""
    return [template % _k_values(row[K_AT]) for row in chunk]


def _chunks(rows: Iterable[Row]) -> Iterator[list[Row]]:
    it = iter(rows)
    while chunk := list(islice(it, CHUNK)):
        yield chunk


def _python_body(rows: Iterable[Row], as_bytes: bool = False) -> Iterable[str | bytes]:
    yield "{\n"
    yield from _compiled(rows, "python_lines", _python_lines, as_bytes)
    yield "}\n"


def _python_lines(chunk: list[Row]) -> str:
    """The plain twin of ``_dumptext.python_lines``: each record's line."""
    return _record_lines(chunk, ",\n", "")


def _json_lines(chunk: list[Row]) -> str:
    """The plain twin of ``_dumptext.json_lines``: the records joined by ',\n'."""
    return _record_lines(chunk, "", ",\n")


def _record_lines(chunk: list[Row], end: str, sep: str) -> str:
    """The records of ``chunk``, each ending in ``end``, joined by ``sep`` (as the C
    formatter's ``format_chunk``)."""
    dumps = json.dumps
    if len(chunk[0]) > K_AT:
        line = RECORD_LINE_K + end
        return sep.join([line % (ip, b, c, e, K_JSON % _k_values(k),
                                 dumps(list(n)) if n else "[]", r, s, t, w)
                         for ip, b, c, e, n, r, s, t, w, k in chunk])
    line = RECORD_LINE + end
    return sep.join([line % (ip, b, c, e, dumps(list(n)) if n else "[]", r, s, t, w)
                     for ip, b, c, e, n, r, s, t, w in chunk])


def _compiled(rows: Iterable[Row], function: str, plain: Callable[[list[Row]], str],
              as_bytes: bool = False) -> Iterator[str | bytes]:
    """Pieces of a records section: text from ``_dumptext.<function>`` for each
    column chunk of a ``RecordRows`` (its UTF-8 bytes with ``as_bytes``), else
    ``plain``'s, its twin, for chunks of rows (other rows, no compiled module, or a
    number past 64 bits in the chunk)."""
    compiled = getattr(_dumptext, function, None)
    if compiled is None or not isinstance(rows, RecordRows):
        yield from map(plain, _chunks(rows))
        return
    for chunk in rows.chunks():
        try:
            yield compiled(chunk, json.dumps, as_bytes)
        except OverflowError:
            yield from map(plain, _chunks(chunk_rows(chunk)))


def _perl_quote(name: str) -> str:
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


PERL_RECORD = ("\t'%s%s=> {\n\t\tB\t=> %d,\n\t\tC\t=> %d,\n\t\tE\t=> %d,\n"
               "\t\tN\t=> [%s],\n\t\tR\t=> %d,\n\t\tS\t=> %d,\n\t\tT\t=> %d,\n"
               "\t\tW\t=> %d,\n\t},\n")


PERL_RECORD_K = PERL_RECORD.replace("\t\tN\t", "\t\tK\t=> %s,\n\t\tN\t")


def _perl_body(rows: Iterable[Row]) -> Iterable[str]:
    yield "{\n  my $dump = {\n"
    for chunk in _chunks(rows):
        if len(chunk[0]) > K_AT:
            yield "".join([PERL_RECORD_K % (ip, "' " if len(ip) > 13 else "'\t", b, c, e, k,
                                            "".join(_perl_quote(x) + "," for x in n),
                                            r, s, t, w)
                           for (ip, b, c, e, n, r, s, t, w, _), k in
                           zip(chunk, k_texts(chunk, K_PERL))])
            continue
        yield "".join([PERL_RECORD % (ip, "' " if len(ip) > 13 else "'\t", b, c, e,
                                      "".join(_perl_quote(x) + "," for x in n), r, s, t, w)
                       for ip, b, c, e, n, r, s, t, w in chunk])
    yield "  };\n}\n"


CONNECTIONS_KEYS = ("active", "started", "evicted")


def _json_document(h: Header, rows: Iterable[Row],
                   as_bytes: bool = False) -> Iterable[str | bytes]:
    head = {
        "ncsniffer": h.version, "start": h.start, "current": h.current,
        "hits": round(h.hits), "bytes": round(h.bytes), "users": h.users,
        "device": h.device, "promiscuous": h.promiscuous, "bpf": h.bpf,
    }
    if h.match or h.nomatch:
        head["fragment"] = [h.payload, h.snaplen]
        if h.match:
            head["contains"] = escape_match(h.match)
        if h.nomatch:
            head["excludes"] = escape_match(h.nomatch)
    if h.connections is not None:
        head["connections"] = dict(zip(CONNECTIONS_KEYS, h.connections))
    if h.evicted is not None:
        head["evicted"] = h.evicted
    if h.extra:
        head["extra"] = list(h.extra)
    yield json.dumps(head)[:-1] + ', "records": {\n'
    sep = ""
    for piece in _compiled(rows, "json_lines", _json_lines, as_bytes):
        yield sep
        yield piece
        sep = ",\n"
    yield "\n}}\n"


def render(h: Header, rows: Iterable[Row], fmt: str = "python",
           as_bytes: bool = False) -> Iterable[str | bytes]:
    """The stats file's text, in pieces; ``as_bytes``: the compiled formatter's
    pieces (most of the text) as UTF-8 bytes, the rest str (what a file takes
    without decoding and encoding again)."""
    if fmt == "json":
        yield from _json_document(h, rows, as_bytes)
        return
    yield header_text(h)
    yield from render_body(rows, fmt, as_bytes)


def render_body(rows: Iterable[Row], fmt: str = "python",
                as_bytes: bool = False) -> Iterable[str | bytes]:
    """The records section alone, in the Python or Perl layout (for other headers)."""
    return _perl_body(rows) if fmt == "perl" else _python_body(rows, as_bytes)


def write_stream(stream: IO[str], h: Header, rows: Iterable[Row], fmt: str = "python") -> None:
    for piece in render(h, rows, fmt):
        stream.write(piece)
    stream.flush()


def write_file(path: str, h: Header, rows: Iterable[Row], fmt: str = "python") -> None:
    """Write a stats file atomically (see ``write_atomic``)."""
    write_atomic(path, render(h, rows, fmt, as_bytes=True))


def write_atomic(path: str, pieces: Iterable[str | bytes], tmp: str | None = None) -> None:
    """Write ``FILE.PID.tmp``, fsync, rename over ``FILE``.

    A reader never sees half a file; a crash or a full disk leaves the previous
    file as it was; two writers (a daemon and the orphaned dump child of the one
    before it) never share a temporary file.
    """
    try:
        safefile.write_atomic(path, pieces, tmp=tmp)
    except OSError as exc:
        raise DumpFileError(f"cannot write '{path}': {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------- reading

MAX_HEADER_BYTES = 1 << 20      # '#' lines and blank lines before the records
MAX_NAME = 2048                 # a PTR name as text (\DDD escapes included) is far shorter
MAX_NUMBER = (1 << 63) - 1      # counters and times: sums over many hosts stay finite floats
MAX_TIME = 1 << 34              # header times time.ctime can show everywhere (year 2514)
MAX_RECORD_LINES = 64           # a record spread over lines (hand-edited files)...
MAX_RECORD_TEXT = 64 << 10      # ...and its size
BLOCK = 1 << 20                 # bytes read at a time: memory follows the records kept
PERL_LOOKAHEAD = 2 * MAX_LINE   # text held ahead of the Perl record being matched

_END_PYTHON = re.compile(r"^[ \t\r]*\}[ \t\r]*$", re.M)
_END_JSON = re.compile(r"^[ \t\r]*\}[ \t\r]*\}[ \t\r]*$", re.M)
_JSON_RECORDS = ', "records": {'
_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass
class StatsFile:
    """A stats file as read: header lines (without newline) and records by IP text."""

    path: str
    header: list[str]
    records: dict[str, dict]
    format: str

    def header_value(self, name: str) -> str | None:
        """The text after ``# name:`` in the header, stripped; None if absent."""
        prefix = f"# {name}:"
        for line in self.header:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        return None

    def header_number(self, name: str) -> float:
        """The leading number of a header value (``hits``, ``bytes``, ``start``...); 0 if none."""
        value = self.header_value(name) or ""
        m = re.match(r"-?\d+(?:\.\d+)?", value)
        return float(m.group()) if m else 0.0


def _bad(path: str, problem: str) -> DumpFileError:
    return DumpFileError(f"{path}: not a readable stats file: {problem}")


class _Duplicate(Exception):
    """A key given twice in one object (raised from inside json.loads)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


class _NotANumber(ValueError):
    """NaN or Infinity in a JSON text: no counter is either."""


def _no_constant(name: str):
    raise _NotANumber(name)


def _unique_pairs(pairs: list) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set = set()
        raise _Duplicate(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return result


def _shown(key) -> str:
    """A key for a message: quoted, bounded, never a big number's digits."""
    return f"{key[:60]!r}" if isinstance(key, str) else f"a {type(key).__name__} key"


def _twice(path: str, key) -> DumpFileError:
    return _bad(path, f"{key[:60] if isinstance(key, str) else _shown(key)} appears twice")


_PERL_NAME = re.compile(r"'((?:[^'\\]|\\.)*)',")
_NUM = r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_PERL_RECORD = re.compile(
    r"\t'([^'\n]+)'\s*=> \{\n"
    rf"\t\tB\t=> {_NUM},\n\t\tC\t=> {_NUM},\n\t\tE\t=> {_NUM},\n"
    r"(?:\t\tK\t=> \{" + ", ".join(rf"{k} => (\d+)" for k in K_KEYS) + r"\},\n)?"
    r"\t\tN\t=> \[((?:'(?:[^'\\]|\\.)*',)*)\],\n"
    rf"\t\tR\t=> {_NUM},\n\t\tS\t=> {_NUM},\n\t\tT\t=> {_NUM},\n\t\tW\t=> {_NUM},\n"
    r"\t\},\n")


def read_stats(path: str) -> StatsFile:
    """Read a stats file in any format, written by ncsniffer or by the Perl daemon.

    Nothing in the file is executed; anything that is not a stats file raises
    DumpFileError naming the file.  The records are read block by block, so
    memory follows the records kept, not the size of the text.
    """
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise _bad(path, f"{size} bytes is more than a stats file may hold "
                             f"({MAX_FILE_BYTES >> 20} MiB)")
        with open(path, "rb") as fh, _collector_paused():
            return _read(path, fh)
    except OSError as exc:
        raise DumpFileError(f"{path}: {exc.strerror or exc}") from exc
    except (RecursionError, MemoryError) as exc:      # last guard: one line, not a traceback
        raise _bad(path, f"nested too deeply or too big ({type(exc).__name__})") from None


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Records are dicts and lists without cycles; with the cyclic collector on, a
    million of them cost it full passes over the growing heap (40 % of the time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _readline(fh, path: str) -> str:
    line = fh.readline(MAX_LINE)
    if len(line) >= MAX_LINE and not line.endswith(b"\n"):
        raise _bad(path, "a line is longer than 1 MiB")
    return line.decode("utf-8", errors="replace")


def _read_header(path: str, fh) -> tuple[list[str], str, int]:
    """The '#' lines, the first line after them and its line number."""
    header: list[str] = []
    size = number = 0
    line = _readline(fh, path)
    while line and (line.startswith("#") or not line.strip()):
        size += len(line)
        number += 1
        if size > MAX_HEADER_BYTES:
            raise _bad(path, "the header is longer than 1 MiB")
        if line.startswith("#"):
            header.append(line.rstrip("\n"))
        line = _readline(fh, path)
    if not line:
        raise _bad(path, "no records section" if header else "the file is empty")
    return header, line, number + 1


def _read(path: str, fh) -> StatsFile:
    header, line, number = _read_header(path, fh)
    if line.startswith('{"ncsniffer"'):
        return _read_json(path, fh, line, number)
    if line.rstrip("\n").strip() != "{":
        raise _bad(path, f"unexpected text {line[:40]!r}")
    body_start = fh.tell()
    line = _readline(fh, path)
    if line.strip().startswith("my $dump"):
        return StatsFile(path, header, _read_perl(path, fh, body_start, line), "perl")
    records = _read_records(path, _blocks(fh, path, line), _END_PYTHON, number + 1)
    return StatsFile(path, header, records, "python")


def _blocks(fh, path: str, first: str = "") -> Iterator[str]:
    """The rest of the file as text, in blocks of whole lines of about BLOCK bytes."""
    if first:
        yield first
    carry = b""
    while True:
        data = fh.read(BLOCK)
        if not data:
            if carry:
                yield carry.decode("utf-8", errors="replace")
            return
        data = carry + data if carry else data
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if len(carry) > MAX_LINE:
            raise _bad(path, "a line is longer than 1 MiB")
        if cut:
            yield data[:cut].decode("utf-8", errors="replace")


class _Records:
    """Records being read block by block; a record spread over lines waits in ``pending``."""

    def __init__(self, path: str, line: int):
        self.path = path
        self.records: dict[str, dict] = {}
        self.line = line               # number of the next line of the file
        self.pending: list[str] = []
        self.pending_line = 0
        self.literal = 0               # characters given to the Python parser so far


def _read_records(path: str, blocks: Iterator[str], end: re.Pattern, line: int) -> dict:
    """The records section (Python and JSON formats) up to its ``end`` line.

    Fast path: a block of one-record lines is JSON but for its last comma, one
    json.loads per block.  A block it does not accept is read line by line.
    """
    state = _Records(path, line)
    for text in blocks:
        if not state.pending:
            m = _find_end(text, end)
            if _add_block(state, text if m is None else text[:m.start()]):
                if m is not None:
                    return _finish(state, text[m.end():], blocks)
                state.line += text.count("\n")
                continue
        at = _add_lines(state, text, end)
        if at is not None:
            return _finish(state, text[at:], blocks)
    if state.pending:
        raise _bad(path, f"line {state.pending_line}: the record is not complete "
                         "(truncated file?)")
    raise _bad(path, "the records section is not closed (truncated file?)")


def _find_end(text: str, end: re.Pattern) -> re.Match | None:
    """The end line, if it starts with its '}' (str.find is 10x faster than a search for ^)."""
    probe = "\n" + text
    at = probe.find("\n}")
    while at >= 0:
        m = end.match(text, at)
        if m:
            return m
        at = probe.find("\n}", at + 1)
    return None


def _finish(state: _Records, rest: str, blocks: Iterator[str]) -> dict:
    if (rest + next(blocks, "")).strip():
        raise _bad(state.path, "unexpected text after the records")
    return state.records


def _add_block(state: _Records, body: str) -> bool:
    """One block as one JSON object; False if it is not that (the careful path decides)."""
    text = body.rstrip()
    if not text:
        return True
    if text.endswith(","):
        text = text[:-1]
    try:
        chunk = json.loads("{" + text + "}", parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return False
    nested = sum(1 for rec in chunk.values() if type(rec) is dict and "K" in rec)
    if body.count("}") != len(chunk) + nested:
        return False      # a '}' in a name, or an IP twice (json keeps the last): look closer
    path, records = state.path, state.records
    for ip, rec in chunk.items():
        checked = _check_record(path, ip, rec)
        if checked is not rec:
            chunk[ip] = checked
    if not records.keys().isdisjoint(chunk):
        raise _twice(path, next(ip for ip in chunk if ip in records))
    records.update(chunk)
    return True


def _add_lines(state: _Records, text: str, end: re.Pattern) -> int | None:
    """Careful path, line by line; the offset after the ``end`` line, None if not in ``text``."""
    pos, size = 0, len(text)
    while pos < size:
        stop = text.find("\n", pos) + 1 or size
        line = text[pos:stop]
        pos = stop
        if not state.pending and end.fullmatch(line.rstrip("\n")):
            return pos
        _add_line(state, line)
        state.line += 1
    return None


def _add_line(state: _Records, line: str) -> None:
    """A JSON record line, else a line of a Python dict literal (a record may take several)."""
    if not state.pending:
        text = line.strip()
        if not text:
            return
        item = _json_line(state, text[:-1] if text.endswith(",") else text)
        if item is not None:
            _keep(state, item)
            return
        state.pending_line = state.line
    state.pending.append(line)
    item = _literal(state)
    if item is not None:
        state.pending = []
        _keep(state, item)


def _json_line(state: _Records, text: str) -> dict | None:
    try:
        return json.loads("{" + text + "}", parse_constant=_no_constant,
                          object_pairs_hook=_unique_pairs)
    except _Duplicate as exc:
        raise _twice(state.path, exc.key) from None
    except _NotANumber as exc:
        raise _bad(state.path, f"line {state.line}: {exc} is not a number a stats file "
                               "holds") from None
    except RecursionError:
        raise _bad(state.path, f"line {state.line}: data nested too deeply") from None
    except ValueError:
        return None


def _keep(state: _Records, item: dict) -> None:
    records = state.records
    for ip, rec in item.items():
        if ip in records:
            raise _twice(state.path, ip)
        records[ip] = _check_record(state.path, ip, rec)


def _literal(state: _Records) -> dict | None:
    """The pending lines as entries of a Python dict literal, parsed, never evaluated;
    None while they are not complete."""
    path, where = state.path, f"line {state.pending_line}"
    text = "".join(state.pending).strip()
    if len(text) > MAX_RECORD_TEXT:         # before parsing: ast needs ~150 bytes per byte
        raise _bad(path, f"{where}: a record of more than {MAX_RECORD_TEXT >> 10} KiB "
                         "that is not JSON")
    state.literal += len(text)
    if state.literal > MAX_LITERAL_BYTES:
        raise _bad(path, f"more than {MAX_LITERAL_BYTES >> 20} MiB of records not in the "
                         "one-per-line layout")
    try:
        tree = ast.parse("{" + text + "}", mode="eval")
    except SyntaxError as exc:
        if len(state.pending) >= MAX_RECORD_LINES:
            raise _bad(path, f"{where}: not a record ({exc.msg})") from None
        return None
    except (ValueError, MemoryError, RecursionError) as exc:
        raise _bad(path, f"{where}: not a record ({type(exc).__name__})") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
            if len(set(keys)) != len(keys):
                seen: set = set()
                raise _twice(path, next(k for k in keys if k in seen or seen.add(k)))
    try:
        data = ast.literal_eval(tree)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise _bad(path, f"{where}: not plain data (a name, call or expression where a "
                         "value belongs)") from None
    if not isinstance(data, dict):
        raise _bad(path, f"{where}: not a record")
    return data


def _read_perl(path: str, fh, body_start: int, first: str) -> dict[str, dict]:
    """The original daemon's exact layout, one regex match per record, block by
    block; anything else goes to the general Perl parser."""
    if first != "  my $dump = {\n":
        return _read_perl_general(path, fh, body_start)
    records: dict[str, dict] = {}
    blocks = _blocks(fh, path)
    match = _PERL_RECORD.match
    text, pos, refill, plain = "", 0, 0, True
    while True:
        if pos >= refill:
            piece = next(blocks, None)
            if piece is None:
                refill = len(text) + 1
            else:
                text, pos = text[pos:] + piece, 0
                refill = len(text) - PERL_LOOKAHEAD
                plain = text.isascii()      # O(1): then every name is plain ASCII
                continue
        m = match(text, pos)
        if m is None:
            break
        ip, b, c, e, *conns, quoted, r, s_, t, w = m.groups()
        if ip in records:
            raise _twice(path, ip)
        if quoted:
            names = _PERL_NAME.findall(quoted)
            if "\\" in quoted:
                names = [_perl_unquote(x) for x in names]
        else:
            names = []
        try:       # the regex vouches for numbers and strings; ranges and the IP are left
            B, C, E, R, S, T, W = int(b), int(c), int(e), int(r), int(s_), int(t), int(w)
        except ValueError:
            rec = {"B": _number(b), "C": _number(c), "E": _number(e), "N": names,
                   "R": _number(r), "S": _number(s_), "T": _number(t), "W": _number(w)}
            if conns[0] is not None:
                rec["K"] = _perl_counts(conns)
            records[ip] = _check_record_slow(path, ip, rec)
        else:
            rec = {"B": B, "C": C, "E": E, "N": names, "R": R, "S": S, "T": T, "W": W}
            if conns[0] is not None:
                rec["K"] = k = _perl_counts(conns)
                if max(k.values()) > MAX_NUMBER:
                    rec = _check_record_slow(path, ip, rec)
            if not (0 <= (B | C | E | R | S | T | W) <= MAX_NUMBER and _is_ip_fast(ip)
                    and (not names or (plain and len(quoted) <= MAX_NAME)
                         or _plain_names(names))):
                rec = _check_record_slow(path, ip, rec)
            records[ip] = rec
        pos = m.end()
    rest = text[pos:]
    if rest.startswith("  };\n"):
        if (rest[5:] + next(blocks, "")).strip() != "}":
            raise _bad(path, "unexpected text after the records")
        return records
    if rest.startswith("\t'"):            # records in another layout
        return _read_perl_general(path, fh, body_start)
    raise _bad(path, "the records section is not closed (truncated file?)")


def _perl_counts(digits: list[str]) -> dict[str, int]:
    """The K hash of the exact layout (the regex vouches for keys and digits)."""
    return dict(zip(K_KEYS, map(int, digits)))


def _perl_unquote(text: str) -> str:
    r"""A single-quoted Perl string body: only \\ and \' are escapes."""
    return re.sub(r"\\([\\'])", r"\1", text) if "\\" in text else text


def _read_perl_general(path: str, fh, start: int) -> dict[str, dict]:
    """Slow path: any Perl hash literal layout (Data::Dumper and friends)."""
    fh.seek(start)
    rest = fh.read(MAX_LITERAL_BYTES + 1)
    if len(rest) > MAX_LITERAL_BYTES:
        raise _bad(path, "records are not in the original layout and too large to parse")
    text = "{\n" + rest.decode("utf-8", errors="replace")
    from ncsniffer import perlval
    try:
        data = perlval.parse_dump(text, unique=True)
    except perlval.PerlSyntaxError as exc:
        raise _bad(path, f"Perl records: {exc}") from None
    return {ip: _check_record(path, ip, rec) for ip, rec in data.items()}


def _read_json(path: str, fh, first: str, line: int) -> StatsFile:
    """Our JSON layout is read record by record; any other JSON layout whole (bounded)."""
    opening = first.rstrip()
    if opening.endswith(_JSON_RECORDS):
        head = _load_json(path, opening[:-len(_JSON_RECORDS)] + "}")
        records = _read_records(path, _blocks(fh, path), _END_JSON, line + 1)
    else:
        rest = fh.read(MAX_LITERAL_BYTES + 1)
        if len(rest) > MAX_LITERAL_BYTES:
            raise _bad(path, "JSON not in the one-record-per-line layout and too large to parse")
        head = _load_json(path, first + rest.decode("utf-8", errors="replace"))
        found = head.pop("records", None) if isinstance(head, dict) else None
        if not isinstance(found, dict):
            raise _bad(path, "JSON without a 'records' object")
        records = {ip: _check_record(path, ip, rec) for ip, rec in found.items()}
    if not isinstance(head, dict):
        raise _bad(path, "JSON without a 'records' object")
    return StatsFile(path, _json_header(path, head), records, "json")


def _load_json(path: str, text: str):
    try:
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_pairs)
    except _Duplicate as exc:
        raise _twice(path, exc.key) from None
    except _NotANumber as exc:
        raise _bad(path, f"invalid JSON ({exc} is not a number a stats file holds)") from None
    except RecursionError:
        raise _bad(path, "invalid JSON (nested too deeply)") from None
    except ValueError as exc:
        raise _bad(path, f"invalid JSON ({exc})") from None


def _json_header(path: str, head: dict) -> list[str]:
    """The header lines the fields of a JSON stats file stand for."""
    try:
        h = Header(start=_whole(head, "start", MAX_TIME), current=_whole(head, "current", MAX_TIME),
                   hits=_finite(head, "hits"), bytes=_finite(head, "bytes"),
                   users=_whole(head, "users"), device=_text(head["device"]),
                   promiscuous=bool(head["promiscuous"]), bpf=_text(head["bpf"]),
                   evicted=None if head.get("evicted") is None else _whole(head, "evicted"),
                   connections=_json_connections(head),
                   version=_text(head.get("ncsniffer", "?")),
                   extra=[_text(x) for x in _list(head, "extra")])
        lines = header_text(h).split("\n")[1:-1]
        if "fragment" in head:
            frag = _list(head, "fragment")
            if len(frag) != 2:
                raise ValueError("'fragment' is not [payload, snaplen]")
            at = next(i for i, x in enumerate(lines) if x.startswith("# bpf:")) + 1
            more = [f"# fragment:\t{_whole_value(frag[0], 'payload')} - "
                    f"{_whole_value(frag[1], 'snaplen')}"]
            more += [f"# contains:\t{_text(head['contains'])}"] if "contains" in head else []
            more += [f"# excludes:\t{_text(head['excludes'])}"] if "excludes" in head else []
            lines[at:at] = more
    except KeyError as exc:
        raise _bad(path, f"JSON header field {exc} missing") from None
    except (TypeError, ValueError) as exc:
        raise _bad(path, f"JSON header: {exc}") from None
    return lines


def _json_connections(head: dict) -> tuple[int, int, int] | None:
    """The JSON header's ``connections`` object (10.3), if there is one."""
    value = head.get("connections")
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != set(CONNECTIONS_KEYS):
        raise ValueError(f"'connections' is not an object of {', '.join(CONNECTIONS_KEYS)}")
    return tuple(_whole_value(value[k], k) for k in CONNECTIONS_KEYS)


def _whole(head: dict, name: str, high: int = MAX_NUMBER) -> int:
    return _whole_value(head[name], name, high)


def _whole_value(value, name: str, high: int = MAX_NUMBER) -> int:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not (isinstance(value, int) or math.isfinite(value)) or not 0 <= value <= high):
        raise ValueError(f"{name!r} is not a whole number from 0 to {high}")
    return int(value)


def _finite(head: dict, name: str) -> float:
    value = head[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not -MAX_NUMBER <= value <= MAX_NUMBER:
        raise ValueError(f"{name!r} is not a number up to {MAX_NUMBER}")
    return float(value)


def _list(head: dict, name: str) -> list:
    value = head.get(name, [])
    if not isinstance(value, list):
        raise ValueError(f"{name!r} is not a list")
    return value


def _text(value) -> str:
    """A header text field on one line: no control characters, no lone surrogates."""
    return _SURROGATES.sub("\ufffd", safetext.strip_controls(str(value), keep="\t"))


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _is_ip_fast(ip) -> bool:
    """inet_pton accepts only plain dotted quads and IPv6 texts (no leading zeros, no
    %scope: a scoped key would not sort or group)."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
        return True
    except (OSError, TypeError, ValueError):
        return False


def _check_record(path: str, ip, rec) -> dict:
    """A record must be an IP address mapping to bounded numbers and a list of names.

    Fast path for what our writers and the original daemon produce (all eight
    keys, integer numbers, a list of short ASCII strings): 100,000 records must
    be read within a report's time budget.  Anything else takes the careful path.
    """
    if type(rec) is dict and (len(rec) == 8 or len(rec) == 9 and _plain_counts(rec.get("K"))) \
            and _is_ip_fast(ip):
        try:
            b, c, e, n, r, s, t, w = (rec["B"], rec["C"], rec["E"], rec["N"], rec["R"],
                                      rec["S"], rec["T"], rec["W"])
        except KeyError:
            return _check_record_slow(path, ip, rec)
        if (type(b) is int and type(c) is int and type(e) is int and type(r) is int
                and type(s) is int and type(t) is int and type(w) is int
                and 0 <= (b | c | e | r | s | t | w) <= MAX_NUMBER
                and type(n) is list and (not n or _plain_names(n))):
            return rec
    return _check_record_slow(path, ip, rec)


def _plain_counts(k) -> bool:
    """K as our writers write it: the twelve counters, whole numbers in range."""
    if type(k) is not dict or len(k) != len(K_KEYS):
        return False
    try:
        values = _K_VALUES(k)
    except KeyError:
        return False
    for v in values:
        if type(v) is not int or not 0 <= v <= MAX_NUMBER:
            return False
    return True


def _plain_names(names: list) -> bool:
    for x in names:
        if type(x) is not str or len(x) > MAX_NAME or not x.isascii():
            return False
    return True


def _check_record_slow(path: str, ip, rec) -> dict:
    """The careful check, with a message naming what is wrong."""
    if not _is_ip_fast(ip):
        raise _bad(path, f"{_shown(ip)} is not an IP address")
    if not isinstance(rec, dict):
        raise _bad(path, f"the record of {ip} is not a mapping")
    unknown = set(rec) - set(FIELDS) - {"K"}
    if unknown:
        raise _bad(path, f"the record of {ip} has unknown keys "
                         f"{sorted(_shown(k) for k in unknown)[:5]}")
    out = {"K": _counts(path, ip, rec["K"])} if "K" in rec else {}
    for key in FIELDS:
        value = rec.get(key, [] if key == "N" else 0)
        if key == "N":
            out[key] = _names(path, ip, value)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(path, f"{key} of {ip} is not a number")
        if isinstance(value, float) and not math.isfinite(value):
            # json and Perl texts can spell inf/nan (1e999, NaN); no counter is infinite
            raise _bad(path, f"{key} of {ip} is not a finite number")
        if not -MAX_NUMBER <= value <= MAX_NUMBER:
            raise _bad(path, f"{key} of {ip} is out of range (beyond 2**63)")
        out[key] = value
    return out


def _counts(path: str, ip: str, value) -> dict[str, int]:
    """A record's K (10.3): exactly the twelve counters, whole numbers from 0."""
    if not isinstance(value, dict):
        raise _bad(path, f"K of {ip} is not a mapping of the {len(K_KEYS)} connection counters")
    missing = [k for k in K_KEYS if k not in value]
    if missing:
        raise _bad(path, f"K of {ip} lacks the counters {', '.join(missing[:5])}")
    unknown = set(value) - set(K_KEYS)
    if unknown:
        raise _bad(path, f"K of {ip} has unknown keys "
                         f"{', '.join(sorted(_shown(k) for k in unknown)[:5])}")
    out = {}
    for key in K_KEYS:
        v = value[key]
        if isinstance(v, float) and math.isfinite(v) and v == int(v):
            v = int(v)
        if type(v) is not int or not 0 <= v <= MAX_NUMBER:
            raise _bad(path, f"K {key} of {ip} is not a whole number from 0 to {MAX_NUMBER}")
        out[key] = v
    return out


def _names(path: str, ip: str, value) -> list[str]:
    """A record's names: strings of sane length; lone surrogates (which no file can hold
    as UTF-8) become U+FFFD."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
        raise _bad(path, f"the names of {ip} are not a list of strings")
    for x in value:
        if len(x) > MAX_NAME:
            raise _bad(path, f"a name of {ip} is longer than {MAX_NAME} characters")
    return [_SURROGATES.sub("\ufffd", x) for x in value]
