"""``nc.sniffer.cgi``: the web report for a page (SSI), or a report on a terminal."""

from __future__ import annotations

import argparse
import html
import os
import sys
from typing import IO, Mapping, Optional

from ncsniffer.dumprequest import rqst_dump
from ncsniffer.errors import NcSnifferError, ReportError
from ncsniffer.webconf import (CONF_ENV, PROG, SYSTEM_CONF, ArgParser, chk_wconf, find_wconf,
                               fixed_width, load_wconf)
from ncsniffer.webreport import FORMATS, format_report, one_line, web_report

USAGE = f"""\
usage: {PROG} [-c CONF] [--format FORMAT] [TYPE]
       {PROG} --stats FILE [--update [HOST:]PORT] [--refresh S]
              [--updto S] [--format FORMAT] [TYPE]

  TYPE             which report: 0 (default) groups the peers by /24 network
                   (IPv6: /64), 1 by sub-domain of their host names; both
                   biggest bandwidth first
  --format FORMAT  text (default: the original's report, for <pre>), html (a
                   whole page: a bar chart of the top peers and groups, the
                   table below it), fragment (the chart and table alone, for
                   an SSI page of your own), json (for scripts)
  -c CONF          the web configuration file (a Python dict or the original's
                   Perl hash: stats, cache, updto, refresh, update, ...)
  --stats FILE     terminal mode: report the daemon's stats file FILE
  --update [HOST:]PORT  terminal mode: first ask the daemon listening there
                   (its dump port, default host 127.0.0.1) for a fresh dump
  --refresh S      with --update: ask only if FILE is older than S seconds
                   (default 0: always)
  --updto S        with --update: seconds to wait for the new file (default 15)
  -h, --help       this text

Web page (SSI):  <!--#exec cmd="./{PROG} 0" -->
             or  <!--#exec cmd="./{PROG} --format fragment 0" -->
  The configuration is read from -c CONF, else ${CONF_ENV},
  else {PROG}.conf next to the script, else
  {SYSTEM_CONF}.  Text is HTML-escaped; errors are
  printed as one line.
CGI (the server runs the script for its own URL):
  {PROG}?type=1&format=html prints a Content-Type header,
  then the report (the same configuration).

Terminal (--stats FILE): print the report of FILE.  No cache, no HTML
  escaping; errors go to stderr.
"""

CGI_TYPES = {"text": "text/plain", "html": "text/html", "fragment": "text/html",
             "json": "application/json"}


def parse_args(argv: list) -> argparse.Namespace:
    """The command line; a mistake raises ReportError (one line on the page)."""
    p = ArgParser(prog=PROG, add_help=False, allow_abbrev=False, formatter_class=fixed_width)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("-c", "--config")
    p.add_argument("--stats")
    p.add_argument("--update")
    p.add_argument("--refresh", default="0")
    p.add_argument("--updto")
    p.add_argument("--format", default="text", choices=FORMATS)
    p.add_argument("type", nargs="?", default="0")
    return p.parse_args(argv)


def is_cgi(environ: Mapping, program: str) -> bool:
    """Run by the server for the script's own URL (CGI), not by an SSI page's exec."""
    script = environ.get("SCRIPT_FILENAME") or ""
    return bool(environ.get("GATEWAY_INTERFACE")) and \
        os.path.basename(script) == os.path.basename(program)


def cgi_argv(query: str) -> list:
    """The command line a query string ``type=1&format=html`` stands for."""
    import urllib.parse     # here: an SSI page's exec has none (urllib imports ipaddress)
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    argv = [f"--format={v}" for v in params.get("format", [])[:1]]
    return argv + params.get("type", [])[:1]


def report_type(arg: str) -> bool:
    """The original's test: '0', '' or no argument is the /24 report, anything else by name."""
    return bool(arg) and arg != "0"


def terminal_report(args: argparse.Namespace, out: IO[str]) -> None:
    """``--stats FILE``: the report on a terminal, after an optional dump request."""
    conf = {"stats": args.stats, "updto": args.updto, "refresh": args.refresh}
    if args.update:
        conf["update"] = args.update
    problem = chk_wconf(conf)
    if not problem and args.update:
        problem = rqst_dump(conf["update"], conf["stats"],
                            0 if str(args.refresh) == "0" else conf["refresh"], conf["updto"])
    if problem:
        raise ReportError(problem)
    if args.format == "text":
        from ncsniffer.layout import report
        report(out, conf["stats"], report_type(args.type))
    else:
        out.write(format_report(conf["stats"], report_type(args.type), args.format))


def cgi_main(argv: Optional[list] = None, out: Optional[IO[str]] = None,
             err: Optional[IO[str]] = None, environ: Optional[dict] = None,
             program: Optional[str] = None) -> int:
    """``nc.sniffer.cgi``: the SSI web report, or ``--stats FILE`` on a terminal.

    Exit 0 on success, 1 on any error.  In web mode the error is printed on
    stdout as one line (it shows in the page); in terminal mode on stderr.
    """
    argv = sys.argv[1:] if argv is None else argv
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    environ = os.environ if environ is None else environ
    program = (sys.argv[0] if sys.argv else PROG) if program is None else program
    terminal = "--stats" in argv or any(a.startswith("--stats=") for a in argv)
    cgi = not argv and is_cgi(environ, program)
    try:
        if cgi:
            argv = cgi_argv(environ.get("QUERY_STRING", ""))
            fmt = argv[0].split("=", 1)[1] if argv and argv[0].startswith("--format=") else ""
            out.write(f"Content-Type: {CGI_TYPES.get(fmt, 'text/plain')}; charset=utf-8\r\n\r\n")
        args = parse_args(argv)
        if args.help:
            out.write(USAGE)
            return 0
        if args.stats:
            terminal_report(args, out)
            return 0
        conf = load_wconf(args.config or find_wconf(program, environ))
    except NcSnifferError as exc:
        return _fail(one_line(exc), terminal, out, err)
    except Exception as exc:  # noqa: BLE001 - one line, as for any error, not a traceback
        return _fail(one_line(f"internal error: {type(exc).__name__}: {exc}"), terminal, out, err)
    return 1 if web_report(conf, report_type(args.type), out, fmt=args.format) else 0


def _fail(line: str, terminal: bool, out: IO[str], err: IO[str]) -> int:
    """The error line: on stderr on a terminal, HTML-escaped on stdout for a page."""
    if terminal:
        err.write(f"{PROG}: {line}\n")
    else:
        out.write(html.escape(line, quote=False) + "\n")
    return 1
