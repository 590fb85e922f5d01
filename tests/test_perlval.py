"""Reading Perl data literals without Perl."""

import pytest
from hypothesis import given, settings, strategies as st

from ncsniffer import perlval

ORIGINAL_SAMPLE = r'''#!/usr/bin/perl
#
# nc.sniffer.pl
#
use strict;
use Net::Connection::Sniffer;

my $config = {
# pid file directory
	piddir	=> '/var/run/nc.sniffer',
	sniffer	=> '/var/run/nc.sniffer',	# stats here
	bpf	=> 'dst host my.dns.com and udp port 53',
	match	=> "\x{a}somedomain\x{3}com",
	snaplen	=> 90,
	payload	=> 54,
#	nomatch	=> 'commented.out',
	port	=> 10004,
	host	=> 'INADDR_LOOPBACK',
	allowed	=> ['127.0.0.1', "10.0.0.1",],
};

gather($config);
'''


def test_extract_config_from_original_style_script():
    cfg = perlval.extract_config_hash(ORIGINAL_SAMPLE)
    assert cfg == {
        "piddir": "/var/run/nc.sniffer", "sniffer": "/var/run/nc.sniffer",
        "bpf": "dst host my.dns.com and udp port 53", "match": "\nsomedomain\x03com",
        "snaplen": 90, "payload": 54, "port": 10004, "host": "INADDR_LOOPBACK",
        "allowed": ["127.0.0.1", "10.0.0.1"],
    }


def test_strings_and_escapes():
    assert perlval.parse_value(r"""['a\'b', 'c\\d', "t\tn\n", "\x41\101", "\$x", 'x#y']""") == \
        ["a'b", "c\\d", "t\tn\n", "AA", "$x", "x#y"]
    assert perlval.parse_value("{a => 1, 'b', 2.5, c => -3, d => undef, e => 0x1f}") == \
        {"a": 1, "b": 2.5, "c": -3, "d": None, "e": 31}


def test_interpolation_is_refused():
    for text in ('"$HOME/x"', '"@{[ system(1) ]}"', '"${\\ system(1)}"', '"@list"'):
        with pytest.raises(perlval.PerlSyntaxError, match="variables"):
            perlval.parse_value(text)


def test_code_is_refused_with_line_number():
    with pytest.raises(perlval.PerlSyntaxError) as info:
        perlval.parse_value("{\n a => 1,\n b => system('rm -rf /'),\n}")
    assert info.value.line == 3


def test_missing_config_hash():
    with pytest.raises(perlval.PerlSyntaxError, match="no 'my \\$config"):
        perlval.extract_config_hash("# my $config = {};\nprint 1;\n")


def test_dump_wrapper():
    text = "{\n  my $dump = {\n\t'1.2.3.4'\t=> {\n\t\tB\t=> 1,\n\t\tN\t=> ['a',],\n\t},\n  };\n}\n"
    assert perlval.parse_dump(text) == {"1.2.3.4": {"B": 1, "N": ["a"]}}


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_garbage_raises_only_our_error(text):
    try:
        perlval.parse_value(text)
    except perlval.PerlSyntaxError:
        pass


def test_code_points_beyond_unicode_are_a_syntax_error():
    for text in (r'"\x{110000}"', r'"\x{ffffffffffffffffffff}"'):
        with pytest.raises(perlval.PerlSyntaxError, match="not a Unicode character"):
            perlval.parse_value(text)
    assert perlval.parse_value(r'"\x{0000000041}\x{10ffff}"') == "A\U0010ffff"


def test_keys_do_not_nest():
    """A '{' where a key belongs used to recurse without a depth limit (RecursionError)."""
    with pytest.raises(perlval.PerlSyntaxError, match="hash key must be"):
        perlval.parse_value("{" * 100_000)


def test_dump_keys_must_be_unique():
    text = "{ '1.2.3.4' => { B => 1 }, '1.2.3.4' => { B => 2 } }"
    with pytest.raises(perlval.PerlSyntaxError, match="'1.2.3.4' appears twice"):
        perlval.parse_dump(text, unique=True)
    assert perlval.parse_dump(text) == {"1.2.3.4": {"B": 2}}      # config files: Perl's rule


@pytest.mark.slow
def test_long_input_keeps_few_tokens():
    parser = perlval._Parser("[" + "1, " * 50_000 + "]")
    assert len(parser.value()) == 50_000
    assert len(parser.tokens) <= perlval.TOKENS_KEPT + 2


@pytest.mark.parametrize("qw", ["qw(127.0.0.1 10.0.0.1)", "qw/127.0.0.1 10.0.0.1/",
                                "qw[ 127.0.0.1\n\t10.0.0.1 ]", "qw{127.0.0.1 10.0.0.1}",
                                "qw<127.0.0.1 10.0.0.1>", "qw!127.0.0.1 10.0.0.1!",
                                "qw (127.0.0.1 10.0.0.1)"])
def test_qw_lists_in_a_list(qw):
    assert perlval.parse_value(f"{{allowed => [{qw}], a => [1, {qw}, 'x']}}") == {
        "allowed": ["127.0.0.1", "10.0.0.1"], "a": [1, "127.0.0.1", "10.0.0.1", "x"]}


def test_qw_as_a_hash_value():
    assert perlval.parse_value("{host => qw(127.0.0.1), qw => 1}") == {"host": "127.0.0.1",
                                                                        "qw": 1}
    with pytest.raises(perlval.PerlSyntaxError, match=r"write \[qw\(a b\)\]") as info:
        perlval.parse_value("{\n allowed => qw(a b),\n}")
    assert info.value.line == 2
    assert perlval.parse_value("[qw()]") == []
