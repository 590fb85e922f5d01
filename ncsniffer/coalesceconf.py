"""The coalescer's configuration: its sources (host, remote command, remote file), checked.

Source names reach ssh and rsync as arguments: they are validated strictly and
commands are split into words here, never handed to a shell.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Mapping

from ncsniffer import config
from ncsniffer.errors import CoalesceError
from ncsniffer.webconf import chk_wconf, locate

FETCH_TIMEOUT = 60         # seconds for each ssh or rsync run of one host
COMPOSITE = "composite.stats"
LOCAL_NAME = "localhost"
DEFAULT_COALESCE_CONF = "/etc/nc.sniffer/nc.sniffer.coalesce.conf"
CGI_CONF_ENV = "NCSNIFFER_COALESCE_CONF"
PROG_CGI = "nc.sniffer.coalesce.cgi"
COMPOSITE_FORMATS = ("python", "perl")

# user@ optional; a DNS name / IPv4 / ssh config alias, or a bracketed IPv6 literal.
# Nothing may start with '-' (it would be an option) and no shell character fits.
_HOST = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]{0,63})@)?"
    r"(?:(?P<name>[A-Za-z0-9_][A-Za-z0-9._-]{0,252})|\[(?P<v6>[0-9A-Fa-f:.]{2,45})\])$")
UNSAFE_WORD = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Source:
    """One remote host: how to reach it, what to run there, which file to fetch."""

    name: str                   # the config key, as the user wrote it
    ssh_host: str               # destination argument of ssh
    rsync_host: str             # HOST part of rsync's HOST:PATH
    command: tuple[str, ...]    # remote command words ('' = no dump request)
    fetch: str | None           # remote stats file (None: the file arrives another way)
    local: str                  # CACHEDIR/NAME.stats


SOURCES = ("ssh", "clickhouse")
STORE_KEYS = ("url", "database", "window", "from", "to", "sniffers")
DEFAULT_WINDOW = 3600       # seconds of traffic the report from ClickHouse sums
MAX_WINDOW = 366 * 86400
_DATABASE = re.compile(r"\w{1,64}", re.ASCII)
_WHEN = "epoch seconds or 'YYYY-MM-DD HH:MM:SS' (UTC)"


@dataclass(frozen=True)
class Store:
    """``source: 'clickhouse'``: the server, the window and the sniffers to sum (SPEC 11)."""

    host: str
    port: int
    database: str
    user: str = "default"
    password: str = ""
    window: int = DEFAULT_WINDOW        # the last WINDOW seconds, unless begin/end are set
    begin: int | None = None            # 'from', 'to': a fixed window [begin, end)
    end: int | None = None
    sniffers: tuple[str, ...] = ()      # () = every sniffer
    timeout: float = FETCH_TIMEOUT

    @property
    def url(self) -> str:
        """Without the password (the report's header, the messages)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"clickhouse://{host}:{self.port}/{self.database}"

    def bounds(self, now: float) -> tuple[int, int]:
        """The window [begin, end) in epoch seconds, the last ``window`` ones at ``now``."""
        if self.begin is not None:
            return self.begin, self.end
        return int(now) - self.window, int(now)


@dataclass
class Coalesce:
    """A checked coalescer configuration."""

    cache: str
    cache_dir: str
    sources: list[Source]
    stats: str | None = None            # the local daemon's stats file (with update)
    update: object = None               # address for report.rqst_dump, or None
    updto: int = 15
    refresh: int = 300
    ssh: list[str] = field(default_factory=lambda: ["ssh"])
    rsync: list[str] = field(default_factory=lambda: ["rsync"])
    timeout: float = FETCH_TIMEOUT
    format: str = "python"
    store: Store | None = None          # source 'clickhouse': no ssh, no rsync

    @property
    def composite(self) -> str:
        return os.path.join(self.cache_dir, COMPOSITE)

    def cache_file(self, by_name: bool = True) -> str:
        return f"{self.cache}.{1 if by_name else 0}"


def check_host(name: object) -> tuple[str, str]:
    """Validate a source name; return (ssh destination, rsync host).

    Why so strict: the name reaches ssh and rsync as an argument, and rsync passes
    it to ssh again; a name that could be read as an option or by a shell is refused.
    """
    text = str(name)
    m = _HOST.match(text) if isinstance(name, str) else None
    if m is None:
        raise CoalesceError(f"invalid source host name {text[:80]!r}")
    user = m.group("user") + "@" if m.group("user") else ""
    if m.group("v6"):
        try:
            ipaddress.IPv6Address(m.group("v6"))
        except ValueError:
            raise CoalesceError(f"invalid source host name {text[:80]!r}") from None
        return user + m.group("v6"), user + "[" + m.group("v6") + "]"
    return text, text


def local_copy_name(name: str) -> str:
    """File name of a source's fetched stats (``HOST.stats``), safe for any valid name."""
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name) + ".stats"


def _words(value: object, what: str) -> list[str]:
    """A command given as a string (split like a shell would, not run by one) or a list."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise CoalesceError(f"invalid {what} {value!r}: {exc}") from None
    elif isinstance(value, (list, tuple)) and all(isinstance(w, str) for w in value):
        words = list(value)
    else:
        raise CoalesceError(f"invalid {what}: a string or a list of strings is needed")
    for word in words:
        if UNSAFE_WORD.search(word):
            raise CoalesceError(f"invalid {what}: control characters in {word[:40]!r}")
    return words


def _digits(conf: Mapping, key: str, default: int, label: str) -> int:
    value = conf.get(key)
    if value in (None, "", 0):
        return default
    if isinstance(value, bool) or not re.fullmatch(r"\d+", str(value)):
        raise CoalesceError(f"invalid characters in {label}: '{value}'")
    return int(value)


def _source(name: object, spec: object, cache_dir: str) -> Source:
    ssh_host, rsync_host = check_host(name)
    if not isinstance(spec, Mapping):
        raise CoalesceError(f"source '{name}': needs {{'exec': ..., 'fetch': ...}}")
    fetch = spec.get("fetch")
    if fetch is not None and fetch != "" and (
            not isinstance(fetch, str) or not fetch.strip() or UNSAFE_WORD.search(fetch)):
        raise CoalesceError(f"source '{name}': 'fetch' (the remote stats file) is invalid")
    command = _words(spec.get("exec"), f"'exec' of source '{name}'")
    return Source(str(name), ssh_host, rsync_host, tuple(command), fetch or None,
                  os.path.join(cache_dir, local_copy_name(str(name))))


def rem_wchk(conf: Mapping) -> Coalesce:
    """Check a coalescer configuration (the original's keys plus ours); raise CoalesceError."""
    if not isinstance(conf, Mapping):
        raise CoalesceError("the configuration must be a dict")
    cache = conf.get("cache")
    if not cache or not isinstance(cache, str):
        raise CoalesceError("missing cache file entry")
    cache_dir = os.path.dirname(cache) or "."
    if not (os.path.isdir(cache_dir) and os.access(cache_dir, os.W_OK | os.X_OK)):
        raise CoalesceError(f"cache directory not writable: '{cache_dir}/'")
    source = conf.get("source", "ssh")
    if source not in SOURCES:
        raise CoalesceError(f"invalid source '{source}': use 'ssh' or 'clickhouse'")
    if source == "clickhouse":
        return _from_store(conf, cache, cache_dir)
    for key in STORE_KEYS:
        if key in conf:
            raise CoalesceError(f"'{key}' needs source 'clickhouse'")
    src = conf.get("src") or {}
    if not isinstance(src, Mapping):
        raise CoalesceError("'src' must map host names to {'exec': ..., 'fetch': ...}")
    cfg = Coalesce(cache=cache, cache_dir=cache_dir,
                   sources=[_source(name, spec, cache_dir) for name, spec in src.items()])
    cfg.updto = _digits(conf, "updto", 15, "update timeout")
    cfg.refresh = _digits(conf, "refresh", 300, "refresh")
    cfg.timeout = _digits(conf, "timeout", FETCH_TIMEOUT, "timeout")
    cfg.ssh = _words(conf.get("ssh", "ssh"), "ssh command") or ["ssh"]
    cfg.rsync = _words(conf.get("rsync", "rsync"), "rsync command") or ["rsync"]
    cfg.format = str(conf.get("format", "python"))
    if cfg.format not in COMPOSITE_FORMATS:
        raise CoalesceError(f"invalid composite format '{cfg.format}' (python or perl)")
    if conf.get("update"):
        cfg.stats, cfg.update = _local_daemon(conf, cfg)
    if not cfg.sources and cfg.stats is None:
        raise CoalesceError("nothing to coalesce: no 'src' hosts and no local 'update'")
    _check_clashes(cfg)
    return cfg


def _from_store(conf: Mapping, cache: str, cache_dir: str) -> Coalesce:
    """``source: 'clickhouse'``: the url, the window, the sniffers; no hosts to fetch."""
    for key in ("src", "update", "stats"):
        if conf.get(key):
            raise CoalesceError(f"'{key}' goes with source 'ssh', not 'clickhouse'")
    if not conf.get("url"):
        raise CoalesceError("missing url for source 'clickhouse'")
    server = config.parse_clickhouse_url(conf["url"])
    if server is None:
        raise CoalesceError(f"invalid url '{conf['url']}': use 'clickhouse://HOST:PORT/DB'")
    host, port, database, user, password = server
    if conf.get("database") is not None:
        database = str(conf["database"])
        if not _DATABASE.fullmatch(database):
            raise CoalesceError(f"invalid database '{database}': letters, digits and _")
    window = DEFAULT_WINDOW
    if conf.get("window") is not None:
        if "from" in conf or "to" in conf:
            raise CoalesceError("use 'window' or 'from' and 'to', not both")
        window = _whole(conf["window"], "window", f"whole seconds, 1 to {MAX_WINDOW}",
                        1, MAX_WINDOW)
    begin = end = None
    if "from" in conf or "to" in conf:
        if "from" not in conf or "to" not in conf:
            raise CoalesceError("a fixed window needs both 'from' and 'to'")
        begin, end = _when(conf["from"], "from"), _when(conf["to"], "to")
        if begin >= end:
            raise CoalesceError(f"invalid window: 'from' ({conf['from']}) is not before "
                                f"'to' ({conf['to']})")
    store = Store(host, port, database, user, password, window, begin, end,
                  _names(conf.get("sniffers")), _digits(conf, "timeout", FETCH_TIMEOUT, "timeout"))
    cfg = Coalesce(cache=cache, cache_dir=cache_dir, sources=[], store=store)
    cfg.refresh = _digits(conf, "refresh", 300, "refresh")
    cfg.timeout = store.timeout
    cfg.format = str(conf.get("format", "python"))
    if cfg.format not in COMPOSITE_FORMATS:
        raise CoalesceError(f"invalid composite format '{cfg.format}' (python or perl)")
    return cfg


def _whole(value: object, key: str, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not re.fullmatch(r"\d{1,12}", str(value).strip()) \
            or not low <= int(str(value)) <= high:
        raise CoalesceError(f"invalid {key} '{value}': {what}")
    return int(str(value))


def _when(value: object, key: str) -> int:
    """A window bound: epoch seconds, or a UTC date and time."""
    if isinstance(value, int) and not isinstance(value, bool) or \
            isinstance(value, str) and value.strip().isdigit():
        return _whole(value, key, _WHEN, 0, 2**32 - 1)
    try:
        when = datetime.datetime.strptime(str(value).strip(), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise CoalesceError(f"invalid {key} '{value}': {_WHEN}") from None
    return int(when.replace(tzinfo=datetime.timezone.utc).timestamp())


def _names(value: object) -> tuple[str, ...]:
    """``sniffers``: names (a lone string counts as a list of one, as 'allowed' does)."""
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(
            isinstance(n, str) and n.strip() and not UNSAFE_WORD.search(n) for n in names):
        raise CoalesceError(f"invalid sniffers '{value}': use a list of names")
    return tuple(names)


def _check_clashes(cfg: Coalesce) -> None:
    """Two sources must not share a fetched file, nor overwrite composite.stats."""
    taken = {cfg.composite: "composite.stats"}
    if cfg.stats is not None:
        taken[LOCAL_NAME] = "the local daemon ('update')"
    for src in cfg.sources:
        for key in (src.local, src.name):
            if key in taken:
                raise CoalesceError(f"source '{src.name}' clashes with {taken[key]}")
        taken[src.local] = taken[src.name] = f"source '{src.name}'"


def _local_daemon(conf: Mapping, cfg: Coalesce) -> tuple[str, object]:
    """Check ``stats``/``update`` with the web report's own rules (``chk_wconf``)."""
    wconf = {"stats": conf.get("stats"), "update": conf.get("update"),
             "updto": cfg.updto, "refresh": cfg.refresh}
    if wconf["stats"] is None:
        del wconf["stats"]
    error = chk_wconf(wconf)
    if error:
        raise CoalesceError(error)
    return wconf["stats"], wconf["update"]


def load_config(path: str) -> dict:
    """Read a config without running it: a Python dict literal, a Python script with
    ``CONFIG = {...}`` (our samples), or an old Perl script with ``my $wconf = {...}``."""
    return config.load_file(path, CoalesceError, "")


def find_config(explicit: str | None, env_name: str, program: str, system: str,
                environ: Mapping[str, str]) -> str:
    """-c FILE, else $ENV_NAME, else PROGRAM.conf next to the script, else SYSTEM
    (the web report's rule, so one docroot can hold several configured copies)."""
    found = explicit or locate(env_name, program, system, environ)
    if found is None:
        raise CoalesceError(f"no configuration: use -c FILE, set {env_name}, or create "
                        f"'{os.path.abspath(program)}.conf' or '{system}'")
    return found
