"""The stats file: write it in Python, Perl or JSON format, and read any of them safely.

Python format: '#' header lines, then a dict literal with one record per line.
Each record line is also a JSON fragment, so reading 100,000 records needs no
``eval`` and no big AST (``ast.literal_eval`` remains the fallback for files a
person edited).  Perl format: the original daemon's exact layout.  JSON: one
object, header fields included, for other tools.
"""

from __future__ import annotations

import ast
import io
import ipaddress
import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from typing import IO, Iterable, Iterator

from ncsniffer import __version__, perlval, safefile
from ncsniffer.errors import DumpFileError

FIELDS = ("B", "C", "E", "N", "R", "S", "T", "W")
MAX_FILE_BYTES = 512 << 20
MAX_LITERAL_BYTES = 64 << 20
MAX_LINE = 1 << 20

Row = tuple  # (ip_text, B, C, E, N, R, S, T, W): the numbers as ints, R and W rounded


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
    if h.evicted is not None:
        lines.append(f"# evicted:\t{h.evicted}")
    lines.extend("# " + line for line in h.extra)
    return "\n".join(lines) + "\n"


OCTETS = [str(i) for i in range(256)]


def rows_from_records(records) -> Iterable[Row]:
    """Accounting records (a ``table.Table``) as rows in numeric address
    order, IPv4 first (lazily: a dump of a million records never holds a
    second copy of them)."""
    for packed, *fields in records.columns():
        if len(packed) == 16 * len(fields[0]):
            texts = map(partial(socket.inet_ntop, socket.AF_INET6),
                        [packed[i:i + 16] for i in range(0, len(packed), 16)])
        else:
            octets = zip(*[map(OCTETS.__getitem__, packed[i::4]) for i in range(4)])
            texts = map(".".join, octets)         # 2.5x faster than inet_ntop, same text
        yield from zip(texts, *fields)


def rows_from_dicts(records: dict[str, dict]) -> list[Row]:
    """Rows from records as read from a file (ip text -> field dict), sorted numerically."""
    def order(ip: str):
        a = ipaddress.ip_address(ip)
        return a.version, a.packed
    rows = []
    for ip in sorted(records, key=order):
        r = records[ip]
        rows.append((ip, _int(r["B"]), _int(r["C"]), _int(r["E"]), list(r["N"]), _int(r["R"]),
                     _int(r["S"]), _int(r["T"]), _int(r["W"])))
    return rows


def _int(value) -> int:
    """A number of a file's record as the stats files print it (``%.0f``)."""
    return value if type(value) is int else int("%.0f" % value)


PYTHON_LINE = ('"%s": {"B": %d, "C": %d, "E": %d, "N": %s, "R": %d, "S": %d, "T": %d, '
               '"W": %d},\n')
CHUNK = 4096    # rows formatted per piece: fewer generator steps and writes


def _chunks(rows: Iterable[Row]) -> Iterator[list[Row]]:
    it = iter(rows)
    while chunk := list(islice(it, CHUNK)):
        yield chunk


def _python_body(rows: Iterable[Row]) -> Iterable[str]:
    yield "{\n"
    dumps = json.dumps
    for chunk in _chunks(rows):
        yield "".join([PYTHON_LINE % (ip, b, c, e, dumps(list(n)) if n else "[]", r, s, t, w)
                       for ip, b, c, e, n, r, s, t, w in chunk])
    yield "}\n"


def _perl_quote(name: str) -> str:
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


PERL_RECORD = ("\t'%s%s=> {\n\t\tB\t=> %d,\n\t\tC\t=> %d,\n\t\tE\t=> %d,\n"
               "\t\tN\t=> [%s],\n\t\tR\t=> %d,\n\t\tS\t=> %d,\n\t\tT\t=> %d,\n"
               "\t\tW\t=> %d,\n\t},\n")


def _perl_body(rows: Iterable[Row]) -> Iterable[str]:
    yield "{\n  my $dump = {\n"
    for chunk in _chunks(rows):
        yield "".join([PERL_RECORD % (ip, "' " if len(ip) > 13 else "'\t", b, c, e,
                                      "".join(_perl_quote(x) + "," for x in n), r, s, t, w)
                       for ip, b, c, e, n, r, s, t, w in chunk])
    yield "  };\n}\n"


def _json_document(h: Header, rows: Iterable[Row]) -> Iterable[str]:
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
    if h.evicted is not None:
        head["evicted"] = h.evicted
    if h.extra:
        head["extra"] = list(h.extra)
    yield json.dumps(head)[:-1] + ', "records": {\n'
    line = '"%s": {"B": %d, "C": %d, "E": %d, "N": %s, "R": %d, "S": %d, "T": %d, "W": %d}'
    sep = ""
    for chunk in _chunks(rows):
        yield sep + ",\n".join([line % (ip, b, c, e, json.dumps(n), r, s, t, w)
                                for ip, b, c, e, n, r, s, t, w in chunk])
        sep = ",\n"
    yield "\n}}\n"


def render(h: Header, rows: Iterable[Row], fmt: str = "python") -> Iterable[str]:
    """The stats file's text, in pieces."""
    if fmt == "json":
        yield from _json_document(h, rows)
        return
    yield header_text(h)
    yield from render_body(rows, fmt)


def render_body(rows: Iterable[Row], fmt: str = "python") -> Iterable[str]:
    """The records section alone, in the Python or Perl layout (for other headers)."""
    return _perl_body(rows) if fmt == "perl" else _python_body(rows)


def write_stream(stream: IO[str], h: Header, rows: Iterable[Row], fmt: str = "python") -> None:
    for piece in render(h, rows, fmt):
        stream.write(piece)
    stream.flush()


def write_file(path: str, h: Header, rows: Iterable[Row], fmt: str = "python") -> None:
    """Write a stats file atomically (see ``write_atomic``)."""
    write_atomic(path, render(h, rows, fmt))


def write_atomic(path: str, pieces: Iterable[str], tmp: str | None = None) -> None:
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


_PERL_NAME = re.compile(r"'((?:[^'\\]|\\.)*)',")
_NUM = r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_PERL_RECORD = re.compile(
    r"\t'([^'\n]+)'\s*=> \{\n"
    rf"\t\tB\t=> {_NUM},\n\t\tC\t=> {_NUM},\n\t\tE\t=> {_NUM},\n"
    r"\t\tN\t=> \[((?:'(?:[^'\\]|\\.)*',)*)\],\n"
    rf"\t\tR\t=> {_NUM},\n\t\tS\t=> {_NUM},\n\t\tT\t=> {_NUM},\n\t\tW\t=> {_NUM},\n"
    r"\t\},\n")


def read_stats(path: str) -> StatsFile:
    """Read a stats file in any format, written by ncsniffer or by the Perl daemon.

    Nothing in the file is executed; anything that is not a stats file raises
    DumpFileError naming the file.
    """
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise _bad(path, f"{size} bytes is more than a stats file may hold "
                             f"({MAX_FILE_BYTES >> 20} MiB)")
        with open(path, "rb") as fh:
            return _read(path, fh)
    except OSError as exc:
        raise DumpFileError(f"{path}: {exc.strerror or exc}") from exc


def _readline(fh, path: str) -> str:
    line = fh.readline(MAX_LINE)
    if len(line) >= MAX_LINE and not line.endswith(b"\n"):
        raise _bad(path, "a line is longer than 1 MiB")
    return line.decode("utf-8", errors="replace")


def _read(path: str, fh) -> StatsFile:
    header: list[str] = []
    line = _readline(fh, path)
    while line and (line.startswith("#") or not line.strip()):
        if line.startswith("#"):
            header.append(line.rstrip("\n"))
        line = _readline(fh, path)
    if not line:
        raise _bad(path, "no records section" if header else "the file is empty")
    if line.startswith('{"ncsniffer"'):
        return _read_json(path, line + fh.read().decode("utf-8", errors="replace"))
    if line.rstrip("\n").strip() != "{":
        raise _bad(path, f"unexpected text {line[:40]!r}")
    body_start = fh.tell()
    line = _readline(fh, path)
    if line.strip().startswith("my $dump"):
        return StatsFile(path, header, _read_perl(path, fh, body_start, line), "perl")
    return StatsFile(path, header, _read_python(path, fh, line), "python")


def _read_python(path: str, fh, line: str) -> dict[str, dict]:
    """Fast path: the whole records section is JSON but for its last comma.

    One json.loads of the body is several times faster than one per line;
    anything it does not accept is read again line by line (the careful path).
    """
    rest = fh.read()
    text = line + rest.decode("utf-8", errors="replace")
    body = text.rstrip()
    if body.endswith("}"):
        inner = body[:-1].rstrip()
        try:
            data = json.loads("{" + (inner[:-1] if inner.endswith(",") else inner) + "}")
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, dict):
            return {ip: _check_record(path, ip, rec) for ip, rec in data.items()}
    return _read_python_lines(path, io.BytesIO(rest), line)


def _read_python_lines(path: str, fh, line: str) -> dict[str, dict]:
    records: dict[str, dict] = {}
    pending = [line]
    loads = json.loads
    while line and line.strip() != "}":
        text = line.strip().rstrip(",")
        if text:
            try:
                item = loads("{" + text + "}")
            except ValueError:
                return _read_python_literal(path, fh, pending)
            for ip, rec in item.items():
                records[ip] = _check_record(path, ip, rec)
        line = _readline(fh, path)
        pending.append(line)
    if not line:
        raise _bad(path, "the records section is not closed (truncated file?)")
    if fh.read(1024).strip():
        raise _bad(path, "unexpected text after the records")
    return records


def _read_python_literal(path: str, fh, seen: list[str]) -> dict[str, dict]:
    """Slow path: a hand-edited Python dict literal, parsed without evaluation."""
    rest = fh.read(MAX_LITERAL_BYTES + 1)
    if len(rest) > MAX_LITERAL_BYTES:
        raise _bad(path, "records are not in the one-per-line layout and too large to parse")
    text = "{\n" + "".join(seen) + rest.decode("utf-8", errors="replace")
    try:
        data = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise _bad(path, f"not a plain dict literal ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise _bad(path, "the records section is not a dict")
    return {ip: _check_record(path, ip, rec) for ip, rec in data.items()}


def _read_perl(path: str, fh, body_start: int, first: str) -> dict[str, dict]:
    """The original daemon's exact layout, one regex match per record; anything
    else goes to the general Perl parser."""
    if first != "  my $dump = {\n":
        return _read_perl_general(path, fh, body_start)
    text = fh.read(MAX_FILE_BYTES).decode("utf-8", errors="replace")
    records: dict[str, dict] = {}
    match = _PERL_RECORD.match
    pos = 0
    while True:
        m = match(text, pos)
        if m is None:
            break
        ip, b, c, e, names, r, s_, t, w = m.groups()
        if names:
            names = _PERL_NAME.findall(names)
            if "\\" in m.group(5):
                names = [_perl_unquote(x) for x in names]
        else:
            names = []
        try:       # the regex vouches for numbers and strings; only the IP is left
            rec = {"B": int(b), "C": int(c), "E": int(e), "N": names, "R": int(r),
                   "S": int(s_), "T": int(t), "W": int(w)}
        except ValueError:
            rec = {"B": _number(b), "C": _number(c), "E": _number(e), "N": names,
                   "R": _number(r), "S": _number(s_), "T": _number(t), "W": _number(w)}
        records[ip] = rec if _is_ip_fast(ip) else _check_record(path, ip, rec)
        pos = m.end()
    rest = text[pos:]
    if rest.startswith("  };\n"):
        if rest[5:].strip() != "}":
            raise _bad(path, "unexpected text after the records")
        return records
    if rest.startswith("\t'"):            # records in another layout
        return _read_perl_general(path, fh, body_start)
    raise _bad(path, "the records section is not closed (truncated file?)")


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
    try:
        data = perlval.parse_dump(text)
    except perlval.PerlSyntaxError as exc:
        raise _bad(path, f"Perl records: {exc}") from None
    return {ip: _check_record(path, ip, rec) for ip, rec in data.items()}


def _read_json(path: str, text: str) -> StatsFile:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise _bad(path, f"invalid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("records"), dict):
        raise _bad(path, "JSON without a 'records' object")
    try:
        h = Header(start=int(doc["start"]), current=int(doc["current"]), hits=float(doc["hits"]),
                   bytes=float(doc["bytes"]), users=int(doc["users"]), device=str(doc["device"]),
                   promiscuous=bool(doc["promiscuous"]), bpf=str(doc["bpf"]),
                   evicted=doc.get("evicted"), version=str(doc.get("ncsniffer", "?")),
                   extra=[str(x) for x in doc.get("extra", [])])
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(path, f"JSON header field missing or wrong ({exc})") from None
    lines = header_text(h).splitlines()[1:]
    if "fragment" in doc:
        at = next(i for i, x in enumerate(lines) if x.startswith("# bpf:")) + 1
        extra = [f"# fragment:\t{doc['fragment'][0]} - {doc['fragment'][1]}"]
        extra += [f"# contains:\t{doc['contains']}"] if "contains" in doc else []
        extra += [f"# excludes:\t{doc['excludes']}"] if "excludes" in doc else []
        lines[at:at] = extra
    records = {ip: _check_record(path, ip, rec) for ip, rec in doc["records"].items()}
    return StatsFile(path, lines, records, "json")


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _is_ip_fast(ip) -> bool:
    """inet_pton accepts only plain dotted quads and IPv6 texts (no leading zeros)."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
        return True
    except (OSError, TypeError, ValueError):
        return False


def _check_record(path: str, ip, rec) -> dict:
    """A record must be an IP address mapping to numbers and a list of names.

    Fast path for what our writers and the original daemon produce (all eight
    keys, integer numbers, a list of strings): 100,000 records must be read
    within a report's time budget.  Anything else takes the careful path.
    """
    if type(rec) is dict and len(rec) == 8 and _is_ip_fast(ip):
        try:
            b, c, e, n, r, s, t, w = (rec["B"], rec["C"], rec["E"], rec["N"], rec["R"],
                                      rec["S"], rec["T"], rec["W"])
        except KeyError:
            return _check_record_slow(path, ip, rec)
        if (type(b) is int and type(c) is int and type(e) is int and type(r) is int
                and type(s) is int and type(t) is int and type(w) is int
                and type(n) is list and _all_str(n)):
            return rec
    return _check_record_slow(path, ip, rec)


def _all_str(names: list) -> bool:
    for x in names:
        if type(x) is not str:
            return False
    return True


def _check_record_slow(path: str, ip, rec) -> dict:
    """The careful check, with a message naming what is wrong."""
    try:
        ipaddress.ip_address(ip)
    except (ValueError, TypeError):
        raise _bad(path, f"{str(ip)[:60]!r} is not an IP address") from None
    if not isinstance(rec, dict):
        raise _bad(path, f"the record of {ip} is not a mapping")
    out = {}
    for key in FIELDS:
        value = rec.get(key, [] if key == "N" else 0)
        if key == "N":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
                raise _bad(path, f"the names of {ip} are not a list of strings")
            value = list(value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(path, f"{key} of {ip} is not a number")
        elif isinstance(value, float) and not math.isfinite(value):
            # json and Perl texts can spell inf/nan (1e999, NaN); no counter is infinite
            raise _bad(path, f"{key} of {ip} is not a finite number")
        out[key] = value
    unknown = set(rec) - set(FIELDS)
    if unknown:
        raise _bad(path, f"the record of {ip} has unknown keys {sorted(unknown)}")
    return out
