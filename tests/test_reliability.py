"""Crash and resume: SIGKILL mid-epoch / between generations, resume, and compare with an uninterrupted run (the full
tier: a kill needs a real process; the reference and the resumed runs are in-process)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_scripts import ROOT, assert_same_weights_and_momentum, load, run, script_env, tiny_flags

pytestmark = pytest.mark.full

# 640 fake images at batch 16 = 40 steps an epoch, 4 epochs: killed in epoch 1 or 2, three epochs of margin (as the
# retrain runs of test_interrupts.py), and a resume that crosses epoch boundaries; short enough for CI
EPOCHS = 4
LONG = tiny_flags(images=640, batch=16) + ["--log-every", "1000", "--epochs", str(EPOCHS)]


def _default_sigint():
    # A suite started in the background (`nohup pytest ... &`) inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler; a user's Ctrl-C reaches a foreground process, so the script starts as one would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(script, *args):
    env = script_env()
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, script), *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def kill_when(proc, ready, timeout=120):
    """SIGKILL `proc` as soon as ready() is true; fail if it finished first (then nothing was tested)."""
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, f"the process ended before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.time() - t0 < timeout
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def mid_epoch_checkpoint(path) -> bool:
    """Has the run written a checkpoint from inside an epoch yet?"""
    try:
        return load(path)["batch"] > 0
    except (FileNotFoundError, RuntimeError, EOFError):
        return False


def all_checkpoints_load(path):
    # a kill during a write may leave NAME.tmp behind, but never a truncated NAME: every real checkpoint loads
    for f in os.listdir(path):
        if f.endswith(".pt"):
            load(os.path.join(path, f))


def log_without_timing(path):
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "img_per_s")} for line in open(path)]


def test_train_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path):
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    run("train.py", *LONG, "--out", ref)
    proc = start("train.py", *LONG, "--save-every-steps", 7, "--out", crashed)

    kill_when(proc, lambda: mid_epoch_checkpoint(crashed / "supernet.pt"))
    all_checkpoints_load(crashed)
    killed_at = load(crashed / "supernet.pt")
    assert killed_at["epoch"] < EPOCHS
    res = run("train.py", "--resume", "--out", crashed)
    assert "resumed" in res.stdout
    a, b = load(ref / "supernet.pt"), load(crashed / "supernet.pt")
    assert_same_weights_and_momentum(a, b)
    assert a["labels"] == b["labels"] and a["step"] == b["step"] == EPOCHS * 40 and a["grad_holders"] == b["grad_holders"]
    assert (ref / "supernet_init.pt").read_bytes() != b"" and torch.equal(
        load(ref / "supernet_init.pt")["model"]["stem.0.weight"], load(crashed / "supernet_init.pt")["model"]["stem.0.weight"]
    )
    assert log_without_timing(ref / "log.jsonl") == log_without_timing(crashed / "log.jsonl")


def test_search_sigkill_between_generations_then_resume(tiny_run, tmp_path):
    # the session's tiny trained supernet, then a long, slow search (small generations, many of them) that gets killed
    flags = [
        "--ckpt",
        tiny_run[0] / "supernet.pt",
        "--population",
        12,
        "--topk",
        4,
        "--mutations",
        6,
        "--crossovers",
        6,
        "--generations",
        150,
        "--seed",
        1,
    ]
    run("search.py", *flags, "--out", tmp_path / "ref.json")
    proc = start("search.py", *flags, "--out", tmp_path / "crashed.json")

    def some_generations_done():
        try:
            return json.load(open(tmp_path / "crashed.json"))["generations_done"] >= 3
        except (FileNotFoundError, json.JSONDecodeError):
            return False

    kill_when(proc, some_generations_done)
    partial = json.load(open(tmp_path / "crashed.json"))  # never half-written: atomic rename
    assert not partial["done"]
    res = run("search.py", *flags, "--out", tmp_path / "crashed.json", "--resume")
    ref, resumed = json.load(open(tmp_path / "ref.json")), json.load(open(tmp_path / "crashed.json"))
    assert resumed["evaluated"] == ref["evaluated"] and resumed["winner"] == ref["winner"]
    assert f"{len(partial['evaluated']):,} taken from the interrupted run" in res.stdout


def test_ddp_rank_death_stops_the_others_then_resume(tmp_path):
    # 2 gloo ranks on the fast data path; rank 1 is SIGKILLed; rank 0 must stop (no hang) with one line; the run
    # resumed under torchrun must end bit-identical to an uninterrupted 2-rank run
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    flags = [*LONG, "--epochs", 6, "--device", "cpu", "--backend", "gloo", "--dist-timeout", 1]
    res = run("train.py", *flags, "--out", tmp_path / "ref", launcher=torchrun)
    # the uninterrupted run: the two ranks agree (merged here from test_scripts.py's test_torchrun_two_ranks_agree):
    # W0 on disk, the [labels sha256, weights fingerprint] gathered from each rank after the last epoch are equal,
    # and only rank 0 prints
    ref = load(tmp_path / "ref" / "supernet.pt")
    ranks = ref["ddp_ranks"]
    assert os.path.exists(tmp_path / "ref" / "supernet_init.pt") and ref["world_size"] == 2
    assert len(ranks) == 2 and ranks[0] == ranks[1] and ranks[0][0] == ref["labels"]["sha256"]
    assert res.stdout.count("done:") == 1
    out = tmp_path / "ddp"
    env = script_env()
    cmd = [str(c) for c in [*torchrun, os.path.join(ROOT, "train.py"), *flags, "--out", out]]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not os.path.exists(out / "supernet.pt"):
        assert proc.poll() is None and time.time() - t0 < 120
        time.sleep(0.02)
    victim = None  # rank 1 among torchrun's children
    for pid in os.listdir("/proc"):
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except (OSError, ValueError):
            continue
        if (
            b"RANK=1" in environ
            and any(e.startswith(b"TORCHELASTIC_RUN_ID") for e in environ)
            and str(out).encode() in cmdline
        ):
            victim = int(pid)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    output, _ = proc.communicate(timeout=120)  # no hang: torchrun stops rank 0, which says why in one line
    assert proc.returncode != 0 and "restart the same command with --resume" in output
    assert load(out / "supernet.pt")["epoch"] < 6
    res = run("train.py", *flags, "--resume", "--out", out, launcher=torchrun)
    assert "resumed" in res.stdout
    a, b = ref, load(out / "supernet.pt")
    assert b["epoch"] == 6 and b["ddp_ranks"][0] == b["ddp_ranks"][1]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert log_without_timing(tmp_path / "ref" / "log.jsonl") == log_without_timing(out / "log.jsonl")


DARTS_GENOTYPE = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_3x3', 0), ('max_pool_3x3', 2), "
    "('sep_conv_5x5', 1), ('avg_pool_3x3', 3), ('skip_connect', 0), ('dil_conv_5x5', 4)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 1), ('avg_pool_3x3', 2), "
    "('dil_conv_3x3', 0), ('sep_conv_5x5', 3), ('skip_connect', 0), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)
MOBILENET_ARCH = ["--space", "mobilenet", "--arch", "2 0 -1 2 2 0 2 4 0 4 4 2 4 2 4 2 0 0 0 2 2"]  # a Table 5 model_id
OTHER = ["--dataset", "fake", "--fake-images", 192, "--batch-size", 16, "--workers", 0, "--epochs", 3]


@pytest.mark.parametrize(
    "flags, save_every",
    [
        # NB201: 6 epochs of 40 steps, tested every 2 epochs
        (["--arch", "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|",
          *LONG[:-1], 6, "--eval-every", 2], 5),
        # the DARTS CIFAR protocol: auxiliary head, drop path and cutout all draw randomness every step
        (["--genotype", DARTS_GENOTYPE, "--channels", 4, "--layers", 3, "--image-size", 32, "--cutout", 8, *OTHER], 3),
        # the MobileNet protocol: lr linear per iteration, dropout before the classifier
        ([*MOBILENET_ARCH, "--width", 0.125, "--image-size", 16, *OTHER], 3),
    ],
    ids=["nb201", "darts-cifar", "mobilenet"],
)  # fmt: skip
def test_retrain_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path, flags, save_every):
    run("retrain.py", *flags, "--out", tmp_path / "ref")
    proc = start("retrain.py", *flags, "--save-every-steps", save_every, "--out", tmp_path / "crashed")
    kill_when(proc, lambda: mid_epoch_checkpoint(tmp_path / "crashed" / "retrain.pt"))
    run("retrain.py", *flags, "--resume", "--out", tmp_path / "crashed")
    a, b = load(tmp_path / "ref" / "retrain.pt"), load(tmp_path / "crashed" / "retrain.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["test_top1"] == b["test_top1"]
    assert log_without_timing(tmp_path / "ref" / "log.jsonl") == log_without_timing(tmp_path / "crashed" / "log.jsonl")
