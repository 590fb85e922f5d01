"""Configuration: load a config file (Python dict or old Perl script) and validate it.

Validation follows the original's order and messages exactly (SPEC 1.1), so
an operator migrating from Net::Connection::Sniffer sees the errors they know.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ncsniffer import host
from ncsniffer.configfile import absolute
# load_file, check_piddir, instance_name: config.X for its callers, as before
from ncsniffer.configfile import check_piddir, instance_name, load_file  # noqa: F401
from ncsniffer.errors import ConfigError
from ncsniffer.timeouts import DEFAULT_TIMEOUTS, MAX_TIMEOUT   # SPEC 10.1; the tracker's too

DEFAULT_SNAPLEN = 14 + 20 + 4
MAX_SNAPLEN = 65535
# About 250 B a peer with names: 250,000 peers stay near 60 MB, well above the
# 100,000 of a busy server (SPEC 6.1); 0 in the config lifts the bound.
DEFAULT_MAX_HOSTS = 250_000
FORMATS = ("python", "perl", "json")
MAX_PORT = 65535
MAX_DIGITS = 30           # longer digit strings are no setting (and int() refuses 4300+)
ONE_DAY = 86400
MAX_HOSTS_LIMIT = 10**9             # beyond any memory: surely a typo
DNS_LIMITS = {"dns_max_outstanding": 4096, "dns_max_qps": 100_000}  # 4096: 16-bit ids
DEFAULT_METRICS_TOP = 10
MAX_METRICS_TOP = 1000    # peers in /metrics: the series stay bounded (SPEC 11)
# Connection tracking (SPEC 10): the table's bound, and its idle timeouts in seconds.
DEFAULT_MAX_CONNECTIONS = 1_000_000
MAX_CONNECTIONS_LIMIT = 10**9       # beyond any memory: surely a typo

KNOWN_KEYS = {
    "piddir", "sniffer", "bpf", "snaplen", "match", "nomatch", "payload", "port",
    "host", "allowed", "nameserver", "resolve", "dump_format", "user", "group",
    "max_hosts", "interface", "dns_max_outstanding", "dns_max_qps",
    "metrics", "metrics_top",
    "connections", "max_connections", "timeouts", "events",
    "clickhouse",
}
CLICKHOUSE_KEYS = ("url", "interval", "sniffer", "spool_max", "timeout")
CLICKHOUSE_PORT = 9000              # the native protocol's
DEFAULT_EXPORT_INTERVAL = 60
DEFAULT_SPOOL_MAX = 64 << 20        # bytes of undelivered batches kept on disk
DEFAULT_EXPORT_TIMEOUT = 10         # seconds for a connection or an insert
_CLICKHOUSE_URL = re.compile(r"clickhouse://(?:([^:@/]+)(?::([^@/]*))?@)?"
                             r"(\[[0-9a-fA-F:.]+\]|[\w.-]+)(?::(\d{1,5}))?(?:/(\w+))?/?")



@dataclass
class ClickHouseSettings:
    """The ``clickhouse`` export (SPEC 11): server, interval, spool."""

    host: str
    port: int
    database: str
    interval: int
    sniffer: str | None
    spool_max: int
    timeout: int
    user: str = "default"
    password: str = ""

    @property
    def url(self) -> str:
        """The url without the password (the log, the ``config`` verb)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"clickhouse://{host}:{self.port}/{self.database}"


_BPF_HOST = re.compile(r"host\s+([\w.:-]+)", re.IGNORECASE)


@dataclass
class Settings:
    """A validated configuration, with everything derived from it resolved once."""

    name: str
    raw: dict
    piddir: str | None
    sniffer: str
    stats_file: str | None
    bpf: str
    me_name: str
    me: str
    me_packed: bytes
    interface: str | None
    promiscuous: bool
    snaplen: int
    match: bytes | None = None
    nomatch: bytes | None = None
    payload: int | None = None
    port: int | None = None
    listen_host: str = "127.0.0.1"
    allowed: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    nameserver: str | None = None
    resolve: bool = True
    dump_format: str = "python"
    user: str | None = None
    group: str | None = None
    max_hosts: int | None = DEFAULT_MAX_HOSTS
    dns_max_outstanding: int = 500
    dns_max_qps: int = 50
    metrics: tuple[str, int] | None = None      # (address, port) of /metrics
    metrics_top: int = DEFAULT_METRICS_TOP
    connections: bool = False
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    timeouts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    events: str | None = None      # absolute path of the ended connections' JSON lines
    clickhouse: ClickHouseSettings | None = None

    @property
    def pid_file(self) -> str | None:
        return os.path.join(self.piddir, self.name + ".pid") if self.piddir else None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def fail(message: str) -> None:
    """Raise the one-line error; control characters of a quoted value are escaped."""
    raise ConfigError("config: " + _CONTROL.sub(lambda m: repr(m.group())[1:-1], message))


# --------------------------------------------------------------------------- helpers

def to_bytes(value) -> bytes:
    """Match strings are bytes; text from a config maps characters 0-255 to bytes."""
    if isinstance(value, bytes):
        return value
    text = str(value)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _int(value, message: str, low: int | None = None, high: int | None = None) -> int:
    """An int or a string of digits (the original's configs hold both), in range."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        fail(message)
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > MAX_DIGITS:
            fail(message)
        value = int(text)
    if (low is not None and value < low) or (high is not None and value > high):
        fail(message)
    return value


def _unset(value) -> bool:
    """Not set: None, or one of the original's false values ('' and 0, not False)."""
    return value is None or (not isinstance(value, bool) and isinstance(value, (int, str))
                             and value in ("", 0, "0"))


def _string(config: dict, key: str, message: str) -> str | None:
    """An optional text setting: None if not set (None or ''), else it must be a string."""
    value = config.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        fail(message)
    return value


# --------------------------------------------------------------------------- validation

def validate(config: dict, name: str, offline: bool = False, to_stderr: bool = False) -> Settings:
    """Check a config dict in the original's order; return Settings or raise ConfigError."""
    if not isinstance(config, dict):
        fail("the configuration must be a dict")

    # 1-3: bpf host, its address, its interface
    bpf = config.get("bpf") or ""
    if not isinstance(bpf, str):
        fail(f"invalid bpf '{bpf}': a tcpdump filter string")
    m = _BPF_HOST.search(bpf)
    if not m:
        fail("missing hostname in bpf string")
    me_name = m.group(1)
    me = host.resolve_address(me_name)
    if me is None:
        fail(f"bad hostname '{me_name}' in bpf filter string")
    interface, promiscuous = None, False
    if _string(config, "interface", f"invalid interface '{config.get('interface')}'"):
        interface = config["interface"]
        found = host.find_interface(me, {k: v for k, v in host.interface_addresses().items()
                                         if k == interface})
        promiscuous = not (found and not found[1])
    elif not offline:
        found = host.find_interface(me)
        if not found:
            fail(f"could not find interface for '{me_name}' in bpf string")
        interface, promiscuous = found

    # 4: the stats directory and file
    sniffer = "STDERR" if to_stderr else (config.get("sniffer") or "")
    if not isinstance(sniffer, str):
        fail(f"sniffer directory '{sniffer}' missing or not writable")
    if not sniffer:
        fail("sniffer directory missing from configuration")
    stats_file = None
    if sniffer != "STDERR":
        if not os.path.isdir(sniffer) or not os.access(sniffer, os.W_OK):
            fail(f"sniffer directory '{sniffer}' missing or not writable")
        sniffer = absolute(sniffer)
        stats_file = os.path.join(sniffer, name + ".stats")
        if os.path.exists(stats_file) and not os.access(stats_file, os.W_OK):
            fail(f"'{stats_file}' not writable")

    # 5: snaplen
    snaplen = DEFAULT_SNAPLEN
    if not _unset(config.get("snaplen")):
        snaplen = _int(config["snaplen"], f"invalid snaplen '{config['snaplen']}'", low=1)
    snaplen = min(snaplen, MAX_SNAPLEN)

    # 6: payload window for match / nomatch
    match, nomatch = _match(config, "match"), _match(config, "nomatch")
    payload = config.get("payload")
    if match or nomatch:
        payload = _int(payload, "invalid payload length", low=1, high=snaplen - 1)
    else:
        if not _unset(payload):          # unused, as in the original, but not nonsense
            _int(payload, "invalid payload length", low=0)
        payload = None

    settings = Settings(
        name=name, raw=config, piddir=absolute(config.get("piddir")), sniffer=sniffer,
        stats_file=stats_file, bpf=str(bpf), me_name=me_name, me=me,
        me_packed=host.pack_address(me), interface=interface, promiscuous=promiscuous,
        snaplen=snaplen, match=match, nomatch=nomatch, payload=payload,
    )

    # 7: the UDP dump listener
    if not _unset(config.get("port")):
        settings.port = _int(config["port"], f"invalid port number '{config['port']}'",
                             low=1, high=MAX_PORT)
        listen = _string(config, "host", f"bad dump host '{config.get('host')}'") or "127.0.0.1"
        listen = {"INADDR_LOOPBACK": "127.0.0.1", "INADDR_ANY": "0.0.0.0"}.get(listen, listen)
        address = host.resolve_address(listen)
        if address is None:
            fail(f"bad dump host '{config.get('host')}'")
        settings.listen_host = address
        settings.allowed = _allowed(config.get("allowed"))

    _validate_new_keys(config, settings)
    return settings


def _match(config: dict, key: str) -> bytes | None:
    """A match / nomatch string, lower-cased bytes; None if not set."""
    value = config.get(key)
    if value is None or (not isinstance(value, bool) and value in ("", b"", 0)):
        return None
    if not isinstance(value, (str, bytes)):
        fail(f"invalid {key} '{value}': a string")
    return to_bytes(value).lower()


def _allowed(allowed) -> list[str]:
    """Every address of every ``allowed`` entry (a name may have several, IPv4 and IPv6)."""
    if _unset(allowed) or allowed == []:
        allowed = ["127.0.0.1"]
    if isinstance(allowed, str):
        allowed = [allowed]
    if not isinstance(allowed, (list, tuple)):
        fail(f"invalid 'allowed' host or IP '{allowed}'")
    addresses: list[str] = []
    for entry in allowed:
        found = host.resolve_all(entry) if isinstance(entry, str) else []
        if not found:
            fail(f"invalid 'allowed' host or IP '{entry}'")
        addresses.extend(a for a in found if a not in addresses)
    return addresses


def _account(config: dict, key: str) -> str | None:
    """``user`` / ``group``: a name this machine knows."""
    name = _string(config, key, f"invalid {key} '{config.get(key)}'")
    if name is None:
        return None
    import grp    # here: only a config with user or group looks them up
    import pwd
    try:
        (pwd.getpwnam if key == "user" else grp.getgrnam)(name)
    except (KeyError, ValueError):       # ValueError: a NUL in the name
        fail(f"unknown {key} '{name}'")
    return name


def _validate_new_keys(config: dict, settings: Settings) -> None:
    """Keys the original did not have, then keys nobody knows (typos)."""
    for key in sorted(set(config) - KNOWN_KEYS, key=repr):
        fail(f"unknown configuration key '{key}'")
    settings.resolve = _flag(config, "resolve", settings.resolve)

    fmt = config.get("dump_format")
    if fmt is not None and fmt != "":
        if not isinstance(fmt, str) or fmt not in FORMATS:
            fail(f"invalid dump_format '{fmt}': use one of {', '.join(FORMATS)}")
        settings.dump_format = fmt

    ns = _string(config, "nameserver", f"invalid nameserver '{config.get('nameserver')}': "
                                       f"use 'IP' or 'IP:port'")
    if ns is not None:
        if parse_nameserver(ns)[0] is None:
            fail(f"invalid nameserver '{ns}': use 'IP' or 'IP:port'")
        settings.nameserver = ns

    if config.get("max_hosts") is not None:
        limit = _int(config["max_hosts"], f"invalid max_hosts '{config['max_hosts']}': "
                                          f"0 (no limit) to {MAX_HOSTS_LIMIT}",
                     low=0, high=MAX_HOSTS_LIMIT)
        settings.max_hosts = limit or None
    for key, high in DNS_LIMITS.items():
        if config.get(key) is not None:
            setattr(settings, key, _int(config[key], f"invalid {key} '{config[key]}': 1 to {high}",
                                        low=1, high=high))
    settings.user, settings.group = _account(config, "user"), _account(config, "group")
    _metrics(config, settings)
    _validate_connections(config, settings)
    if config.get("clickhouse") is not None:
        settings.clickhouse = _clickhouse(config["clickhouse"])


def _metrics(config: dict, settings: Settings) -> None:
    """``metrics: 'ADDR:PORT'`` (IPv6: ``'[ADDR]:PORT'``) and ``metrics_top``."""
    text = _string(config, "metrics", f"invalid metrics '{config.get('metrics')}': "
                                      f"use 'ADDR:PORT' or '[IPv6]:PORT'")
    if text is not None:
        where = parse_listen(text)
        if where is None:
            fail(f"invalid metrics '{text}': use 'ADDR:PORT' or '[IPv6]:PORT'")
        settings.metrics = where
    if config.get("metrics_top") is not None:
        settings.metrics_top = _int(config["metrics_top"], f"invalid metrics_top "
                                    f"'{config['metrics_top']}': 1 to {MAX_METRICS_TOP}",
                                    low=1, high=MAX_METRICS_TOP)


def parse_listen(text: str) -> tuple[str, int] | None:
    """``'ADDR:PORT'`` or ``'[IPv6]:PORT'`` -> (address, port); None if it is neither.
    ADDR may be a name; it is resolved now, once."""
    m = re.match(r"^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$", text.strip()) or \
        re.match(r"^([^:\[\]\s]+):(\d{1,5})$", text.strip())
    if not m or not 0 < int(m.group(2)) <= MAX_PORT:
        return None
    address = host.resolve_address(m.group(1))
    return (address, int(m.group(2))) if address else None


def _flag(config: dict, key: str, default: bool) -> bool:
    """A True / False setting (1 and 0 too); ``default`` if not set."""
    value = config.get(key)
    if value is None:
        return default
    if value not in (True, False) or not isinstance(value, (bool, int)):
        fail(f"invalid {key} '{value}': use True or False")
    return bool(value)


def _validate_connections(config: dict, settings: Settings) -> None:
    """SPEC 10: connection tracking's switch, bound, timeouts and events file."""
    settings.connections = _flag(config, "connections", False)
    if config.get("max_connections") is not None:
        settings.max_connections = _int(
            config["max_connections"], f"invalid max_connections '{config['max_connections']}': "
                                       f"1 to {MAX_CONNECTIONS_LIMIT}",
            low=1, high=MAX_CONNECTIONS_LIMIT)
    settings.timeouts = _timeouts(config.get("timeouts"))
    settings.events = _events(config)


def _timeouts(value) -> dict[str, int]:
    """The default timeouts, with those of the ``timeouts`` dict instead."""
    timeouts = dict(DEFAULT_TIMEOUTS)
    if value is None:
        return timeouts
    names = ", ".join(DEFAULT_TIMEOUTS)
    if not isinstance(value, dict):
        fail(f"invalid timeouts '{value}': a dict of seconds by {names}")
    for key, seconds in value.items():
        if key not in DEFAULT_TIMEOUTS:
            fail(f"invalid timeouts key '{key}': use {names}")
        timeouts[key] = _int(seconds, f"invalid timeouts '{key}': '{seconds}': "
                                      f"seconds, 1 to {MAX_TIMEOUT}", low=1, high=MAX_TIMEOUT)
    return timeouts


def _events(config: dict) -> str | None:
    """The events file, absolute; its directory must exist and be writable."""
    path = absolute(_string(config, "events", f"invalid events '{config.get('events')}': "
                                              "a file path"))
    if path is None:
        return None
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        fail(f"events file '{path}' is a directory")
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        fail(f"events directory '{directory}' missing or not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        fail(f"'{path}' not writable")
    return path


def _clickhouse(value) -> ClickHouseSettings:
    """``{'url': 'clickhouse://HOST:PORT/DB', 'interval': SECONDS, ...}``."""
    if not isinstance(value, dict) or "url" not in value:
        fail(f"invalid clickhouse '{value}': use {{'url': 'clickhouse://HOST:PORT/DB', "
             f"'interval': SECONDS}}")
    for key in sorted(set(value) - set(CLICKHOUSE_KEYS), key=repr):
        fail(f"invalid clickhouse key '{key}': use one of {', '.join(CLICKHOUSE_KEYS)}")
    url = value["url"]
    server = parse_clickhouse_url(url)
    if server is None:
        fail(f"invalid clickhouse url '{url}': use 'clickhouse://HOST:PORT/DB'")
    sniffer = value.get("sniffer")
    if sniffer is not None and (not isinstance(sniffer, str) or not sniffer.strip()
                                or _CONTROL.search(sniffer)):
        fail(f"invalid clickhouse sniffer '{sniffer}': use a name")
    host, port, database, user, password = server
    return ClickHouseSettings(
        host=host, port=port, database=database,
        interval=_optional_int(value, "interval", DEFAULT_EXPORT_INTERVAL, 1, ONE_DAY),
        sniffer=sniffer or None,
        spool_max=_optional_int(value, "spool_max", DEFAULT_SPOOL_MAX, 0, 1 << 40),
        timeout=_optional_int(value, "timeout", DEFAULT_EXPORT_TIMEOUT, 1, 3600),
        user=user, password=password)


def parse_clickhouse_url(url: object) -> tuple[str, int, str, str, str] | None:
    """``clickhouse://[USER[:PASSWORD]@]HOST[:PORT][/DB]`` as (host, port, database,
    user, password), or None if it is not one (the export's and the coalescer's)."""
    m = _CLICKHOUSE_URL.fullmatch(url) if isinstance(url, str) else None
    if m is None or not 0 < int(m.group(4) or CLICKHOUSE_PORT) <= MAX_PORT:
        return None
    return (m.group(3).strip("[]"), int(m.group(4) or CLICKHOUSE_PORT), m.group(5) or "default",
            m.group(1) or "default", m.group(2) or "")


def _optional_int(value: dict, key: str, default: int, low: int, high: int) -> int:
    if value.get(key) is None:
        return default
    return _int(value[key], f"invalid clickhouse {key} '{value[key]}': {low} to {high}",
                low=low, high=high)


def parse_nameserver(text: str) -> tuple[str | None, int]:
    """``'IP'``, ``'IP:port'``, ``'[v6]:port'`` or a bare IPv6 address -> (IP, port)."""
    text = text.strip()
    port = 53
    m = re.match(r"^\[([0-9a-fA-F:.]+)\](?::(\d+))?$", text)
    if m:
        addr, port = m.group(1), int(m.group(2) or 53)
    elif text.count(":") == 1:
        addr, _, p = text.partition(":")
        if not (p.isascii() and p.isdigit()):
            return None, port
        port = int(p)
    else:
        addr = text
    if not 0 < port < 65536:
        return None, port
    try:
        import ipaddress
        return str(ipaddress.ip_address(addr)), port
    except ValueError:
        return None, port


def describe(settings: Settings) -> str:
    """The effective configuration, as the ``config`` verb prints it (a Python literal)."""
    effective = {
        "piddir": settings.piddir,
        "sniffer": settings.sniffer,
        "bpf": settings.bpf,
        "snaplen": settings.snaplen,
        "interface": settings.interface,
        "promiscuous": settings.promiscuous,
        "resolve": settings.resolve,
        "dump_format": settings.dump_format,
    }
    if settings.match is not None or settings.nomatch is not None:
        effective["payload"] = settings.payload
    if settings.match is not None:
        effective["match"] = settings.match
    if settings.nomatch is not None:
        effective["nomatch"] = settings.nomatch
    if settings.port:
        effective.update(port=settings.port, host=settings.listen_host, allowed=settings.allowed)
    for key in ("nameserver", "user", "group", "max_hosts"):
        if getattr(settings, key) is not None:
            effective[key] = getattr(settings, key)
    if settings.metrics:
        address, port = settings.metrics
        effective["metrics"] = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        effective["metrics_top"] = settings.metrics_top
    if settings.resolve:
        effective["dns_max_outstanding"] = settings.dns_max_outstanding
        effective["dns_max_qps"] = settings.dns_max_qps
    if settings.connections:
        effective.update(connections=True, max_connections=settings.max_connections,
                         timeouts=settings.timeouts)
        if settings.events is not None:
            effective["events"] = settings.events
    ch = settings.clickhouse
    if ch is not None:
        effective["clickhouse"] = {"url": ch.url, "interval": ch.interval,
                                   "sniffer": ch.sniffer, "spool_max": ch.spool_max,
                                   "timeout": ch.timeout}
    lines = ["{"]
    for key, value in effective.items():
        lines.append(f"    {key!r}: {value!r},")
    lines.append("}")
    return "\n".join(lines) + "\n"
