"""nc.sniffer.cgi's command line: formats, one cache file per type and format, CGI mode, help."""

from __future__ import annotations

import io
import json
import os
import shutil

import pytest

from ncsniffer import reportcgi

from tests.conftest import ROOT

DATA = os.path.join(ROOT, "tests", "data", "report")


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")


def run(argv, environ=None, program="nc.sniffer.cgi"):
    out, err = io.StringIO(), io.StringIO()
    status = reportcgi.cgi_main(argv, out, err, {} if environ is None else environ, program)
    return status, out.getvalue(), err.getvalue()


def test_text_is_the_default_and_unchanged():
    status, out, _ = run(["--stats", os.path.join(DATA, "mixed.stats"), "1"])
    with open(os.path.join(DATA, "mixed.report.1")) as fh:
        assert status == 0 and out == fh.read()


def test_terminal_json_and_html():
    stats = os.path.join(DATA, "mixed.stats")
    status, out, _ = run(["--stats", stats, "--format", "json", "0"])
    assert status == 0 and json.loads(out)["report"] == "cidr24"
    status, out, _ = run(["--stats", stats, "--format=html", "1"])
    assert status == 0 and out.startswith("<!DOCTYPE html>") and "<svg" in out


def test_bad_format_is_one_line():
    status, out, err = run(["--stats", "x", "--format", "pdf"])
    assert status == 1 and out == "" and err.count("\n") == 1 and "pdf" in err


def test_cache_one_file_per_type_and_format(tmp_path):
    stats = tmp_path / "s.stats"
    shutil.copy(os.path.join(DATA, "mixed.stats"), stats)
    conf = tmp_path / "web.conf"
    conf.write_text(repr({"stats": str(stats), "cache": str(tmp_path / "c"), "refresh": 300}))
    pages = {}
    for fmt in ("text", "html", "fragment", "json"):
        for kind in ("0", "1"):
            status, out, _ = run(["-c", str(conf), "--format", fmt, kind])
            assert status == 0
            pages[fmt, kind] = out
    kept = [f for f in os.listdir(tmp_path) if not f.endswith(".lock")]
    assert sorted(kept) == sorted(
        ["s.stats", "web.conf", "c.0", "c.1", "c.0.html", "c.1.html", "c.0.fragment",
         "c.1.fragment", "c.0.json", "c.1.json"])
    assert (tmp_path / "c.1.json").read_text() == pages["json", "1"]
    assert "Composite report, CIDR/24" in pages["text", "0"]
    assert pages["fragment", "0"].startswith('<div class="ncsniffer">')


def test_cgi_mode_reads_the_query_string(tmp_path):
    conf = tmp_path / "nc.sniffer.cgi.conf"
    conf.write_text(repr({"stats": os.path.join(DATA, "mixed.stats")}))
    program = str(tmp_path / "nc.sniffer.cgi")
    env = {"GATEWAY_INTERFACE": "CGI/1.1", "SCRIPT_FILENAME": program,
           "QUERY_STRING": "type=1&format=json"}
    status, out, _ = run([], env, program)
    head, body = out.split("\r\n\r\n", 1)
    assert status == 0 and head == "Content-Type: application/json; charset=utf-8"
    assert json.loads(body)["report"] == "domain"
    env["SCRIPT_FILENAME"] = str(tmp_path / "index.shtml")     # an SSI exec: no header
    status, out, _ = run([], env, program)
    assert status == 0 and out.startswith("\n# ncsniffer version")


def test_help_names_every_argument():
    status, out, _ = run(["--help"])
    assert status == 0
    for word in ("TYPE", "0 (default)", "1 by sub-domain", "--format", "html", "fragment",
                 "json", "-c CONF", "--stats FILE", "--update", "--refresh", "--updto"):
        assert word in out, word
