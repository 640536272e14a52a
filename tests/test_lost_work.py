"""Nothing the program did not write is ever replaced, and no resume can be fooled (the full tier).

Each case: the command, its exit status, one line on stderr, and the folders involved listed byte for byte before
and after (nothing lost, nothing stray). In-process (helpers.call) where a process adds nothing; a real process for
signals, two processes on one lock, a closed stdout and the imports.
"""

import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import call
from test_reliability import log_without_timing, start
from test_safety import listing as _listing
from test_scripts import ROOT, TINY, assert_same_weights_and_momentum, load, script_env, tiny_flags

import cli
import distributed
import make_assignment
import rundir

pytestmark = pytest.mark.full

RETRAIN = "--arch |nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|none~1|skip_connect~2| --channels 4 --layers 1".split()
RETRAIN += "--dataset fake --fake-images 32 --image-size 8 --batch-size 16 --workers 0 --epochs 1".split()


def listing(root, folders: bool = False) -> dict:
    """Every entry under root: a file's bytes, a symlink's target (never followed), a folder as such (where there are
    symlinks or special files, or with `folders`: an empty folder counts too), a FIFO or device by its kind (never
    opened)."""
    entries = [os.path.join(f, n) for f, dirs, names in os.walk(root) for n in dirs + names]
    if not folders and not any(os.path.islink(p) or not (os.path.isdir(p) or os.path.isfile(p)) for p in entries):
        return _listing(root)
    found = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                found[rel] = ("dir",)
            elif not os.path.isfile(path):
                found[rel] = ("special", stat.S_IFMT(os.lstat(path).st_mode))
            else:
                found[rel] = open(path, "rb").read()
    return found


def one_line(res, *words, status=2):
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == status and len(lines) == 1 and "Traceback" not in res.stderr, (res.returncode, res.stderr)
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("lost") / "sn"
    call("train.py", *TINY, "--epochs", 1, "--out", out)
    call("search.py", "--ckpt", out / "supernet.pt", "--generations", 2)
    return out


# ----------------------------------------------------------------------------------------------
# 1-3: --force replaces only what the stage recorded as its own
@pytest.mark.parametrize("victim", ["supernet.pt", "supernet_init.pt", "config.json", "log.jsonl", "manifest.json",
                                    "foreign.json", "README.md"])  # fmt: skip
def test_search_out_force_never_replaces_another_file(trained, victim):
    (trained / "foreign.json").write_text('{"mine": 1}\n')
    (trained / "README.md").write_text("a clone's readme\n")
    before = listing(trained)
    res = call("search.py", "--ckpt", trained / "supernet.pt", "--generations", 1, "--out", trained / victim, "--force", check=False)  # noqa: E501
    one_line(res, "not written by search.py", "--out")
    assert listing(trained) == before
    # its own search.json is replaced with --force (and only then)
    call("search.py", "--ckpt", trained / "supernet.pt", "--generations", 1, "--out", trained / "search.json", "--force")
    assert json.load(open(trained / "search.json"))["stage"] == "search"


def test_force_judges_by_the_record_never_by_names(tmp_path):
    # a user's folder that looks like a run: config.json, plots, a search_history.json, log.jsonl
    user = tmp_path / "mine"
    user.mkdir()
    for name, text in [("config.json", "{}"), ("a.png", "png"), ("b.png", "png"), ("search_history.json", "[]"),
                       ("log.jsonl", "{}\n")]:  # fmt: skip
        (user / name).write_text(text)
    before = listing(tmp_path)
    one_line(call("train.py", *TINY, "--epochs", 1, "--out", user, "--force", check=False), "--force refused", "config.json")
    one_line(call("retrain.py", *RETRAIN, "--out", user, "--force", check=False), "--force refused")
    assert listing(tmp_path) == before
    # a train run is not retrain.py's to replace, and a retrain run not train.py's
    call("train.py", *TINY, "--epochs", 1, "--out", tmp_path / "sn")
    call("retrain.py", *RETRAIN, "--out", tmp_path / "rt")
    before = listing(tmp_path)
    one_line(call("retrain.py", *RETRAIN, "--out", tmp_path / "sn", "--force", check=False), "--force refused", "train.py run")
    one_line(call("train.py", *TINY, "--epochs", 1, "--out", tmp_path / "rt", "--force", check=False), "--force refused")
    assert listing(tmp_path) == before


def test_force_property_foreign_files_survive(tmp_path):
    """Run directories of each stage mixed with foreign files, symlinks (to files, to folders, dangling) and nested
    folders, in random combinations: --force either refuses in one line or replaces the stage's own files; every
    foreign file is byte-identical afterwards, and nothing outside the run directory changes."""
    rng = random.Random(0)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me\n")
    (outside / "dir").mkdir()
    (outside / "dir" / "deep.txt").write_text("deep\n")
    foreigners = {
        "notes.txt": lambda p: p.write_text("a user's notes\n"),
        "nested": lambda p: (p.mkdir(), (p / "inner.txt").write_text("inner\n")),
        "link_to_file": lambda p: p.symlink_to(outside / "precious.txt"),
        "link_to_dir": lambda p: p.symlink_to(outside / "dir"),
        "dangling": lambda p: p.symlink_to(tmp_path / "nowhere"),
        "supernet_ep99.pt": lambda p: p.write_bytes(b"not a checkpoint of the run"),
        "search_mine.json": lambda p: p.write_text('{"user": true}'),
    }
    stages = {
        "train.py": (TINY + ["--epochs", "1"], "supernet.pt"),
        "retrain.py": (RETRAIN, "retrain.pt"),
    }
    for trial in range(6):
        script = "train.py" if trial % 2 == 0 else "retrain.py"
        flags, marker = stages[script]
        out = tmp_path / f"run{trial}"
        call(script, *flags, "--out", out)
        chosen = rng.sample(sorted(foreigners), rng.randint(0, 3))
        for name in chosen:
            foreigners[name](out / name)
        if rng.random() < 0.5:  # a stage file replaced by a symlink to a user's file
            os.remove(out / "config.json")
            (out / "config.json").symlink_to(outside / "precious.txt")
            chosen.append("config.json")
        before_outside = listing(outside)
        before = listing(out)
        res = call(script, *flags, "--out", out, "--force", check=False)
        if chosen:
            one_line(res, "--force refused")
            assert listing(out) == before
        else:
            assert res.returncode == 0 and (out / marker).exists()
        after = listing(out)
        for name in chosen:
            for rel, data in before.items():
                if rel == name or rel.startswith(name + os.sep):
                    assert after[rel] == data, rel
        assert listing(outside) == before_outside


def test_search_outputs_of_a_run_go_with_it_user_plots_do_not(tmp_path):
    call("train.py", *TINY, "--epochs", 1, "--out", tmp_path / "sn")
    call("search.py", "--ckpt", tmp_path / "sn" / "supernet.pt", "--generations", 1)
    assert (tmp_path / "sn" / "search.json").exists()
    call("train.py", *TINY, "--epochs", 1, "--out", tmp_path / "sn", "--force")  # search.json: search.py's own
    assert not (tmp_path / "sn" / "search.json").exists()
    (tmp_path / "sn" / "tau_vs_epoch.png").write_bytes(b"\x89PNG a user's picture")
    one_line(call("train.py", *TINY, "--epochs", 1, "--out", tmp_path / "sn", "--force", check=False), "tau_vs_epoch.png")


# ----------------------------------------------------------------------------------------------
# 4: an interrupt anywhere in retrain's evaluation resumes to the uninterrupted run, report and log included
EVAL = "--arch |nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|".split()
EVAL += "--channels 8 --layers 1 --dataset fake --fake-images 24000 --subset 64 --image-size 16 --batch-size 32".split()
EVAL += "--workers 0 --epochs 2 --log-every 1".split()


def retrain_report(out):
    ckpt = load(out / "retrain.pt")
    return ckpt["test_top1"], ckpt["test_top5"], log_without_timing(out / "log.jsonl")


@pytest.fixture(scope="module")
def eval_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalref") / "rt"
    res = call("retrain.py", *EVAL, "--out", out)
    return out, res.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("sig, delay", [(signal.SIGKILL, 0.0), (signal.SIGKILL, 0.3), (signal.SIGKILL, 0.8),
                                        (signal.SIGINT, 0.1), (signal.SIGINT, 0.6)])  # fmt: skip
def test_interrupt_during_the_last_evaluation_then_resume(eval_reference, tmp_path, sig, delay):
    ref, done_line = eval_reference
    out = tmp_path / "rt"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "retrain.py"), *EVAL, "--out", str(out)],
                            env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    for line in proc.stdout:  # the last training step of the last epoch: its test starts now
        if line.startswith("epoch 2/2 | step 2/2"):
            break
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    proc.wait()
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted (Ctrl-C)" in proc.stderr.read()
    res = call("retrain.py", "--resume", "--out", out)
    assert retrain_report(out) == retrain_report(ref)
    assert_same_weights_and_momentum(load(ref / "retrain.pt"), load(out / "retrain.pt"))
    assert res.stdout.strip().splitlines()[-1].replace(str(out), "OUT") == done_line.replace(str(ref), "OUT")


def test_one_epoch_retrain_interrupted_in_its_test_resumes(tmp_path):
    flags = [("1" if a == "2" and EVAL[i - 1] == "--epochs" else a) for i, a in enumerate(EVAL)]
    ref = tmp_path / "ref"
    call("retrain.py", *flags, "--out", ref)
    out = tmp_path / "rt"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "retrain.py"), *flags, "--out", str(out)],
                            env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    for line in proc.stdout:
        if line.startswith("epoch 1/1 | step 2/2"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    call("retrain.py", "--resume", "--out", out)
    assert retrain_report(out) == retrain_report(ref)


# ----------------------------------------------------------------------------------------------
# 5: search.py --resume checks what it reads back
def edited_search(trained, tmp_path, change):
    flags = ["--ckpt", trained / "supernet.pt", "--generations", 3, "--seed", 5]
    call("search.py", *flags, "--out", tmp_path / "s.json")
    state = json.load(open(tmp_path / "s.json"))
    state.update(done=False)
    change(state)
    with open(tmp_path / "s.json", "w") as f:
        json.dump(state, f)
    return flags


@pytest.mark.parametrize("what, change, words", [
    ("above pi", lambda s: s["evaluated"][0].__setitem__(1, 9.0), ["outside 0..3.14159"]),
    ("NaN", lambda s: s["evaluated"][0].__setitem__(1, float("nan")), ["nan"]),
    ("listed twice", lambda s: s["evaluated"].append([s["evaluated"][0][0], 3.0]), ["listed twice"]),
    ("a plausible edit", lambda s: s["evaluated"][3].__setitem__(1, s["evaluated"][3][1] + 0.5), ["was edited"]),
    ("a string", lambda s: s["evaluated"][0].__setitem__(1, "1.0"), ["outside"]),
])  # fmt: skip
def test_search_resume_refuses_edited_scores(trained, tmp_path, what, change, words):
    flags = edited_search(trained, tmp_path, change)
    before = listing(tmp_path)
    one_line(call("search.py", *flags, "--out", tmp_path / "s.json", "--resume", check=False), *words)
    assert listing(tmp_path) == before


# ----------------------------------------------------------------------------------------------
# 6: every run that writes holds the lock, on every path
SLOW = tiny_flags(images=640, batch=16) + ["--log-every", "1000", "--epochs", "200"]


def started(ready, *args, cwd=None):
    """A train.py process, once ready() holds."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *map(str, args)], env=script_env(), cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    t0 = time.time()
    while not ready():
        assert proc.poll() is None and time.time() - t0 < 120, proc.stderr.read()[-2000:]
        time.sleep(0.02)
    return proc


def lock_held(out) -> bool:
    """Does another process hold the run's lock? (Tried, and let go at once.)"""
    import fcntl

    try:
        fd = os.open(out / "run.lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_two_resumes_of_one_run_never_run_together(tmp_path):
    out = tmp_path / "run"
    first = started(lambda: (out / "supernet.pt").exists(), *SLOW, "--out", out)
    first.send_signal(signal.SIGKILL)  # a run stopped after its first epoch ...
    first.wait()
    (out / "notes.txt").write_text("a user's file inside the run directory\n")
    os.remove(out / "run.lock")  # ... whose lock file is gone, a user's file beside it
    resumed = started(lambda: lock_held(out), "--resume", "--out", ".", cwd=out)  # resumed from inside it: --out .
    try:
        one_line(call("train.py", "--resume", "--out", ".", cwd=out, check=False), "in use", "run.lock")
        one_line(call("train.py", "--resume", "--out", out, check=False), "in use", "run.lock")
        assert resumed.poll() is None
    finally:
        resumed.send_signal(signal.SIGKILL)
        resumed.wait()
    assert (out / "notes.txt").read_text() == "a user's file inside the run directory\n"
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, len(lines) + 1))  # one run wrote it


@pytest.mark.parametrize("kind", ["directory", "dangling link", "link to a user's file"])
def test_a_lock_that_is_not_a_lock_file_is_one_line(tmp_path, kind):
    out = tmp_path / "run"
    call("train.py", *TINY, "--epochs", 1, "--out", out)
    (tmp_path / "user.txt").write_text("mine\n")
    os.remove(out / "run.lock")
    if kind == "directory":
        (out / "run.lock").mkdir()
    elif kind == "dangling link":
        (out / "run.lock").symlink_to(tmp_path / "nowhere")
    else:
        (out / "run.lock").symlink_to(tmp_path / "user.txt")
    before = listing(tmp_path)
    one_line(call("train.py", "--resume", "--out", out, check=False), "run.lock", "not the run's lock file")
    assert listing(tmp_path) == before and (tmp_path / "user.txt").read_text() == "mine\n"


# ----------------------------------------------------------------------------------------------
# 7: torchrun's variables set wrongly
@pytest.mark.parametrize("env, words", [
    ({"RANK": "0", "WORLD_SIZE": "2"}, ["LOCAL_RANK is not"]),
    ({"RANK": "abc", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, ["RANK='abc'", "not an integer"]),
    ({"RANK": "0", "LOCAL_RANK": "x", "WORLD_SIZE": "2"}, ["LOCAL_RANK='x'"]),
    ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, ["MASTER_ADDR and MASTER_PORT are not"]),
    ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, ["WORLD_SIZE=0"]),
    ({"RANK": "3", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, ["RANK=3", "WORLD_SIZE=2"]),
    ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "x", "MASTER_PORT": "http"}, ["MASTER_PORT"]),
])  # fmt: skip
def test_wrong_torchrun_variables_are_one_line(tmp_path, monkeypatch, env, words):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(cli.UsageError) as e:
        distributed.setup("cpu", "gloo", 1.0)
    assert "torchrun sets" in str(e.value) and all(w in str(e.value) for w in words), str(e.value)
    res = call("train.py", *TINY, "--epochs", 1, "--out", tmp_path / "x", check=False)
    one_line(res, *words)
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------
# 8, 9: Ctrl-C while torch loads; a closed or full stdout
@pytest.mark.parametrize("script", ["train.py", "search.py", "retrain.py"])
def test_ctrl_c_during_the_imports_is_one_line(script):
    for delay in (0.15, 0.4):
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, script), "--help"], env=script_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        if proc.returncode == 0:  # --help was printed before the signal came: too late to test at this delay
            continue
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 130 and len(lines) == 1 and "Traceback" not in err, (delay, err)
        assert "interrupted (Ctrl-C)" in lines[0]


def test_a_closed_or_full_stdout_costs_no_result(trained, tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "search.py"), "--ckpt", str(trained / "supernet.pt"), "--generations", "4"]
    pipe = subprocess.run(" ".join([*cmd, "--out", str(tmp_path / "a.json"), "| head -1"]), shell=True, env=script_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "Traceback" not in pipe.stderr and len(pipe.stdout.splitlines()) == 1, pipe.stderr
    assert json.load(open(tmp_path / "a.json"))["done"]
    full = subprocess.run(" ".join([*cmd, "--out", str(tmp_path / "b.json"), "> /dev/full"]), shell=True, env=script_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert full.returncode == 0 and "Traceback" not in full.stderr, full.stderr
    assert json.load(open(tmp_path / "b.json"))["winner"] == json.load(open(tmp_path / "a.json"))["winner"]


# ----------------------------------------------------------------------------------------------
# 11, 13 and the messages that named the wrong cause
def test_files_that_are_not_regular_files(trained, tmp_path):
    before = listing(trained)
    one_line(call("search.py", "--ckpt", "/dev/zero", "--out", tmp_path / "s.json", check=False), "/dev/zero", "not a regular file")  # noqa: E501
    os.mkdir(tmp_path / "supernet_init.pt")
    one_line(call("search.py", "--ckpt", trained / "supernet.pt", "--w0", tmp_path / "supernet_init.pt", "--out",
                  tmp_path / "s.json", check=False), "is a directory")  # fmt: skip
    os.mkfifo(tmp_path / "bench.csv")
    with deadline(60):
        one_line(call("search.py", "--ckpt", trained / "supernet.pt", "--benchmark", tmp_path / "bench.csv", "--out",
                      tmp_path / "s.json", check=False), "bench.csv", "FIFO")  # fmt: skip
    fifo_run = tmp_path / "fifo"
    call("train.py", *TINY, "--epochs", 1, "--out", fifo_run)
    os.remove(fifo_run / "log.jsonl")
    os.mkfifo(fifo_run / "log.jsonl")
    t0 = time.time()
    one_line(call("train.py", "--resume", "--out", fifo_run, check=False), "log.jsonl", "FIFO")
    assert time.time() - t0 < 60 and listing(trained) == before


class deadline:
    """A test that would hang (a FIFO read) fails after `seconds` instead: SIGALRM raises in the main thread."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __enter__(self):
        def expire(signum, frame):
            raise AssertionError(f"still running after {self.seconds} s: it waits on something")

        self.old = signal.signal(signal.SIGALRM, expire)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


def test_data_files_that_are_not_regular_files(tmp_path):
    from test_safety import write_folder, write_imagenet16

    write_folder(tmp_path / "imgs", {})
    victim = tmp_path / "imgs" / "train" / "a" / "1.png"
    os.remove(victim)
    os.mkfifo(victim)
    before = listing(tmp_path)
    flags = ["--dataset", "folder", "--data", tmp_path / "imgs", "--image-size", 8, "--channels", 4, "--layers", 1,
             "--batch-size", 4, "--workers", 0, "--epochs", 1, "--out", tmp_path / "run"]  # fmt: skip
    with deadline(60):
        line = one_line(call("train.py", *flags, check=False), "1.png", "FIFO")
    assert "remove it" in line
    assert not (tmp_path / "run" / "supernet.pt").exists()
    write_imagenet16(tmp_path / "in16")
    os.remove(tmp_path / "in16" / "train_data_batch_3")
    os.mkfifo(tmp_path / "in16" / "train_data_batch_3")
    flags = ["--dataset", "imagenet16-120", "--data", tmp_path / "in16", "--channels", 4, "--layers", 1, "--workers", 0,
             "--epochs", 1, "--out", tmp_path / "run16"]  # fmt: skip
    with deadline(60):
        one_line(call("train.py", *flags, check=False), "train_data_batch_3", "FIFO")
    after = listing(tmp_path)
    assert {k: v for k, v in after.items() if k.startswith("imgs")} == before  # the dataset untouched
    assert not any(k.startswith("run16" + os.sep) and k.endswith(".pt") for k in after)  # no checkpoint written


def test_fake_data_larger_than_the_machine(tmp_path):
    before = listing(tmp_path)
    res = call("train.py", "--dataset", "fake", "--fake-images", 10**6, "--image-size", 1024, "--out", tmp_path / "big",
               check=False)  # fmt: skip
    line = one_line(res, "--fake-images", "GiB", "lower --fake-images or --image-size")
    assert "2,929.7 GiB of memory" in line  # 10**6 x 3 x 1024 x 1024 bytes
    assert listing(tmp_path) == before  # no run directory left behind


def test_an_empty_test_split_is_named_not_a_divergence(tmp_path):
    import pickle

    from test_safety import write_imagenet16

    write_imagenet16(tmp_path / "in16")
    with open(tmp_path / "in16" / "val_data", "wb") as f:
        pickle.dump({"data": np.zeros((3, 768), np.uint8), "labels": [121, 500, 1000]}, f)  # none of the 120 classes
    before = listing(tmp_path)
    res = call("retrain.py", "--arch", ARCH, "--dataset", "imagenet16-120", "--data", tmp_path / "in16", "--channels", 4,
               "--layers", 1, "--workers", 0, "--epochs", 1, "--out", tmp_path / "r", check=False)  # fmt: skip
    line = one_line(res, "test split", "holds no images", "--data")
    assert "diverged" not in line
    assert listing(tmp_path) == before


ARCH = "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|none~1|skip_connect~2|"


def test_population_the_run_cannot_hold(tmp_path):
    out = tmp_path / "mb"
    call("train.py", "--space", "mobilenet", "--width", "0.125", "--dataset", "fake", "--fake-images", 32, "--image-size",
         32, "--batch-size", 32, "--workers", 0, "--epochs", 1, "--out", out)  # fmt: skip
    before = listing(tmp_path)
    res = call("search.py", "--ckpt", out / "supernet.pt", "--population", 10**9, "--max-flops", 1000, check=False)
    one_line(res, "--population", "GiB")
    assert listing(tmp_path) == before


def test_messages_name_the_right_cause(tmp_path, trained):
    # an image deleted from a folder dataset between a run and its resume
    from test_safety import write_folder

    write_folder(tmp_path / "imgs", {})
    flags = ["--dataset", "folder", "--data", tmp_path / "imgs", "--image-size", 8, "--channels", 4, "--layers", 1,
             "--batch-size", 4, "--workers", 0, "--epochs", 2, "--save-every-steps", 1]  # fmt: skip
    call("train.py", *flags, "--epochs", 1, "--out", tmp_path / "f")
    victim = sorted((tmp_path / "imgs" / "train").rglob("*.png"))[0]
    os.remove(victim)
    line = one_line(call("train.py", "--resume", "--out", tmp_path / "f", check=False), "images now", "removed")
    assert "other labels" not in line
    # the auxiliary head at a size that is not too small
    res = call("retrain.py", "--genotype", GENOTYPE, "--channels", 4, "--layers", 3, "--image-size", 1024, "--count-only",
               "--aux-weight", 0.4, check=False)  # fmt: skip
    assert res.returncode == 0  # --count-only builds no auxiliary head check; the run does:
    res = call("retrain.py", "--genotype", GENOTYPE, "--channels", 4, "--layers", 3, "--image-size", 64, "--dataset", "fake",
               "--fake-images", 8, "--epochs", 1, "--out", tmp_path / "aux", check=False)  # fmt: skip
    one_line(res, "does not fit the auxiliary head", "--image-size 32")
    # a 1 MB --arch is not echoed in full
    res = call("retrain.py", "--arch", "|" + "x" * 10**6, "--count-only", check=False)
    assert len(one_line(res)) < 1000


GENOTYPE = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)


def test_concurrent_searches_on_one_folder(trained, tmp_path):
    flags = ["--ckpt", trained / "supernet.pt", "--generations", 400, "--population", 12, "--topk", 4, "--mutations", 6,
             "--crossovers", 6]  # fmt: skip
    proc = start("search.py", *flags, "--out", tmp_path / "a.json")
    try:
        t0 = time.time()
        while not (tmp_path / "a.json").exists():
            assert proc.poll() is None and time.time() - t0 < 60
            time.sleep(0.02)
        one_line(call("search.py", *flags, "--out", tmp_path / "b.json", check=False), "another search.py is writing")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "b.json").exists()


# ----------------------------------------------------------------------------------------------
# 2, 12: the course kit. make_assignment.py --force renews only a student copy it wrote, and there only the files it
# recorded (student_copy.json), unchanged since; --grade stops a student's endless loop at a time limit
KIT = make_assignment


def kit_copy(out, numbers=range(1, 7)):
    """A student copy written by the kit (it only reads the repository)."""
    call("make_assignment.py", "--out", out, "--exercises", ",".join(map(str, numbers)))
    return out


def kit_files(numbers) -> dict:
    """{path: bytes}: what the kit writes into a copy with these exercises removed."""
    return KIT.student_files(ROOT, set(numbers))[0]


def git(*args):
    subprocess.run(["git", "-c", "user.name=kit", "-c", "user.email=kit@example.com", *map(str, args)], check=True,
                   capture_output=True)  # fmt: skip


@pytest.fixture
def kit_repo(tmp_path, monkeypatch):
    """A temporary copy of the repository that the kit takes for its own: never the real one (a refusal that did not
    happen would delete this copy)."""
    repo = tmp_path / "repo"
    for rel in KIT.repository_files(ROOT):
        os.makedirs((repo / rel).parent, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), repo / rel)
    monkeypatch.setattr(KIT, "ROOT", os.path.realpath(repo))
    monkeypatch.setattr(rundir, "ROOT", os.path.realpath(repo))
    return repo


def test_kit_force_refuses_another_git_clone(tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    shutil.copy2(os.path.join(ROOT, "make_assignment.py"), origin)  # the one thing the kit used to look for
    (origin / "README.md").write_text("another project\n")
    git("init", "-q", origin)
    git("-C", origin, "add", ".")
    git("-C", origin, "commit", "-q", "-m", "first")
    git("clone", "-q", origin, tmp_path / "clone")
    (tmp_path / "clone" / "draft.txt").write_text("uncommitted work\n")
    kit_copy(tmp_path / "versioned")  # a student copy its student put under git: a work tree, whatever it holds
    git("init", "-q", tmp_path / "versioned")
    before = listing(tmp_path, folders=True)
    for name in ("clone", "versioned"):
        res = call("make_assignment.py", "--out", tmp_path / name, "--force", check=False)
        one_line(res, f"--out {tmp_path / name} already exists and is not a student copy", "git repository", "another --out")
        assert listing(tmp_path, folders=True) == before


def test_kit_force_refuses_the_repository_its_parents_and_protected_folders(kit_repo, tmp_path, monkeypatch):
    (tmp_path / "up").symlink_to(kit_repo.parent)  # a symlinked parent: up/repo is the repository
    home = kit_copy(tmp_path / "home")  # a home folder and a current folder that are genuine student copies
    here = kit_copy(tmp_path / "here")
    monkeypatch.setenv("HOME", str(home))
    cases = [
        (tmp_path / "up" / "repo", None, ["the repository itself", f"resolves to {os.path.realpath(kit_repo)}"]),
        (kit_repo / "tests" / "..", None, ["the repository itself"]),
        (kit_repo, None, ["the repository itself"]),
        (".", kit_repo, ["the repository itself"]),
        (".", kit_repo / "tests", ["inside the repository"]),
        (kit_repo / "student", None, ["inside the repository"]),
        (tmp_path, None, ["a parent of the repository"]),
        ("..", kit_repo, ["a parent of the repository"]),
        (os.sep, None, ["a parent of the repository"]),
        (".", here, ["the current directory"]),
        (home, None, ["a home or root directory"]),
    ]
    before = listing(tmp_path, folders=True)
    for out, cwd, words in cases:
        for force in (["--force"], []):
            res = call("make_assignment.py", "--out", out, *force, cwd=cwd, check=False)
            one_line(res, *words, "--out")
            assert listing(tmp_path, folders=True) == before, (out, force)


def test_kit_out_that_is_not_a_folder_is_one_line(tmp_path):
    copy = kit_copy(tmp_path / "copy")
    (tmp_path / "file.txt").write_text("a user's file\n")
    (tmp_path / "link").symlink_to(copy)  # a symlink to a genuine student copy
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "fifo")
    before = listing(tmp_path, folders=True)
    for out, words in [(tmp_path / "file.txt", ["is a file, not a folder"]), (tmp_path / "link", ["is a symbolic link"]),
                       (f"{tmp_path / 'link'}/", ["is a symbolic link"]), (tmp_path / "dangling", ["is a symbolic link"]),
                       (tmp_path / "fifo", ["is a FIFO, not a folder"])]:  # fmt: skip
        for force in (["--force"], []):
            t0 = time.time()
            one_line(call("make_assignment.py", "--out", out, *force, check=False), *words, "--out")
            assert time.time() - t0 < 30 and listing(tmp_path, folders=True) == before, out


def test_kit_force_renews_its_own_files_and_keeps_the_students(tmp_path):
    copy = kit_copy(tmp_path / "copy")
    mine = {"notes.txt": b"my notes\n", "mine/plan.md": b"a plan\n", "tests/test_mine.py": b"def test_mine():\n    pass\n",
            "docs/drafts/idea.md": b"an idea\n"}  # fmt: skip
    for rel, data in mine.items():
        os.makedirs((copy / rel).parent, exist_ok=True)
        (copy / rel).write_bytes(data)
    (copy / "empty").mkdir()
    call("make_assignment.py", "--out", copy, "--exercises", "2,5", "--force")
    after = listing(copy, folders=True)
    tool = kit_files({2, 5})
    folders = {folder: ("dir",) for rel in [*tool, *mine, "empty/x"] for folder in KIT.parents(rel)}
    assert after == {**tool, **mine, **folders, "empty": ("dir",), KIT.MANIFEST: after[KIT.MANIFEST]}  # nothing stray
    assert KIT.pending(copy) == {2, 5} and set(KIT.read_manifest(copy)["files"]) == set(tool)
    # a student's change to a file the kit wrote: refused, nothing touched, until it is the kit's again (--restore)
    with open(copy / "angle.py", "a") as f:
        f.write("# my solution of exercise 5\n")
    before = listing(tmp_path, folders=True)
    one_line(call("make_assignment.py", "--out", copy, "--force", check=False), "angle.py, changed since", "move that out")
    assert listing(tmp_path, folders=True) == before
    (copy / "angle.py").write_bytes(tool["angle.py"])
    call("make_assignment.py", "--restore", copy, "--exercises", 5)  # the reference put back by the kit: its file
    call("make_assignment.py", "--out", copy, "--force")
    assert KIT.pending(copy) == set(range(1, 7)) and all((copy / rel).read_bytes() == data for rel, data in mine.items())


def test_kit_force_removes_only_the_empty_folders_it_created(kit_repo, tmp_path):
    copy = kit_copy(tmp_path / "copy")  # from the temporary repository
    (copy / "benchmarks" / "mine.txt").write_text("a student's file in a folder the kit created\n")
    (copy / "results").mkdir()  # a student's empty folder
    before = listing(copy, folders=True)
    shutil.rmtree(kit_repo / "docs")  # the repository no longer has these two folders
    shutil.rmtree(kit_repo / "benchmarks")
    call("make_assignment.py", "--out", copy, "--force")
    gone = {rel for rel in before if rel == "docs" or rel.startswith(("docs/", "benchmarks/"))} - {"benchmarks/mine.txt"}
    kept = {rel: data for rel, data in before.items() if rel not in gone and rel != KIT.MANIFEST}
    assert {rel: data for rel, data in listing(copy, folders=True).items() if rel != KIT.MANIFEST} == kept
    assert kept["benchmarks"] == kept["results"] == ("dir",) and "docs/method.md" in gone


def test_kit_force_property_foreign_files_survive(tmp_path):
    """Student copies mixed with foreign files, symlinks (to files, to folders, dangling), FIFOs and nested folders,
    in random combinations, sometimes with a file or folder of the kit's changed: --force either refuses in one line
    with everything as it was, or renews exactly the kit's files; every foreign entry is byte-identical afterwards,
    and nothing outside the copy changes."""
    rng = random.Random(0)
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "precious.txt").write_text("keep me\n")
    (outside / "dir" / "deep.txt").write_text("deep\n")

    def folder(p):
        (p / "sub").mkdir(parents=True)
        (p / "sub" / "inner.txt").write_text("inner\n")

    foreigners = {
        "notes.txt": lambda p: p.write_text("a user's notes\n"),
        "mine": folder,
        "tests/test_mine.py": lambda p: p.write_text("def test_mine():\n    pass\n"),
        "docs/drafts": folder,
        "tests/__pycache__": lambda p: (p.mkdir(), (p / "x.pyc").write_bytes(b"\0pyc")),
        "link_to_file": lambda p: p.symlink_to(outside / "precious.txt"),
        "tests/link_to_dir": lambda p: p.symlink_to(outside / "dir"),
        "dangling": lambda p: p.symlink_to(tmp_path / "nowhere"),
        "empty": lambda p: p.mkdir(),
        "fifo": lambda p: os.mkfifo(p),
        "student_copy.json.tmp": lambda p: p.write_text("a user's file of an unlucky name\n"),
    }

    def replace(rel, make):
        def change(copy):
            os.rename(copy / rel, copy / f"{rel}.moved")  # the original stays, as a foreign entry
            make(copy / rel)

        return change

    conflicts = {  # each makes --force refuse: it would have to remove or write over what is not the kit's
        "a file edited": lambda copy: open(copy / "angle.py", "a").write("# mine\n"),
        "a file replaced by a link": replace("README.md", lambda p: p.symlink_to(outside / "precious.txt")),
        "a folder replaced by a link": replace("docs", lambda p: p.symlink_to(outside / "dir")),
        "a file replaced by a folder": replace("cli.py", folder),
        "a file replaced by a FIFO": replace("ASSIGNMENTS.md", os.mkfifo),
        "the record edited": lambda copy: (copy / KIT.MANIFEST).write_text('{"stage": "mine"}'),
    }
    outcomes = set()
    for trial in range(10):
        copy = tmp_path / f"copy{trial}"
        old = sorted(rng.sample(range(1, 7), rng.randint(1, 6)))
        new = sorted(rng.sample(range(1, 7), rng.randint(1, 6)))
        kit_copy(copy, old)
        for rel in rng.sample(sorted(foreigners), rng.randint(0, len(foreigners))):
            foreigners[rel](copy / rel)
        conflict = rng.choice([None, None, *sorted(conflicts)])
        if conflict:
            conflicts[conflict](copy)
        before, before_outside = listing(copy, folders=True), listing(outside, folders=True)
        res = call("make_assignment.py", "--out", copy, "--exercises", ",".join(map(str, new)), "--force", check=False)
        after = listing(copy, folders=True)
        if conflict:
            one_line(res, f"--out {copy}", "another --out")
            assert after == before, conflict
        else:
            assert res.returncode == 0, res.stderr
            assert {rel: data for rel, data in after.items() if rel in kit_files(old)} == kit_files(new)
        foreign = {rel: data for rel, data in before.items() if rel not in kit_files(old) and rel != KIT.MANIFEST}
        assert {rel: after.get(rel) for rel in foreign} == foreign  # every foreign entry as it was
        assert set(after) == set(foreign) | set(kit_files(old)) | {KIT.MANIFEST}  # and nothing stray
        assert listing(outside, folders=True) == before_outside
        outcomes.add(conflict)
    assert None in outcomes and len(outcomes) >= 4  # both renewals and refusals were seen


def processes(folder, token) -> list[str]:
    """The live processes working in `folder`, or with `token` on their command line (zombies have neither)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:  # gone meanwhile, or not ours to look at
            continue
        if token in cmdline or KIT.inside(cwd, os.path.realpath(folder)):
            found.append(f"{pid}: {cmdline}")
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the processes left through /proc")
def test_kit_grade_stops_an_endless_loop_at_the_time_limit(tmp_path, monkeypatch):
    copy = kit_copy(tmp_path / "copy", [1])
    started = tmp_path / "started"  # outside the copy: the copy's listing must not change
    loop = ["import subprocess, sys",
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', {str(started)!r}])",
            f"open({str(started)!r}, 'w').close()", "while True:", "    pass"]  # fmt: skip
    text = (copy / "random_labels.py").read_text()
    stub = re.search(r'^( *)raise NotImplementedError\("Exercise 1: .*$', text, re.M)
    (copy / "random_labels.py").write_text(text.replace(stub[0], "\n".join(stub[1] + line for line in loop)))
    monkeypatch.setattr(KIT, "ROOT", os.path.realpath(copy))  # grading in the copy, as its student does
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # the copy's listing stays as it was: no __pycache__ ...
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:benchmark")  # ... and no .benchmarks, if pytest-benchmark is installed
    before = listing(copy, folders=True)
    t0 = time.time()
    res = call("make_assignment.py", "--grade", 1, "--time-limit", 5, check=False)
    one_line(res, "grading exercise 1 stopped at its time limit of 5 s", "--time-limit SECONDS", status=124)
    assert time.time() - t0 < 40 and started.exists()  # the loop ran (and started a process of its own)
    t0 = time.time()
    while processes(copy, str(started)) and time.time() - t0 < 10:  # SIGKILL is prompt, not instantaneous
        time.sleep(0.1)
    assert processes(copy, str(started)) == []  # the whole process group went: pytest and what the loop started
    assert listing(copy, folders=True) == before
    for bad in ("0", "-5", "nan", "inf", "soon"):
        one_line(call("make_assignment.py", "--grade", 1, "--time-limit", bad, check=False), "--time-limit")
    one_line(call("make_assignment.py", "--list", "--time-limit", 5, check=False), "--time-limit applies to --grade only")
