"""Tests of benchmark.py: Kendall tau-b against a brute-force pair count, and the CSV loader on tiny files."""

import math
import time

import numpy as np
import pytest

from benchmark import COLUMNS, BenchmarkError, kendall_tau_b, load_benchmark

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
