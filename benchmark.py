"""How good is the search? NAS-Bench-201 ground truth, Kendall tau-b, the baseline fitnesses and the report.

RLNAS never looks at real accuracies during search. On NAS-Bench-201 every one of the 15,625
architectures has been trained to convergence, so the searched architecture can be looked up, and
the whole angle ranking can be compared with the true one. This module reads that ground truth (the
table shipped in benchmarks/, or any CSV of the same form), computes Kendall's tau-b between any scores
(angles) and the benchmark's test accuracies, holds the fitnesses the angle is compared with (one-shot
accuracy, parameter count, random score), and prints and plots the comparison.

  - Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021, arXiv:2101.11834,
    the NAS-Bench-201 experiments (paper Sec. 4, Table 1 and the angle-vs-accuracy rank correlation;
    method.md §7.1, §7.5).
  - Benchmark: "NAS-Bench-201", Dong and Yang, ICLR 2020; the 200-epoch ("hp=200") test accuracies
    (benchmarks/README.md: provenance, licence, and the NATS-Bench call that regenerates the table).

How it is used: search.py prints each top-k arch's true accuracy and rank and the tau of everything
scored so far (the shipped table by default for NB201, --benchmark FILE for another); train.py
--track-tau uses kendall_tau_b during training.

    bench = load_benchmark(default_benchmark("nb201"), str_to_arch)   # str_to_arch from supernet.py
    bench.accuracy(arch, "cifar10"), bench.rank(arch, "cifar10"), bench.tau(angles, "cifar10")

Tau here is tau-b, which counts tied values as ties. The official script instead gives both lists
unique ranks (ties broken arbitrarily, method.md pitfall 11), so its numbers can differ slightly from
ours, mostly through the many tied angles of disconnected cells (all exactly 0).
Check it with: python -m pytest -q tests/test_benchmark.py
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

import cli
from angle import VECTORS, AngleScorer, movement
from cli import UsageError, format_time, print0
from data import DATASETS, Relabeled, load_dataset, split_indices, subset_indices
from files import check_regular
from loaders import epoch_loader, in_memory
from rundir import is_search_output
from supernet import all_archs, str_to_arch

# CSV column of the 200-epoch test accuracy (percent) for each dataset key used on the command line.
COLUMNS = {
    "cifar10": "CIFAR10TestAccuracy200Epochs",
    "cifar100": "CIFAR100TestAccuracy200Epochs",
    "imagenet16-120": "ImageNetTestAccuracy200Epochs",
}
ARCH_COLUMN = "ArchitectureString"
# The ground truth shipped with the repository, per search space (benchmarks/README.md): NB201 only.
SHIPPED = {"nb201": os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks", "nb201_accuracy.csv.gz")}


class BenchmarkError(UsageError, ValueError):
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
    """Read a NAS-Bench-201 accuracy CSV, plain or gzip-compressed: an ArchitectureString column plus at least one
    COLUMNS column (other columns are ignored).

    parse turns an architecture string into the tuple used everywhere else (supernet.str_to_arch); it
    raises ValueError on a malformed string. Every problem raises a one-line BenchmarkError.
    """
    if not os.path.exists(path):
        raise BenchmarkError(f"benchmark file not found: {path}")
    try:
        check_regular(path, "benchmark file", fix="pass the NAS-Bench-201 accuracy CSV")  # a FIFO: read forever
    except UsageError as e:
        raise BenchmarkError(str(e)) from None
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"  # the gzip magic number: read it compressed, whatever its name
        # utf-8-sig: a CSV saved by a spreadsheet may start with a byte-order mark.
        with (gzip.open if gzipped else open)(path, "rt", newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise BenchmarkError(f"{path} is not a CSV text file ({type(e).__name__})") from None
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a truncated or corrupt gzip stream
        raise BenchmarkError(f"{path} cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
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


def default_benchmark(space_name: str) -> str | None:
    """Path of the ground-truth table shipped in benchmarks/ for this space (NB201), None for a space without one.

    A missing shipped file is a one-line BenchmarkError: it is part of the repository, so the fix is to restore it.
    """
    path = SHIPPED.get(space_name)
    if path is not None and not os.path.isfile(path):
        raise BenchmarkError(f"the shipped benchmark table {path} is missing; restore it: git checkout -- benchmarks")
    return path


def track_tau(args):
    """train.py --track-tau (a diagnostic): tau(w0, model, epoch) -> the fields of that epoch's log line: Kendall
    tau-b of the angle of all 15,625 NB201 cells against the benchmark's accuracy column of the training dataset
    ("tau" of --vector, "tau_vectors" of every weight-vector variant; None while undefined) and "moved" (how far
    each part of the supernet is from W0, in degrees); {} without the flag, off its epochs and off the master. The
    benchmark is read at once, before anything runs: a bad file fails in one line."""
    if not args.track_tau:
        return lambda w0, model, epoch: {}
    if args.space != "nb201":
        raise UsageError("--track-tau needs the NB201 benchmark: use it with --space nb201")
    bench = load_benchmark(default_benchmark("nb201") if args.track_tau == "default" else args.track_tau, str_to_arch)
    column = args.dataset if args.dataset in bench.acc else next(iter(bench.acc))

    def tau(w0: dict, model, epoch: int) -> dict:
        if epoch % args.track_every or not cli.MASTER:
            return {}
        # epoch 0: W0 against itself, every angle is 0, so tau is undefined (None) and nothing has moved
        wt, archs, taus = {k: v.detach().cpu() for k, v in model.state_dict().items()}, all_archs(), {}
        for vector in VECTORS:
            value = bench.tau(dict(zip(archs, AngleScorer(w0, wt, model.args, vector).angles(archs).tolist())), column)
            taus[vector] = None if math.isnan(value) else value
        moved = movement(w0, wt, model.args)
        shown = "undefined" if taus[args.vector] is None else f"{taus[args.vector]:+.4f}"
        parts = ", ".join(f"{k} {v:.1f}" for k, v in moved.items())
        if epoch:
            print0(f"epoch {epoch}/{args.epochs} | Kendall tau-b of the angle ({args.vector}) vs {column}: {shown} | moved (degrees): {parts}")  # noqa: E501
        return {"tau": taus[args.vector], "tau_vectors": taus, "moved": moved}

    return tau


# ------------------------------------------------------------
# Baselines: the fitnesses the angle is compared with (paper Table 1)
# ------------------------------------------------------------


def params_fitness(space, net_args: dict):
    """The parameter count of the stand-alone network: a proxy that needs no training at all."""
    return lambda archs: [float(space.params(a, net_args)) for a in archs]


def random_fitness(seed: int):
    """Random search. The score is a function of (seed, arch) only, so a resumed search sees the same one."""
    return lambda archs: [float(np.random.default_rng([seed & 0xFFFFFFFF, *a]).random()) for a in archs]


def data_settings(config: dict) -> dict:
    """The data settings of a supernet run's config (its checkpoint's), checked as train.py's flags check them: an
    edited file never makes --fitness accuracy read a huge, negative or unknown thing."""
    checks = {
        "dataset": lambda v: v in DATASETS,
        "data": lambda v: isinstance(v, str) and v.strip() != "",
        "image_size": lambda v: v is None or (type(v) is int and 1 <= v <= cli.MAX_IMAGE_SIZE),
        "fake_images": lambda v: type(v) is int and 1 <= v <= 10**6,
        "data_seed": lambda v: type(v) is int and 0 <= v <= cli.SEED_MAX,
        "split": lambda v: v in ("auto", "half", "full"),
        "space": lambda v: isinstance(v, str),
    }
    for key, ok in checks.items():
        if key in config and not ok(config[key]):
            raise UsageError(f"the checkpoint's config is damaged or was edited: its --{key.replace('_', '-')} is {cli.shorten(repr(config[key]), 80)}; use the file train.py wrote")  # noqa: E501
    if "dataset" not in config or "data" not in config:
        raise UsageError("the checkpoint's config names no dataset; use the file train.py wrote")
    return config


class OneShotAccuracy:
    """The one-shot accuracy fitness (the paper's Table 1, configurations A and C; method.md §7.1 and pitfall 6).

    For each candidate: the supernet's trained weights along that cell (shared by all cells), its BN running
    statistics recalibrated on a fixed set of training batches (the supernet's statistics were collected over
    random paths and are wrong for any single one: without this the accuracy is near chance), then top-1 accuracy
    with the REAL labels on held-out images: for NB201 CIFAR-10 the other half of the 25k/25k split, otherwise the
    test split. The same batches for every candidate, no augmentation: deterministic. All of them are made once and
    kept on `device` (with the defaults, 32 px images: about 120 MB; ImageNet at 224 px: about 6 GB).
    """

    def __init__(
        self,
        space,
        wt: dict,
        net_args: dict,
        config: dict,
        device: torch.device,
        data: str | None = None,
        recal_batches: int = 20,
        eval_images: int = 5000,
        batch_size: int = 256,
    ):
        self.device, self.space, self.net_args = device, space, net_args
        self.net = space.supernet(net_args).to(device)
        self.net.load_state_dict(wt)
        config = data_settings(config)
        # Without --data the images are read where the supernet run read them; a path found in a file is only
        # ever read from: nothing is downloaded into it (data.py:load_dataset, download=False).
        name, root = config["dataset"], data or config["data"]
        kw = dict(
            image_size=config.get("image_size"),
            fake_images=config.get("fake_images", 1024),
            fake_seed=config.get("data_seed", 0),
            download=data is not None,
        )
        train = load_dataset(name, root, "train", augment=False, **kw)
        half = config.get("split") == "half" or (
            config.get("split") == "auto" and name == "cifar10" and config.get("space", "nb201") == "nb201"
        )
        if half:  # the valid half that the supernet never saw
            held, held_idx = train, split_indices(len(train), config.get("data_seed", 0))[1]
        else:
            held = load_dataset(name, root, "test", augment=False, **kw)
            held_idx = torch.arange(len(held))
        held_idx = subset_indices(held_idx, eval_images, 0)
        calib_idx = subset_indices(torch.arange(len(train)), recal_batches * batch_size, 1)

        def batches(ds, idx):
            view = Relabeled(ds, idx, ds.targets.long())
            # in-memory data is batched on the device already; a DataLoader (folder, ImageNet) yields CPU tensors
            loader = epoch_loader(view, batch_size, False, 0, 0, device, fast=in_memory(view))
            return [(x.to(device), y.to(device)) for x, y in loader]  # (B, 3, H, W) float, (B,) long

        self.calib, self.held = batches(train, calib_idx), batches(held, held_idx)

    @torch.no_grad()
    def __call__(self, archs) -> list[float]:
        scores, t0 = [], time.time()
        for n, arch in enumerate(archs):
            if n and n % 25 == 0:  # slow work: say how fast it goes
                rate = n / (time.time() - t0)
                print(
                    f"  one-shot accuracy: {n}/{len(archs)} candidates | {rate:.2f}/s | "
                    f"ETA {format_time((len(archs) - n) / rate)}",
                    flush=True,
                )
            for m in self.net.modules():  # BN recalibration: forget the supernet's statistics, average afresh
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None  # cumulative moving average over the calibration batches
            path = self.space.path(arch, self.net_args)  # the candidate in every cell of the supernet
            self.net.train()
            for x, _ in self.calib:
                self.net(x, path)
            self.net.eval()
            hits = sum((self.net(x, path).argmax(1) == y).sum().item() for x, y in self.held)
            scores.append(100.0 * hits / sum(len(y) for _, y in self.held))
        return scores


# ------------------------------------------------------------
# The report: the winner against the ground truth, and the pictures
# ------------------------------------------------------------


def benchmark_report(bench: Benchmark, winner, group, scores, ordered, format_arch) -> dict:
    """Print and return the winner's NB201 accuracies, its rank, the tie group's spread, Kendall's tau, and the
    mean accuracy of the top 10 and top 100 architectures by this fitness (top-k quality, not only tau)."""
    report = {}
    if winner not in bench.index:
        print(f"the winner {format_arch(winner)} is not in the benchmark file")
        return report
    n = len(bench.archs)
    for col in bench.acc:
        acc = bench.accuracy(winner, col)
        group_acc = [bench.accuracy(a, col) for a in group if a in bench.index]
        tau = bench.tau(scores, col)
        report[col] = {
            "accuracy": acc,
            "rank": bench.rank(winner, col),
            "of": n,
            "tie_group_min": min(group_acc),
            "tie_group_max": max(group_acc),
            "kendall_tau_b": tau,
            "tau_over": sum(a in bench.index for a in scores),
        }
        for k in (10, 100):
            top = [bench.accuracy(a, col) for a in ordered[:k] if a in bench.index]
            report[col][f"top{k}_mean"] = sum(top) / len(top) if top else None
        print(
            f"benchmark {col:15s} winner {acc:6.2f}% (rank {report[col]['rank']:,} of {n:,}; "
            f"best {bench.acc[col].max():.2f}) | tie group {min(group_acc):.2f}-{max(group_acc):.2f} | "
            f"Kendall tau-b {tau:+.4f} over {report[col]['tau_over']:,} archs | mean of the top 10 "
            f"{report[col]['top10_mean']:.2f}, top 100 {report[col]['top100_mean']:.2f}"
        )
    return report


def plot(folder: str, fitness: str, train_log: str, bench, scores: dict, winner, report: dict) -> None:
    """Optional pictures in `folder`: fitness vs benchmark accuracy (tau in the title, the winner marked), and tau vs
    epoch from the training log (train.py --track-tau)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("--plot needs matplotlib (pip install matplotlib); no plots written, everything else is done")
        return
    written = []
    unit = " (radians)" if fitness == "angle" else ""
    for col in bench.acc if bench is not None else []:
        archs = [a for a in scores if a in bench.index]
        # Cells whose output is cut off from their input all score an angle of exactly 0 (method.md §4.2, rule 4);
        # drawn at x=0 they would squeeze every other point into a sliver at the right, so they are left out, counted.
        shown = [a for a in archs if scores[a] != 0.0] if fitness == "angle" else archs
        shown = shown or archs
        label = f"evaluated ({len(shown):,})"
        if len(shown) < len(archs):
            label += f"; {len(archs) - len(shown):,} disconnected (angle 0) not drawn"
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
        ax.scatter([scores[a] for a in shown], [bench.accuracy(a, col) for a in shown], s=4, alpha=0.4, label=label)
        if winner in bench.index:
            ax.scatter([scores[winner]], [bench.accuracy(winner, col)], s=120, marker="*", color="red", label="winner")
        ax.set_xlabel(f"{fitness}{unit}")
        ax.set_ylabel(f"NAS-Bench-201 {col} test accuracy (%)")
        ax.set_title(f"{fitness} vs {col}: Kendall tau-b {report[col]['kendall_tau_b']:+.3f} ({len(archs):,} cells)")
        ax.legend(loc="best", fontsize=8, framealpha=0.9)
        fig.tight_layout()
        _save_png(fig, os.path.join(folder, f"{fitness}_vs_{col}.png"), written)
        plt.close(fig)
    points = []
    if os.path.isfile(train_log):
        with open(train_log) as f:
            points = [(e["epoch"], e["tau"]) for e in map(json.loads, f) if e.get("tau") is not None]
    if points:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        ax.plot(*zip(*points), marker="o")
        ax.set_xlabel("supernet training epoch")
        ax.set_ylabel("Kendall tau-b of the angle")
        ax.set_title("angle vs benchmark during supernet training")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        _save_png(fig, os.path.join(folder, "tau_vs_epoch.png"), written)
        plt.close(fig)
    print("plots: " + (", ".join(written) if written else "nothing to plot (no benchmark, and no --track-tau in training)"))


def _save_png(fig, path: str, written: list[str]) -> None:
    """Write a plot atomically, marked as search.py's (its PNG metadata), and never over a file search.py did not
    write: that one is left as it is, with a line saying so."""
    if os.path.lexists(path) and not is_search_output(path):
        print(f"not replaced: {path} (a file search.py did not write); move it to get this plot")
        return
    tmp = f"{path}.tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    fig.savefig(tmp, format="png", metadata={"Software": "rlnas search.py"})
    os.replace(tmp, path)
    written.append(path)
