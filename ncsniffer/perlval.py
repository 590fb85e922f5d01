"""Read Perl data literals (hashes, arrays, strings, numbers) without running Perl.

Two kinds of Perl text reach ncsniffer: the ``my $config = {...};`` hash of an
old ``nc.sniffer.pl`` start script, and stats files written by the Perl daemon
(``{ my $dump = {...}; }``).  Both are plain data, so a small recursive-descent
parser is enough, and it can never execute anything.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from ncsniffer.errors import NcSnifferError


class PerlSyntaxError(NcSnifferError):
    """The text is not a Perl data literal this parser understands."""

    def __init__(self, message: str, line: int):
        super().__init__(f"line {line}: {message}")
        self.line = line


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<arrow>=>)
  | (?P<punct>[{}\[\],;=()])
  | (?P<sq>'(?:[^'\\]|\\.)*')
  | (?P<dq>"(?:[^"\\]|\\.)*")
  | (?P<num>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][-+]?\d+)?))
  | (?P<var>[$@%]\w+)
  | (?P<qw>qw\s*(?:\([^)]*\)|\[[^\]]*\]|\{[^}]*\}|<[^>]*>|(?P<qwd>[^\w\s(\[{<\#=,])(?:(?!(?P=qwd)).)*(?P=qwd)))
  | (?P<word>[A-Za-z_]\w*)
    """,
    re.VERBOSE | re.DOTALL,
)

MAX_DEPTH = 32
TOKENS_KEPT = 4096

_DQ_ESCAPE = re.compile(r"\\(x\{([0-9a-fA-F]*)\}|x([0-9a-fA-F]{0,2})|([0-7]{1,3})|(.))", re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "a": "\a", "e": "\x1b", "0": "\0"}


def _unescape_dq(body: str, line: int) -> str:
    """Decode a double-quoted Perl string body; refuse interpolation."""
    plain = _DQ_ESCAPE.sub("", body)
    if re.search(r"[$@][\w{:]", plain):      # $x, @x, ${...}, @{[ ... ]}, $::x
        raise PerlSyntaxError("variables inside double-quoted strings cannot be read", line)

    def repl(m: re.Match) -> str:
        if m.group(2) is not None:
            return _char(m.group(2) or "0", 16, line)
        if m.group(3) is not None:
            return _char(m.group(3) or "0", 16, line)
        if m.group(4) is not None:
            return _char(m.group(4), 8, line)
        ch = m.group(5)
        return _SIMPLE_ESCAPES.get(ch, ch)

    return _DQ_ESCAPE.sub(repl, body)


def _char(digits: str, base: int, line: int) -> str:
    """The character of an escape; Perl allows code points beyond Unicode, Python does not."""
    significant = digits.lstrip("0")
    code = int(significant or "0", base) if len(significant) <= 8 else sys.maxunicode + 1
    if code > sys.maxunicode:
        raise PerlSyntaxError(f"\\x{{{digits[:8]}}} is not a Unicode character", line)
    return chr(code)


def _qw_words(text: str) -> list:
    """The words of ``qw(a b c)`` (any delimiters): Perl's quoted word list, no interpolation."""
    body = text[2:].lstrip()
    return body[1:-1].split()


def _number(text: str) -> int | float:
    text = text.replace("_", "")
    if text.lower().lstrip("+-").startswith("0x"):
        return int(text, 16)
    try:
        return int(text)
    except ValueError:
        return float(text)


class _Parser:
    """Recursive descent over tokens produced on demand, so that whatever Perl
    code follows the literal (``gather($config);``) is never looked at."""

    def __init__(self, text: str, pos: int = 0, unique: bool = False):
        self.text = text
        self.pos = pos
        self.tokens: list[tuple[str, str, int]] = []
        self.i = 0
        self.unique = unique           # a key given twice is an error (dumps), not "last wins"

    def line_of(self, pos: int) -> int:
        return self.text.count("\n", 0, pos) + 1

    def _fill(self, upto: int) -> None:
        text, end = self.text, len(self.text)
        while len(self.tokens) <= upto:
            if self.pos >= end:
                self.tokens.append(("eof", "", end))
                continue
            m = _TOKEN.match(text, self.pos)
            if m is None:
                snippet = text[self.pos:self.pos + 20]
                raise PerlSyntaxError(f"unexpected text {snippet!r}", self.line_of(self.pos))
            if m.lastgroup != "ws":
                self.tokens.append((m.lastgroup, m.group(), self.pos))
            self.pos = m.end()

    def peek(self, ahead: int = 0) -> tuple[str, str, int]:
        if self.i > TOKENS_KEPT:       # tokens already taken are never looked at again
            del self.tokens[:self.i]
            self.i = 0
        self._fill(self.i + ahead)
        return self.tokens[self.i + ahead]

    def take(self, value: str | None = None, kind: str | None = None) -> tuple[str, str, int]:
        tok = self.peek()
        if (value is not None and tok[1] != value) or (kind is not None and tok[0] != kind):
            want = repr(value) if value is not None else kind
            got = repr(tok[1]) if tok[0] != "eof" else "end of text"
            raise PerlSyntaxError(f"expected {want}, found {got}", self.line_of(tok[2]))
        self.i += 1
        return tok

    def value(self, depth: int = 0) -> Any:
        kind, text, pos = self.peek()
        if depth > MAX_DEPTH:
            raise PerlSyntaxError("data nested too deeply", self.line_of(pos))
        if text == "{":
            return self.hash(depth + 1)
        if text == "[":
            return self.array(depth + 1)
        self.i += 1
        if kind == "sq":
            return re.sub(r"\\([\\'])", r"\1", text[1:-1])
        if kind == "dq":
            return _unescape_dq(text[1:-1], self.line_of(pos))
        if kind == "num":
            return _number(text)
        if kind == "word" and text == "undef":
            return None
        if kind == "qw":               # alone, a one-word list is that word (as in Perl)
            words = _qw_words(text)
            if len(words) == 1:
                return words[0]
            raise PerlSyntaxError(f"{text!r} is a flat list here, not one value: write "
                                  f"[{text}] for a list", self.line_of(pos))
        raise PerlSyntaxError(f"cannot read the value {text!r}", self.line_of(pos))

    def key(self) -> str:
        kind, text, pos = self.peek()
        if kind == "word":
            self.i += 1
            return text
        if text in ("{", "["):         # checked before reading it: keys do not nest
            raise PerlSyntaxError("a hash key must be a word, string or number", self.line_of(pos))
        value = self.value()
        if isinstance(value, (dict, list)) or value is None:
            raise PerlSyntaxError("a hash key must be a word, string or number", self.line_of(pos))
        return str(value)

    def hash(self, depth: int = 0) -> dict:
        self.take("{")
        result: dict[str, Any] = {}
        while self.peek()[1] != "}":
            at = self.peek()[2]
            key = self.key()
            if self.unique and key in result:
                raise PerlSyntaxError(f"key {key[:60]!r} appears twice", self.line_of(at))
            if self.peek()[1] not in ("=>", ","):
                self.take("=>")
            self.i += 1
            result[key] = self.value(depth)
            if self.peek()[1] in (",", "=>"):
                self.i += 1
            elif self.peek()[1] != "}":
                self.take("}")
        self.take("}")
        return result

    def array(self, depth: int = 0) -> list:
        self.take("[")
        result = []
        while self.peek()[1] != "]":
            if self.peek()[0] == "qw":     # a list in a list: its words join it (as in Perl)
                result.extend(_qw_words(self.take()[1]))
            else:
                result.append(self.value(depth))
            if self.peek()[1] in (",", "=>"):
                self.i += 1
            elif self.peek()[1] != "]":
                self.take("]")
        self.take("]")
        return result


def parse_value(text: str) -> Any:
    """Parse one Perl data literal that makes up the whole text."""
    parser = _Parser(text)
    result = parser.value()
    while parser.peek()[1] == ";":
        parser.i += 1
    parser.take(kind="eof")
    return result


_CONFIG_START = re.compile(r"^[^#\n]*?\$config\s*=\s*(?=\{)", re.MULTILINE)


def extract_config_hash(text: str) -> dict:
    """Return the ``my $config = {...};`` hash of a Perl start script."""
    m = _CONFIG_START.search(text)
    if m is None:
        raise PerlSyntaxError("no 'my $config = {...};' hash found", 1)
    return _Parser(text, m.end()).hash()


def parse_dump(text: str, unique: bool = False) -> dict:
    """Parse the body of a Perl stats dump: ``{ my $dump = {...}; }`` or a bare hash;
    with ``unique``, a key given twice in a hash is an error."""
    parser = _Parser(text, unique=unique)
    if parser.peek()[1] == "{" and parser.peek(1)[1] == "my":
        parser.take("{")
        parser.take("my")
        parser.take(kind="var")
        parser.take("=")
        result = parser.hash()
        while parser.peek()[1] == ";":
            parser.i += 1
        parser.take("}")
    else:
        result = parser.hash()
    while parser.peek()[1] == ";":
        parser.i += 1
    parser.take(kind="eof")
    return result
