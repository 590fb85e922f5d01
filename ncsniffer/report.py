"""Reports from stats files, and the SSI/CGI web report (Net::Connection::Sniffer::Report).

The original module's functions under their names, so that Perl users find
their way: ``read_stf``, ``by_cidr24``, ``by_name``, ``report``, ``presync``,
``sync``, ``chkcache``, ``get_lock``, ``chk_wconf``, ``rqst_dump``,
``web_report``, ``my_time``.  They live in modules of one concern each:

* ``grouping``: records grouped by /24 (IPv6 /64) or by domain (pure);
* ``layout``: the report's text (pure) and ``read_stf``/``report``;
* ``dumprequest``: the UDP dump request and the stats file's age;
* ``lock``: ``get_lock`` (and the coalescer's lock);
* ``webconf``: finding, reading and checking a web configuration;
* ``webreport``: the cached page; ``reportcgi``: ``nc.sniffer.cgi``.

Return values follow the original where it matters to callers (``rqst_dump``
and ``chk_wconf`` return '' or an error text, ``presync``/``sync``/``chkcache``
return a ctime or None); everything else raises ``ReportError`` or
``DumpFileError``, both ``NcSnifferError``.
"""

from __future__ import annotations

import time

from ncsniffer.dumprequest import (DEFAULT_UPDTO, POLL, Address, chkcache, parse_update,
                                   presync, rqst_dump, sync, wait_newer)
from ncsniffer.errors import LockTimeout, ReportError
from ncsniffer.grouping import (Group, by_cidr24, by_name, domain_key, first_name, ip_order,
                                network_of, network_text)
from ncsniffer.layout import MONTHS, TITLE, my_time, read_stf, render_report, report, \
    report_order, report_text
from ncsniffer.lock import DEFAULT_LOCK_TIMEOUT, DEFAULT_UMASK, Lock, get_lock
from ncsniffer.reportcgi import USAGE, cgi_main, parse_args, report_type, terminal_report
from ncsniffer.webconf import (CONF_ENV, DEFAULT_REFRESH, PROG, SYSTEM_CONF, chk_wconf,
                               find_wconf, load_wconf)
from ncsniffer.webreport import one_line, read_cache, web_report, web_text

__all__ = [
    "time",     # report.time.time is the clock of these modules (tests set it)
    "DEFAULT_UPDTO", "DEFAULT_REFRESH", "DEFAULT_LOCK_TIMEOUT", "DEFAULT_UMASK", "POLL", "PROG",
    "CONF_ENV", "SYSTEM_CONF", "MONTHS", "TITLE", "USAGE", "Address", "Group", "Lock",
    "LockTimeout", "ReportError",
    "by_cidr24", "by_name", "cgi_main", "chk_wconf", "chkcache", "domain_key", "find_wconf",
    "first_name", "get_lock", "ip_order", "load_wconf", "my_time", "network_of", "network_text",
    "one_line", "parse_args", "parse_update", "presync", "read_cache", "read_stf",
    "render_report", "report", "report_order", "report_text", "report_type", "rqst_dump",
    "sync", "terminal_report", "wait_newer", "web_report", "web_text",
]
