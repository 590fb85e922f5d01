"""Run a libpcap-compiled BPF program over a whole batch of packets at once (numpy).

libpcap compiles the filter (so its meaning is exactly tcpdump's); this module
only executes the instructions, for every packet of a batch in parallel.  BPF
jumps only go forward, so one sweep over the instructions runs every packet's
path to its RET.  Semantics follow libpcap's ``bpf_filter``: loads past the
captured length reject the packet, division by zero rejects it.
"""

from __future__ import annotations

import numpy as np

M32 = 0xFFFFFFFF

# instruction classes and fields (pcap/bpf.h)
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
SIZE = {0x00: 4, 0x08: 2, 0x10: 1}
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


def _load(u8: np.ndarray, start: np.ndarray, size: int) -> np.ndarray:
    """Big-endian unsigned loads of ``size`` bytes at ``start`` (indices already valid)."""
    value = u8[start].astype(np.int64)
    for j in range(1, size):
        value = (value << 8) | u8[start + j]
    return value


def run(prog: list[tuple[int, int, int, int]], u8: np.ndarray, offs: np.ndarray,
        caplen: np.ndarray, wirelen: np.ndarray) -> np.ndarray:
    """Accept mask of the packets (data at ``u8[offs : offs + caplen]``).

    Each instruction keeps a work list of the packets that reach it; jumps
    split a list in two, so every instruction touches only its own packets.
    """
    n = len(offs)
    a = np.zeros(n, np.int64)
    x = np.zeros(n, np.int64)
    mem: dict[int, np.ndarray] = {}
    accept = np.zeros(n, bool)
    work: dict[int, list[np.ndarray]] = {0: [np.arange(n)]}
    for i, (code, jt, jf, k) in enumerate(prog):
        parts = work.pop(i, None)
        if not parts:
            continue
        idx = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if idx.size == 0:
            continue
        cls = code & 7
        nxt = i + 1
        if cls in (LD, LDX):
            idx, val = _load_insn(code, k, idx, u8, offs, caplen, wirelen, x, mem, n)
            (a if cls == LD else x)[idx] = val
        elif cls in (ST, STX):
            mem.setdefault(k, np.zeros(n, np.int64))[idx] = (a if cls == ST else x)[idx]
        elif cls == ALU:
            idx = _alu(code, k, a, x, idx)
        elif cls == JMP:
            op = code & 0xF0
            if op == 0x00:
                work.setdefault(nxt + k, []).append(idx)
                continue
            rhs = x[idx] if code & 0x08 else k
            av = a[idx]
            if op == 0x10:
                cond = av == rhs
            elif op == 0x20:
                cond = av > rhs
            elif op == 0x30:
                cond = av >= rhs
            elif op == 0x40:
                cond = (av & rhs) != 0
            else:
                raise UnsupportedProgram(f"jump {code:#x}")
            work.setdefault(nxt + jt, []).append(idx[cond])
            work.setdefault(nxt + jf, []).append(idx[~cond])
            continue
        elif cls == RET:
            accept[idx] = (a[idx] != 0) if code & 0x18 == 0x10 else (k != 0)
            continue
        elif cls == MISC:
            if code & 0xF8 == 0x00:
                x[idx] = a[idx]
            else:
                a[idx] = x[idx]
        work.setdefault(nxt, []).append(idx)
    return accept


def _load_insn(code, k, idx, u8, offs, caplen, wirelen, x, mem, n):
    """(packets still running, loaded values): loads past the captured data reject."""
    mode, size = code & 0xE0, SIZE.get(code & 0x18)
    if mode == IMM:
        return idx, k
    if mode == LEN:
        return idx, wirelen[idx]
    if mode == MEM:
        return idx, mem.get(k, np.zeros(n, np.int64))[idx]
    width = 1 if mode == MSH else size
    at = x[idx] + k if mode == IND else k
    ok = at + width <= caplen[idx]
    if not ok.all():
        idx = idx[ok]
        at = at[ok] if mode == IND else at
    val = _load(u8, offs[idx] + at, width)
    return idx, ((val & 0xF) << 2) if mode == MSH else val


def _alu(code: int, k: int, a: np.ndarray, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Apply an ALU instruction; return the packets still running."""
    op = code & 0xF0
    av = a[idx]
    if op == 0x80:                               # NEG
        a[idx] = (-av) & M32
        return idx
    rhs = x[idx] if code & 0x08 else np.full(idx.size, k, np.int64)
    if op in (0x30, 0x90):                       # DIV, MOD: by zero rejects
        keep = rhs != 0
        idx, av, rhs = idx[keep], av[keep], rhs[keep]
        a[idx] = (av // rhs if op == 0x30 else av % rhs) & M32
    elif op == 0x00:
        a[idx] = (av + rhs) & M32
    elif op == 0x10:
        a[idx] = (av - rhs) & M32
    elif op == 0x20:
        a[idx] = ((av & 0xFFFF) * rhs + (((av >> 16) * rhs & 0xFFFF) << 16)) & M32
    elif op == 0x40:
        a[idx] = av | rhs
    elif op == 0x50:
        a[idx] = av & rhs
    elif op == 0x60:
        a[idx] = np.where(rhs < 32, (av << np.minimum(rhs, 31)) & M32, 0)
    elif op == 0x70:
        a[idx] = np.where(rhs < 32, av >> np.minimum(rhs, 31), 0)
    elif op == 0xA0:
        a[idx] = av ^ rhs
    else:
        raise UnsupportedProgram(f"alu {code:#x}")
    return idx
