"""NAS-Bench-201 ground truth and Kendall tau-b: how good is the ranking the angle gives?

RLNAS never looks at real accuracies during search. On NAS-Bench-201 every one of the 15,625
architectures has been trained to convergence, so the searched architecture can be looked up, and
the whole angle ranking can be compared with the true one. This module reads that ground truth from
a CSV and computes Kendall's tau-b between any scores (angles) and the benchmark's test accuracies.

  - Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021, arXiv:2101.11834,
    the NAS-Bench-201 experiments (Table 1 and the angle-vs-accuracy rank correlation; SPEC.md 7.1, 7.5).
  - Benchmark: "NAS-Bench-201", Dong and Yang, ICLR 2020; the 200-epoch ("hp=200") test accuracies.

How it is used: search.py --benchmark FILE prints each top-k arch's true accuracy and rank and the
tau of everything scored so far; train.py --track-tau uses kendall_tau_b during training.

    bench = load_benchmark("nb201-accuracy.csv", str_to_arch)   # str_to_arch from supernet.py
    bench.accuracy(arch, "cifar10"), bench.rank(arch, "cifar10"), bench.tau(angles, "cifar10")

Tau here is tau-b, which counts tied values as ties. The official script instead gives both lists
unique ranks (ties broken arbitrarily, pitfall 11), so its numbers can differ slightly from ours,
mostly through the many tied angles of disconnected cells (all exactly 0).
Check it with: python -m pytest -q tests/test_benchmark.py
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

# CSV column of the 200-epoch test accuracy (percent) for each dataset key used on the command line.
COLUMNS = {
    "cifar10": "CIFAR10TestAccuracy200Epochs",
    "cifar100": "CIFAR100TestAccuracy200Epochs",
    "imagenet16-120": "ImageNetTestAccuracy200Epochs",
}
ARCH_COLUMN = "ArchitectureString"


class BenchmarkError(ValueError):
    """A benchmark file or lookup the user got wrong; the message is one line meant to be printed as is."""


# ------------------------------------------------------------
# Kendall tau-b in O(n log n) (Knight, 1966)
# ------------------------------------------------------------


def _ties(*keys: np.ndarray) -> int:
    """Number of pairs equal on all of `keys` (arrays already sorted so that equal rows are adjacent)."""
    if len(keys[0]) == 0:
        return 0
    # A run of t equal rows contributes t(t-1)/2 tied pairs.
    change = np.zeros(len(keys[0]) - 1, dtype=bool)
    for k in keys:
        change |= k[1:] != k[:-1]
    edges = np.flatnonzero(np.concatenate(([True], change, [True])))
    runs = np.diff(edges)
    return int((runs * (runs - 1) // 2).sum())


def _inversions(r: np.ndarray) -> int:
    """Number of pairs i < j with r[i] > r[j], by a bottom-up merge sort vectorised over all blocks.

    r holds integer ranks in 0..m-1. At width w every block of w values is already sorted; for each
    pair of neighbouring blocks (left, right) we count, for every right value, the left values above it
    (those pairs are exactly the inversions that cross the two blocks), then merge the pair by sorting.
    """
    n = len(r)
    size = 1 << max(0, (n - 1).bit_length())  # next power of two
    # Pad with a value above all others: it sits at the end and exceeds every real value, so it adds no inversion.
    v = np.full(size, r.max() + 1 if n else 0, dtype=np.int64)
    v[:n] = r
    big = int(v.max()) + 1  # offset that keeps different block pairs apart inside one sorted array
    total = 0
    w = 1
    while w < size:
        pairs = v.reshape(-1, 2, w)  # (pairs, 2, w): [:, 0] is the left block, [:, 1] the right one
        offset = (np.arange(len(pairs), dtype=np.int64) * big)[:, None]  # (pairs, 1)
        left = (pairs[:, 0] + offset).ravel()  # globally sorted: each block sorted, offsets increasing
        right = (pairs[:, 1] + offset).ravel()
        # left values <= a right value = its position in `left` minus the left blocks of earlier pairs.
        not_above = np.searchsorted(left, right, side="right") - np.repeat(np.arange(len(pairs)) * w, w)
        total += int((w - not_above).sum())
        v = np.sort(v.reshape(-1, 2 * w), axis=1).ravel()  # merge each pair into one sorted block of 2w
        w *= 2
    return total


def kendall_tau_b(x, y) -> float:
    """Kendall's tau-b between two equally long sequences of numbers; nan when undefined or on NaN input.

    Over all n0 = n(n-1)/2 pairs (i, j): concordant if x and y order them the same way, discordant if
    opposite, neither if tied in x or in y. With n1 pairs tied in x and n2 pairs tied in y,
        tau_b = (n_c - n_d) / sqrt( (n0 - n1) (n0 - n2) )
    which is 1 for identical orders, -1 for reversed ones, and unlike tau-a stays within [-1, 1] with ties.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"kendall_tau_b: x has {len(x)} values, y has {len(y)}")
    n = len(x)
    if n < 2 or np.isnan(x).any() or np.isnan(y).any():
        return math.nan  # NaN propagates, as with scipy's default nan_policy
    n0 = n * (n - 1) // 2
    # Sort by x, breaking x-ties by y (np.lexsort sorts by its last key first).
    order = np.lexsort((y, x))
    xs, ys = x[order], y[order]
    n1 = _ties(xs)  # tied in x
    n3 = _ties(xs, ys)  # tied in both x and y (counted in n1 and in n2)
    n2 = _ties(np.sort(y))  # tied in y
    if n1 == n0 or n2 == n0:
        return math.nan  # one side is constant: no pair is ordered, tau is undefined
    # With x ascending (and y ascending within x-ties), a pair is discordant exactly when y goes down:
    # n_d = inversions of y. Pairs tied in x or y are neither, so n_c = n0 - n1 - n2 + n3 - n_d.
    n_d = _inversions(np.unique(ys, return_inverse=True)[1].ravel())
    n_c = n0 - n1 - n2 + n3 - n_d
    return float((n_c - n_d) / math.sqrt((n0 - n1) * (n0 - n2)))


# ------------------------------------------------------------
# The benchmark table
# ------------------------------------------------------------


@dataclass
class Benchmark:
    archs: list[tuple]  # row order of the file
    acc: dict[str, np.ndarray]  # dataset key (COLUMNS) -> test accuracy in percent, (len(archs),)
    index: dict[tuple, int]  # arch -> row

    def _column(self, column: str) -> np.ndarray:
        if column not in self.acc:
            raise BenchmarkError(f"benchmark has no '{column}' accuracies; available: {', '.join(self.acc)}")
        return self.acc[column]

    def _row(self, arch: tuple) -> int:
        if arch not in self.index:
            raise KeyError(f"architecture {arch} is not in the benchmark")
        return self.index[arch]

    def accuracy(self, arch: tuple, column: str) -> float:
        return float(self._column(column)[self._row(arch)])

    def rank(self, arch: tuple, column: str) -> int:
        """1 = best; architectures with equal accuracy share a rank (1 + how many are strictly better)."""
        acc = self._column(column)
        return 1 + int((acc > acc[self._row(arch)]).sum())

    def tau(self, scores: dict[tuple, float], column: str) -> float:
        """Kendall tau-b between `scores` and true accuracy, over the scored archs the benchmark knows."""
        acc = self._column(column)
        known = [arch for arch in scores if arch in self.index]
        return kendall_tau_b([scores[arch] for arch in known], acc[[self.index[arch] for arch in known]])


def load_benchmark(path: str, parse: Callable[[str], tuple]) -> Benchmark:
    """Read a NAS-Bench-201 accuracy CSV: an ArchitectureString column plus at least one COLUMNS column.

    parse turns an architecture string into the tuple used everywhere else (supernet.str_to_arch); it
    raises ValueError on a malformed string. Every problem raises a one-line BenchmarkError.
    """
    if not os.path.isfile(path):
        raise BenchmarkError(f"benchmark file not found: {path}")
    try:
        # utf-8-sig: a CSV saved by a spreadsheet may start with a byte-order mark.
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise BenchmarkError(f"{path} is not a CSV text file ({type(e).__name__})") from None
    if not header:
        raise BenchmarkError(f"{path} is empty")
    header = [name.strip() for name in header]
    if ARCH_COLUMN not in header:
        raise BenchmarkError(f"{path} has no {ARCH_COLUMN} column (header: {','.join(header)[:120]})")
    present = {key: header.index(name) for key, name in COLUMNS.items() if name in header}
    if not present:
        raise BenchmarkError(f"{path} has none of the accuracy columns {', '.join(COLUMNS.values())}")
    arch_col = header.index(ARCH_COLUMN)

    archs: list[tuple] = []
    index: dict[tuple, int] = {}
    values: dict[str, list[float]] = {key: [] for key in present}
    for line, row in rows:
        if not row:
            continue  # a blank line, e.g. at the end of the file
        if len(row) < len(header):
            raise BenchmarkError(f"{path} line {line}: {len(row)} fields, the header has {len(header)}")
        text = row[arch_col].strip()
        try:
            arch = tuple(parse(text))
        except ValueError as e:
            raise BenchmarkError(f"{path} line {line}: bad architecture string '{text}' ({e})") from None
        if arch in index:
            raise BenchmarkError(f"{path} line {line}: architecture '{text}' appears twice")
        for key, col in present.items():
            try:
                value = float(row[col])
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise BenchmarkError(f"{path} line {line}: {COLUMNS[key]} is '{row[col]}', not a number")
            values[key].append(value)
        index[arch] = len(archs)
        archs.append(arch)
    if not archs:
        raise BenchmarkError(f"{path} has a header but no rows")
    return Benchmark(archs=archs, acc={key: np.array(v) for key, v in values.items()}, index=index)
