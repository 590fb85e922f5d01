"""The classic pcap reading without numpy: the header, the errors, the same layout as
pcapfile's."""


import faulthandler
import os
import signal

import pytest

from ncsniffer import pcapfile, pcapgen, pcapread


def test_its_layouts_are_pcapfiles():
    """The layout here and pcapfile's numpy headers: the same fields, sizes, order."""
    assert pcapread.FILE_HEADER_SIZE == pcapfile.PCAP_FILE_HEADER.itemsize
    assert pcapread.RECORD == pcapfile.RECORD
    assert pcapread.PCAP_FILE_HEADER.dtype() == pcapfile.PCAP_FILE_HEADER


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nanos", [False, True])
def test_every_classic_magic_is_read(endian, nanos):
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    head = pcapread.PCAP_FILE_HEADER.struct(endian).pack(magic, 2, 4, 0, 0, 65535,
                       (1 << 28) | 113)                  # FCS bits above the link type
    got = pcapread.classic_header(head)
    assert (got.endian, got.per_sec, got.snaplen, got.linktype) == \
        (endian, 1000 if nanos else 1, 65535, 113)
    assert got.swapped == (endian != pcapread.NATIVE)


def test_odd_headers_are_named():
    good = pcapfile.pcap_header(1, 0)
    assert pcapread.classic_header(good).snaplen == pcapread.MAX_RECORD   # 0: the most
    assert pcapread.classic_header(b"\x0a\x0d\x0d\x0a" + bytes(20)) is None   # pcapng
    assert pcapread.classic_header(b"nope" + bytes(20)) is None
    with pytest.raises(pcapread.Truncated, match="truncated file header"):
        pcapread.classic_header(good[:10])
    old = pcapread.PCAP_FILE_HEADER.struct("<").pack(0xA1B2C3D4, 2, 3, 0, 0, 65535, 1)
    with pytest.raises(pcapread.Unsupported, match="pcap version 2.3"):
        pcapread.classic_header(old)
    seen = []
    pcapread.classic_header(good, seen.append)
    assert seen == [1]


def test_a_file_shorter_than_it_was_is_an_error(tmp_path):
    """``read`` is told the file's end; a file cut since reads as cut, not as a crash."""
    path = tmp_path / "c.pcap"
    pcapgen.write_pcap(str(path), 1, [(1.0, bytes(60), 60)] * 10)
    size = path.stat().st_size
    header = pcapread.classic_header(path.read_bytes()[:pcapread.FILE_HEADER_SIZE])
    columns = [bytearray(8 * 100) for _ in range(pcapread.COLUMNS)]
    with open(path, "rb") as fh:
        got = list(pcapread.read(fh.fileno(), pcapread.FILE_HEADER_SIZE, size, header, 100,
                                 1 << 16, pcapread.spans(1 << 16, False), columns))
        assert [n for _, n, _ in got] == [10]
        with pytest.raises(pcapread.Truncated, match=f"file shrank while read .* of {size + 5}"):
            list(pcapread.read(fh.fileno(), pcapread.FILE_HEADER_SIZE, size + 5, header, 100,
                               1 << 16, pcapread.spans(1 << 16, False), columns))


def _batches(source, path, spans_of, end=None, limit=100):
    """Each batch of ``source`` over ``path``: its records, file offset, walked columns
    and bytes."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        header = pcapread.classic_header(fh.read(pcapread.FILE_HEADER_SIZE))
        columns = [bytearray(8 * limit) for _ in range(pcapread.COLUMNS)]
        got = []
        for view, n, at in source(fh.fileno(), pcapread.FILE_HEADER_SIZE, end or size, header,
                                  limit, spans_of[0], pcapread.spans(*spans_of), columns):
            offs, caplen, *rest = (memoryview(c).cast("q")[:n].tolist() for c in columns)
            last = offs[-1] + pcapread.RECORD + caplen[-1]
            got.append((n, at, offs, caplen, rest, bytes(view[:last])))
        return got


@pytest.mark.parametrize("spans_of", [(1 << 16, False), (300, False), (1 << 20, True)])
@pytest.mark.parametrize("cut", [0, 7])
def test_the_map_gives_the_reads_batches_and_errors(tmp_path, spans_of, cut):
    """``mapped`` (the reading process's) and ``read``: the same batches, the same
    last error, whether a batch ends at its byte span, its record limit or a
    record cut by the file's end."""
    path = tmp_path / "m.pcap"
    pcapgen.write_pcap(str(path), 1, [(1.0 + i, bytes(60 + i % 200), 60 + i % 200)
                                      for i in range(1000)])
    if cut:
        os.truncate(path, path.stat().st_size - cut)
    results = []
    for source in (pcapread.read, pcapread.mapped):
        try:
            results.append(_batches(source, str(path), spans_of))
        except pcapread.Truncated as exc:
            results.append(str(exc))
    assert results[0] == results[1]
    assert isinstance(results[0], str) == bool(cut)


def test_a_file_cut_before_its_map_is_an_error(tmp_path):
    """``mapped`` looks at the file's size before it maps the next bytes: a file cut
    since the replay began is an error, as ``read`` says it, not a SIGBUS."""
    path = tmp_path / "c.pcap"
    pcapgen.write_pcap(str(path), 1, [(1.0, bytes(60), 60)] * 10)
    size = path.stat().st_size
    with pytest.raises(pcapread.Truncated, match=f"file shrank while read \\({size} of {size + 5}"):
        _batches(pcapread.mapped, str(path), (1 << 16, False), end=size + 5)


def test_a_file_cut_under_its_map_is_a_sigbus_in_the_reading_process(tmp_path):
    """Why only a reading process maps (``ncsniffer.headstart`` reports its end): the
    file cut after its batch was mapped, the next touch of its bytes is a SIGBUS."""
    path = tmp_path / "s.pcap"
    pcapgen.write_pcap(str(path), 1, [(1.0, bytes(1000), 1000)] * 100)
    pid = os.fork()
    if pid == 0:                                   # the process that maps
        code = 0
        try:
            faulthandler.disable()
            _batches(_touching_after_cut(str(path)), str(path), (1 << 16, False))
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGBUS, status


def _touching_after_cut(path: str):
    """``mapped``, but each batch's bytes read after the file is cut to nothing."""
    def source(*args):
        for view, n, at in pcapread.mapped(*args):
            os.truncate(path, 0)
            bytes(view)
            yield view, n, at
    return source
