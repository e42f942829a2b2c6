"""Features too large for memory: row sources read block by block, and the statistics fitted from them.

A *row source* (:class:`Rows`) is an array of ``N`` rows read on demand: :meth:`Rows.read` a block of
consecutive rows, :meth:`Rows.take` rows at given indices. :class:`NpyRows` reads a ``.npy`` file with plain
``pread`` calls, not a memory map, so the pages it reads do not stay in the process's resident memory;
:class:`ConcatRows` joins shards; :class:`ArrayRows` wraps an in-memory array.

The scorers that can fit in bounded memory accept a :class:`FeatureRows` (validated float64 feature blocks of a
row source, optionally transformed) wherever they accept an in-memory ``X``; :func:`as_feature_rows` makes
one of either. A feature store gives its arrays as row sources (``FeatureStore.rows("features")``), so

    scorer.fit(store.rows("features"), store.rows("labels"))

fits from disk with peak memory independent of ``N``. What each scorer keeps is listed in docs/scorers.md.
"""
import math
import os
from typing import Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from .inputs import as_features

__all__ = ["Rows", "ArrayRows", "NpyRows", "ConcatRows", "FeatureRows", "as_feature_rows", "is_streamed",
           "label_blocks", "read_labels", "class_counts", "column_mean_std", "default_block_rows", "sample_indices", "percentile"]

BLOCK_BYTES = 8 << 20  # float64 bytes per block of features


def default_block_rows(dim: int) -> int:
    """Rows per block so that a float64 block of ``dim``-wide features is about 8 MiB."""
    return max(256, BLOCK_BYTES // (8 * max(1, int(dim))))


class Rows:
    """``N`` rows of shape ``row_shape`` read on demand (numpy copies)."""

    shape: Tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def take(self, indices) -> np.ndarray:
        """Rows at ``indices`` (any order, repeats allowed), in that order."""
        raise NotImplementedError

    def blocks(self, rows: int) -> Iterator[Tuple[int, np.ndarray]]:
        """``(start, block)`` over consecutive row blocks."""
        for start in range(0, len(self), rows):
            yield start, self.read(start, min(start + rows, len(self)))


class ArrayRows(Rows):
    """An in-memory numpy array or torch tensor as a row source."""

    def __init__(self, array):
        self.array = array.detach().cpu().numpy() if torch.is_tensor(array) else np.asarray(array)
        self.shape, self.dtype = self.array.shape, self.array.dtype

    def read(self, start, stop):
        return np.array(self.array[start:stop])

    def take(self, indices):
        return self.array[np.asarray(indices, dtype=np.int64)]


class NpyRows(Rows):
    """The rows of a C-ordered ``.npy`` file, read with ``os.pread`` (no memory map, no pickle)."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
            except (ValueError, OSError, EOFError, SyntaxError) as e:
                raise ValueError(f"{path}: unreadable .npy header ({e})") from None
            self.offset = f.tell()
        if fortran or dtype.hasobject or not shape:
            raise ValueError(f"{path}: only C-ordered numeric arrays of >= 1 dimension can be streamed")
        self.shape, self.dtype = tuple(shape), dtype
        self.row_shape = self.shape[1:]
        self.row_bytes = int(dtype.itemsize * np.prod(self.row_shape, dtype=np.int64))
        size = os.path.getsize(path)
        if size < self.offset + self.row_bytes * self.shape[0]:
            raise ValueError(f"{path}: truncated ({size} bytes, the header promises "
                             f"{self.offset + self.row_bytes * self.shape[0]})")

    def _pread(self, fd: int, start: int, count: int) -> np.ndarray:
        want = count * self.row_bytes
        buf = os.pread(fd, want, self.offset + start * self.row_bytes)
        if len(buf) != want:
            raise ValueError(f"{self.path}: short read at row {start}")
        return np.frombuffer(buf, dtype=self.dtype).reshape((count, *self.row_shape))

    def read(self, start, stop):
        start, stop = max(0, int(start)), min(len(self), int(stop))
        if stop <= start:
            return np.empty((0, *self.row_shape), self.dtype)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return self._pread(fd, start, stop - start).copy()
        finally:
            os.close(fd)

    def take(self, indices):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"{self.path}: row index out of range [0, {len(self)})")
        out = np.empty((idx.size, *self.row_shape), self.dtype)
        if idx.size == 0:
            return out
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        breaks = np.flatnonzero(np.diff(sorted_idx) != 1) + 1  # runs of consecutive rows: one read each
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for run in np.split(np.arange(idx.size), breaks):
                first = int(sorted_idx[run[0]])
                block = self._pread(fd, first, int(sorted_idx[run[-1]]) - first + 1)
                out[order[run]] = block[sorted_idx[run] - first]
        finally:
            os.close(fd)
        return out


class ConcatRows(Rows):
    """Several row sources with the same row shape and dtype, one after the other (e.g. shards)."""

    def __init__(self, parts: Sequence[Rows]):
        parts = list(parts)
        if not parts:
            raise ValueError("ConcatRows needs at least one part")
        first = parts[0]
        for p in parts[1:]:
            if p.shape[1:] != first.shape[1:] or p.dtype != first.dtype:
                raise ValueError(f"parts differ: rows {first.dtype}{list(first.shape[1:])} vs "
                                 f"{p.dtype}{list(p.shape[1:])}")
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape, self.dtype = (int(self.starts[-1]), *first.shape[1:]), first.dtype

    def read(self, start, stop):
        start, stop = max(0, int(start)), min(len(self), int(stop))
        out = []
        for k, part in enumerate(self.parts):
            lo, hi = max(start, self.starts[k]), min(stop, self.starts[k + 1])
            if lo < hi:
                out.append(part.read(lo - self.starts[k], hi - self.starts[k]))
        return np.concatenate(out) if out else np.empty((0, *self.shape[1:]), self.dtype)

    def take(self, indices):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row index out of range [0, {len(self)})")
        part = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty((idx.size, *self.shape[1:]), self.dtype)
        for k in np.unique(part):
            sel = part == k
            out[sel] = self.parts[k].take(idx[sel] - self.starts[k])
        return out


class FeatureRows:
    """Features ``(N, D)`` of a row source as validated float64 tensors, read in blocks; ``transform`` (a
    row-wise function of float64 tensors) is applied to whatever is read."""

    def __init__(self, source: Rows, name: str = "features",
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 block_rows: Optional[int] = None):
        if len(source.shape) < 2:
            raise ValueError(f"{name}: a feature source needs rows of >= 1 dimension, got shape {source.shape}")
        if source.shape[0] == 0:
            raise ValueError(f"{name} is empty (0 rows)")
        self.source, self.name, self.transform = source, name, transform
        self.block_rows = block_rows

    def __len__(self) -> int:
        return self.source.shape[0]

    @property
    def raw_dim(self) -> int:
        return int(np.prod(self.source.shape[1:]))

    def _convert(self, arr: np.ndarray, where: str, dim: Optional[int] = None) -> torch.Tensor:
        x = as_features(arr, f"{self.name} {where}", dim)
        return self.transform(x) if self.transform is not None else x

    def read(self, start: int, stop: int, dim: Optional[int] = None) -> torch.Tensor:
        return self._convert(self.source.read(start, stop), f"rows {start}-{stop - 1}", dim)

    def take(self, indices, dim: Optional[int] = None) -> torch.Tensor:
        idx = indices.numpy() if torch.is_tensor(indices) else np.asarray(indices)
        return self._convert(self.source.take(idx), f"({idx.size} sampled rows)", dim)

    def blocks(self, dim: Optional[int] = None) -> Iterator[Tuple[int, torch.Tensor]]:
        """``(start, float64 block)`` over the whole source."""
        rows = self.block_rows or default_block_rows(self.raw_dim)
        for start in range(0, len(self), rows):
            yield start, self.read(start, min(start + rows, len(self)), dim)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "FeatureRows":
        """The same rows with ``fn`` applied after this source's own transform."""
        inner = self.transform
        return FeatureRows(self.source, self.name, fn if inner is None else (lambda x: fn(inner(x))),
                           self.block_rows)

    def subset(self, indices) -> "FeatureRows":
        """The rows at ``indices`` (kept as an int64 index array, 8 bytes a row)."""
        return FeatureRows(_IndexedRows(self.source, indices), self.name, self.transform, self.block_rows)

    def first_row(self) -> torch.Tensor:
        return self.read(0, 1)

    @property
    def dim(self) -> int:
        """Width of the (transformed) features."""
        if getattr(self, "_dim", None) is None:
            self._dim = int(self.first_row().shape[1])
        return self._dim

    def __repr__(self) -> str:
        return f"FeatureRows({self.name}, N={len(self)}, source={type(self.source).__name__})"


class _IndexedRows(Rows):
    def __init__(self, source: Rows, indices):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.shape, self.dtype = (self.indices.size, *source.shape[1:]), source.dtype

    def read(self, start, stop):
        return self.source.take(self.indices[start:stop])

    def take(self, indices):
        return self.source.take(self.indices[np.asarray(indices, dtype=np.int64)])


def is_streamed(X) -> bool:
    """Whether ``X`` is a row source (fitted block by block) rather than an in-memory array."""
    return isinstance(X, (Rows, FeatureRows))


def as_feature_rows(X, name: str = "features") -> FeatureRows:
    """``X`` as :class:`FeatureRows`: a row source as it is, an in-memory array validated once and wrapped."""
    if isinstance(X, FeatureRows):
        return X
    if isinstance(X, Rows):
        return FeatureRows(X, name)
    return FeatureRows(ArrayRows(as_features(X, name)), name)


def label_blocks(y, n: int, rows: int, name: str = "labels") -> Iterator[Tuple[int, np.ndarray]]:
    """``(start, int64 labels)`` over ``n`` labels given in memory or as a row source; ``None`` -> one class."""
    if y is None:
        for start in range(0, n, rows):
            yield start, np.zeros(min(rows, n - start), np.int64)
        return
    if isinstance(y, Rows):
        if y.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match the features, got {y.shape}")
        for start, block in y.blocks(rows):
            if not (np.issubdtype(block.dtype, np.integer) or np.all(np.mod(block, 1) == 0)):
                raise ValueError(f"{name} rows {start}-{start + len(block) - 1} must be integer class indices")
            yield start, block.astype(np.int64)
        return
    from .inputs import as_labels
    labels = as_labels(y, n, name)
    for start in range(0, n, rows):
        yield start, labels[start:start + rows]


def read_labels(y, n: int, name: str = "labels") -> np.ndarray:
    """All ``n`` labels (in memory or a row source) as one int64 array (8 bytes a row); ``None`` -> zeros."""
    if isinstance(y, np.ndarray) and y.dtype == np.int64 and y.shape == (n,):
        return y
    return np.concatenate([b for _, b in label_blocks(y, n, 1 << 20, name)]) if n else np.zeros(0, np.int64)


def class_counts(y, n: int, rows: int = 1 << 20) -> Tuple[np.ndarray, np.ndarray]:
    """Sorted class labels and their counts, reading the labels in blocks."""
    counts = {}
    for _, block in label_blocks(y, n, rows):
        for c, k in zip(*np.unique(block, return_counts=True)):
            counts[int(c)] = counts.get(int(c), 0) + int(k)
    classes = np.array(sorted(counts), dtype=np.int64)
    return classes, np.array([counts[c] for c in classes], dtype=np.int64)


def column_mean_std(x: FeatureRows, fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                    unbiased: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and standard deviation of ``x`` (or of ``fn`` applied to its blocks), two passes in
    float64: what ``t.mean(0)``, ``t.std(0)`` give on the whole array."""
    total, n = None, 0
    for _, block in x.blocks():
        v = block if fn is None else fn(block)
        total = v.sum(dim=0) if total is None else total + v.sum(dim=0)
        n += v.shape[0]
    mean = total / n
    sq = None
    for _, block in x.blocks():
        v = (block if fn is None else fn(block)) - mean
        sq = (v * v).sum(dim=0) if sq is None else sq + (v * v).sum(dim=0)
    dof = n - 1 if unbiased else n
    return mean, (sq / max(dof, 1)).sqrt()


def sample_indices(n: int, k: int, seed: int) -> np.ndarray:
    """``min(k, n)`` distinct row indices, sorted, drawn with ``seed``."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(int(seed)).permutation(n)[:int(k)])



def percentile(x: FeatureRows, q: float, bins: int = 1 << 16, max_collect: int = 1 << 22) -> float:
    """The ``q``-th percentile of every value in ``x``, exactly as ``np.percentile`` (linear interpolation)
    gives it on the whole array, with memory independent of ``N``: the values around the wanted ranks are
    narrowed down by histograms over a few passes, then collected (at most ``max_collect``) and sorted."""
    n, lo, hi = 0, math.inf, -math.inf
    for _, block in x.blocks():
        n += block.numel()
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    pos = float(q) / 100.0 * (n - 1)
    ranks = (int(math.floor(pos)), int(math.ceil(pos)))
    values = [_kth_value(x, k, lo, hi, bins, max_collect) for k in sorted(set(ranks))]
    v0, v1 = values[0], values[-1]
    return v0 + (pos - ranks[0]) * (v1 - v0)


def _kth_value(x: FeatureRows, k: int, lo: float, hi: float, bins: int, max_collect: int) -> float:
    """The ``k``-th smallest (0-based) value of ``x``, all of whose values lie in ``[lo, hi]``."""
    a, b, below = lo, hi, 0  # the k-th value lies in [a, b]; ``below`` values are < a
    for _ in range(256):
        if a == b:
            return a
        nb = bins
        while nb > 2 and not np.all(np.diff(np.linspace(a, b, nb + 1)) > 0):
            nb = max(2, nb // 2)  # an interval a few floats wide: fewer bins
        edges = np.linspace(a, b, nb + 1)
        if not np.all(np.diff(edges) > 0):  # a and b are neighbouring floats: count the a's
            at_a = sum(int((block.numpy() == a).sum()) for _, block in x.blocks())
            return a if k - below < at_a else b
        counts = np.zeros(nb, np.int64)
        vmin, vmax = math.inf, -math.inf
        for _, block in x.blocks():
            v = block.numpy().reshape(-1)
            v = v[(v >= a) & (v <= b)]
            if v.size:
                counts += np.histogram(v, bins=edges)[0]
                vmin, vmax = min(vmin, float(v.min())), max(vmax, float(v.max()))
        if vmin == vmax:  # one distinct value left (ties, e.g. the zeros of ReLU features)
            return vmin
        j = int(np.searchsorted(np.cumsum(counts), k - below, side="right"))
        below_j = below + int(counts[:j].sum())
        lo_j, hi_j = float(edges[j]), float(edges[j + 1])
        if counts[j] <= max_collect:  # np.histogram's bins are [e_j, e_j+1), the last one closed
            last = j == nb - 1
            parts = []
            for _, block in x.blocks():
                v = block.numpy().reshape(-1)
                parts.append(v[(v >= lo_j) & ((v <= hi_j) if last else (v < hi_j))])
            return float(np.sort(np.concatenate(parts))[k - below_j])
        if lo_j == a and hi_j == b:  # the bins are at the floats' resolution
            break
        a, b, below = lo_j, hi_j, below_j
        # values equal to the new b that belong to the next bin: exclude them by stepping b down
        if j != nb - 1:
            b = float(np.nextafter(b, -math.inf))
            if b < a:
                return a
    raise RuntimeError("percentile: the histogram refinement did not converge")
