"""Calling a stage script in-process: what `python train.py ARGS` does, without starting Python and torch again.

`call("train.py", *args)` runs the script's main() under cli.run, exactly as its `if __name__ == "__main__"` does, and
returns what a subprocess would: the exit status, stdout and stderr. A test that only needs the exit status, the one
line on stderr and the files on disk uses it; signals, exit codes 130/143, SIGKILL, two processes on one lock,
torchrun and import-time behaviour keep a real process (test_scripts.run).
"""

import contextlib
import importlib
import io
import os
from dataclasses import dataclass

import torch

import cli


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def call(script: str, *args, cwd=None, check: bool = True) -> Result:
    module = importlib.import_module(os.path.splitext(script)[0])
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    # the process-wide torch settings a run may change (--deterministic): put back, as a new process would start
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.run(module.main, [str(a) for a in args])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, (int, type(None))):
                    print(e.code, file=err)
    finally:
        os.chdir(here)
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]
    res = Result(code, out.getvalue(), err.getvalue())
    if check and res.returncode != 0:
        raise AssertionError(f"{script} {args} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res
