"""Interrupts and concurrent runs: two runs on one --out (the run directory's lock), a run killed before its first
checkpoint, Ctrl-C (SIGINT) and SIGTERM: one line saying where it stopped and how to resume, then --resume ends
bit-identical to an uninterrupted run."""

import fcntl
import os
import signal
import time

from test_errors import assert_user_error
from test_reliability import LONG, start
from test_scripts import run

SLOW = [*LONG[:-1], "200"]  # 200 epochs: minutes, so it is still running when the second run starts


def files(folder) -> dict:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_second_run_on_the_same_out_fails_on_the_lock(tmp_path):
    out = tmp_path / "run"
    proc = start("train.py", *SLOW, "--out", out)
    try:
        t0 = time.time()
        while not (out / "config.json").exists():
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
