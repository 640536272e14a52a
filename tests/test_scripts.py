"""Smoke tests of the real scripts: train -> search -> retrain on fake data, exact resume, torchrun.

The default tier keeps two tests of this file: the one end-to-end chain run as real processes (python train.py, then
search.py, then retrain.py, each reading what the one before wrote) and the in-process decay check of train_step. The
rest is in the full tier (`--all`): in-process calls of the scripts' main() (helpers.call), torchrun, a hidden
matplotlib. They read the session's tiny supernet run (conftest.tiny_run) instead of training one each.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import call

import supernet as S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_flags(images: int = 96, batch: int = 32) -> list[str]:
    """A supernet and data small enough for CI: fake 8x8 images, C=4, one cell per stage."""
    return (
        f"--dataset fake --fake-images {images} --image-size 8 --channels 4 --layers 1 --batch-size {batch} --workers 0"
    ).split()


def script_env(**extra) -> dict:
    """The environment of every script a test runs: one thread (CI has 2 cores), the repository importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, **extra}


TINY = tiny_flags() + ["--log-every", "1"]


def run(script, *args, check=True, cwd=None, launcher=None, process=False):
    """The script with these flags: in-process (helpers.call: main() under cli.run, as `python script` runs it) unless
    a real process is needed (`process=True`, or a launcher such as torchrun)."""
    if launcher is None and not process:
        return call(script, *args, check=check, cwd=cwd)
    env = script_env()
    cmd = (launcher or [sys.executable]) + [os.path.join(ROOT, script), *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"{script} {args} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights_and_momentum(a: dict, b: dict) -> None:
    """Two train.py checkpoints hold the same weights and the same SGD momentum buffers, bit for bit."""
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for i, st in a["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])


def write_fake_benchmark(path):
    # a synthetic benchmark in the NB201 CSV format: accuracy grows with the parameter proxy 9*#3x3 + #1x1
    with open(path, "w") as f:
        f.write(
            "CIFAR10TestAccuracy200Epochs,CIFAR100TestAccuracy200Epochs,ImageNetTestAccuracy200Epochs,ArchitectureString\n"
        )
        for a in S.all_archs():
            proxy = 9 * a.count(3) + a.count(2)
            f.write(f"{80 + proxy / 6:.3f},{50 + proxy / 5:.3f},{20 + proxy / 4:.3f},{S.arch_to_str(a)}\n")


def test_train_search_retrain_chain_as_real_processes(tmp_path):
    """The default tier's end-to-end check: the three stages as a user runs them (`python train.py`, `python
    search.py`, `python retrain.py`, a process each) on fake data at toy size, each reading only what the one before
    wrote: the supernet run -> search.json beside it -> a retrained winner, on the dataset the supernet run used."""
    sn, rt = tmp_path / "sn", tmp_path / "rt"
    size = tiny_flags(images=64)[4:]  # the 8x8 images, the tiny supernet, the batch and the workers; no --dataset
    res = run("train.py", "--dataset", "fake", "--fake-images", 64, *size, "--epochs", 2, "--out", sn, process=True)
    assert "done:" in res.stdout and "Traceback" not in res.stderr
    assert {"config.json", "log.jsonl", "supernet_init.pt", "supernet.pt", "manifest.json"} <= set(os.listdir(sn))
    ckpt = load(sn / "supernet.pt")
    assert ckpt["epoch"] == 2 and ckpt["labels"]["kind"] == "random" and ckpt["labels"]["count"] == 64
    assert [json.loads(line)["epoch"] for line in open(sn / "log.jsonl")] == [1, 2]

    res = run("search.py", "--ckpt", sn / "supernet.pt", "--generations", 2, process=True)  # writes sn/search.json
    found = json.load(open(sn / "search.json"))
    assert found["done"] and found["ckpt"] == str(sn / "supernet.pt") and found["supernet_args"] == ckpt["supernet_args"]
    assert len(found["evaluated"]) == 200 and found["generations_done"] == 2  # population 100, then 100 children
    winner = found["winner"]
    assert winner["score"] == max(score for _, score in found["evaluated"]) > 0
    assert S.str_to_arch(winner["arch"]) and winner["arch"] in res.stdout
    assert "benchmark cifar10" in res.stdout and found["benchmark"]["cifar10"]["tau_over"] == 200  # the shipped table

    res = run("retrain.py", "--ckpt-search", sn / "search.json", *size, "--epochs", 1, "--out", rt, process=True)
    assert "--dataset fake, the supernet run's" in res.stdout and "test top-1" in res.stdout
    retrained = load(rt / "retrain.pt")
    assert retrained["arch"] == winner["arch"] and retrained["epoch"] == 1
    assert 0 <= retrained["test_top1"] <= retrained["test_top5"] <= 100
    assert json.load(open(rt / "config.json"))["dataset"] == "fake"


@pytest.mark.full
def test_train_writes_a_complete_run(tiny_run):
    out, stdout = tiny_run
    assert {"config.json", "log.jsonl", "supernet_init.pt", "supernet.pt", "supernet_ep1.pt"} <= set(os.listdir(out))
    assert "img/s" in stdout and "ETA" in stdout
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [e["epoch"] for e in log] == [1, 2, 3]
    assert {"loss", "acc", "lr", "img_per_s", "seconds"} <= set(log[0])
    assert log[0]["lr"] > log[2]["lr"]  # cosine schedule
    ckpt, init = load(out / "supernet.pt"), load(out / "supernet_init.pt")
    assert ckpt["epoch"] == 3 and ckpt["labels"]["count"] == 96 and ckpt["labels"]["kind"] == "random"
    # W0 was saved before the first step and differs from Wt; its fingerprint is recorded in the checkpoint
    assert not torch.equal(init["model"]["stem.0.weight"], ckpt["model"]["stem.0.weight"])
    assert not any(k.startswith("module.") for k in ckpt["model"])
    torch.manual_seed(json.load(open(out / "config.json"))["seed"])
    fresh = S.Supernet(4, 1, 10).state_dict()
    assert all(torch.equal(fresh[k], init["model"][k]) for k in fresh)  # W0 is exactly the seeded init


@pytest.mark.full
def test_search_evolution_and_benchmark(tiny_run, tmp_path):
    out, _ = tiny_run
    bench = tmp_path / "bench.csv"
    write_fake_benchmark(bench)
    res = run("search.py", "--ckpt", out / "supernet.pt", "--benchmark", bench, "--out", tmp_path / "s.json")
    result = json.load(open(tmp_path / "s.json"))
    assert len(result["evaluated"]) == 2000 and result["done"] and result["generations_done"] == 20
    assert len({a for a, _ in result["evaluated"]}) == 2000
    winner = result["winner"]["arch"]
    assert S.str_to_arch(winner) and winner in res.stdout and "tie group of" in res.stdout
    assert result["winner"]["score"] == max(s for _, s in result["evaluated"])
    assert "Kendall tau-b" in res.stdout and set(result["benchmark"]) == {"cifar10", "cifar100", "imagenet16-120"}
    assert -1 <= result["benchmark"]["cifar10"]["kendall_tau_b"] <= 1
    c10 = result["benchmark"]["cifar10"]
    assert 80 <= c10["top100_mean"] <= c10["top10_mean"] + 10 and "top 100" in res.stdout
    # an existing search.json is never overwritten silently
    again = run("search.py", "--ckpt", out / "supernet.pt", "--out", tmp_path / "s.json", check=False)
    assert again.returncode == 2 and "--resume" in again.stderr


@pytest.mark.full
def test_exhaustive_matches_evolution_winner_when_it_finds_it(tiny_run, tmp_path):
    out, _ = tiny_run
    run("search.py", "--ckpt", out / "supernet.pt", "--exhaustive", "--out", tmp_path / "all.json")
    result = json.load(open(tmp_path / "all.json"))
    scores = dict(result["evaluated"])
    assert len(scores) == 15625 and result["winner"]["score"] == max(scores.values())
    assert scores[S.arch_to_str((0,) * 6)] == 0.0  # disconnected cell


@pytest.mark.full
def test_search_resume_replays_the_same_trajectory(tiny_run, tmp_path):
    out, _ = tiny_run
    flags = ["--ckpt", out / "supernet.pt", "--generations", 5, "--seed", 3]
    run("search.py", *flags, "--out", tmp_path / "full.json")
    full = json.load(open(tmp_path / "full.json"))
    partial = dict(full, evaluated=full["evaluated"][:230], done=False, generations_done=2)  # as if killed in gen 3
    json.dump(partial, open(tmp_path / "part.json", "w"))
    res = run("search.py", *flags, "--out", tmp_path / "part.json", "--resume")
    resumed = json.load(open(tmp_path / "part.json"))
    assert resumed["evaluated"] == full["evaluated"] and resumed["winner"] == full["winner"]
    assert "230 taken from the interrupted run" in res.stdout


@pytest.mark.full
@pytest.mark.parametrize("data_path", ["tensor", "loader"])
def test_train_resume_is_exact(tiny_run, tmp_path, data_path):
    # rebuild the state of the run after epoch 1 from its snapshot, resume, and compare with the full run;
    # for both data paths (batched tensor augmentation, the default here, and the per-image DataLoader)
    out, _ = tiny_run
    if data_path == "loader":
        out = tmp_path / "loader-run"
        run("train.py", *TINY, "--epochs", 3, "--keep-every", 1, "--data-path", "loader", "--out", out)
    b = tmp_path / "b"
    b.mkdir()
    for name in ("supernet_init.pt", "config.json"):
        shutil.copy(out / name, b / name)
    shutil.copy(out / "supernet_ep1.pt", b / "supernet.pt")
    with open(out / "log.jsonl") as f, open(b / "log.jsonl", "w") as g:
        g.write(f.readline())
    res = run("train.py", "--resume", "--out", b)
    assert "resumed" in res.stdout
    full, resumed = load(out / "supernet.pt"), load(b / "supernet.pt")
    assert_same_weights_and_momentum(full, resumed)
    assert torch.equal(full["rng"]["path"], resumed["rng"]["path"]) and full["grad_holders"] == resumed["grad_holders"]
    losses = lambda p: [json.loads(line)["loss"] for line in open(p)]  # noqa: E731
    assert losses(out / "log.jsonl") == losses(b / "log.jsonl")
    assert torch.equal(
        load(out / "supernet_init.pt")["model"]["stem.0.weight"], load(b / "supernet_init.pt")["model"]["stem.0.weight"]
    )


@pytest.mark.full
def test_retrain_from_search_json(tiny_run, tmp_path):
    out, _ = tiny_run
    run("search.py", "--ckpt", out / "supernet.pt", "--generations", 2, "--out", tmp_path / "s.json")
    res = run("retrain.py", "--ckpt-search", tmp_path / "s.json", *TINY, "--epochs", 2, "--out", tmp_path / "re")
    assert "test top-1" in res.stdout and "parameters" in res.stdout
    ckpt = load(tmp_path / "re" / "retrain.pt")
    assert ckpt["epoch"] == 2 and 0 <= ckpt["test_top1"] <= 100 and ckpt["test_top1"] <= ckpt["test_top5"]
    assert ckpt["arch"] == json.load(open(tmp_path / "s.json"))["winner"]["arch"]
    res = run("retrain.py", "--ckpt-search", tmp_path / "s.json", "--resume", "--out", tmp_path / "re")
    assert "resumed" in res.stdout


def test_unsampled_ops_decay_or_stay_frozen():
    # ops sampled once keep receiving weight decay and momentum with 'decay' (official); with 'frozen' they do not move
    import train

    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    first, second = [(3,) * 6], [(2,) * 6]  # step 1 trains the 3x3 convs, step 2 only the 1x1 convs
    moved = {}
    for mode in ("decay", "frozen"):
        torch.manual_seed(0)
        net = S.Supernet(4, 1, 5)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        conv3 = net.cells[0].edges["1<-0"][3].op[1].weight
        conv1 = net.cells[0].edges["1<-0"][2].op[1].weight
        conv1_init = conv1.detach().clone()
        train.train_step(net, opt, x, y, first * 3, mode)
        assert torch.equal(conv1, conv1_init) and conv1.grad is None  # never sampled yet: untouched in both modes
        after_first = conv3.detach().clone()
        train.train_step(net, opt, x, y, second * 3, mode)
        moved[mode] = (conv3 - after_first).abs().max().item()
        assert (conv3.grad is None) == (mode == "frozen")
    assert moved["decay"] > 1e-4  # momentum + decay keep moving the unsampled 3x3 conv
    assert moved["frozen"] == 0.0


@pytest.mark.full
@pytest.mark.parametrize(
    "space_flags",
    [
        "--space darts --variant imagenet --dataset fake --image-size 32 --channels 4 --layers 3",
        "--space mobilenet --width 0.125 --dataset fake --image-size 32",
    ],
    ids=["darts-imagenet", "mobilenet"],
)
def test_torchrun_two_ranks_agree_other_spaces(tmp_path, space_flags):
    # The ImageNet recipes are the 8-GPU ones (label smoothing, per-step linear lr, clip by value, conv-only wd):
    # two ranks must draw the same genotype every step and end with the same weights (checked after every epoch)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    out = tmp_path / "ddp"
    flags = [*space_flags.split(), "--fake-images", 64, "--batch-size", 16, "--workers", 0, "--epochs", 1]
    res = run("train.py", *flags, "--device", "cpu", "--backend", "gloo", "--out", out, launcher=launcher)
    ckpt = load(out / "supernet.pt")
    ranks = ckpt["ddp_ranks"]
    assert len(ranks) == 2 and ranks[0] == ranks[1] and ckpt["world_size"] == 2 and ckpt["step"] == 2
    assert res.stdout.count("done:") == 1


@pytest.mark.full
def test_torchrun_retrain(tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    res = run(
        "retrain.py",
        "--arch",
        arch,
        *TINY,
        "--epochs",
        1,
        "--device",
        "cpu",
        "--backend",
        "gloo",
        "--out",
        tmp_path / "re",
        launcher=launcher,
    )
    assert res.stdout.count("done:") == 1
    assert load(tmp_path / "re" / "retrain.pt")["epoch"] == 1


@pytest.mark.full
def test_amp_and_memory_format_run(tmp_path):
    res = run("train.py", *TINY, "--epochs", 1, "--amp", "--memory-format", "contiguous", "--out", tmp_path / "amp")
    assert "done:" in res.stdout
    ckpt = load(tmp_path / "amp" / "supernet.pt")
    assert all(v.dtype != torch.bfloat16 for v in ckpt["model"].values())  # weights stay fp32 under autocast
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    res = run(
        "retrain.py", "--arch", arch, *TINY, "--epochs", 1, "--amp", "--memory-format", "contiguous", "--out", tmp_path / "re"
    )
    assert "test top-1" in res.stdout


@pytest.mark.full
def test_track_tau_logs_the_ranking_quality(tmp_path):
    bench = tmp_path / "bench.csv"
    write_fake_benchmark(bench)
    run("train.py", *TINY, "--epochs", 2, "--track-tau", bench, "--track-every", 2, "--out", tmp_path / "t")
    log = [json.loads(line) for line in open(tmp_path / "t" / "log.jsonl")]
    # W0 against itself: every angle is 0, so tau is undefined for every vector variant, and nothing has moved
    assert log[0]["epoch"] == 0 and log[0]["tau"] is None and set(log[0]["tau_vectors"].values()) == {None}
    assert all(abs(v) < 1e-3 for v in log[0]["moved"].values())
    assert "tau" not in log[1] and -1 <= log[2]["tau"] <= 1 and log[2]["tau"] != 0
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    res = run("train.py", *TINY, "--track-tau", bad, "--out", tmp_path / "u", check=False)
    assert res.returncode == 2 and "ArchitectureString" in res.stderr and not (tmp_path / "u").exists()


@pytest.mark.full
@pytest.mark.parametrize("fitness", ["params", "random"])
def test_baseline_fitnesses(tiny_run, tmp_path, fitness):
    # the two baselines of the paper's comparison run through the same evolution and report
    out, _ = tiny_run
    bench = tmp_path / "bench.csv"
    write_fake_benchmark(bench)
    ckpt = out / "supernet.pt"
    res = run("search.py", "--ckpt", ckpt, "--fitness", fitness, "--benchmark", bench, "--out", tmp_path / "s.json")
    result = json.load(open(tmp_path / "s.json"))
    scores = dict(result["evaluated"])
    assert len(scores) == 2000 and result["settings"]["fitness"] == fitness and f"by {fitness}" in res.stdout
    c10 = result["benchmark"]["cifar10"]
    if fitness == "params":  # the fake benchmark grows with the parameter proxy: tau is high, the winner is all-3x3
        assert result["winner"]["arch"] == S.arch_to_str((3,) * 6)
        assert scores[result["winner"]["arch"]] == S.count_params((3,) * 6, 4, 1, 10)
        assert c10["kendall_tau_b"] > 0.9 and c10["top10_mean"] > c10["top100_mean"]
    else:  # random search: scores in [0, 1), tau near 0, and the same scores on a second run
        assert all(0 <= v < 1 for v in scores.values()) and abs(c10["kendall_tau_b"]) < 0.1
        run("search.py", "--ckpt", ckpt, "--fitness", fitness, "--out", tmp_path / "t.json")
        assert json.load(open(tmp_path / "t.json"))["evaluated"] == result["evaluated"]


@pytest.mark.full
def test_one_shot_accuracy_fitness(tiny_run, tmp_path):
    # Table 1 A/C: BN recalibrated per candidate, top-1 on held-out images with the real labels; deterministic
    out, _ = tiny_run
    flags = [
        "--ckpt",
        out / "supernet.pt",
        "--fitness",
        "accuracy",
        "--recal-batches",
        2,
        "--eval-images",
        24,
        "--batch-size",
        16,
        "--population",
        8,
        "--topk",
        4,
        "--mutations",
        4,
        "--crossovers",
        4,
        "--generations",
        2,
    ]
    run("search.py", *flags, "--out", tmp_path / "a.json")
    result = json.load(open(tmp_path / "a.json"))
    scores = dict(result["evaluated"])
    assert len(scores) == 16
    assert all(0 <= v <= 100 and abs(v * 0.24 - round(v * 0.24)) < 1e-6 for v in scores.values())  # k of 24 images
    run("search.py", *flags, "--out", tmp_path / "b.json")
    assert json.load(open(tmp_path / "b.json"))["evaluated"] == result["evaluated"]


@pytest.mark.full
def test_plot_without_matplotlib_degrades_to_one_line(tiny_run, tmp_path):
    # hide matplotlib (it is optional): the search still finishes and says in one line why there are no plots
    fake = tmp_path / "site"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('matplotlib hidden by the test')\n")
    out, _ = tiny_run
    env = script_env(PYTHONPATH=f"{fake}{os.pathsep}{ROOT}")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "search.py"),
        "--ckpt",
        str(out / "supernet.pt"),
        "--plot",
        "--out",
        str(tmp_path / "s.json"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "--plot needs matplotlib" in res.stdout and (tmp_path / "s.json").exists()
    assert not list(tmp_path.glob("*.png"))
