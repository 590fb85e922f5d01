"""Text from stats files shown to people: no control characters, no terminal escapes.

Host names come from PTR records anyone can write, and a stats file can be
crafted; shown raw, an ESC sequence retitles or clears a terminal and a
newline forges report lines.  HTML escaping is the page's own step (``html``).
"""

from __future__ import annotations

import re

# ESC sequences first (CSI, OSC/DCS/PM/APC strings, two-byte escapes, C1 CSI),
# so that their parameters ("[2J", "]0;title") go with them.
_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b[\]PX^_][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|\x9b[0-?]*[ -/]*[@-~]?")
# C0, DEL, C1, and the Unicode bidirectional overrides (they reorder what a line shows)
_OTHERS = "\x7f-\x9f\u202a-\u202e\u2066-\u2069"
_STRIP = {"": re.compile("[\x00-\x1f" + _OTHERS + "]"),
          "\t": re.compile("[\x00-\x08\x0a-\x1f" + _OTHERS + "]")}


def strip_controls(text: str, keep: str = "") -> str:
    """``text`` without escape sequences and control characters (but those in ``keep``:
    ``''`` or ``'\\t'``)."""
    if text.isprintable():
        return text
    return _STRIP[keep].sub("", _SEQUENCE.sub("", text))


def one_line(text: str) -> str:
    """An error or note as one printable line, whatever it contains."""
    return strip_controls(" ".join(str(text).split()))
