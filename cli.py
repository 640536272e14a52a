"""
BOILERPLATE: the command line of the stage scripts, and how a run ends.

Nothing here is part of the method. Every stage script (train.py, search.py, retrain.py) and the two tools (bench.py,
make_assignment.py) end with `cli.run(main)`, which turns a user's mistake into one line and exit status 2, Ctrl-C
and SIGTERM into one line saying where the run stopped and how to resume it, and a closed or full stdout into
silence (the result is on disk before it is printed). The rest is the flag machinery: `Parser` (a bad flag is one
line; --help shows each recipe's value), number types with bounds, and the recipe defaults.

This module imports no torch at the top: it is imported first, so that a Ctrl-C while torch loads is one line too.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import signal
import sys
import time

SCRIPTS = ("train.py", "search.py", "retrain.py", "bench.py", "make_assignment.py")


def _interrupted_while_starting(signum, frame):
    print(f"{os.path.basename(sys.argv[0])}: interrupted (Ctrl-C) while starting; nothing was written", file=sys.stderr)
    sys.stderr.flush()
    # os._exit, not SystemExit: a module half-imported (numpy, torch) makes the interpreter's own shutdown fail with
    # a traceback of its own ("cannot load module more than once"). Nothing is open or written at this point.
    os._exit(130)


# A stage script imports this module before torch (2-3 s of imports): Ctrl-C in that time is one line, not a
# traceback through torch's import machinery. Only when a script is run (never under pytest), and never where the
# shell left SIGINT ignored (a job started with `&`). run() puts Python's own KeyboardInterrupt back.
if os.path.basename(sys.argv[0]) in SCRIPTS and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_while_starting)


class UsageError(Exception):
    """A mistake the user can fix (bad flag value, missing file, mismatched checkpoint): one line, exit 2.
    data.DataError and benchmark.BenchmarkError are UsageErrors too."""


class Interrupted(BaseException):
    """SIGTERM (what cluster schedulers send before they kill a job), raised where the run can stop cleanly."""


# Where an interrupt stops the run, for its one line: the training loops fill epoch and step, the run directory the
# command that resumes it, and the checkpoint written on SIGTERM. "armed": inside a training loop SIGTERM only sets
# "pending", and the loop stops after the step it is in, once it has saved a checkpoint there; anywhere else it
# stops the program at once.
STOP = {"armed": False, "pending": False, "epoch": 0, "step": 0, "resume": None, "saved": None}
LOCKS: dict = {}  # the open files of the locks a run holds (checkpoint.py): closed when the run ends, as at exit
MASTER = True  # only the master process prints (torchrun: rank 0; distributed.setup sets it)
LIMIT = 600  # characters of an error line: a 1 MB --arch is not echoed in full


def _on_sigterm(signum, frame):
    if STOP["armed"]:
        STOP["pending"] = True
    else:
        raise Interrupted()


def stop_requested() -> bool:
    """Has SIGTERM arrived during the training loop? The loop then saves a checkpoint and raises Interrupted."""
    return STOP["pending"]


class _QuietStdout:
    """stdout that stops printing, instead of stopping the program, once the reader is gone (`| head -1`: a broken
    pipe) or the disk is full (`> /dev/full`): the work goes on and its files are written."""

    def __init__(self, stream):
        self.stream, self.closed_by_reader = stream, False

    def write(self, text):
        if not self.closed_by_reader:
            try:
                return self.stream.write(text)
            except OSError as err:
                self._gone(err)
        return len(text)

    def flush(self):
        if not self.closed_by_reader:
            try:
                self.stream.flush()
            except OSError as err:
                self._gone(err)

    def _gone(self, err: OSError):
        if not isinstance(err, BrokenPipeError) and err.errno not in (errno.ENOSPC, errno.EPIPE, errno.EIO):
            raise err
        self.closed_by_reader = True
        try:  # a broken pipe must not raise again when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass

    def __getattr__(self, name):
        return getattr(self.stream, name)


def run(main, argv: list[str] | None = None) -> None:
    """Run a script's main(argv); turn user mistakes into one line on stderr and exit status 2.

    Ctrl-C and SIGTERM end with one line (where the run stopped, the command that resumes it) and 130 or 143, the
    status a shell reports for them. Under torchrun, a rank that loses its peers (one crashed, or hangs past
    --dist-timeout) and any other failure of the distributed layer also end with one line (status 1). Always raises
    SystemExit; tests call it in-process with `argv`, the handlers and state it sets are put back afterwards.
    """
    global MASTER
    name = os.path.basename(sys.argv[0]) if argv is None else getattr(main, "__module__", "script") + ".py"
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    STOP.update(armed=False, pending=False, epoch=0, step=0, resume=None, saved=None)
    MASTER, stdout = True, sys.stdout
    sys.stdout = _QuietStdout(stdout)
    signal.signal(signal.SIGTERM, _on_sigterm)  # torchrun's own handler replaces it on its ranks (distributed.py)
    if saved[signal.SIGINT] is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    status = 0
    try:
        main() if argv is None else main(argv)
    except UsageError as err:
        status = _error(name, str(err), 2)
    except (KeyboardInterrupt, Interrupted) as err:
        signame = "SIGTERM" if isinstance(err, Interrupted) else "Ctrl-C"
        where = f" at epoch {STOP['epoch']} step {STOP['step']}" if STOP["epoch"] else ""
        done = f"; saved {STOP['saved']} at this step" if STOP["saved"] else ""
        hint = f"resume with: {STOP['resume']}" if STOP["resume"] else "nothing was written yet: run the command again"
        status = _error(name, f"interrupted ({signame}){where}{done}; {hint}", 143 if isinstance(err, Interrupted) else 130)
    except RuntimeError as err:  # dist.DistError and its subclasses are RuntimeErrors too
        if "does not have a deterministic implementation" in str(err):  # raised under --deterministic
            status = _error(name, f"--deterministic: {one_line(err)}; drop --deterministic for this network", 2)
        else:
            status = _distributed_failure(name, err)
    finally:
        try:
            sys.stdout.flush()
        except OSError:
            pass
        sys.stdout = stdout
        for s, handler in saved.items():
            signal.signal(s, handler)
        _teardown_distributed()
        for fd in LOCKS.values():  # a run called in-process (the tests) lets go of its locks as a process would
            os.close(fd)
        LOCKS.clear()
    raise SystemExit(status)


def _error(name: str, message: str, status: int) -> int:
    if MASTER or status == 2:
        print(f"{name}: {'error: ' if status != 130 and status != 143 else ''}{shorten(message)}", file=sys.stderr)
    return status


def _teardown_distributed() -> None:
    """destroy_process_group() at the end of a torchrun run, whatever ended it."""
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except (RuntimeError, ValueError, AssertionError):  # a group already torn down by the failure being reported
        pass


# Words of the errors a rank sees when another one died or hangs: gloo's "Connection closed by peer", a reset
# socket, NCCL's "remote process exited", a collective or store that timed out (--dist-timeout).
_PEER_WORDS = ("connection closed", "connection reset", "broken pipe", "remote process", "timed out", "timeout")
# Words that mark an error of the distributed layer when it is not a torch.distributed.DistError.
_DIST_WORDS = ("nccl", "gloo", "c10d", "processgroup", "rendezvous")


def _distributed_failure(name: str, err: RuntimeError) -> int:
    """One line and status 1 for a failure of the distributed layer; any other RuntimeError is a bug: re-raised."""
    dist = sys.modules.get("torch.distributed")
    text = full_text(err).lower()
    initialized = dist is not None and dist.is_available() and dist.is_initialized()
    is_dist = (dist is not None and isinstance(err, getattr(dist, "DistError", ()))) or (
        initialized and any(w in text for w in _DIST_WORDS + _PEER_WORDS)
    )
    if not is_dist:
        raise err
    rank = os.environ.get("RANK", "?")
    if any(w in text for w in _PEER_WORDS):
        what = f"rank {rank} lost contact with the other ranks"
        fix = "restart the same command with --resume to continue from the last checkpoint"
    else:
        what = f"rank {rank}: the distributed layer failed"
        fix = (
            "this is not a lost peer: fix its cause (NCCL_DEBUG=INFO prints NCCL's own details), then restart "
            "the same command (with --resume if a checkpoint was written)"
        )
    print(f"{name}: error: {what} ({one_line(err)}); {fix}", file=sys.stderr)
    return 1


def full_text(err: BaseException) -> str:
    """The error's message and those of the errors it was raised from (`raise ... from`, or during handling)."""
    parts, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        parts.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def shorten(text: str, limit: int = LIMIT) -> str:
    """At most `limit` characters: beyond it the middle goes, not the end (where the fix is)."""
    return text if len(text) <= limit else f"{text[: limit // 2 - 3]} ... {text[-(limit // 2 - 2) :]}"


def one_line(err: BaseException, limit: int = 400) -> str:
    """The error and its causes as one line: every non-empty line of the messages joined by ' | ', whitespace
    collapsed, shortened in the middle (NCCL puts the real cause after a long first line naming a source file)."""
    lines = [" ".join(line.split()) for line in full_text(err).splitlines()]
    return shorten(" | ".join(line for line in lines if line), limit)


def print0(*args, **kwargs):
    if MASTER:
        print(*args, **kwargs, flush=True)


def format_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# ----------------------------------------------------------------------------------------------
# Flags.
class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag prints one line (not the whole usage block) and exits 2."""

    def parse_args(self, args=None, namespace=None):
        self.argv = sys.argv[1:] if args is None else [str(a) for a in args]  # for explicit_flags on --resume
        return super().parse_args(self.argv, namespace)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {shorten(message)} (see {self.prog} --help)\n")

    def show_recipes(self, recipes: dict) -> None:
        """--help: end the help of every flag a recipe fills with its value per recipe, e.g.
        "(recipe: nb201 0.025, darts-cifar 0.025, darts-imagenet 0.1, mobilenet 0.25)"."""
        spaces = [key[0] if isinstance(key, tuple) else key for key in recipes]
        for action in self._actions:
            values = [
                f"{space if spaces.count(space) == 1 else '-'.join(key)} {_shown(recipe[action.dest])}"
                for space, (key, recipe) in zip(spaces, recipes.items())
                if action.dest in recipe
            ]
            if values:
                action.help = f"{action.help} (recipe: {', '.join(values)})"

    def add_run_flags(self) -> None:
        """The "speed" and "distributed (torchrun) and device" groups that train.py and retrain.py share: how a run
        executes, never what it computes (except --amp and --workers)."""
        # fmt: off
        g = self.add_argument_group("speed")
        g.add_argument("--workers", type=number(int, 0, 256), default=2, help="DataLoader worker processes (2)")
        g.add_argument("--data-path", default="auto", choices=["auto", "tensor", "loader"], help="tensor: images on the device, augmented in batches (cifar, imagenet16, fake); loader: per-image DataLoader; auto = tensor where the data is in memory")
        g.add_argument("--amp", action="store_true", help="bf16 autocast for forward and loss (weights stay fp32)")
        g.add_argument("--memory-format", default="auto", choices=["auto", "channels_last", "contiguous"], help="layout of weights and batches; auto = channels_last on CPU (1.6x faster here, bench.py), contiguous on GPU")
        g.add_argument("--deterministic", action="store_true", help="bit-identical repeats and resumes on a GPU too: no cuDNN autotuning, deterministic kernels, no TF32 (slower)")
        g = self.add_argument_group("distributed (torchrun) and device")
        g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto = cuda if available, else cpu")
        g.add_argument("--backend", default="auto", choices=["auto", "nccl", "gloo"], help="DDP backend under torchrun (auto: nccl on GPU, gloo on CPU)")
        g.add_argument("--dist-timeout", type=number(float, 0.1, 1e5), default=30.0, help="minutes before DDP gives up on a dead rank (30)")
        # fmt: on


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
            raise argparse.ArgumentTypeError(f"{shorten(text, 80)!r} is not a valid {kind.__name__}")
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
# Progress.
class Progress:
    """The progress line of a training loop, every --log-every steps and at each epoch's last step (master only):

        epoch 3/250 | step 50/391 | loss 2.3041 | acc 10.2% | lr 2.49e-02 | 1234 img/s | ETA 2h05m

    The rate counts the images of all ranks in this epoch, the ETA extrapolates the steps run so far. A loss that is
    no longer finite stops the run (one line, exit status 2) instead of training on NaNs.
    """

    def __init__(self, epochs: int, world_size: int, acc: str = "acc"):
        self.epochs, self.world_size, self.acc = epochs, world_size, acc
        self.t_run, self.steps_run = time.time(), 0

    def start_epoch(self, epoch: int, steps: int, done: int = 0) -> None:
        self.epoch, self.steps, self.t0, self.seen = epoch, steps, time.time(), 0
        STOP.update(epoch=epoch + 1, step=done)  # where an interrupt stops the run (cli.run's one line)

    def step(self, i: int, images: int, totals, lr: float, every: int) -> None:
        """Batch i of the epoch is done (`images` on this rank; totals = loss sum, correct, images)."""
        self.steps_run, self.seen = self.steps_run + 1, self.seen + images
        STOP["step"] = i + 1
        if (i + 1) % every and i + 1 != self.steps:
            return
        if not math.isfinite(float(totals[0])):  # the line reads the totals anyway: one host sync
            raise UsageError(f"the loss is not finite at epoch {self.epoch + 1} step {i + 1} (the run diverged); lower --lr")
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
