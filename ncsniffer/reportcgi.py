"""``nc.sniffer.cgi``: the web report for a page (SSI), or a report on a terminal."""

from __future__ import annotations

import argparse
import html
import os
import sys
from typing import IO, Optional

from ncsniffer.dumprequest import rqst_dump
from ncsniffer.errors import NcSnifferError, ReportError
from ncsniffer.layout import report
from ncsniffer.webconf import (CONF_ENV, PROG, SYSTEM_CONF, ArgParser, chk_wconf, find_wconf,
                               load_wconf)
from ncsniffer.webreport import one_line, web_report

USAGE = f"""\
usage: {PROG} [-c CONF] [0|1]
       {PROG} --stats FILE [--update [HOST:]PORT] [--refresh S] [--updto S] [0|1]

  0 (default)  report by /24 (IPv6: /64), biggest bandwidth first
  1            report by sub-domain

Web page (SSI):  <!--#exec cmd="./{PROG} 0" -->
  The configuration (stats, cache, updto, refresh, update) is read from -c CONF,
  else ${CONF_ENV}, else {PROG}.conf next to the script, else {SYSTEM_CONF}.
  Output is HTML-escaped; errors are printed as one line.

Terminal (--stats FILE): print the report of FILE; with --update, first ask
  the daemon for a dump if FILE is older than --refresh seconds (default 0:
  always). No cache, no HTML escaping; errors go to stderr.
"""


def parse_args(argv: list) -> argparse.Namespace:
    """The command line; a mistake raises ReportError (one line on the page)."""
    p = ArgParser(prog=PROG, add_help=False, allow_abbrev=False)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("-c", "--config")
    p.add_argument("--stats")
    p.add_argument("--update")
    p.add_argument("--refresh", default="0")
    p.add_argument("--updto")
    p.add_argument("type", nargs="?", default="0")
    return p.parse_args(argv)


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
    report(out, conf["stats"], report_type(args.type))


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
    try:
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
    return 1 if web_report(conf, report_type(args.type), out) else 0


def _fail(line: str, terminal: bool, out: IO[str], err: IO[str]) -> int:
    """The error line: on stderr on a terminal, HTML-escaped on stdout for a page."""
    if terminal:
        err.write(f"{PROG}: {line}\n")
    else:
        out.write(html.escape(line, quote=False) + "\n")
    return 1
