"""Finding and reading the web tools' configuration files."""

from __future__ import annotations

import os

import pytest

from ncsniffer import coalesce, webconf
from ncsniffer.errors import CoalesceError, ReportError


def test_locate_order_env_then_next_to_the_script_then_system(tmp_path):
    env, system = tmp_path / "env.conf", tmp_path / "system.conf"
    program = tmp_path / "nc.sniffer.cgi"
    next_to = tmp_path / "nc.sniffer.cgi.conf"
    for f in (env, system, next_to):
        f.write_text("{}")
    environ = {"X_CONF": str(env)}
    assert webconf.locate("X_CONF", str(program), str(system), environ) == str(env)
    assert webconf.locate("X_CONF", str(program), str(system), {}) == str(next_to)
    assert webconf.locate("X_CONF", "", str(system), {}) == str(system)
    os.unlink(system)
    assert webconf.locate("X_CONF", "", str(system), {"X_CONF": str(tmp_path)}) is None


def test_config_errors_are_the_tools_own_without_a_prefix(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("{'stats': ")
    with pytest.raises(ReportError, match=r"^'.*bad.conf' line 1: "):
        webconf.load_wconf(str(bad))
    with pytest.raises(CoalesceError, match=r"^cannot read '.*missing'"):
        coalesce.load_config(str(tmp_path / "missing"))


def test_arg_parser_raises_the_given_error():
    parser = webconf.ArgParser(prog="x", error_class=CoalesceError)
    with pytest.raises(CoalesceError, match="unrecognized arguments"):
        parser.parse_args(["--bogus"])
