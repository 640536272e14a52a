"""
BOILERPLATE shared by the three stage scripts (train.py, search.py, retrain.py).

Nothing here is part of the method. It is the plumbing a long research run needs, written once:
one-line errors for user mistakes (exit status 2, no traceback), the argument parser and the recipe
tables' defaults (shown in --help), atomic checkpoint writes, safe checkpoint loading
(weights_only=True), the torchrun/DDP set-up, the SGD of the recipes, and progress lines with a rate
and an ETA. Run directories and the exact resume of train.py and retrain.py are in checkpoint.py.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import hashlib
import inspect
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import torch
import torch.distributed as dist


class UsageError(Exception):
    """A mistake the user can fix (bad flag value, missing file, mismatched checkpoint): one line, exit 2."""


def run(main, *user_errors: type[Exception]) -> None:
    """Run a script's main(); turn user mistakes into one line on stderr and exit status 2.

    Under torchrun, a rank that loses its peers (one crashed, or hangs past --dist-timeout) also ends with one
    line and status 1 instead of a traceback per rank; the run resumes from its last checkpoint with --resume.
    Any other failure of the distributed layer (an NCCL set-up error, a rendezvous that fails) is one line and
    status 1 too, named as what it is. Either line carries the error's own cause, condensed to one line.
    """
    name = os.path.basename(sys.argv[0])
    signal.signal(signal.SIGTERM, _on_sigterm)  # torchrun's own handler replaces it on its ranks (setup_distributed)
    try:
        main()
    except (UsageError, *user_errors) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, Interrupted) as err:
        signame = "SIGTERM" if isinstance(err, Interrupted) else "Ctrl-C"
        where = f" at epoch {STOP['epoch']} step {STOP['step']}" if STOP["epoch"] else ""
        saved = f"; saved {STOP['saved']} at this step" if STOP["saved"] else ""
        hint = f"resume with: {STOP['resume']}" if STOP["resume"] else "nothing was written yet: run the command again"
        if MASTER:
            print(f"{name}: interrupted ({signame}){where}{saved}; {hint}", file=sys.stderr, flush=True)
        sys.exit(143 if isinstance(err, Interrupted) else 130)  # 128 + the signal's number, as a shell reports it
    except RuntimeError as err:  # dist.DistError and its subclasses are RuntimeErrors too
        if "does not have a deterministic implementation" in str(err):  # raised under --deterministic
            print(
                f"{name}: error: --deterministic: {_one_line(err)}; drop --deterministic for this network",
                file=sys.stderr,
            )
            sys.exit(2)
        kind = _dist_failure(err)
        if kind is None:
            raise  # a bug, not the distributed layer: keep the traceback
        rank = os.environ.get("RANK", "?")
        if kind == "peer":
            what = f"rank {rank} lost contact with the other ranks"
            fix = "restart the same command with --resume to continue from the last checkpoint"
        else:
            what = f"rank {rank}: the distributed layer failed"
            fix = (
                "this is not a lost peer: fix its cause (NCCL_DEBUG=INFO prints NCCL's own details), then restart "
                "the same command (with --resume if a checkpoint was written)"
            )
        print(f"{name}: error: {what} ({_one_line(err)}); {fix}", file=sys.stderr)
        sys.exit(1)


class Interrupted(BaseException):
    """SIGTERM (what cluster schedulers send before they kill a job), raised where the run can stop cleanly."""


# Where an interrupt stops the run, for its one line: the training loops (Progress) fill epoch and step, the stage
# scripts the command that resumes it once the run directory exists, and the checkpoint written on SIGTERM.
# "armed": inside a training loop SIGTERM only sets "pending", and the loop stops after the step it is in, once it
# has saved a checkpoint there (stop_requested); anywhere else it stops the program at once.
STOP = {"armed": False, "pending": False, "epoch": 0, "step": 0, "resume": None, "saved": None}


def _on_sigterm(signum, frame):
    if STOP["armed"]:
        STOP["pending"] = True
    else:
        raise Interrupted()


def stop_requested() -> bool:
    """Has SIGTERM arrived during the training loop? The loop then saves a checkpoint and raises Interrupted."""
    return STOP["pending"]


# Words of the errors a rank sees when another one died or hangs: gloo's "Connection closed by peer", a reset
# socket, NCCL's "remote process exited", a collective or store that timed out (--dist-timeout).
_PEER_WORDS = ("connection closed", "connection reset", "broken pipe", "remote process", "timed out", "timeout")
# Words that mark an error of the distributed layer when it is not a torch.distributed.DistError.
_DIST_WORDS = ("nccl", "gloo", "c10d", "processgroup", "rendezvous")


def _dist_failure(err: Exception) -> str | None:
    """'peer' if this error means another rank died or hung, 'dist' for any other failure of the distributed layer
    (e.g. an NCCL set-up error on this machine), None for everything else (a bug: keep its traceback)."""
    text = _full_text(err).lower()
    distributed = isinstance(err, dist.DistError) or (
        dist.is_available() and dist.is_initialized() and any(w in text for w in _DIST_WORDS + _PEER_WORDS)
    )
    if not distributed:
        return None
    return "peer" if _peer_failure(err) else "dist"


def _peer_failure(err: Exception) -> bool:
    """Does this error mean another rank died or hung (gloo/NCCL connection closed, collective timed out)?"""
    text = _full_text(err).lower()
    return any(w in text for w in _PEER_WORDS)


def _full_text(err: BaseException) -> str:
    """The error's message and those of the errors it was raised from (`raise ... from`, or during handling)."""
    parts, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        parts.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def _one_line(err: BaseException, limit: int = 400) -> str:
    """The error and its causes as one line: every non-empty line of the messages joined by ' | ', whitespace
    collapsed. Beyond `limit` characters the middle goes, not the end: NCCL puts the real cause ("Last error:
    socket startup failed") after a long first line that only names the source file."""
    lines = [" ".join(line.split()) for line in _full_text(err).splitlines()]
    text = " | ".join(line for line in lines if line)
    if len(text) > limit:
        text = f"{text[: limit // 2 - 3]} ... {text[-(limit // 2 - 2) :]}"
    return text


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag prints one line (not the whole usage block) and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def show_recipes(self, recipes: dict) -> None:
        """--help: end the help of every flag a recipe fills with its value per recipe, e.g.
        "(recipe: nb201 0.025, darts-cifar 0.025, darts-imagenet 0.1, mobilenet 0.25)"."""
        spaces = [space for space, _ in recipes]
        for action in self._actions:
            values = [
                f"{space if spaces.count(space) == 1 else f'{space}-{variant}'} {_shown(recipe[action.dest])}"
                for (space, variant), recipe in recipes.items()
                if action.dest in recipe
            ]
            if values:
                action.help = f"{action.help} (recipe: {', '.join(values)})"

    def add_run_flags(self) -> None:
        """The "speed" and "distributed (torchrun) and device" groups that train.py and retrain.py share: how a run
        executes, never what it computes (except --amp; all are RUN_FLAGS but --amp, --data-path, --memory-format)."""
        g = self.add_argument_group("speed")
        g.add_argument("--workers", type=number(int, 0, 256), default=2, help="DataLoader worker processes (2)")
        g.add_argument(
            "--data-path",
            default="auto",
            choices=["auto", "tensor", "loader"],
            help="tensor: images on the device, augmented in batches (cifar, imagenet16, fake); loader: per-image "
            "DataLoader; auto = tensor where the data is in memory",
        )
        g.add_argument("--amp", action="store_true", help="bf16 autocast for forward and loss (weights stay fp32)")
        g.add_argument(
            "--memory-format",
            default="auto",
            choices=["auto", "channels_last", "contiguous"],
            help="layout of weights and batches; auto = channels_last on CPU (1.6x faster here, bench.py), contiguous on GPU",
        )
        g.add_argument(
            "--deterministic",
            action="store_true",
            help="bit-identical repeats and resumes on a GPU too: no cuDNN autotuning, deterministic kernels, no TF32 "
            "(slower)",
        )
        g = self.add_argument_group("distributed (torchrun) and device")
        g.add_argument(
            "--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto = cuda if available, else cpu"
        )
        g.add_argument(
            "--backend",
            default="auto",
            choices=["auto", "nccl", "gloo"],
            help="DDP backend under torchrun (auto: nccl on GPU, gloo on CPU)",
        )
        g.add_argument(
            "--dist-timeout",
            type=number(float, 0.1, 1e5),
            default=30.0,
            help="minutes before DDP gives up on a dead rank (30)",
        )


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> set[str]:
    """The dests of the flags given on the command line, found by parsing it again with a sentinel as every default:
    `--epochs 250` is explicit even when 250 is the default (an equality test with the default could not tell)."""
    unset = object()
    saved = [(a, a.default) for a in parser._actions]
    try:
        for action, _ in saved:
            action.default = unset
        given = parser.parse_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return {k for k, v in vars(given).items() if v is not unset}


def _shown(value) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def pick_recipe(args, recipes: dict, script: str) -> dict:
    """The (space, variant) recipe of a stage script's RECIPES table; sets args.variant when it is left at None.

    Default variant: imagenet for --dataset imagenet (where the space has one), else the space's first one.
    A space or variant without a recipe is a one-line UsageError naming the choices.
    """
    variants = [v for s, v in recipes if s == args.space]
    if not variants:
        raise UsageError(f"{script} has no recipe for --space {args.space} yet")
    if args.variant is None:
        args.variant = "imagenet" if args.dataset == "imagenet" and "imagenet" in variants else variants[0]
    if (args.space, args.variant) not in recipes:
        raise UsageError(f"--space {args.space} has no {args.variant} network; use --variant {' or '.join(variants)}")
    return recipes[args.space, args.variant]


def fill_defaults(args, recipe: dict) -> None:
    """Every flag left at None takes the recipe's value; an explicit flag wins."""
    for key, value in recipe.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


# Ceilings of the flags, so that a typo (an extra zero, a pasted number) fails at once in one line instead of after
# minutes inside torch (an int64 overflow, a network that never finishes building, a timedelta past its range).
BIG = 10**9  # counts with no natural ceiling: epochs, steps, images, candidates
SEED_MAX = 2**32 - 1  # every seed goes into numpy's and torch's generators, which both take 32 bits
MAX_CHANNELS, MAX_LAYERS, MAX_WIDTH = 1024, 100, 10.0  # the paper's networks: C <= 48, L <= 20, width 1
MAX_IMAGE_SIZE, MAX_CLASSES = 1024, 100_000  # ImageNet is 224 px and 1,000 classes


def number(kind=int, minimum=1, maximum=None):
    """argparse type for a finite number in [minimum, maximum] (epochs, batch size, lr ...), with a one-line error.

    NaN and inf are refused (NaN passes every comparison, so `--momentum nan` would train to NaN weights). An int
    flag without a `maximum` gets BIG. The bounds are attributes of the returned function (tests/test_fuzz.py
    walks every numeric flag of the three stage scripts with them).
    """
    if maximum is None and kind is int:
        maximum = BIG

    def parse(text):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}")
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {text}")
        return value

    parse.kind, parse.minimum, parse.maximum = kind, minimum, maximum
    return parse


# Ready-made types for the flags the stage scripts share.
seed = number(int, 0, SEED_MAX)  # --seed, --data-seed, --label-seed
fraction = number(float, 0, 1)  # --momentum, --label-smoothing, --mutation-prob, --dropout, --drop-path
channels, layers = number(int, 1, MAX_CHANNELS), number(int, 1, MAX_LAYERS)
width, image_size = number(float, 0.01, MAX_WIDTH), number(int, 1, MAX_IMAGE_SIZE)


def nonempty(text: str) -> str:
    """argparse type for a path or an architecture: an empty string is a mistake, not a value."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


# ----------------------------------------------------------------------------------------------
# Printing: only the master process prints; a plain function, print itself untouched.
MASTER = True


def print0(*args, **kwargs):
    if MASTER:
        print(*args, **kwargs, flush=True)


def format_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """The progress line of a training loop, every --log-every steps and at each epoch's last step (master only):

        epoch 3/250 | step 50/391 | loss 2.3041 | acc 10.2% | lr 2.49e-02 | 1234 img/s | ETA 2h05m

    The rate counts the images of all ranks in this epoch, the ETA extrapolates the steps run so far. A loss that is
    no longer finite stops the run (one line, exit status 2) instead of training on NaNs.
    """

    def __init__(self, script: str, epochs: int, world_size: int, acc: str = "acc"):
        self.script, self.epochs, self.world_size, self.acc = script, epochs, world_size, acc
        self.t_run, self.steps_run = time.time(), 0

    def start_epoch(self, epoch: int, steps: int, done: int = 0) -> None:
        self.epoch, self.steps, self.t0, self.seen = epoch, steps, time.time(), 0
        STOP.update(epoch=epoch + 1, step=done)  # where an interrupt stops the run (common.run's one line)

    def step(self, i: int, images: int, totals: torch.Tensor, lr: float, every: int) -> None:
        """Batch i of the epoch is done (`images` on this rank; totals = loss sum, correct, images)."""
        self.steps_run, self.seen = self.steps_run + 1, self.seen + images
        STOP["step"] = i + 1
        if (i + 1) % every and i + 1 != self.steps:
            return
        if not torch.isfinite(totals[0]):
            raise UsageError(  # exit status 2, like a non-finite checkpoint that atomic_save refuses to write
                f"the loss is not finite at epoch {self.epoch + 1} step {i + 1} (the run diverged); lower --lr"
            )
        rate = self.seen * self.world_size / (time.time() - self.t0)
        eta = ((self.epochs - self.epoch) * self.steps - (i + 1)) * (time.time() - self.t_run) / self.steps_run
        print0(
            f"epoch {self.epoch + 1}/{self.epochs} | step {i + 1}/{self.steps} | loss {totals[0] / totals[2]:.4f} | "
            f"{self.acc} {100 * totals[1] / totals[2]:.1f}% | lr {lr:.2e} | {rate:.0f} img/s | ETA {format_time(eta)}"
        )

    def end_epoch(self) -> tuple[float, float]:
        """(images per second over all ranks, seconds) of the epoch just finished."""
        seconds = time.time() - self.t0
        return self.seen * self.world_size / seconds, seconds


# ----------------------------------------------------------------------------------------------
# Files: atomic writes, safe loads, fingerprints (run directories and resume: checkpoint.py).
def _reason(err: OSError) -> str:
    return (err.strerror or str(err) or type(err).__name__).lower()


def write_error(err: OSError, path: str) -> UsageError:
    """The one line for a write that failed: the cause in words (a full disk, a read-only place), then the way out."""
    folder = os.path.dirname(os.path.abspath(path))
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
        except OSError:
            free = "no space left"
        why = f"the disk is full ({free} in {folder}); free some space, or pass --out on another disk"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = f"{_reason(err)} in {folder}; pass --out somewhere you can write"
    elif err.errno in (errno.ENOTDIR, errno.EISDIR, errno.ENOENT):
        why = f"{_reason(err)} (a file or a directory stands where the other is needed); pass another --out"
    else:
        why = f"{_reason(err)}; check the disk, or pass --out elsewhere"
    return UsageError(f"cannot write {path}: {why}")


def _open_temp(tmp: str, mode: str = "wb"):
    """Open `tmp` as a NEW file: a stale one (an earlier crash) is removed first, and a symlink is never followed,
    so a link planted at the temp name cannot make a save overwrite the file it points to."""
    if os.path.islink(tmp) or os.path.isfile(tmp):
        os.remove(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    return os.fdopen(fd, mode)


class _Recorder:
    """The file object torch.save writes through. torch turns an OSError of write() into "enforce fail at
    inline_container.cc" without the cause; this keeps the OSError (ENOSPC: the disk is full) to report it."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self):
        self.f.flush()


def _atomic_write(path: str, write, mode: str) -> None:
    """write(f) into path + '.tmp', fsync, rename over `path`: a crash leaves the old file, a failure no temp file."""
    tmp = f"{path}.tmp"
    try:
        with _open_temp(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _remove_quietly(tmp)
        raise write_error(err, path) from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: str) -> None:
    try:
        if os.path.lexists(path) and not os.path.isdir(path):
            os.remove(path)
    except OSError:
        pass


def atomic_save(obj, path: str) -> None:
    """torch.save to a temp file in the same directory, fsync, then rename: a crash leaves the old file.

    A checkpoint holding a NaN or inf (a diverged run) is never written: the last good one stays on disk.
    """
    bad = nonfinite(obj)
    if bad is not None:
        raise UsageError(
            f"not writing {path}: {bad} holds NaN or inf (the run diverged); the file on disk, if any, is the last "
            "good one; start again with a lower --lr (or --momentum, --wd)"
        )

    def write(f):
        out = _Recorder(f)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is None:
                raise
            raise out.error from None  # the OSError torch hid, e.g. ENOSPC

    _atomic_write(path, write, "wb")


def atomic_write_text(text: str, path: str) -> None:
    """Replace a text file atomically (log.jsonl after a resume drops the lines of a lost epoch)."""
    _atomic_write(path, lambda f: f.write(text), "w")


def atomic_write_json(obj, path: str) -> None:
    atomic_write_text(json.dumps(obj, indent=1) + "\n", path)


def atomic_copy(src: str, dst: str) -> None:
    """Copy a file atomically (train.py --keep-every snapshots), with the same messages as atomic_save."""

    def write(f):
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, 2**20)

    _atomic_write(dst, write, "wb")


def append_jsonl(path: str, entry: dict) -> None:
    """Append one JSON line (log.jsonl); a full disk or a read-only directory is one line, not a traceback."""
    try:
        if os.path.islink(path):
            raise UsageError(f"{path} is a symbolic link; a run writes only its own files: remove the link")
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")
    except OSError as err:
        raise write_error(err, path) from None


def check_writable(path: str, flag: str = "--out", directory: bool = False) -> None:
    """Fail before any work if `path` (a file to write, or with `directory` a run directory) cannot be written:
    a directory where a file is meant, a file on the way, or a closest existing folder we may not write into."""
    full = os.path.abspath(path)
    if not directory and os.path.isdir(full):
        raise UsageError(f"{flag} {path} is a directory; pass a file name, e.g. {os.path.join(path, 'search.json')}")
    probe = full if directory else os.path.dirname(full)
    while not os.path.exists(probe):  # the closest existing ancestor is where the first file or folder goes
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UsageError(f"{flag} {path}: {probe} is a file, not a directory; pass another {flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot write in {probe} (permission denied or read-only); pass another {flag}")


def load_checkpoint(path: str, what: str = "checkpoint") -> dict:
    """torch.load with weights_only=True: tensors, plain types and RNG states only; never runs code.

    Whatever the bytes (a truncated file, a bit flip, /etc/passwd), the result is a dict or a one-line UsageError:
    the unpickler meets damaged input in any state (IndexError, KeyError, ... from inside torch), so every exception
    of torch.load is the file's fault here.
    """
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path} does not exist; pass the path of an existing file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line]
        if not refused:  # not a pickle torch can read at all
            raise UsageError(
                f"{what} {path} is not a checkpoint file (unreadable pickle); "
                "use another checkpoint or rerun the stage that wrote it"
            ) from None
        raise UsageError(
            f"refused to load {path}: it holds objects other than tensors and plain types "
            f"({refused[0][:100]}); load only checkpoints written by this project"
        ) from None
    except PermissionError as err:
        raise UsageError(f"cannot read {what} {path}: {_reason(err)}") from None
    except Exception as err:  # see the docstring: damaged bytes raise anything
        raise UsageError(
            f"{what} {path} is truncated or corrupt ({type(err).__name__}); "
            "use another checkpoint or rerun the stage that wrote it"
        ) from None
    if not isinstance(obj, dict):
        raise UsageError(f"{what} {path} is not a checkpoint of this project (no dict inside)")
    return obj


def load_json(path: str, what: str) -> dict:
    """A JSON object from `path` (retrain.py --ckpt-search, search.py --resume), or a one-line UsageError."""
    if os.path.isdir(path):
        raise UsageError(f"{what} {path} is a directory; pass the JSON file inside it (e.g. {path}/search.json)")
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path} does not exist; pass the path of an existing file")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        kind = "a binary file" if isinstance(err, UnicodeDecodeError) else f"not valid JSON ({type(err).__name__})"
        raise UsageError(f"{what} {path} is {kind}, not a JSON file written by this project") from None
    except OSError as err:
        raise UsageError(f"cannot read {what} {path}: {_reason(err)}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{what} {path} holds a JSON {type(obj).__name__}, not the object this project writes")
    return obj


def state_fingerprint(state: dict) -> str:
    """SHA-256 over a state_dict's names and tensor bytes: ties supernet.pt to its own W0 file."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# What a loaded file holds. load_checkpoint guarantees a dict; check_checkpoint says whether it is the dict a stage
# wrote, before a stage uses any field, so a damaged or hand-edited file is one line (never a KeyError in a stage).
def nonfinite(obj, name: str = "") -> str | None:
    """The name of the first float tensor (or float) of a nested checkpoint holding NaN or inf, else None.

    One device synchronisation per device, not one per tensor: it runs before every checkpoint write.
    """
    tensors = []

    def walk(o, where):
        if isinstance(o, torch.Tensor):
            if o.is_floating_point() or o.is_complex():
                tensors.append((where, o))
        elif isinstance(o, float) and not math.isfinite(o):
            tensors.append((where, torch.tensor(o)))
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{where}[{i}]")

    walk(obj, name)
    by_device = {}
    for where, t in tensors:
        by_device.setdefault(t.device, []).append(torch.isfinite(t).all())
    if all(bool(torch.stack(flags).all()) for flags in by_device.values()):
        return None
    return next(where for where, t in tensors if not bool(torch.isfinite(t).all()))


def _int(low: int = 0, high: int = 2**63 - 1):
    def check(v):
        if type(v) is not int:  # bool is an int subclass: True is not an epoch
            return f"is a {type(v).__name__}, not an integer"
        if not low <= v <= high:
            return f"is {v}, outside {low}..{high}"
        return None

    return check


def _plain(v, depth: int = 0) -> bool:
    """JSON-like: dicts with str keys, lists, tuples, str, int, float, bool, None (configs, label records)."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        return True
    if depth > 20:
        return False
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x, depth + 1) for k, x in v.items())
    return isinstance(v, (list, tuple)) and all(_plain(x, depth + 1) for x in v)


def _state(v):
    if not isinstance(v, dict) or not v:
        return f"is a {type(v).__name__ if not isinstance(v, dict) else 'empty dict'}, not a state_dict"
    for k, t in v.items():
        if not isinstance(k, str) or not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            return f"entry {str(k)[:60]!r} is a {type(t).__name__}, not a dense tensor"
    return None


def _optimizer(v):
    ok = isinstance(v, dict) and isinstance(v.get("state"), dict) and isinstance(v.get("param_groups"), list)
    if not ok:
        return "is not an optimizer state_dict (a dict with 'state' and 'param_groups')"
    for g in v["param_groups"]:
        if not (isinstance(g, dict) and isinstance(g.get("params"), list) and all(type(i) is int for i in g["params"])):
            return "has a param group that is not a dict with a list of parameter indices"
        if not all(_plain(x) for k, x in g.items() if k != "params"):
            return "has a param group with other than plain values"
    for s in v["state"].values():
        if not (isinstance(s, dict) and all(isinstance(x, (torch.Tensor, int, float)) or x is None for x in s.values())):
            return "has a parameter state that is not a dict of tensors"
    return None


# The ints of a supernet description, bounded as the flags that set them: a network is rebuilt from them (on the
# meta device first), and an edited 'layers': 10**9 would otherwise hang while it is built.
NET_INTS = {"channels": MAX_CHANNELS, "layers": MAX_LAYERS, "num_classes": MAX_CLASSES, "image_size": MAX_IMAGE_SIZE}


def _net_args(v):
    if not isinstance(v, dict) or not isinstance(v.get("space"), str):
        return "is not a supernet description (a dict with a 'space' name)"
    for k, x in v.items():
        if not isinstance(k, str) or not (isinstance(x, (str, int, float, bool)) or x is None):
            return f"field {str(k)[:40]!r} is a {type(x).__name__}, not a plain value"
        if k in NET_INTS and (type(x) is not int or not 1 <= x <= NET_INTS[k]):
            return f"field {k!r} is {x!r}, not an integer in 1..{NET_INTS[k]}"
        if k == "width" and (type(x) is not float or not 0 < x <= MAX_WIDTH):
            return f"field 'width' is {x!r}, not a number in (0, {MAX_WIDTH}]"
    return None


def _w0(v):
    if not isinstance(v, dict) or not isinstance(v.get("file"), str) or _hex(v.get("fingerprint")):
        return "is not a W0 reference (a dict with 'file' and a sha256 'fingerprint')"
    name = v["file"]
    if name in ("", ".", "..") or os.path.basename(name) != name or "\\" in name:
        return f"names {name[:60]!r}, not a file beside the checkpoint"  # the file never decides where we read
    return None


def _hex(v):
    ok = isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)
    return None if ok else "is not a sha256 hex digest"


def _totals(v):
    ok = v is None or (isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim == 2 and v.shape[1] == 3)
    return None if ok else "is not the (ranks, 3) running totals"


def _rng(v):
    ok = isinstance(v, dict) and isinstance(v.get("path"), torch.Tensor) and v["path"].dtype == torch.uint8
    return None if ok else "is not an RNG state (a dict with a 'path' byte tensor)"


def _is(test, why: str):
    return lambda v: None if test(v) else why


FIELDS = {
    "stage": _is(lambda v: isinstance(v, str), "is not a string"),
    "space": _is(lambda v: isinstance(v, str), "is not a string"),
    "arch": _is(lambda v: isinstance(v, str) and v.strip(), "is not an architecture string"),
    "epoch": _int(0, BIG),
    "batch": _int(0),
    "step": _int(0),
    "world_size": _int(1, 2**20),
    "totals": _totals,
    "model": _state,
    "optimizer": _optimizer,
    "supernet_args": _net_args,
    "config": _is(lambda v: isinstance(v, dict) and _plain(v), "is not a dict of flag values"),
    "labels": _is(lambda v: isinstance(v, dict) and _plain(v), "is not a label record (a dict)"),
    "rng": _rng,
    "grad_holders": _is(lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v), "is not a list of names"),
    "w0": _w0,
    "fingerprint": _hex,
    "ddp_ranks": _is(lambda v: v is None or (isinstance(v, list) and _plain(v)), "is not a list"),
    "test_top1": _is(lambda v: v is None or type(v) in (int, float), "is not a number"),
    "test_top5": _is(lambda v: v is None or type(v) in (int, float), "is not a number"),
}
# kind -> (its 'stage' field, what to call it, the fields it needs). Other fields are checked when present.
KINDS = {
    "supernet": ("train", "supernet checkpoint written by train.py", ("model", "supernet_args", "w0", "epoch")),
    "train": (
        "train",
        "complete train.py checkpoint",
        ("model", "optimizer", "supernet_args", "w0", "epoch", "step", "rng", "grad_holders", "config", "labels"),
    ),
    "init": ("init", "W0 file (initial weights) written by train.py", ("model",)),
    "retrain": ("retrain", "retrain.py checkpoint", ("model", "optimizer", "epoch", "arch", "config")),
}


def check_checkpoint(ckpt: dict, path: str, kind: str) -> dict:
    """Is `ckpt` (from load_checkpoint) a `kind` file ('supernet' for search.py, 'train' for train.py --resume, 'init'
    for a W0 file, 'retrain' for retrain.py --resume)? Returns it, or raises a one-line UsageError naming the field.

    It checks the structure every stage relies on (types, bounds, a W0 file name without a directory, parameters
    named in grad_holders that exist, finite weights), not that the file fits a given network: the stage does that.
    """
    stage, desc, needed = KINDS[kind]
    found = ckpt.get("stage", "init" if kind == "init" else None)  # W0 files of older runs have no stage field
    missing = [k for k in needed if k not in ckpt]
    if found != stage or missing:
        why = f"missing {', '.join(missing)}" if found == stage else f"its stage is {str(found)[:40]!r}"
        raise UsageError(f"{path} is not a {desc} ({why}); pass the file that stage wrote")
    for key, check in FIELDS.items():
        why = check(ckpt[key]) if key in ckpt else None
        if why:
            raise UsageError(f"{path} is damaged or was edited: its {key!r} {why}; use the file the stage wrote")
    unknown = [n for n in ckpt.get("grad_holders", []) if n not in ckpt["model"]]
    if unknown:
        raise UsageError(f"{path} is damaged or was edited: grad_holders names {unknown[0][:60]!r}, not in its model")
    if ckpt.get("batch", 0) and ckpt.get("totals") is None:
        raise UsageError(f"{path} is damaged or was edited: a mid-epoch checkpoint without its running totals")
    if ckpt.get("totals") is not None and len(ckpt["totals"]) != ckpt.get("world_size", 1):
        raise UsageError(f"{path} is damaged or was edited: its totals do not have one row per rank")
    bad = nonfinite(ckpt["model"], "model")
    if bad is not None:
        raise UsageError(
            f"{path} holds NaN or inf weights ({bad}): the run that wrote it diverged; train again with a lower --lr"
        )
    return ckpt


def check_config(config: dict, parser: argparse.ArgumentParser, path: str) -> dict:
    """A saved config (a checkpoint's 'config', config.json) checked against the stage's own flag definitions, so
    that a resumed run never takes a value its command line would refuse (a hand-edited "epochs": "abc" or nan)."""
    for action in parser._actions:
        if action.dest not in config or config[action.dest] is None or config[action.dest] == action.default:
            continue
        value, flag = config[action.dest], action.option_strings[0] if action.option_strings else action.dest
        why = None
        if action.choices is not None and value not in action.choices:
            why = f"is {value!r}, not one of {', '.join(map(str, action.choices))}"
        elif action.nargs == 0 and not isinstance(value, bool):  # store_true, --[no-]nesterov
            why = f"is {value!r}, not true or false"
        elif hasattr(action.type, "kind"):  # common.number
            kind = action.type.kind
            if type(value) is not kind and not (kind is float and type(value) is int):
                why = f"is {value!r}, not a {kind.__name__}"
            else:
                try:
                    action.type(repr(value))
                except argparse.ArgumentTypeError as err:
                    why = str(err)
        elif action.nargs != 0 and not isinstance(value, str):
            why = f"is {value!r}, not a string"
        if why:
            raise UsageError(f"{path} is damaged or was edited: its {flag} {why}; use the file the stage wrote")
    return config


def check_population(population: int, choices: list[list[int]]) -> None:
    """search.py: a first generation of `population` distinct architectures needs a space at least that large (the
    evolution would otherwise draw 1000 x population times before giving up: minutes on NB201, then an error)."""
    size = math.prod(len(c) for c in choices)
    if population > size:
        raise UsageError(
            f"--population {population} is larger than the search space ({size:,} architectures); pass a smaller "
            "--population, or score every architecture with --exhaustive (NB201)"
        )


def check_image_size(model: torch.nn.Module, size: int, *args, what: str = "network") -> None:
    """Forward a (2, 3, size, size) batch through `model`, built on the meta device (shapes only: no memory, no
    time), with `args` (e.g. a sampled path); if the downsampling leaves no pixels to pool, a one-line UsageError
    names the smallest larger side that fits, instead of a RuntimeError in the first training step."""
    if next(model.parameters()).device.type != "meta":
        raise ValueError("check_image_size needs a model built under `with torch.device('meta')`")

    def fits(s: int) -> bool:
        try:
            with torch.no_grad():
                model(torch.zeros(2, 3, s, s, device="meta"), *args)
            return True
        except (RuntimeError, ValueError, IndexError):
            return False

    if fits(size):
        return
    larger = next((s for s in range(size + 1, 4 * size + 65) if fits(s)), None)
    hint = f"the smallest larger one that fits is {larger}" if larger else "use a larger one"
    raise UsageError(f"--image-size {size} is too small for the {what} (its downsampling leaves no pixels); {hint}")


def git_commit() -> str | None:
    """The code version, recorded in config.json instead of copying *.py into the run (anti-pattern 16)."""
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------------------------
# Devices and torchrun. One code path: plain `python script.py` is a world of size 1.
class Dist:
    def __init__(self, ddp: bool, rank: int, local_rank: int, world_size: int, device: torch.device):
        self.ddp, self.rank, self.local_rank, self.world_size, self.device = ddp, rank, local_rank, world_size, device
        self.master = rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        return torch.device("cuda", local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for but MPS is not available; use --device cpu")
    return torch.device(name)


def memory_format(name: str, device: torch.device, amp: bool = False) -> torch.memory_format:
    """--memory-format: auto picks channels_last on CPU, where oneDNN convolutions run about 1.6x faster in it
    (bench.py), and the default layout on GPUs until bench.py --device cuda says otherwise. On CPU with --amp, auto
    keeps the default layout: there PyTorch's bf16 weight gradient of a dilated depthwise conv (DARTS dil_conv_5x5)
    in channels_last reads garbage (non-finite losses; docs/performance.md)."""
    if name == "auto":
        name = "channels_last" if device.type == "cpu" and not amp else "contiguous"
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


def set_determinism(enabled: bool, device: torch.device) -> None:
    """--deterministic: make two runs with the same flags (and a resumed run) compute the same bits on a GPU too.

    Off (the default), a CUDA run lets cuDNN time its convolution algorithms and keep the fastest
    (cudnn.benchmark): a new process may pick other algorithms than the run it resumes, and some of the fastest
    backward kernels sum with atomics in a varying order, so the weights differ in the last bits after a few steps
    and then drift apart (two uninterrupted runs too). TF32 convolutions are PyTorch's default and stay on.

    On: autotuning off, cuDNN restricted to deterministic algorithms, TF32 off for convolutions and matmuls (TF32 is
    not random, but off, the numbers are plain fp32 ones whatever tensor cores a GPU has; slower on Ampere and
    later), and torch.use_deterministic_algorithms for every other kernel. Not warn_only: the flag promises bit-exact
    runs, so a kernel without a deterministic version must stop the run with its name (within the first steps, as
    every step runs the same kernels) rather than leave a warning in a log and break the promise silently. cuBLAS
    needs a fixed workspace for that (CUBLAS_WORKSPACE_CONFIG, read at each matmul: set here, before the first).
    On the CPU every kernel these scripts use is deterministic already: the flag changes no number there.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not enabled  # fixed input shapes per op: autotuning pays off when allowed
    if not enabled:
        return
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


# DDP's keyword for "do not broadcast the module's buffers before every forward" (train.py says why it may):
# forward_sync_buffers=False from torch 2.13, where broadcast_buffers is deprecated; broadcast_buffers=False before.
NO_BUFFER_BROADCAST = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


def setup_distributed(device: str, backend: str, timeout_minutes: float) -> Dist:
    """Detect torchrun (RANK in the environment), init the process group, pick this rank's device."""
    global MASTER
    if int(os.environ.get("RANK", -1)) == -1:
        return Dist(False, 0, 0, 1, resolve_device(device))
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    dev = resolve_device(device, local_rank)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    # a timeout, so that when one rank dies the others fail with an error instead of waiting forever
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))

    def on_sigterm(signum, frame):  # torchrun stops the surviving ranks with SIGTERM when one of them fails
        raise SystemExit(
            f"{os.path.basename(sys.argv[0])}: rank {rank} stopped by torchrun (another rank failed?); "
            "restart the same command with --resume to continue from the last checkpoint"
        )

    signal.signal(signal.SIGTERM, on_sigterm)
    MASTER = rank == 0
    return Dist(True, rank, local_rank, world, dev)


def cleanup_distributed(d: Dist) -> None:
    if d.ddp and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# Optimisation plumbing shared by train.py and retrain.py: the per-space recipes (method.md §3 and §6) differ in which
# parameters get weight decay and in how the gradient is clipped.
WD_ON = ("all", "conv", "conv+fc")


def make_sgd(model: torch.nn.Module, lr: float, momentum: float, nesterov: bool, wd: float, wd_on: str = "all"):
    """SGD with weight decay on all parameters, or only on conv weights (4-D tensors), optionally + the classifier.

    method.md §3: NB201 and DARTS-CIFAR decay everything; DARTS-ImageNet decays 4-D conv weights only (its name filter
    misses the FC); MobileNet decays conv weights + the FC weight. Two param groups then, the second with wd 0.
    """
    nesterov = nesterov and momentum > 0
    if wd_on == "all":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    if wd_on not in WD_ON:
        raise ValueError(f"wd_on must be one of {WD_ON}, got {wd_on!r}")
    decay, rest = [], []
    for name, q in model.named_parameters():
        fc = wd_on == "conv+fc" and name.startswith("classifier.") and name.endswith("weight")
        (decay if q.ndim == 4 or fc else rest).append(q)
    groups = [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_gradients(optimizer, mode: str, value: float) -> None:
    """Clip the gradient by its global norm (DARTS-CIFAR, retraining) or each element by value (ImageNet supernets)."""
    if value <= 0:
        return
    params = [q for g in optimizer.param_groups for q in g["params"]]
    if mode == "norm":
        torch.nn.utils.clip_grad_norm_(params, value)
    else:
        torch.nn.utils.clip_grad_value_(params, value)
