"""libpcap through ctypes: the filter for a file and the link check, without numpy."""

import os
import subprocess
import sys

import pcapy
import pytest

from ncsniffer import capture, linktypes, pcaplib, sniffer
from ncsniffer.errors import CaptureError

from tests.conftest import ROOT

HOST = "host 10.0.0.1"
# libpcap's program for HOST on a raw IP file (version nibble, then either address).
RAW_HOST = [(48, 0, 0, 0), (84, 0, 0, 240), (21, 0, 5, 64), (32, 0, 0, 12),
            (21, 2, 0, 167772161), (32, 0, 0, 16), (21, 0, 1, 167772161),
            (6, 0, 0, pcaplib.FILTER_SNAPLEN), (6, 0, 0, 0)]


def test_a_filter_compiles_without_numpy():
    """A process forked before numpy is imported compiles a file's filter and
    knows its link layout with these two modules alone."""
    code = ("import sys, ncsniffer.pcaplib as p, ncsniffer.linktypes as l\n"
            f"prog = p.compile_filter(l.DLT_EN10MB, {HOST!r})\n"
            "assert prog and l.lookup(l.DLT_EN10MB).type_at == 12, prog\n"
            "assert 'numpy' not in sys.modules, 'numpy imported'\n"
            "print(len(prog))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (ROOT, os.environ.get(
        "PYTHONPATH")))))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == len(pcaplib.compile_filter(linktypes.DLT_EN10MB, HOST))


def test_the_program_is_libpcaps_own():
    prog = pcaplib.compile_filter(linktypes.DLT_EN10MB, HOST)
    assert prog and all(len(insn) == 4 and all(isinstance(x, int) for x in insn)
                        for insn in prog)
    own = pcapy.compile(linktypes.DLT_EN10MB, pcaplib.FILTER_SNAPLEN,
                        pcaplib.vlan_aware(HOST), 1, 0).get_bpf()
    assert prog == [tuple(insn) for insn in own]
    assert pcaplib.compile_filter(linktypes.DLT_RAW, HOST) == RAW_HOST
    assert pcaplib.compile_filter(linktypes.DLT_RAW_LINKTYPE, HOST) == RAW_HOST
    with pytest.raises(CaptureError, match="bad bpf filter 'nonsense'"):
        pcaplib.compile_filter(linktypes.DLT_EN10MB, "nonsense")


@pytest.mark.parametrize("swapped", [False, True])
def test_without_memfd_a_temporary_file_gives_the_same_programs(monkeypatch, swapped):
    """The header file libpcap compiles against: in memory, or (no memfd_create) a
    temporary file; the same programs either way."""
    links = (linktypes.DLT_EN10MB, linktypes.DLT_RAW, linktypes.DLT_NULL)
    in_memory = [pcaplib.compile_filter(link, HOST, swapped) for link in links]
    monkeypatch.delattr(os, "memfd_create")
    assert [pcaplib.compile_filter(link, HOST, swapped) for link in links] == in_memory


def test_an_unsupported_link_type_is_named():
    with pytest.raises(CaptureError, match=r"^x: link type IEEE802_11 \(105\) is not supported$"):
        pcaplib.check_link_type(105, "x")
    for link in linktypes.LINKS:
        pcaplib.check_link_type(link.dlt, "x")


def test_the_moved_names_stay_where_they_were():
    for name in ("compile_filter", "file_filters", "link_type_name", "vlan_aware",
                 "FILTER_SNAPLEN", "ERRBUF_SIZE"):
        assert getattr(capture, name) is getattr(pcaplib, name)
    assert sniffer.check_link_type is pcaplib.check_link_type
