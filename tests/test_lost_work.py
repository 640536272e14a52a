"""Nothing the program did not write is ever replaced, and no resume can be fooled (the full tier).

Each case: the command, its exit status, one line on stderr, and the folders involved listed byte for byte before
and after (nothing lost, nothing stray). In-process (helpers.call) where a process adds nothing; a real process for
signals, two processes on one lock, a closed stdout and the imports.
"""

import json
import os
import random
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
                      tmp_path / "s.json", check=False), "bench.csv", "FIFO", "accuracy CSV")  # fmt: skip
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
