"""The idle timeouts of connection tracking (SPEC 10.1), in seconds: one place.

Its own module so that both the configuration and the tracker read them
without the pipeline (batch -> accounting -> table -> tracker) importing the
configuration code.
"""

DEFAULT_TIMEOUTS = {"tcp_establish": 5, "tcp": 300, "udp": 20, "icmp": 10, "tcp_linger": 10}
# The longest timeout, in seconds (11.5 days): the tracker's timer wheel has a slot per
# second (_conntrack.c MAX_TIMEOUT is this number), and the config refuses more.
MAX_TIMEOUT = 10**6
