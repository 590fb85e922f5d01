"""Configuration of the web tools: finding and reading their files, checking them.

``chk_wconf`` is the original's check of a web report configuration (its error
texts, its defaults); ``locate`` is the one search order of every web tool
(``$ENV``, ``PROGRAM.conf`` next to the script, a system file); ``ArgParser``
turns argparse's exit into the tool's own error.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Mapping, Optional

from ncsniffer import configfile
from ncsniffer.dumprequest import DEFAULT_UPDTO, dir_of, parse_update, readable_dir
from ncsniffer.errors import ReportError
from ncsniffer.lock import DEFAULT_UMASK

DEFAULT_REFRESH = 300
PROG = "nc.sniffer.cgi"
CONF_ENV = "NCSNIFFER_CGI_CONF"
SYSTEM_CONF = "/etc/nc.sniffer/nc.sniffer.cgi.conf"


def _number_setting(conf: dict, key: str, default: int, what: str) -> str:
    """Check a whole-number setting (digits only, as the original) and fill its default."""
    value = conf.get(key)
    if value is None or value == "" or value == 0 or value is False:
        conf[key] = default
        return ""
    if isinstance(value, bool) or re.search(r"\D", str(value)):
        return f"invalid characters in {what}: '{value}'"
    conf[key] = int(str(value))
    return ""


def _check_dirs(conf: dict) -> str:
    """The stats directory must be readable; the cache directory and file writable."""
    stats = str(conf["stats"])
    directory = dir_of(stats)
    if not readable_dir(directory):
        return f"stats directory missing or not readable: '{directory}'"
    cache = conf.get("cache")
    if cache:
        cache = str(cache)
        directory = dir_of(cache)
        if not (os.path.isdir(directory) and os.access(directory, os.W_OK)):
            return f"cache directory not writable: '{directory}'"
        if os.path.exists(cache) and not os.access(cache, os.W_OK):
            return f"invalid permissions on '{cache}': not writable"
    return ""


def chk_wconf(conf: dict) -> str:
    """Check a web configuration; '' if good, else the original's error text.

    Like the original it completes ``conf`` in place: ``updto`` (default 15) and
    ``refresh`` (default 300) become ints, ``update`` (``host:port``,
    ``[v6addr]:port`` or a bare port on 127.0.0.1) becomes an ``(ip, port)`` tuple.
    Without ``update`` no dump is requested (the daemon may be dumped by
    SIGUSR1 or cron instead).
    """
    if not conf.get("stats"):
        return "required statistics file specification missing"
    problem = (_check_dirs(conf)
               or _number_setting(conf, "updto", DEFAULT_UPDTO, "update timeout")
               or _number_setting(conf, "refresh", DEFAULT_REFRESH, "refresh"))
    if problem:
        return problem
    umask = conf.get("umask", DEFAULT_UMASK)
    if isinstance(umask, bool) or not isinstance(umask, int) or not 0 <= umask <= 0o777:
        return f"invalid umask '{umask}'"
    if conf.get("update") is not None:
        try:
            conf["update"] = parse_update(conf["update"])
        except ReportError as exc:
            return str(exc)
    return ""


# --------------------------------------------------------------------------- configuration files

def locate(env_name: str, program: str, system: str, environ: Mapping[str, str]) -> Optional[str]:
    """The first existing file of $ENV_NAME, ``PROGRAM.conf`` next to the script as
    invoked (symlinks not followed, so each docroot has its own), SYSTEM; None if none."""
    candidates = [environ.get(env_name, ""), os.path.abspath(program) + ".conf" if program else "",
                  system]
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    return None


def load_wconf(path: str) -> dict:
    """Read a web configuration (a dict literal, or an old Perl ``nc.sniffer.cgi``
    whose ``my $NAME = {...};`` hash is read without running Perl)."""
    return configfile.load_file(path, ReportError, "")


def find_wconf(program: str, environ: Mapping[str, str]) -> str:
    """Where the web report's configuration is: $NCSNIFFER_CGI_CONF, ``PROGRAM.conf``
    next to the script, then /etc/nc.sniffer/nc.sniffer.cgi.conf."""
    found = locate(CONF_ENV, program, SYSTEM_CONF, environ)
    if found is None:
        raise ReportError(f"no configuration: set {CONF_ENV}, or create "
                          f"'{os.path.abspath(program or PROG)}.conf' or '{SYSTEM_CONF}'")
    return found


def fixed_width(prog: str) -> argparse.HelpFormatter:
    """A formatter that does not ask the terminal's width: argparse would import
    shutil (and the compression modules it imports) for it at every start, for a
    help text these parsers never print (they have their own)."""
    return argparse.HelpFormatter(prog, width=80)


class ArgParser(argparse.ArgumentParser):
    """argparse that raises ``error_class`` instead of exiting: a page shows one line."""

    def __init__(self, *args, error_class: type = ReportError, **kwargs):
        super().__init__(*args, **kwargs)
        self.error_class = error_class

    def error(self, message: str):
        raise self.error_class(message)


def tool_parser(prog: str, description: str, env: str, default: str,
                error_class: type = ReportError) -> ArgParser:
    """A web tool's parser with its ``-c CONFIG``, the help naming the search order."""
    parser = ArgParser(prog=prog, allow_abbrev=False, error_class=error_class,
                       description=description)
    parser.add_argument("-c", "--config", help=f"the configuration file (default: ${env}, "
                        f"{prog}.conf next to the script, {default})")
    return parser
