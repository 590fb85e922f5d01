"""The classic pcap reading without numpy: the header, the errors, the same layout as
pcapfile's."""


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
