"""The HTML (SVG bar chart and table) and JSON reports: pure functions of records."""

from __future__ import annotations

import json
import os
import re

import pytest

from ncsniffer import htmlreport
from ncsniffer.layout import read_stf

from tests.conftest import ROOT

MIXED = os.path.join(ROOT, "tests", "data", "report", "mixed.stats")


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")


def rec(W=0.0, R=0.0, E=0, N=()):
    return {"B": 0, "C": 0, "E": E, "N": list(N), "R": R, "S": 0, "T": 0, "W": W}


def rects(page: str) -> list:
    return re.findall(r'<rect [^>]*height="([\d.]+)" data-value="([\d.]+)"', page)


def test_bars_height_follows_value():
    records = {"10.0.0.1": rec(W=3600 * 100, N=["big.example.com"]),
               "10.0.0.2": rec(W=3600 * 25), "10.0.1.1": rec(W=3600 * 50)}
    page = htmlreport.render_html([], records, False)
    bars = rects(page)
    assert len(bars) == 3 + 2                          # 3 peers, 2 /24 groups
    heights = [(float(h), float(v)) for h, v in bars]
    assert heights[:3] == [(200.0, 100.0), (100.0, 50.0), (50.0, 25.0)]
    assert heights[3:] == [(200.0, 125.0), (80.0, 50.0)]
    assert "10.0.0.0/24" in page and "big.example.com" in page


def test_top_bars_only():
    records = {f"10.0.{i}.1": rec(W=3600 * (i + 1)) for i in range(30)}
    assert len(rects(htmlreport.render_fragment([], records, False))) == 2 * htmlreport.TOP_BARS


def test_names_escaped_and_no_fetches():
    evil = '<script>alert(1)</script>"&.evil.org'
    records = {"10.0.0.1": rec(W=3600, N=[evil, "\x1b[2Jx.org"])}
    page = htmlreport.render_html(["# bpf: <b>"], records, True)
    assert "<script>" not in page and "&lt;script&gt;" in page and "\x1b" not in page
    assert "<b>" not in page
    assert not re.search(r"(src|href)\s*=", page, re.I) and "http" not in page


def test_zero_rates_say_so():
    page = htmlreport.render_fragment([], {"10.0.0.1": rec()}, False)
    assert "no bandwidth yet" in page and page.startswith('<div class="ncsniffer">')
    assert "<html" not in page


def test_domain_labels_and_json_match_text_report_order():
    stats = read_stf(MIXED)
    doc = json.loads(htmlreport.render_json(stats.header, stats.records, True))
    assert doc["report"] == "domain" and doc["totals"]["users"] == len(stats.records)
    with open(os.path.join(ROOT, "tests", "data", "report", "mixed.report.1")) as fh:
        text = fh.read()
    first_ips = [g["ips"][0]["ip"] for g in doc["groups"]]
    positions = [text.index("\n" + ip + "\t") for ip in first_ips]
    assert positions == sorted(positions)
    assert any(g["group"] == "example.com" for g in doc["groups"])
    cidr = json.loads(htmlreport.render_json(stats.header, stats.records, False))
    assert all(g["group"].endswith(("/24", "/64")) for g in cidr["groups"])


def test_group_bars_tallest_first_though_the_table_ties_whole_rates():
    """The table orders groups by whole bytes/second (the original's order), so 2.9 and
    2.1 tie there; a chart's bars still go tallest first, by the exact rate."""
    records = {"10.0.1.1": rec(W=3600 * 2.1), "10.0.2.1": rec(W=3600 * 2.9),
               "10.0.3.1": rec(W=3600 * 5)}
    page = htmlreport.render_fragment([], records, False)
    groups = [float(v) for _, v in rects(page)[3:]]
    assert groups == sorted(groups, reverse=True) == [5.0, 2.9, 2.1]
    assert page.index("10.0.1.0/24</td>") < page.index("10.0.2.0/24</td>")   # table: tie by IP
