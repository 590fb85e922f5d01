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

    def byte(self, at) -> np.ndarray:
        return self.load("u1", at)

    def be16(self, at) -> np.ndarray:
        return self.load(">u2", at)

    def be32(self, at) -> np.ndarray:
        return self.load(">u4", at)

    def block(self, at, width: int) -> np.ndarray:
        """``width`` bytes from each offset as one void item: a record header in one
        gather, its fields then read through ``.view()``."""
        view = self._view(f"V{width}")
        return view[np.minimum(at, len(view) - 1)]

    def rows(self, at: np.ndarray, width: int) -> np.ndarray:
        """``width`` bytes from each offset, one row per offset (uint8)."""
        return self.u8[np.minimum(at[:, None] + np.arange(width), self.size - 1)]
