"""Reading a configuration file without running it (SPEC 1): a Python dict literal,
``CONFIG = {...}``, or an old Perl script's hash; the instance name that names the
file and the pid directory it names.

A module of its own so the web tools read their configuration, and ``status``,
``stop`` and ``dump`` find the pid file, without importing the daemon's settings
and their validation (the start-up of a cached CGI page and of ``status``, issue 16).
"""

from __future__ import annotations

import ast
import os
import re

from ncsniffer.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20
_PERL_HASH = re.compile(r"^[^#\n]*\$(\w+)\s*=\s*(?=\{)", re.MULTILINE)


def load_file(path: str, error: type = ConfigError, prefix: str = "config: ") -> dict:
    """Read a configuration file without running it.

    Accepted: a Python dict literal; a Python script assigning ``CONFIG = {...}``
    (the samples); an old Perl script's ``my $config = {...};`` hash (or the first
    ``$NAME = {...}`` one, as in the original's report scripts).  Problems raise
    ``error`` (an NcSnifferError class) with ``prefix`` before the message, so the
    web tools word them as their own errors.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise error(prefix + f"cannot read '{path}': {exc.strerror}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise error(prefix + f"'{path}' is larger than 1 MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    perl = [m for m in _PERL_HASH.finditer(text)]
    if perl and not text.lstrip().startswith("{"):
        from ncsniffer import perlval    # here: a Python config (the usual) needs no Perl
        m = next((m for m in perl if m.group(1) == "config"), perl[0])
        try:
            config = perlval.extract_config_hash(text[:m.start(1)] + "config" + text[m.end(1):])
        except perlval.PerlSyntaxError as exc:
            raise error(prefix + f"'{path}' {exc}") from exc
    else:
        config = _literal(text, path, error, prefix)
    if not isinstance(config, dict):
        raise error(prefix + f"'{path}' must hold a dict {{...}} of settings")
    return config


def instance_name(program: str) -> str:
    """``/usr/sbin/nc.sniffer1.pl`` -> ``nc.sniffer1``."""
    base = os.path.basename(program)
    for suffix in (".pl", ".py"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def absolute(path: str | None) -> str | None:
    """A configured path against the directory the command started in: the
    daemon changes to '/' when it detaches, so this is done before."""
    return os.path.abspath(path) if path and isinstance(path, str) else path


def check_piddir(config: dict) -> str:
    """The configured pid directory, made absolute; it must exist and be writable."""
    piddir = config.get("piddir")
    if not piddir or not isinstance(piddir, str):
        raise ConfigError("pid directory not specified or not writable")
    piddir = absolute(piddir)
    if not os.path.isdir(piddir) or not os.access(piddir, os.W_OK):
        raise ConfigError("pid directory not specified or not writable")
    return piddir


def _literal(text: str, path: str, error: type, prefix: str) -> object:
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as exc:
        raise error(prefix + f"'{path}' line {exc.lineno}: {exc.msg}") from exc
    except (ValueError, MemoryError, RecursionError) as exc:
        raise error(prefix + f"'{path}': not a readable file ({type(exc).__name__})") from exc
    node = None
    if len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr):
        node = tree.body[0].value
    for stmt in tree.body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name) and stmt.targets[0].id == "CONFIG"):
            node = stmt.value
    if node is None:
        raise error(prefix + f"'{path}' holds neither a dict literal nor CONFIG = {{...}}")
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, MemoryError, RecursionError) as exc:
        line = _first_non_literal_line(node)
        raise error(
            prefix + f"'{path}' line {line}: only plain values (strings, numbers, lists, "
            f"True/False/None) are allowed") from exc


def _first_non_literal_line(tree: ast.AST) -> int:
    allowed = (ast.Expression, ast.Expr, ast.Dict, ast.List, ast.Tuple, ast.Set, ast.Constant,
               ast.UnaryOp, ast.UAdd, ast.USub, ast.Load, ast.BinOp, ast.Add, ast.Sub)
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            return getattr(node, "lineno", 1)
    return 1


