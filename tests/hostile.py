"""Stats files crafted against the readers (issue 11, items 12 and 18), in all three formats.

``write(path, kind, fmt)`` writes one; ``BAD`` kinds must be refused with one
line naming the file, ``ODD`` kinds are valid files whose names hold HTML,
terminal escapes or lone surrogates and must be shown harmlessly.
"""

from __future__ import annotations

import json

FORMATS = ("python", "perl", "json")
HEADER = ("\n# ncsniffer version 0.1\n# start:\t1700000000,\tTue Nov 14 22:13:20 2023\n"
          "# current:\t1700000600,\tTue Nov 14 22:23:20 2023\n# hits:\t\t5 per minute\n"
          "# bytes:\t7 per second\n# users:\t2\n# device:\teth0\tnon-promiscuous\n"
          "# bpf:\t\thost 192.0.2.1\n")
GOOD_IP = "192.0.2.7"
FIELDS = "BCENRSTW"


def record(**change) -> dict:
    rec = {"B": 100, "C": 2, "E": 1700000500, "N": ["good.example.com"], "R": 120,
           "S": 1700000000, "T": 1700086400, "W": 7200}
    rec.update(change)
    return rec


def _py_value(value) -> str:
    """Values as the raw text each test wants (a str starting with '!' is written as is)."""
    if isinstance(value, str) and value.startswith("!"):
        return value[1:]
    return json.dumps(value)


def _line(ip: str, rec: dict) -> str:
    fields = ", ".join(f'"{k}": {_py_value(v)}' for k, v in rec.items())
    return f'"{ip}": {{{fields}}}'


def python_text(items) -> str:
    return HEADER + "{\n" + "".join(_line(ip, rec) + ",\n" for ip, rec in items) + "}\n"


def json_text(items, head_change: str = "") -> str:
    head = ('{"ncsniffer": "0.1", "start": 1700000000, "current": 1700000600, "hits": 5, '
            '"bytes": 7, "users": 2, "device": "eth0", "promiscuous": false, '
            f'"bpf": "host 192.0.2.1"{head_change}, "records": {{\n')
    return head + ",\n".join(_line(ip, rec) for ip, rec in items) + "\n}}\n"


def _perl_value(key: str, value) -> str:
    if isinstance(value, str) and value.startswith("!"):
        return value[1:]
    if key == "N":
        return "[" + "".join("'%s'," % n.replace("\\", "\\\\").replace("'", "\\'")
                             for n in value) + "]"
    return str(value)


def perl_text(items) -> str:
    """The original daemon's exact layout (the reader's fast path)."""
    body = []
    for ip, rec in items:
        gap = "' " if len(ip) > 13 else "'\t"
        body.append(f"\t'{ip}{gap}=> {{\n" + "".join(
            f"\t\t{k}\t=> {_perl_value(k, rec[k])},\n" for k in FIELDS) + "\t},\n")
    return HEADER + "{\n  my $dump = {\n" + "".join(body) + "  };\n}\n"


def perl_general(inner: str) -> str:
    """Another Perl layout (the general parser's path)."""
    return HEADER + "{\n  my $dump = {\n" + inner + "\n  };\n}\n"


DEEP = 100_000


def _bad(kind: str, fmt: str) -> str:
    good = (GOOD_IP, record())
    if kind == "deep_nesting":
        if fmt == "perl":
            return perl_general("\t'1.2.3.4' => { N => " + "[" * DEEP + "] },\n"
                                + "{ " * DEEP)
        return _text(fmt, [good, ("1.2.3.4", record(N="!" + "[" * DEEP + "]" * DEEP))])
    if kind == "infinite":
        return _text(fmt, [good, ("1.2.3.4", record(W="!1e999"))])
    if kind == "huge_int":
        return _text(fmt, [good, ("1.2.3.4", record(R="!" + "9" * 400))])
    if kind == "long_name":
        return _text(fmt, [good, ("1.2.3.4", record(N=["x" * 100_000 + ".example.com"]))])
    if kind == "duplicate_ip":
        return _text(fmt, [good, ("1.2.3.4", record()), ("1.2.3.4", record(W=1))])
    if kind == "scoped_ipv6":
        return _text(fmt, [good, ("fe80::1%eth0", record())])
    if kind == "not_an_ip":
        return _text(fmt, [good, ("x; rm -rf /", record())])
    if kind == "nan":
        return _text(fmt, [good, ("1.2.3.4", record(B="!NaN"))])
    if kind == "bad_code_point":
        if fmt == "perl":
            return perl_general("\t'1.2.3.4' => { N => [\"\\x{110000}\"] },")
        return _text(fmt, [good, ("1.2.3.4", record(N="![\"\\udfff\\ud800x\", 7]"))])
    if kind == "code":
        if fmt == "perl":
            return perl_general("\t'1.2.3.4' => { B => `touch /tmp/ncs-hostile-ran` },")
        return _text(fmt, [good, ("1.2.3.4", record(B="!__import__('os').system("
                                                    "'touch /tmp/ncs-hostile-ran')"))])
    if kind == "json_header":
        return json_text([good], head_change=', "start": Infinity, "fragment": 5') \
            .replace('"start": 1700000000, ', "")
    raise ValueError(kind)


def _text(fmt: str, items) -> str:
    return {"python": python_text, "perl": perl_text, "json": json_text}[fmt](items)


BAD = ("deep_nesting", "infinite", "huge_int", "long_name", "duplicate_ip", "scoped_ipv6",
       "not_an_ip", "nan", "bad_code_point", "code")
BAD_CASES = [(k, f) for k in BAD for f in FORMATS] + [("json_header", "json")]

# names a resolver never returns, but a crafted file can hold
EVIL_NAMES = ["<script>alert(1)</script>.evil.org",
              "\x1b]0;owned\x07\x1b[2J\x1b[31mred.evil.org",
              "line\nrate\t\t= 999999 connections per minute",
              "c1\x9b2Jcontrol\x85.evil.org\x7f",
              "rtl\u202egro.live"]
SURROGATE = "\\ud800lone.evil.org"        # JSON escape of a lone surrogate


def odd_text(fmt: str) -> str:
    """A valid file whose names would harm a page or a terminal if shown raw."""
    names = list(EVIL_NAMES)
    if fmt == "perl":
        return perl_text([(GOOD_IP, record()), ("1.2.3.4", record(N=names, W=720000))])
    quoted = "![" + ", ".join([json.dumps(n) for n in names] + [f'"{SURROGATE}"']) + "]"
    return _text(fmt, [(GOOD_IP, record()), ("1.2.3.4", record(N=quoted, W=720000))])


def write(path, kind: str, fmt: str) -> str:
    """Write the hostile file ``kind`` in format ``fmt`` to ``path``; return the path."""
    text = odd_text(fmt) if kind == "odd_names" else _bad(kind, fmt)
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as fh:
        fh.write(text)
    return str(path)


def good(path, fmt: str = "python") -> str:
    """A small healthy file, for checks that the good data survives next to a bad one."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(_text(fmt, [(GOOD_IP, record())]))
    return str(path)
