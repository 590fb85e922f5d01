"""Loopback traffic for live tests: UDP datagrams with any 127.x.y.z source.

A raw socket (IP_HDRINCL, root) writes whole IPv4 packets, so one socket can
send from thousands of source addresses; every packet goes to 127.0.0.1.
"""

from __future__ import annotations

import socket
import struct
import time

ETH_LEN = 14


def loopback_source(i: int) -> str:
    """The i-th source address in 127.1.0.0/16 .. 127.254.255.255 (never 127.0.0.1)."""
    return f"127.{1 + (i >> 16) % 254}.{(i >> 8) & 255}.{i & 255}"


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + udp


class RawSender:
    """Send crafted UDP packets to 127.0.0.1; bounded by count and time."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)

    def send(self, src: str, dport: int, payload: bytes = b"", dst: str = "127.0.0.1",
             sport: int = 40000) -> int:
        """Send one packet; return its wire length as captured on lo (with Ethernet header)."""
        pkt = udp_packet(src, dst, sport, dport, payload)
        while True:
            try:
                self.sock.sendto(pkt, (dst, 0))
                return ETH_LEN + len(pkt)
            except BlockingIOError:
                time.sleep(0.001)
            except OSError as exc:
                if exc.errno != 105:      # ENOBUFS: wait for the queue to drain
                    raise
                time.sleep(0.001)

    def close(self) -> None:
        self.sock.close()
