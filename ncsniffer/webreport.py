"""The SSI web report (SPEC 8.4): a cached report, refreshed by a dump request.

``web_report`` prints what a page shows, the report or one error line, escaped
for HTML.  Ten visitors arriving together cause one dump: the cache is rebuilt
under ``get_lock`` and whoever waited finds it fresh.
"""

from __future__ import annotations

import html
import os
import sys
from typing import IO, Optional

from ncsniffer import safetext
from ncsniffer.dumprequest import chkcache, rqst_dump
from ncsniffer.errors import NcSnifferError, ReportError
from ncsniffer.lock import DEFAULT_UMASK, get_lock
from ncsniffer.webconf import chk_wconf

# text: layout.report_text; the others: htmlreport.RENDERERS (imported only to render:
# a cached page, the usual hit, reads a file and needs neither, nor dumpfile; issue 16)
FORMATS = ("text", "html", "fragment", "json")


def read_cache(path: str) -> str:
    """A cached report's text (the web report's and the coalescer's caches)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError as exc:
        raise ReportError(f"could not open cache '{path}': {exc.strerror}") from exc


def format_report(stats_file: str, by_domain: bool, fmt: str = "text") -> str:
    """The report of a stats file in a format of ``FORMATS``."""
    from ncsniffer.htmlreport import RENDERERS
    from ncsniffer.layout import read_stf, report_text
    if fmt == "text":
        return report_text(stats_file, by_domain)
    stats = read_stf(stats_file)
    return RENDERERS[fmt](stats.header, stats.records, by_domain)


def cache_file(cache: str, by_domain: bool, fmt: str = "text") -> str:
    """One cache file per report type and format: ``CACHE.0``, ``CACHE.1.html`` ..."""
    name = "%s.%d" % (cache, 1 if by_domain else 0)
    return name if fmt == "text" else f"{name}.{fmt}"


def _refresh_cache(conf: dict, cfile: str, by_domain: bool, fmt: str = "text") -> str:
    """Under the lock: dump, regenerate ``cfile`` atomically, return its text.

    The lock is taken before the dump request so that ten visitors arriving
    together cause one dump, not ten; whoever waited finds a fresh cache.
    """
    with get_lock(cfile + ".tmp", conf["updto"] * 2, conf.get("umask", DEFAULT_UMASK)) as lock:
        if chkcache(cfile, conf["refresh"]):
            return read_cache(cfile)
        problem = rqst_dump(conf.get("update"), conf["stats"], 0, conf["updto"])
        if problem:
            raise ReportError(problem)
        text = format_report(conf["stats"], by_domain, fmt)
        lock.handle.seek(0)
        lock.handle.truncate()
        lock.handle.write(text)
        lock.handle.flush()
        try:
            os.replace(cfile + ".tmp", cfile)
        except OSError as exc:
            raise ReportError(f"could not write cache '{cfile}': {exc.strerror}") from exc
    return text


def web_text(conf: dict, by_domain: bool, fmt: str = "text") -> str:
    """The text a web page shows (SPEC 8.4); raises an NcSnifferError on failure.

    With ``cache``: ``CACHE.0``/``CACHE.1`` (``CACHE.0.html`` ... for the other
    formats, see ``cache_file``) is served while younger than
    ``refresh``; else a dump is requested and the cache regenerated.  Without
    ``cache``: a dump is requested if the stats file is older than ``refresh``.
    """
    problem = chk_wconf(conf)
    if problem:
        raise ReportError(problem)
    if conf.get("cache"):
        cfile = cache_file(conf["cache"], by_domain, fmt)
        if chkcache(cfile, conf["refresh"]):
            return read_cache(cfile)
        return _refresh_cache(conf, cfile, by_domain, fmt)
    problem = rqst_dump(conf.get("update"), conf["stats"], conf["refresh"], conf["updto"])
    if problem:
        raise ReportError(problem)
    return format_report(conf["stats"], by_domain, fmt)


def one_line(text: str) -> str:
    """An error as one printable line, whatever it contains."""
    return safetext.one_line(text) or "failed: nothing processed"


def web_report(conf: dict, by_domain: bool = False, out: Optional[IO[str]] = None,
               escape: Optional[bool] = None, fmt: str = "text") -> str:
    """Print the web report, or one error line, to ``out`` (stdout); return '' or the error.

    ``escape`` (default: the config's ``html_escape``, true) turns ``& < >`` into
    entities, because host names come from PTR records anyone can write; the
    HTML and JSON formats (``fmt``) escape their names themselves.
    """
    out = sys.stdout if out is None else out
    escape = conf.get("html_escape", True) if escape is None else escape
    try:
        text, error = web_text(conf, by_domain, fmt), ""
    except NcSnifferError as exc:
        error = one_line(exc)
        text = error + "\n"
    except Exception as exc:  # noqa: BLE001 - a web page must show a line, not a traceback
        error = one_line(f"internal error: {type(exc).__name__}: {exc}")
        text = error + "\n"
    out.write(html.escape(text, quote=False) if escape and (fmt == "text" or error) else text)
    out.flush()
    return error
