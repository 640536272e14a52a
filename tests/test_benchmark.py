"""Tests of benchmark.py: Kendall tau-b against a brute-force pair count, the CSV loader on tiny files (plain and
gzip), the NB201 table shipped in benchmarks/, and the one-shot accuracy baseline's device handling."""

import gzip
import math
import os
import time

import numpy as np
import pytest
import torch
from test_data import write_folder

import benchmark
from benchmark import COLUMNS, BenchmarkError, OneShotAccuracy, default_benchmark, kendall_tau_b, load_benchmark
from spaces import SPACES
from supernet import all_archs, str_to_arch

OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]


def parse(text):
    """A tiny NB201 string parser standing in for supernet.str_to_arch: |op~0|+|op~0|op~1|+|op~0|op~1|op~2|."""
    ops = [token.split("~")[0] for node in text.split("+") for token in node.strip("|").split("|")]
    if len(ops) != 6 or any(op not in OPS for op in ops):
        raise ValueError(f"not an NB201 cell: {text}")
    return tuple(OPS.index(op) for op in ops)


def arch_string(arch):
    o = [OPS[i] for i in arch]
    return f"|{o[0]}~0|+|{o[1]}~0|{o[2]}~1|+|{o[3]}~0|{o[4]}~1|{o[5]}~2|"


# ------------------------------------------------------------
# Kendall tau-b
# ------------------------------------------------------------


def brute_tau_b(x, y):
    n = len(x)
    n_c = n_d = tied_x = tied_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            tied_x += dx == 0
            tied_y += dy == 0
            n_c += dx * dy > 0
            n_d += dx * dy < 0
    n0 = n * (n - 1) // 2
    if n0 in (tied_x, tied_y):
        return math.nan
    return (n_c - n_d) / math.sqrt((n0 - tied_x) * (n0 - tied_y))


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12


def test_tau_b_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 30))
        x, y = rng.integers(0, 4, n), rng.integers(0, 4, n)  # plenty of ties, sometimes a constant side
        assert same(kendall_tau_b(x, y), brute_tau_b(x, y)), (x, y)
    for _ in range(50):
        n = int(rng.integers(2, 30))
        x, y = rng.normal(size=n), rng.normal(size=n)
        assert same(kendall_tau_b(x, y), brute_tau_b(x, y))


def test_tau_b_matches_vectorised_pair_count_on_larger_inputs():
    # n = 1,500 is not a power of two, so the merge-sort padding is exercised over 11 levels.
    rng = np.random.default_rng(1)
    x = rng.integers(0, 50, 1500).astype(float)
    y = x + rng.integers(0, 30, 1500)
    dx, dy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    upper = np.triu(np.ones_like(dx, dtype=bool), k=1)
    n0 = upper.sum()
    n_c, n_d = (dx * dy > 0)[upper].sum(), (dx * dy < 0)[upper].sum()
    t_x, t_y = (dx == 0)[upper].sum(), (dy == 0)[upper].sum()
    expected = (n_c - n_d) / math.sqrt((n0 - t_x) * (n0 - t_y))
    assert abs(kendall_tau_b(x, y) - expected) < 1e-12
    assert 0.3 < expected < 0.9


def test_tau_b_perfect_orders_and_undefined_cases():
    x = np.arange(10.0)
    assert kendall_tau_b(x, 2 * x + 1) == pytest.approx(1.0)
    assert kendall_tau_b(x, -x) == pytest.approx(-1.0)
    assert kendall_tau_b([1, 1, 2, 2], [0, 0, 5, 5]) == pytest.approx(1.0)  # ties on both sides, same order
    assert math.isnan(kendall_tau_b([1.0], [2.0]))
    assert math.isnan(kendall_tau_b([], []))
    assert math.isnan(kendall_tau_b([3, 3, 3], [1, 2, 3]))
    assert math.isnan(kendall_tau_b([1, 2, 3], [0, math.nan, 1]))
    with pytest.raises(ValueError, match="values"):
        kendall_tau_b([1, 2, 3], [1, 2])


def test_tau_b_is_fast_on_the_whole_nb201_space():
    rng = np.random.default_rng(2)
    x = rng.random(15625)
    y = np.round(x + rng.random(15625), 1)  # heavy ties on one side
    start = time.perf_counter()
    tau = kendall_tau_b(x, y)
    assert time.perf_counter() - start < 1.0
    assert 0.3 < tau < 0.7


# ------------------------------------------------------------
# load_benchmark and the Benchmark lookups
# ------------------------------------------------------------

ARCHS = [(3, 3, 3, 1, 3, 2), (1, 2, 3, 4, 1, 2), (0, 0, 0, 0, 0, 0), (4, 4, 4, 4, 4, 4), (2, 2, 2, 2, 2, 2)]
C10 = [94.37, 90.0, 10.0, 90.0, 88.5]
C100 = [73.5, 65.0, 1.0, 60.0, 62.0]


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, row)) for row in rows]) + "\n")
    return str(path)


@pytest.fixture
def tiny(tmp_path):
    header = ["CIFAR10TestAccuracy200Epochs", "CIFAR100TestAccuracy200Epochs", "ArchitectureString", "UniqueString"]
    rows = [[a, b, arch_string(arch), f"u{i}"] for i, (a, b, arch) in enumerate(zip(C10, C100, ARCHS))]
    return write_csv(tmp_path / "bench.csv", header, rows)


def test_load_tiny_benchmark(tiny):
    bench = load_benchmark(tiny, parse)
    assert bench.archs == ARCHS
    assert sorted(bench.acc) == ["cifar10", "cifar100"]  # no ImageNet column in this file
    assert bench.index[(0, 0, 0, 0, 0, 0)] == 2
    assert bench.accuracy((3, 3, 3, 1, 3, 2), "cifar10") == 94.37
    assert bench.accuracy((4, 4, 4, 4, 4, 4), "cifar100") == 60.0
    assert [bench.rank(arch, "cifar10") for arch in ARCHS] == [1, 2, 5, 2, 4]  # 90.0 twice: shared rank 2
    assert [bench.rank(arch, "cifar100") for arch in ARCHS] == [1, 2, 5, 4, 3]
    with pytest.raises(BenchmarkError, match="imagenet16-120"):
        bench.accuracy(ARCHS[0], "imagenet16-120")
    with pytest.raises(KeyError):
        bench.accuracy((1, 1, 1, 1, 1, 1), "cifar10")


def test_benchmark_tau(tiny):
    bench = load_benchmark(tiny, parse)
    truth = {arch: acc for arch, acc in zip(ARCHS, C100)}
    assert bench.tau(truth, "cifar100") == pytest.approx(1.0)
    assert bench.tau({arch: -s for arch, s in truth.items()}, "cifar100") == pytest.approx(-1.0)
    # archs missing from the benchmark are ignored; the tie in C10 (90.0, 90.0) is handled as a tie
    scores = {ARCHS[0]: 3.0, ARCHS[1]: 2.0, ARCHS[2]: 0.0, ARCHS[3]: 1.0, (1, 1, 1, 1, 1, 1): 9.0}
    assert bench.tau(scores, "cifar10") == pytest.approx(kendall_tau_b([3, 2, 0, 1], [94.37, 90.0, 10.0, 90.0]))
    assert bench.tau(scores, "cifar10") == pytest.approx(brute_tau_b([3, 2, 0, 1], [94.37, 90.0, 10.0, 90.0]))
    assert math.isnan(bench.tau({ARCHS[0]: 1.0}, "cifar10"))


def test_columns_are_the_nb201_names():
    assert COLUMNS == {
        "cifar10": "CIFAR10TestAccuracy200Epochs",
        "cifar100": "CIFAR100TestAccuracy200Epochs",
        "imagenet16-120": "ImageNetTestAccuracy200Epochs",
    }


def test_benchmark_errors(tmp_path):
    good = arch_string(ARCHS[0])
    with pytest.raises(BenchmarkError, match="not found"):
        load_benchmark(str(tmp_path / "missing.csv"), parse)
    binary = tmp_path / "bench.pth"
    binary.write_bytes(b"PK\x03\x04\x80\x81\xfe\xff" * 100)
    with pytest.raises(BenchmarkError, match="not a CSV"):
        load_benchmark(str(binary), parse)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(BenchmarkError, match="empty"):
        load_benchmark(str(empty), parse)
    path = write_csv(tmp_path / "a.csv", ["CIFAR10TestAccuracy200Epochs", "Arch"], [[90.0, good]])
    with pytest.raises(BenchmarkError, match="no ArchitectureString column"):
        load_benchmark(path, parse)
    path = write_csv(tmp_path / "b.csv", ["Accuracy", "ArchitectureString"], [[90.0, good]])
    with pytest.raises(BenchmarkError, match="none of the accuracy columns"):
        load_benchmark(path, parse)
    header = ["CIFAR10TestAccuracy200Epochs", "ArchitectureString"]
    path = write_csv(tmp_path / "c.csv", header, [[90.0, good], ["n/a", arch_string(ARCHS[1])]])
    with pytest.raises(BenchmarkError, match=r"line 3: CIFAR10TestAccuracy200Epochs is 'n/a', not a number"):
        load_benchmark(path, parse)
    path = write_csv(tmp_path / "d.csv", header, [[90.0, good], [80.0, "|conv~0|"]])
    with pytest.raises(BenchmarkError, match=r"line 3: bad architecture string '\|conv~0\|'"):
        load_benchmark(path, parse)
    path = write_csv(tmp_path / "e.csv", header, [[90.0, good], [80.0, good]])
    with pytest.raises(BenchmarkError, match="line 3: .* appears twice"):
        load_benchmark(path, parse)
    path = write_csv(tmp_path / "f.csv", header, [[90.0]])
    with pytest.raises(BenchmarkError, match="line 2: 1 fields"):
        load_benchmark(path, parse)
    path = write_csv(tmp_path / "g.csv", header, [])
    with pytest.raises(BenchmarkError, match="no rows"):
        load_benchmark(path, parse)
    # every message is one line, and BenchmarkError is a ValueError so callers may catch either
    with pytest.raises(ValueError) as info:
        load_benchmark(path, parse)
    assert isinstance(info.value, BenchmarkError) and "\n" not in str(info.value)


def test_gzip_tables_read_like_plain_ones(tiny, tmp_path):
    plain = load_benchmark(tiny, parse)
    data = open(tiny, "rb").read()
    for name in ("t.csv.gz", "t-gz.csv"):  # gzip is recognised by its first two bytes, whatever the file's name
        (tmp_path / name).write_bytes(gzip.compress(data))
        bench = load_benchmark(str(tmp_path / name), parse)
        assert bench.archs == plain.archs and all(np.array_equal(bench.acc[c], plain.acc[c]) for c in plain.acc)
    packed = gzip.compress(data * 20)
    (tmp_path / "cut.csv.gz").write_bytes(packed[:-12])  # a truncated download
    (tmp_path / "bad.csv.gz").write_bytes(packed[:30] + bytes(b ^ 0xFF for b in packed[30:60]) + packed[60:])
    for name in ("cut.csv.gz", "bad.csv.gz"):
        with pytest.raises(BenchmarkError, match="cannot be read") as info:
            load_benchmark(str(tmp_path / name), parse)
        assert "\n" not in str(info.value)


# ------------------------------------------------------------
# The NB201 ground truth shipped in benchmarks/
# ------------------------------------------------------------


def test_shipped_nb201_table_holds_every_cell_once():
    path = default_benchmark("nb201")
    assert path.endswith(".csv.gz") and os.path.getsize(path) < 1 << 20  # compact: well under 2 MB
    with gzip.open(path, "rt") as f:
        assert f.readline().strip().split(",") == [*COLUMNS.values(), "ArchitectureString"]
    bench = load_benchmark(path, str_to_arch)  # refuses a malformed string, a non-number, an arch seen twice
    assert len(bench.archs) == 15625 and set(bench.archs) == set(all_archs())
    assert sorted(bench.acc) == sorted(COLUMNS)
    for col, best in (("cifar10", 94.37), ("cifar100", 73.51), ("imagenet16-120", 47.31)):
        acc = bench.acc[col]  # percent: above 0, below 100, the benchmark's best at the top
        assert acc.shape == (15625,) and acc.min() > 0 and round(float(acc.max()), 2) == best
    assert bench.accuracy((0,) * 6, "cifar10") == 10.0  # the all-'none' cell outputs nothing: chance on 10 classes
    assert default_benchmark("darts") is None and default_benchmark("mobilenet") is None


def test_missing_shipped_table_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(benchmark.SHIPPED, "nb201", str(tmp_path / "gone.csv.gz"))
    with pytest.raises(BenchmarkError, match="missing; restore it") as info:
        default_benchmark("nb201")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------
# The one-shot accuracy baseline
# ------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["folder", "fake"])
def test_one_shot_accuracy_batches_follow_the_model_to_its_device(tmp_path, dataset):
    # Data not held in memory (folder, ImageNet) comes from a DataLoader, which yields CPU tensors: they must be moved
    # to --device like the model. The 'meta' device stands in for a GPU here: a batch left behind stays on 'cpu'.
    if dataset == "folder":
        write_folder(tmp_path, size=(8, 8))  # 3 classes: 6 training images, 3 test images
    space = SPACES["nb201"]
    net_args = {"space": "nb201", "channels": 4, "layers": 1, "num_classes": 3}
    with torch.device("meta"):
        wt = space.supernet(net_args).state_dict()
    config = dict(space="nb201", dataset=dataset, data=str(tmp_path), image_size=8, split="auto", data_seed=0, fake_images=12)
    meta = torch.device("meta")
    fit = OneShotAccuracy(space, wt, net_args, config, meta, recal_batches=1, eval_images=0, batch_size=4)
    assert len(fit.calib) == 1 and len(fit.calib[0][1]) == 4 and sum(len(y) for _, y in fit.held) == 3
    assert all(x.device == meta and y.device == meta for x, y in fit.calib + fit.held)
    assert all(t.device == meta for t in fit.net.state_dict().values())
