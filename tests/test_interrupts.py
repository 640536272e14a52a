"""Interrupts and concurrent runs: two runs on one --out (the run directory's lock), a run killed before its first
checkpoint, Ctrl-C (SIGINT) and SIGTERM: one line saying where it stopped and how to resume, then --resume ends
bit-identical to an uninterrupted run. In the full tier: the signals need real processes."""

import fcntl
import os
import signal
import time

import pytest
import torch
from test_errors import assert_user_error
from test_reliability import LONG, kill_when, log_without_timing, start
from test_scripts import assert_same_weights_and_momentum, load, run

pytestmark = pytest.mark.full

SLOW = [*LONG[:-1], "200"]  # 200 epochs: minutes, so it is still running when the second run starts


def files(folder) -> dict:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_second_run_on_the_same_out_fails_on_the_lock(tmp_path):
    out = tmp_path / "run"
    proc = start("train.py", *SLOW, "--out", out)
    try:
        t0 = time.time()
        while not (out / "supernet_init.pt").exists():
            assert proc.poll() is None and time.time() - t0 < 120, proc.stderr.read()[-2000:]
            time.sleep(0.01)
        w0 = (out / "supernet_init.pt").read_bytes()
        for extra in ([], ["--resume"], ["--force"]):
            assert_user_error(run("train.py", *SLOW, *extra, "--out", out, check=False), "in use", "run.lock")
            assert (out / "supernet_init.pt").read_bytes() == w0  # --force removed nothing of the running run
        assert proc.poll() is None  # the first run is untouched and still going
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with open(out / "run.lock") as f:  # the kernel released the killed run's lock: never a stale lock
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny run of each stage: what every interrupted and resumed run must end bit-identical to."""
    root = tmp_path_factory.mktemp("reference")
    run("train.py", *LONG, "--out", root / "train")
    run("retrain.py", *RETRAIN, "--out", root / "retrain")
    return root


RETRAIN = ["--arch", "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|"]
RETRAIN += [*LONG[:-1], "4", "--eval-every", "2"]  # 4 epochs of 40 steps, tested every 2


def assert_same_run(ref, out, marker):
    a, b = load(ref / marker), load(out / marker)
    assert_same_weights_and_momentum(a, b)
    assert a["epoch"] == b["epoch"] and a["step"] == b["step"] and a.get("test_top1") == b.get("test_top1")
    assert log_without_timing(ref / "log.jsonl") == log_without_timing(out / "log.jsonl")
    if marker == "supernet.pt":  # the same W0, bit for bit
        w0a, w0b = load(ref / "supernet_init.pt")["model"], load(out / "supernet_init.pt")["model"]
        assert all(torch.equal(w0a[k], w0b[k]) for k in w0a)


def stderr_lines(proc) -> list[str]:
    return [line for line in proc.stderr.read().splitlines() if line.strip()]


@pytest.mark.parametrize("script", ["train.py", "retrain.py"])
def test_sigkill_before_the_first_checkpoint_then_resume(reference, tmp_path, script):
    flags, marker = (LONG, "supernet.pt") if script == "train.py" else (RETRAIN, "retrain.pt")
    out = tmp_path / "crashed"
    proc = start(script, *flags, "--out", out)
    first = out / ("supernet_init.pt" if script == "train.py" else "config.json")  # W0 (train.py) is on disk
    kill_when(proc, first.exists)
    assert not (out / marker).exists(), "killed too late: the first checkpoint was already written"
    res = run(script, "--resume", "--out", out)  # not "nothing to resume", not "already exists": it restarts
    assert "restarting it from epoch 0" in res.stdout
    assert_same_run(reference / script.removesuffix(".py"), out, marker)


def interrupt_mid_run(script, flags, out, sig, marker):
    """Start a run, send `sig` once its first checkpoint is on disk (inside epoch 2), return (status, stderr lines)."""
    proc = start(script, *flags, "--out", out)
    t0 = time.time()
    while not (out / marker).exists():
        assert proc.poll() is None and time.time() - t0 < 120, proc.stderr.read()[-2000:]
        time.sleep(0.002)
    proc.send_signal(sig)
    return proc.wait(timeout=60), stderr_lines(proc)


@pytest.mark.parametrize("script", ["train.py", "retrain.py"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_one_line_then_resume(reference, tmp_path, script, sig):
    flags, marker = (LONG, "supernet.pt") if script == "train.py" else (RETRAIN, "retrain.pt")
    out = tmp_path / "stopped"
    status, lines = interrupt_mid_run(script, flags, out, sig, marker)
    assert status == (130 if sig == signal.SIGINT else 143), lines
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert f"resume with: python {script} --resume --out {out}" in lines[0] and " at epoch " in lines[0], lines
    ckpt = load(out / marker)
    if sig == signal.SIGTERM:  # a checkpoint of the very step it stopped at
        assert "saved" in lines[0] and ckpt["epoch"] >= 1
        epoch, step = (int(w) for w in lines[0].split(" at epoch ")[1].split(";")[0].split(" step "))
        assert (ckpt["epoch"], ckpt["batch"]) in {(epoch - 1, step), (epoch, 0)}, (ckpt["epoch"], ckpt["batch"], lines)
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    run(script, "--resume", "--out", out)
    assert_same_run(reference / script.removesuffix(".py"), out, marker)


def test_resume_sees_every_explicit_flag(tmp_path):
    """--resume: a flag given with another value than the run's is refused in one line, even when that value is the
    flag's default (train.py: --seed 0), and retrain.py no longer drops it silently (--epochs 2)."""
    from test_scripts import TINY

    run("train.py", *TINY, "--epochs", 1, "--seed", 1, "--out", tmp_path / "t")
    before = files(tmp_path / "t")
    assert_user_error(run("train.py", "--resume", "--seed", 0, "--out", tmp_path / "t", check=False), "--seed 0", "(1)")
    run("train.py", "--resume", "--seed", 1, "--log-every", 5, "--out", tmp_path / "t")  # the run's own value is fine
    assert files(tmp_path / "t") == before  # finished: nothing to do, nothing rewritten
    run("retrain.py", *RETRAIN[:2], *TINY, "--epochs", 1, "--out", tmp_path / "r")
    before = files(tmp_path / "r")
    res = run("retrain.py", *RETRAIN[:2], *TINY, "--epochs", 2, "--resume", "--out", tmp_path / "r", check=False)
    assert_user_error(res, "--epochs 2", "(1)")
    assert files(tmp_path / "r") == before


def test_corrupt_log_line_on_resume(tmp_path):
    """A torn last line of log.jsonl (a kill during an append) is dropped with a note and the log rewritten
    atomically; a damaged line before the last one is an edit, refused in one line with the file left as it is."""
    from test_scripts import TINY

    out = tmp_path / "run"
    run("train.py", *TINY, "--epochs", 1, "--out", out)
    good = (out / "log.jsonl").read_text()
    (out / "log.jsonl").write_text(good + '{"epoch": 2, "lo')
    res = run("train.py", "--resume", "--out", out)
    assert "line 2 is incomplete" in res.stdout and (out / "log.jsonl").read_text() == good
    (out / "log.jsonl").write_text("not json\n" + good)
    before = files(out)
    assert_user_error(run("train.py", "--resume", "--out", out, check=False), "log.jsonl line 1", "fix or delete")
    assert files(out) == before


def test_resume_messages_never_send_the_user_in_a_circle(tmp_path):
    """Whatever an interrupted run left, the two commands never refuse each other: the directory is either resumable,
    or empty enough for a new run without --force, or not a run at all (then --out DIR)."""
    import rundir

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json.tmp").write_text("{")  # killed while writing its first file
    (out / "run.lock").write_text("")
    with pytest.raises(rundir.UsageError, match="only temp files; drop --resume"):
        rundir.check_run_dir(str(out), resume=True, force=False, marker="supernet.pt")
    rundir.check_run_dir(str(out), resume=False, force=False, marker="supernet.pt")  # a new run may start there
    (out / "log.jsonl").write_text("{}\n")
    with pytest.raises(rundir.UsageError, match="neither supernet.pt nor config.json.*--out DIR"):
        rundir.check_run_dir(str(out), resume=True, force=False, marker="supernet.pt")
    (out / "config.json").write_text("{}")
    rundir.check_run_dir(str(out), resume=True, force=False, marker="supernet.pt")  # resumable from epoch 0
