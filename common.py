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
import hashlib
import inspect
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile

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
    try:
        main()
    except (UsageError, *user_errors) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)
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


def number(kind=int, minimum=1):
    """argparse type for a number >= minimum (epochs, batch size, population ...), with a one-line error."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    return parse


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
    no longer finite stops the run (exit status 1) instead of training on NaNs.
    """

    def __init__(self, script: str, epochs: int, world_size: int, acc: str = "acc"):
        self.script, self.epochs, self.world_size, self.acc = script, epochs, world_size, acc
        self.t_run, self.steps_run = time.time(), 0

    def start_epoch(self, epoch: int, steps: int) -> None:
        self.epoch, self.steps, self.t0, self.seen = epoch, steps, time.time(), 0

    def step(self, i: int, images: int, totals: torch.Tensor, lr: float, every: int) -> None:
        """Batch i of the epoch is done (`images` on this rank; totals = loss sum, correct, images)."""
        self.steps_run, self.seen = self.steps_run + 1, self.seen + images
        if (i + 1) % every and i + 1 != self.steps:
            return
        if not torch.isfinite(totals[0]):
            raise SystemExit(
                f"{self.script}: error: the loss is not finite at epoch {self.epoch + 1} step {i + 1}; lower --lr"
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
def atomic_save(obj, path: str) -> None:
    """torch.save to a temp file in the same directory, fsync, then rename: a crash leaves the old file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_jsonl(path: str, entry: dict) -> None:
    """One line of log.jsonl: one JSON object per epoch."""
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def atomic_write_json(obj, path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str, what: str = "checkpoint") -> dict:
    """torch.load with weights_only=True: tensors, plain types and RNG states only; never runs code."""
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
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise UsageError(
            f"{what} {path} is truncated or corrupt ({type(err).__name__}); "
            "use another checkpoint or rerun the stage that wrote it"
        ) from None
    if not isinstance(obj, dict):
        raise UsageError(f"{what} {path} is not a checkpoint of this project (no dict inside)")
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


def memory_format(name: str, device: torch.device) -> torch.memory_format:
    """--memory-format: auto picks channels_last on CPU, where oneDNN convolutions run about 1.6x faster in it
    (bench.py), and the default layout on GPUs until bench.py --device cuda says otherwise."""
    if name == "auto":
        name = "channels_last" if device.type == "cpu" else "contiguous"
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
