"""Run a libpcap-compiled BPF program over a whole batch of packets at once (numpy).

libpcap compiles the filter (so its meaning is exactly tcpdump's); this module
only executes the instructions, for every packet of a batch in parallel.  BPF
jumps only go forward, so one sweep over the instructions runs every packet's
path to its RET.  Semantics follow libpcap's ``bpf_filter``: loads past the
captured length reject the packet, division by zero rejects it.

Two things keep the per-packet cost down.  The accumulator travels with each
work list (the packets that reach an instruction), and only to instructions
that read it before writing it: a load followed by a jump, the usual pair, never
goes through a per-batch array.  And when a program loads packet bytes more than
once, it reads from a copy of the first bytes of every packet (``gather.Heads``;
the replay pipeline makes one for the filter, decoding and addresses to share).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ncsniffer.gather import HEAD, Gather, Heads

M32 = 0xFFFFFFFF

# instruction classes and fields (pcap/bpf.h)
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
SIZE = {0x00: 4, 0x08: 2, 0x10: 1}
WORD = {4: ">u4", 2: ">u2", 1: "u1"}     # BPF loads are big-endian
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0


class UnsupportedProgram(Exception):
    """An instruction this interpreter does not run (the caller uses libpcap instead)."""


KNOWN_LOADS = {IMM, ABS, IND, MEM, LEN}


def check(prog: list[tuple[int, int, int, int]]) -> None:
    """Raise UnsupportedProgram unless every instruction is one ``run`` executes."""
    for code, jt, jf, k in prog:
        cls = code & 7
        if cls in (LD, LDX):
            mode = code & 0xE0
            ok = mode in KNOWN_LOADS or (cls == LDX and mode == MSH and code & 0x18 == 0x10)
            if not ok or (mode in (ABS, IND) and (code & 0x18) not in SIZE):
                raise UnsupportedProgram(f"load {code:#x}")
            if mode in (ABS, IND) and k >= 0x80000000:      # Linux ancillary loads
                raise UnsupportedProgram(f"ancillary load {k:#x}")
        elif cls == ALU and code & 0xF0 not in (0, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70,
                                                 0x80, 0x90, 0xA0):
            raise UnsupportedProgram(f"alu {code:#x}")
        elif cls == JMP and code & 0xF0 not in (0, 0x10, 0x20, 0x30, 0x40):
            raise UnsupportedProgram(f"jump {code:#x}")


@dataclass
class Packets:
    """One batch as the interpreter sees it; X and the scratch memory are per packet."""

    g: Gather
    offs: np.ndarray
    caplen: np.ndarray
    wirelen: np.ndarray
    x: np.ndarray
    mem: dict[int, np.ndarray] = field(default_factory=dict)

    heads: Heads | None = None           # a copy of their first bytes, if made

    def __post_init__(self):
        self.capmin = int(self.caplen.min()) if len(self.caplen) else 0

    def load(self, dtype: str, idx: np.ndarray, at) -> np.ndarray:
        """Words at offset ``at`` (one for all, or one per packet) of the packets ``idx``."""
        if self.heads is not None:
            return self.heads.load(dtype, idx, at)
        return self.g.load(dtype, self.offs[idx] + at)


def reads_a(prog: list[tuple[int, int, int, int]]) -> list[bool]:
    """Per instruction: may A's value on entry still be read (before a write)?"""
    live = [False] * (len(prog) + 1)
    for i in range(len(prog) - 1, -1, -1):
        code, jt, jf, k = prog[i]
        cls = code & 7
        if cls == RET:
            live[i] = code & 0x18 == 0x10
        elif cls == JMP:
            live[i] = bool(code & 0xF0) or live[i + 1 + k]
        elif cls == LD:
            live[i] = False
        elif cls == MISC:
            live[i] = code & 0xF8 == 0x00                     # TAX reads A, TXA writes it
        else:                                                 # ALU, ST read A; LDX, STX keep it
            live[i] = cls in (ALU, ST) or live[i + 1]
    return live


def head_width(prog: list[tuple[int, int, int, int]]) -> int:
    """How many first bytes of each packet to copy for the packet loads (0: none, for
    a single load gains nothing from a copy).  Loads at X + k may reach anywhere:
    then the whole HEAD."""
    loads = [(code & 0xE0, k + SIZE.get(code & 0x18, 1)) for code, _, _, k in prog
             if code & 7 in (LD, LDX) and code & 0xE0 in (ABS, IND, MSH)]
    if len(loads) < 2:
        return 0
    if any(mode == IND for mode, _ in loads):
        return HEAD
    return max((end for _, end in loads if end <= HEAD), default=0)


def run(prog: list[tuple[int, int, int, int]], data: np.ndarray | Gather | Heads,
        offs: np.ndarray, caplen: np.ndarray, wirelen: np.ndarray) -> np.ndarray:
    """Accept mask of the packets (data at ``u8[offs : offs + caplen]``; ``data`` is the
    batch's uint8 array, a Gather over it, or its Heads copy).

    Each instruction keeps a work list of the packets that reach it (with their A
    where it is read); jumps split a list in two, so every instruction touches
    only its own packets.
    """
    n = len(offs)
    heads = data if isinstance(data, Heads) else None
    g = heads.g if heads else data if isinstance(data, Gather) else Gather(data)
    width = head_width(prog)
    if heads is None and width and n:
        heads = Heads(g, offs, width)
    pk = Packets(g, offs, caplen, wirelen, np.zeros(n, np.int64), heads=heads)
    live = reads_a(prog)
    accept = np.zeros(n, bool)
    work = {0: [(np.arange(n), np.zeros(n, np.int64))]}
    for i, (code, jt, jf, k) in enumerate(prog):
        idx, a = _merge(work.pop(i, []), live[i])
        if not idx.size:
            continue
        cls = code & 7
        if cls == RET:
            accept[idx] = (a != 0) if code & 0x18 == 0x10 else (k != 0)
        elif cls == JMP and code & 0xF0:
            cond = _compare(code & 0xF0, a, pk.x[idx] if code & 0x08 else k)
            for target, sel in ((i + 1 + jt, cond), (i + 1 + jf, ~cond)):
                carried = np.compress(sel, a) if live[target] else None
                work.setdefault(target, []).append((np.compress(sel, idx), carried))
        else:
            idx, a = _step(code, k, idx, a, pk)
            target = i + 1 + (k if cls == JMP else 0)
            work.setdefault(target, []).append((idx, a if live[target] else None))
    return accept


def _merge(parts: list, with_a: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """One work list from the lists arriving at an instruction."""
    if not parts:
        return np.zeros(0, np.int64), None
    if len(parts) == 1:
        return parts[0]
    idx = np.concatenate([p[0] for p in parts])
    return idx, np.concatenate([p[1] for p in parts]) if with_a else None


def _compare(op: int, a: np.ndarray, rhs) -> np.ndarray:
    if op == 0x10:
        return a == rhs
    if op == 0x20:
        return a > rhs
    if op == 0x30:
        return a >= rhs
    if op == 0x40:
        return (a & rhs) != 0
    raise UnsupportedProgram(f"jump {op | JMP:#x}")


def _step(code: int, k: int, idx: np.ndarray, a, pk: Packets):
    """Run a load, store, ALU, unconditional jump or register transfer:
    (packets still running, their A)."""
    cls = code & 7
    if cls in (LD, LDX):
        keep, val = _load(code, k, idx, pk)
        if keep is not None:
            idx = np.compress(keep, idx)
            a = None if a is None or cls == LD else np.compress(keep, a)
        if cls == LD:
            return idx, val
        pk.x[idx] = val
    elif cls in (ST, STX):
        pk.mem.setdefault(k, np.zeros(len(pk.offs), np.int64))[idx] = a if cls == ST else pk.x[idx]
    elif cls == ALU:
        return _alu(code, k, idx, a, pk.x[idx] if code & 0x08 else k)
    elif cls == MISC:
        if code & 0xF8 == 0x00:
            pk.x[idx] = a
        else:
            a = pk.x[idx]
    return idx, a


def _load(code: int, k: int, idx: np.ndarray, pk: Packets):
    """(mask of the packets kept or None for all, loaded values): loads past the
    captured data reject."""
    mode, size = code & 0xE0, SIZE.get(code & 0x18)
    if mode == IMM:
        return None, np.full(idx.size, k, np.int64)
    if mode == LEN:
        return None, pk.wirelen[idx]
    if mode == MEM:
        return None, pk.mem[k][idx] if k in pk.mem else np.zeros(idx.size, np.int64)
    width = 1 if mode == MSH else size
    at = pk.x[idx] + k if mode == IND else k
    keep = None
    if mode == IND or k + width > pk.capmin:     # a batch's shortest packet: no check
        keep = at + width <= pk.caplen[idx]
        if keep.all():
            keep = None
        else:
            idx = np.compress(keep, idx)
            at = np.compress(keep, at) if mode == IND else at
    val = pk.load(WORD[width], idx, at)
    return keep, ((val & 0xF) << 2) if mode == MSH else val


def _alu(code: int, k: int, idx: np.ndarray, a: np.ndarray, rhs):
    """Apply an ALU instruction: (packets still running, their A)."""
    op = code & 0xF0
    if op == 0x80:                               # NEG
        return idx, (-a) & M32
    if op in (0x30, 0x90):                       # DIV, MOD: by zero rejects
        if np.ndim(rhs):
            keep = rhs != 0
            idx, a, rhs = idx[keep], a[keep], rhs[keep]
        elif rhs == 0:
            return idx[:0], a[:0]
        return idx, (a // rhs if op == 0x30 else a % rhs) & M32
    if op == 0x00:
        return idx, (a + rhs) & M32
    if op == 0x10:
        return idx, (a - rhs) & M32
    if op == 0x20:
        return idx, ((a & 0xFFFF) * rhs + (((a >> 16) * rhs & 0xFFFF) << 16)) & M32
    if op == 0x40:
        return idx, a | rhs
    if op == 0x50:
        return idx, a & rhs
    if op == 0x60:
        return idx, np.where(rhs < 32, (a << np.minimum(rhs, 31)) & M32, 0)
    if op == 0x70:
        return idx, np.where(rhs < 32, a >> np.minimum(rhs, 31), 0)
    if op == 0xA0:
        return idx, a ^ rhs
    raise UnsupportedProgram(f"alu {code:#x}")
