"""
BOILERPLATE: run directories and the exact resume of train.py and retrain.py.

Nothing here is part of the method. A long run can be killed at any step (SIGKILL, power loss, a lost GPU) and
`--resume` must then end bit-identical to an uninterrupted run, on one process or under torchrun. For that a
checkpoint holds everything that steers the next step, and a resumed run checks that it continues the same run:

    open_run(args, path, ...)        --out, --resume and --force against what is on disk (check_run_dir); with
                                     --resume the run's checkpoint, checked to be a complete one of its stage, and
                                     the run's own settings back (merge_flags: a differing flag is an error)
    make_run_dir(out, force, marker) the new run's directory, once the data is there; never loses a user's file
    check_labels(saved, record)      ... the same random labels and the same images (train.py)
    load_w0(path, fingerprint)       ... and its own W0, the initial weights the angle is measured from (train.py)
    restore(ckpt, ...)               weights, SGD momentum, the path sampler, which parameters hold a gradient tensor,
                                     the log trimmed to the epoch being redone; returns (epoch, batch, step)
    epoch_totals(ckpt, epoch, ...)   where a resumed epoch starts: batches to skip, every rank's running totals
    save(path, d, state, totals)     the checkpoint, atomically; mid-epoch with every rank's running totals
    ranks_agree(d, labels_sha, ...)  DDP: after each epoch, check that all ranks hold the same labels and weights

The stage scripts call only these names; the files' format is described in docs/details.md ("Run directory and
checkpoints").
"""

from __future__ import annotations

import fnmatch
import json
import os

try:
    import fcntl
except ImportError:  # not on Windows: runs are then not locked
    fcntl = None

import torch

import common
import random_labels
from common import UsageError, print0

# ----------------------------------------------------------------------------------------------
# Run directories.
# What each stage writes into its run directory (search.py and its plots may add theirs beside a supernet). --force
# deletes a directory only when every entry in it matches its stage's list, so it can never empty a directory that
# holds anything else: '.', a repository, a home directory, another stage's run.
LOCK = "run.lock"  # held (fcntl.flock) by the run using the directory: a second run on the same --out fails at once
RUN_FILES = {
    "train": (
        "supernet.pt", "supernet_init.pt", "supernet_ep*.pt", "log.jsonl", "config.json", "search*.json", "*.png", LOCK,
    ),
    "retrain": ("retrain.pt", "log.jsonl", "config.json", LOCK),
}  # fmt: skip
STAGE_OF = {"supernet.pt": "train", "retrain.pt": "retrain"}


def _foreign_entries(out: str, stage: str) -> list[str]:
    """Entries of `out` that `stage` did not write (temp files of its atomic writes count as its own)."""
    patterns = RUN_FILES[stage]
    own = lambda name: any(fnmatch.fnmatchcase(name.removesuffix(".tmp"), pat) for pat in patterns)  # noqa: E731
    return sorted(name for name in os.listdir(out) if not (own(name) and os.path.isfile(os.path.join(out, name))))


def _protected(out: str) -> str | None:
    """Why `out` must never be deleted whatever it holds, or None."""
    real = os.path.realpath(out)
    here = os.path.realpath(os.getcwd())
    if real == here or here.startswith(real.rstrip(os.sep) + os.sep):
        return "it is the current directory or holds it"
    if real in {os.path.realpath(os.path.expanduser("~")), os.path.realpath(os.sep)}:
        return "it is a home or root directory"
    if os.path.exists(os.path.join(real, ".git")):
        return "it is a git repository"
    return None


def _contents(out: str) -> list[str]:
    """What a run directory holds besides its lock and the temp files of interrupted atomic writes."""
    return [n for n in os.listdir(out) if n != LOCK and not n.endswith(".tmp")]


_held: dict[str, object] = {}  # run directory -> its open lock file: held until the process exits


def lock_run_dir(out: str) -> None:
    """Take the run directory's lock (master only: the other ranks of a torchrun belong to the same run), or fail in
    one line if another run holds it. flock is released by the kernel when the process ends, however it ends
    (SIGKILL included), so a crashed run never leaves a stale lock behind."""
    key = os.path.realpath(out)
    if fcntl is None or not common.MASTER or key in _held:
        return
    path = os.path.join(out, LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as err:
        raise common.write_error(err, path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(
            f"{out} is in use by another run (it holds the lock {path}); wait for that run to end, or pass --out DIR"
        ) from None
    except OSError:  # a file system without locks (some network mounts): run unlocked rather than not at all
        os.close(fd)
        return
    _held[key] = fd


def check_run_dir(out: str, resume: bool, force: bool, marker: str) -> None:
    """Fail early (before any data is read) if --out/--resume/--force do not fit what is on disk; lock an existing
    run directory before anything in it is read or removed."""
    stage = STAGE_OF[marker]
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file, not a directory; pass --out DIR for the run directory")
    if os.path.isdir(out) and not _protected(out):  # lock before the checks below: another run may be writing there
        is_run = os.path.isfile(os.path.join(out, "config.json")) and not _foreign_entries(out, stage)
        if os.path.isfile(os.path.join(out, LOCK)) or is_run:
            common.check_writable(out, "--out", directory=True)
            lock_run_dir(out)  # never creates the lock file in a directory that is not a run of this stage
    if resume:
        if not os.path.isdir(out):
            raise UsageError(f"nothing to resume: {out} does not exist; drop --resume to start a new run")
        if not os.path.isfile(os.path.join(out, marker)) and not os.path.isfile(os.path.join(out, "config.json")):
            if not _contents(out):  # the run stopped before writing anything: a new run may start in it
                why = "holds only temp files" if os.listdir(out) else "is empty"
                raise UsageError(f"nothing to resume: {out} {why}; drop --resume to start the run anew in it")
            raise UsageError(
                f"nothing to resume: {out} holds neither {marker} nor config.json, so it is not a {stage}.py run; "
                "pass --out DIR for a new run"
            )
    elif os.path.isdir(out) and _contents(out):
        if not force:
            raise UsageError(
                f"run directory {out} already exists: pass --resume to continue it, "
                "--force to overwrite it, or --out DIR for a new run"
            )
        why = _protected(out)
        foreign = _foreign_entries(out, stage)
        if why is None and foreign:
            why = f"it holds {foreign[0]!r}, which {stage}.py did not write"
        if why is None and not os.path.isfile(os.path.join(out, "config.json")):
            why = f"it has no config.json, so it is not a {stage}.py run directory"
        if why:
            raise UsageError(f"--force refused: {out} is not a {stage}.py run directory ({why}); pass --out DIR")
    common.check_writable(out, "--out", directory=True)  # a read-only place fails now, not after the data is read


def make_run_dir(out: str, force: bool, marker: str) -> None:
    """Create a new run directory (master only) and lock it; with --force the files of an old run of the same stage
    go first, once the lock is held.

    check_run_dir has already refused anything else, and only that stage's own files are removed one by one: never
    shutil.rmtree, so even a race with a user's file appearing meanwhile cannot take it along.
    """
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise common.write_error(err, out) from None
    lock_run_dir(out)
    stage = STAGE_OF[marker]
    if _contents(out) and not force:  # another run created it meanwhile and has finished (it held the lock)
        raise UsageError(f"run directory {out} was created meanwhile by another run; pass --out DIR for a new run")
    if force and (_protected(out) or _foreign_entries(out, stage)):
        raise UsageError(f"--force refused: {out} changed meanwhile and now holds other files; pass --out DIR")
    try:
        if force:
            for name in os.listdir(out):
                if name != LOCK:
                    os.remove(os.path.join(out, name))
    except OSError as err:
        raise common.write_error(err, out) from None


# ----------------------------------------------------------------------------------------------
# Opening a run to resume: is it the same run?
def open_run(args, path: str, keep, parser) -> dict | None:
    """Check --out/--resume/--force against the disk (on every rank: all fail alike); with --resume, load the run's
    checkpoint `path` (supernet.pt or retrain.pt), refuse it unless it is a complete one of its stage
    (common.check_checkpoint) whose settings its own parser accepts (common.check_config), and take the run's
    settings back (merge_flags). Returns the checkpoint, or None for a new run; None also with --resume when the run
    stopped before its first checkpoint: its settings then come from its config.json (written before anything else)
    and it starts again from epoch 0 (train.py: with its own W0)."""
    marker = os.path.basename(path)
    check_run_dir(args.out, args.resume, args.force, marker)
    if not args.resume:
        return None
    stage = STAGE_OF[marker]
    if not os.path.isfile(path):  # stopped before its first checkpoint (killed in epoch 1): it restarts from epoch 0
        config_path = os.path.join(args.out, "config.json")
        config = common.check_config(common.load_json(config_path, "run config"), parser, config_path)
        merge_flags(args, config, keep, common.explicit_flags(parser))
        print0(f"{args.out} has no {marker} yet (stopped in its first epoch): restarting it from epoch 0")
        return None
    ckpt = common.load_checkpoint(path, f"{'supernet' if stage == 'train' else stage} checkpoint")
    common.check_checkpoint(ckpt, path, stage)
    common.check_config(ckpt["config"], parser, path)
    merge_flags(args, ckpt["config"], keep, common.explicit_flags(parser))
    return ckpt


def data_dir(args, ckpt: dict | None, recorded: str | None = None) -> bool:
    """Fill --data when it is not given -> whether a missing dataset may be downloaded into it.

    --data when given; else, for a resumed run, the directory it read its images from (its checkpoint's config, else
    its config.json), else `recorded` (retrain.py --ckpt-search: the supernet run's), so `--resume --out RUN` alone
    continues a run on any dataset; else ./data. A path found in a file is only read from: nothing is downloaded (or
    written) there (data.py:load_dataset, download=False)."""
    if args.data is not None:
        return True
    if args.resume:
        config = ckpt["config"] if ckpt is not None else common.load_json(os.path.join(args.out, "config.json"), "run config")
        recorded = config.get("data", recorded)
    args.data = "./data"
    if args.dataset == "fake" or not isinstance(recorded, str) or not recorded.strip():
        return True
    args.data = recorded
    print0(
        f"--data {recorded}: where the run read {args.dataset} (images are read from {recorded} only, never downloaded "
        "there; override with --data)"
    )
    return False


# How to run on this machine, never what the run is: never taken back from the run, whatever the command line says.
MACHINE_FLAGS = {"out", "resume", "force", "device", "backend", "dist_timeout", "data", "count_only"}


def merge_flags(args, config: dict, keep, explicit: set[str]) -> None:
    """A resumed run takes its own settings back from `config` (the run's vars(args)).

    `explicit` holds the flags given on this command line (common.explicit_flags: a sentinel default, so a flag
    given with its default value counts too). A flag of the run given with another value is an error, never silently
    dropped; the flags in `keep` (how often to log, save, test ...) may change, and take the run's value when not
    given; MACHINE_FLAGS (--out, --device, --data ...) are always this command line's. Unknown keys are skipped.
    """
    for key, saved in config.items():
        if key in MACHINE_FLAGS or not hasattr(args, key):
            continue
        if key in explicit:
            now = getattr(args, key)
            if key not in keep and now != saved:
                raise UsageError(
                    f"--{key.replace('_', '-')} {now} differs from the run being resumed ({saved}); "
                    "drop the flag or start a new run with --out"
                )
            if key in keep:
                continue
        setattr(args, key, saved)


def check_labels(saved: dict, record: dict) -> None:
    """The resumed run trains on the same random labels (sha256 of the draw) and the same images as before."""
    try:
        random_labels.check_same_labels(dict(saved), record)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if saved.get("indices_sha256") != record["indices_sha256"]:
        raise UsageError("the resumed run would train on other images (split/subset changed); use the run's own settings")


def load_w0(path: str, fingerprint: str | None = None) -> dict:
    """The run's own W0 (supernet_init.pt), checked against the fingerprint its supernet.pt recorded (None: the one
    the file records, for a run that stopped before its first supernet.pt)."""
    init = common.check_checkpoint(common.load_checkpoint(path, "initial weights"), path, "init")
    fingerprint = fingerprint or init.get("fingerprint")
    if init.get("fingerprint") != fingerprint or common.state_fingerprint(init["model"]) != fingerprint:
        raise UsageError(f"{path} is not the W0 of this run (fingerprint differs); restore the run's own file")
    return init["model"]


# ----------------------------------------------------------------------------------------------
# Restoring and saving the train state.
def grad_holders(model: torch.nn.Module) -> list[str]:
    """Which parameters hold a gradient tensor (zeros included): with train.py --unsampled decay, an op once sampled
    keeps a zero gradient and so keeps getting weight decay and momentum; a resumed run must know exactly which."""
    return [n for n, q in model.named_parameters() if q.grad is not None]


def restore(
    ckpt: dict, path: str, model, optimizer, d, log_path: str, generator=None, what: str = "network"
) -> tuple[int, int, int]:
    """Put a run back where its checkpoint left it; returns (finished epochs, batches done in the next, step).

    Weights, optimizer state (momentum buffers), the path sampler's generator (train.py) and the gradient holders.
    Log lines of an epoch the crash lost are dropped: that epoch is redone and logs them again.
    """
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if generator is not None:
            generator.set_state(ckpt["rng"]["path"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{path} does not fit the {what} it describes ({str(err).splitlines()[0][:120]})") from None
    if ckpt.get("world_size", d.world_size) != d.world_size:
        print0(
            f"warning: the run used {ckpt['world_size']} processes, now {d.world_size}: "
            "the data shards differ, so the resumed run is not bit-identical to an uninterrupted one"
        )
    epoch, batch, step = ckpt["epoch"], ckpt.get("batch", 0), ckpt.get("step", 0)
    params = dict(model.named_parameters())
    for name in ckpt.get("grad_holders", ()):
        params[name].grad = torch.zeros_like(params[name])
    if d.master:
        trim_log(log_path, epoch)
    print0(f"resumed {path} at epoch {epoch} + {batch} batches, step {step}")
    return epoch, batch, step


def trim_log(log_path: str, epoch: int) -> None:
    """Keep the log lines of the first `epoch` epochs (the later ones belong to an epoch the crash lost: it is redone
    and logs them again), rewriting log.jsonl atomically.

    A damaged LAST line is what a kill during an append leaves behind; its epoch had no checkpoint yet, so it is redone:
    the line is dropped with a note. A damaged line before the last one is not a crash but an edit: refused.
    """
    if not os.path.isfile(log_path):
        return
    try:
        with open(log_path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read {log_path} ({type(err).__name__}); restore it or delete it to resume") from None
    kept = []
    for n, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
            line_epoch = entry["epoch"]
            if type(line_epoch) is not int:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            if n == len(lines):
                print0(f"note: {log_path} line {n} is incomplete (the run was killed while writing it); dropped")
                break
            raise UsageError(
                f"{log_path} line {n} is not a log entry (the file was edited?); fix or delete that line to resume"
            ) from None
        if line_epoch <= epoch:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        common.atomic_write_text("".join(kept), log_path)


def epoch_totals(ckpt: dict | None, epoch: int, d) -> tuple[int, torch.Tensor]:
    """(batches to skip, running totals) at the start of `epoch`: (0, zeros) unless a mid-epoch checkpoint is being
    resumed inside this very epoch. Totals are this rank's loss sum, correct predictions and images, kept on the
    device (no host synchronisation per step) in float64 (float32 on MPS, which has no float64)."""
    dtype = torch.float32 if d.device.type == "mps" else torch.float64
    if ckpt is not None and epoch == ckpt["epoch"] and ckpt.get("batch", 0):
        return ckpt["batch"], ckpt["totals"][d.rank].to(d.device, dtype)
    return 0, torch.zeros(3, dtype=dtype, device=d.device)


def save(path: str, d, state: dict, totals: torch.Tensor | None = None) -> None:
    """Write a checkpoint atomically (temp file, then rename), on the master process only.

    state["batch"] > 0 marks a mid-epoch checkpoint (--save-every-steps): every rank's running totals are gathered
    into it, so the resumed epoch logs the same numbers. Every rank must call it then (a collective).
    """
    if state["batch"]:
        per_rank = [totals.cpu().double()]
        if d.ddp:
            per_rank = [None] * d.world_size
            torch.distributed.all_gather_object(per_rank, totals.cpu().double())
        totals = torch.stack(per_rank)  # (world_size, 3)
    else:
        totals = None
    if d.master:
        common.atomic_save({**state, "totals": totals}, path)


def within_epoch(save, path: str, epoch: int, done: int, batches: int, step: int, every: int, totals) -> None:
    """After batch `done` of `batches` in `epoch`: a mid-epoch checkpoint every `every` steps (--save-every-steps,
    bounds the work a crash loses inside a long epoch), and on SIGTERM one of this step, then Interrupted. The
    epoch's last batch is left to the end-of-epoch checkpoint (stop_if_requested)."""
    if done == batches:
        return
    if every and step % every == 0:
        save(epoch, done, totals)
    if common.stop_requested():
        save(epoch, done, totals)
        stop_if_requested(path)


def stop_if_requested(path: str) -> None:
    """SIGTERM in an epoch's last step (or its evaluation): stop, with the checkpoint at `path` just written."""
    if common.stop_requested():
        common.STOP["saved"] = path
        raise common.Interrupted()


def keep_copy(path: str, snapshot: str) -> None:
    """A full, resumable and searchable copy of a checkpoint (train.py --keep-every), written atomically."""
    common.atomic_copy(path, snapshot)


def ranks_agree(d, labels_sha: str, model, epoch: int) -> list | None:
    """DDP: gather [labels sha256, weights fingerprint] from every rank; None on one process.

    Everything that must agree across ranks (method.md pitfalls 3-4): the labels and the weights. A desync would
    otherwise go unnoticed and silently corrupt Wt. (BN running stats may differ: the angle never uses them.)
    """
    if not d.ddp:
        return None
    mine = [labels_sha, common.state_fingerprint(dict(model.named_parameters()))]
    ranks = [None] * d.world_size
    torch.distributed.all_gather_object(ranks, mine)
    if any(r != mine for r in ranks):
        raise RuntimeError(f"DDP ranks disagree after epoch {epoch + 1} (labels sha256, weights fingerprint): {ranks}")
    return ranks
