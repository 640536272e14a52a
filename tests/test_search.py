"""search.py end to end on a tiny NB201 run: the shipped NAS-Bench-201 table is the default ground truth, --benchmark
replaces it, and --help reads the method first with the value each space's recipe fills in (the full tier). The
searches read the session's tiny supernet run (conftest.tiny_run)."""

import json

import pytest
from test_scripts import run, write_fake_benchmark

from benchmark import default_benchmark, load_benchmark
from supernet import str_to_arch

pytestmark = pytest.mark.full


@pytest.fixture
def supernet_run(tiny_run):
    return tiny_run[0]


def test_nb201_search_reports_the_shipped_benchmark_without_a_flag(supernet_run, tmp_path):
    res = run("search.py", "--ckpt", supernet_run / "supernet.pt", "--exhaustive", "--out", tmp_path / "all.json")
    result = json.load(open(tmp_path / "all.json"))
    report, winner = result["benchmark"], str_to_arch(result["winner"]["arch"])
    assert set(report) == {"cifar10", "cifar100", "imagenet16-120"}
    truth = load_benchmark(default_benchmark("nb201"), str_to_arch)
    for col, entry in report.items():  # the winner's true accuracy and rank, and tau over all 15,625 cells
        assert entry["accuracy"] == truth.accuracy(winner, col) and entry["rank"] == truth.rank(winner, col)
        assert entry["tau_over"] == 15625 and -1 <= entry["kendall_tau_b"] <= 1
    c10 = report["cifar10"]
    assert f"benchmark cifar10         winner {c10['accuracy']:6.2f}%" in res.stdout
    assert f"Kendall tau-b {c10['kendall_tau_b']:+.4f} over 15,625 archs" in res.stdout
    # the evolution prints the tau of everything scored so far in every generation
    res = run("search.py", "--ckpt", supernet_run / "supernet.pt", "--generations", 2, "--out", tmp_path / "evo.json")
    assert sum(" | tau(cifar10) " in line for line in res.stdout.splitlines()) == 2
    assert "benchmark cifar10" in res.stdout and "Kendall tau-b" in res.stdout


def test_benchmark_flag_replaces_the_shipped_table(supernet_run, tmp_path):
    fake = tmp_path / "fake.csv"
    write_fake_benchmark(fake)  # CIFAR-10 accuracy 80 + proxy / 6: not the real table's values
    flags = ["--ckpt", supernet_run / "supernet.pt", "--exhaustive", "--benchmark", fake, "--out", tmp_path / "s.json"]
    run("search.py", *flags)
    result = json.load(open(tmp_path / "s.json"))
    winner = str_to_arch(result["winner"]["arch"])
    assert result["benchmark"]["cifar10"]["accuracy"] == load_benchmark(str(fake), str_to_arch).accuracy(winner, "cifar10")


def test_help_reads_the_method_first_and_shows_each_recipe():
    text = run("search.py", "--help").stdout
    groups = [text.index(f"\n{name}:") for name in ("method", "data", "report", "run and resume", "speed")]
    assert groups == sorted(groups)
    flat = " ".join(text.split())  # argparse wraps the help text
    # one format in the three scripts: "(recipe: <space> <value>, ...)" after every flag a recipe fills
    assert "candidates per generation (recipe: nb201 100, darts 50, mobilenet 50)" in flat
    assert "generations (recipe: nb201 20, darts 20, mobilenet 20)" in flat and "(recipe: mobilenet 475.0)" in flat


def test_without_data_the_runs_folder_is_read_never_written(tmp_path):
    """search.py --fitness accuracy and train.py --resume without --data read the images where the supernet run read
    them (an ImageFolder here, loaded by a DataLoader), and say so; nothing is written or downloaded there."""
    from test_data import write_folder

    images = tmp_path / "images"
    write_folder(images, size=(8, 8), per_class=4)  # 3 classes: 12 training images, 6 test images
    before = sorted(p.relative_to(images) for p in images.rglob("*"))
    flags = ["--channels", 4, "--layers", 1, "--batch-size", 4, "--epochs", 1, "--workers", 0]
    run("train.py", "--dataset", "folder", "--data", images, "--image-size", 8, *flags, "--out", tmp_path / "sn")
    res = run(
        "search.py", "--ckpt", tmp_path / "sn" / "supernet.pt", "--fitness", "accuracy", "--population", 4, "--topk", 2,
        "--mutations", 2, "--crossovers", 2, "--generations", 1, "--recal-batches", 1, "--batch-size", 4,
        "--out", tmp_path / "s.json",
    )  # fmt: skip
    assert f"folder read from {images}, the supernet run's --data" in res.stdout
    assert json.load(open(tmp_path / "s.json"))["winner"]["arch"]
    # train.py --resume without --data reads where the run read (here a finished run: it loads the data, then stops)
    res = run("train.py", "--resume", "--out", tmp_path / "sn", cwd=tmp_path)
    assert f"--data {images}: where the run read folder" in res.stdout and "already finished" in res.stdout
    assert sorted(p.relative_to(images) for p in images.rglob("*")) == before
    # a CIFAR run whose directory is gone: one line, and nothing is downloaded into the recorded path
    cfg = json.load(open(tmp_path / "sn" / "config.json"))
    gone = tmp_path / "gone"
    edited = {**cfg, "dataset": "cifar10", "data": str(gone), "image_size": None}
    (tmp_path / "sn" / "config.json").write_text(json.dumps(edited))
    (tmp_path / "sn" / "supernet.pt").unlink()  # stopped in its first epoch: its settings come from config.json
    res = run("train.py", "--resume", "--out", tmp_path / "sn", check=False, cwd=tmp_path)
    assert res.returncode == 2 and "pass --data DIR" in res.stderr and str(gone) in res.stderr
    assert not gone.exists()
