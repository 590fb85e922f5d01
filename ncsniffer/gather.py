"""Vectorized loads of bytes, 16- and 32-bit words at arbitrary offsets of a buffer.

Record headers, filter loads and IP addresses sit at any byte offset, so a
word cannot be read through an aligned view.  A byte-strided view of each
width turns one load into one numpy gather, instead of one gather per byte
plus shifts.  Offsets past the end are clamped to the last whole word:
callers only use values where the captured length covers them.
"""

from __future__ import annotations

import numpy as np

PAD = 8     # a buffer shorter than this is copied with zero padding


class Gather:
    """Loads from one buffer (bytes, mmap or a uint8 array); results are int64."""

    def __init__(self, buf):
        u8 = np.frombuffer(buf, np.uint8) if not isinstance(buf, np.ndarray) else buf
        if len(u8) < PAD:
            u8 = np.concatenate((u8, np.zeros(PAD, np.uint8)))
        self.u8 = u8
        self.size = len(u8)
        self._views: dict[str, np.ndarray] = {}

    def _view(self, dtype: str) -> np.ndarray:
        view = self._views.get(dtype)
        if view is None:
            width = np.dtype(dtype).itemsize
            view = np.ndarray((self.size - width + 1,), dtype, self.u8, 0, (1,))
            self._views[dtype] = view
        return view

    def load(self, dtype: str, at) -> np.ndarray:
        """Words of ``dtype`` ('u1', '>u2', '<u4', ...) starting at the offsets ``at``."""
        return self.words(dtype, at).astype(np.int64)

    def words(self, dtype: str, at) -> np.ndarray:
        """Like ``load``, but as native unsigned words (for 64-bit words)."""
        view = self._view(dtype)
        return view[np.minimum(at, len(view) - 1)].astype(view.dtype.newbyteorder("="))

    def block(self, at, width: int) -> np.ndarray:
        """``width`` bytes from each offset as one void item: a record header in one
        gather, its fields then read through ``.view()``."""
        view = self._view(f"V{width}")
        return view[np.minimum(at, len(view) - 1)]

    def window(self, at: np.ndarray, width: int) -> np.ndarray:
        """``width`` bytes from each offset as rows of a (len(at), width) uint8
        array, in one gather; zeros past the end of the buffer."""
        rows = self.block(at, width) if self.size >= width else \
            np.empty(len(at), f"V{width}")
        near = np.flatnonzero(at > self.size - width)
        if near.size:                        # the buffer's last bytes: pad with zeros
            lo = int(at[near].min())
            tail = Gather(np.concatenate((self.u8[lo:], np.zeros(width, np.uint8))))
            rows[near] = tail.block(at[near] - lo, width)
        return rows.view(np.uint8).reshape(len(at), width)


HEAD = 64       # bytes of each packet copied by ``Heads``: every header the pipeline reads


class Heads:
    """The first ``width`` bytes of every packet of a batch, copied with one gather
    into a compact array.  The filter, the decoder and the address extraction
    each load several words per packet; from the copy they read a few cached
    lines instead of scattered lines of a 16 MB batch.  Loads reaching past the
    copy read the batch itself.
    """

    def __init__(self, g: Gather, offs: np.ndarray, width: int = HEAD):
        self.g, self.offs, self.width = g, offs, width
        self.rows = g.window(offs, width)
        self.flat = Gather(self.rows.reshape(-1))

    def words(self, dtype: str, idx: np.ndarray, at) -> np.ndarray:
        """Native unsigned words of ``dtype`` at offset ``at`` (one for all, or one
        per packet) of the packets ``idx``."""
        size, width = np.dtype(dtype).itemsize, self.width
        native = np.dtype(dtype).newbyteorder("=")
        if np.ndim(at) == 0:
            if at + size <= width:           # a strided column of the copy
                return np.ndarray((len(self.rows),), dtype, self.rows, at, (width,))[idx] \
                    .astype(native)
            return self.g.words(dtype, self.offs[idx] + at)
        inside = at + size <= width
        if inside.all():
            return self.flat.words(dtype, idx * width + at)
        out = self.g.words(dtype, self.offs[idx] + at)
        fit = np.flatnonzero(inside)
        out[fit] = self.flat.words(dtype, idx[fit] * width + at[fit])
        return out

    def load(self, dtype: str, idx: np.ndarray, at) -> np.ndarray:
        return self.words(dtype, idx, at).astype(np.int64)
