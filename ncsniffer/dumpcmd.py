"""``nc.sniffer.dump``: the coalescer's remote half, run through ssh on each source host.

It asks the local daemon for a fresh stats file when the file is older than
``age`` seconds, with the web report's own checks and dump request.
"""

from __future__ import annotations

import os
import re
import sys
from typing import IO, Mapping, Sequence

from ncsniffer.coalesceconf import find_config, load_config
from ncsniffer.dumprequest import rqst_dump
from ncsniffer.errors import CoalesceError, NcSnifferError
from ncsniffer.merge import bounded_line
from ncsniffer.webconf import chk_wconf, tool_parser

DUMP_AGE = 300             # nc.sniffer.dump refreshes a stats file older than this
DEFAULT_DUMP_CONF = "/etc/nc.sniffer/nc.sniffer.dump.conf"
DUMP_CONF_ENV = "NCSNIFFER_DUMP_CONF"
PROG_DUMP = "nc.sniffer.dump"


def dump_main(argv: Sequence[str] | None = None, config: Mapping | None = None,
              err: IO[str] | None = None, environ: Mapping[str, str] | None = None,
              program: str | None = None) -> int:
    """``nc.sniffer.dump [-c CONF | --stats FILE --update [HOST:]PORT] [--age S]``:
    refresh this host's stats file through the local daemon if older than ``age``."""
    err = sys.stderr if err is None else err
    argv = list(sys.argv[1:] if argv is None else argv)
    program = (sys.argv[0] if sys.argv else PROG_DUMP) if program is None else program
    parser = tool_parser(PROG_DUMP, "Run by the coalescer through ssh on a source host: ask "
                         "the local daemon for a fresh stats file if it is older than --age.",
                         DUMP_CONF_ENV, DEFAULT_DUMP_CONF, CoalesceError)
    parser.add_argument("--stats", metavar="FILE",
                        help="the daemon's stats file (instead of -c)")
    parser.add_argument("--update", metavar="[HOST:]PORT",
                        help="the daemon's dump port (its 'port'; host default 127.0.0.1)")
    parser.add_argument("--updto", metavar="S",
                        help="seconds to wait for the new stats file (default 15)")
    parser.add_argument("--age", metavar="S", help=f"ask only if the file is older than S "
                        f"seconds (default {DUMP_AGE}; 0: always)")
    try:
        args = parser.parse_args(argv)
        if config is not None:
            conf = dict(config)
        elif args.stats:
            conf = {"stats": args.stats, "update": args.update, "updto": args.updto}
        else:
            conf = load_config(find_config(args.config, DUMP_CONF_ENV, program,
                                           DEFAULT_DUMP_CONF,
                                           os.environ if environ is None else environ))
        if args.age is not None:
            conf["age"] = args.age
        message = dump_local(conf)
    except NcSnifferError as exc:
        message = str(exc)
    if message:
        err.write(f"{PROG_DUMP}: {bounded_line(message, 1000)}\n")
        return 1
    return 0


def dump_local(conf: dict) -> str:
    """Ask the local daemon for a dump if its stats file is older than ``age``
    (default 300 s; 0: always) and wait for it; '' or an error text."""
    age = conf.get("age", DUMP_AGE)
    if isinstance(age, bool) or not re.fullmatch(r"\d+", str(age)):
        return f"invalid characters in age: '{age}'"
    if not conf.get("update"):
        return "missing 'update': the daemon's dump port, as host:port or port"
    error = chk_wconf(conf)
    if error:
        return error
    return rqst_dump(conf["update"], conf["stats"], int(age), conf["updto"]) or ""
