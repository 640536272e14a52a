"""
BOILERPLATE: the run directory, and the exact resume of train.py and retrain.py.

Nothing here is part of the method. A long run can be killed at any step (SIGKILL, power loss, a lost GPU) and
`--resume` must then end bit-identical to an uninterrupted run, on one process or under torchrun. For that a
checkpoint holds everything that steers the next step, and a resumed run checks that it continues the same run.
The stage scripts keep their loop; the bookkeeping around it is one object, `Run`, with five calls:

    run = Run(args, parser, "train")   torchrun, --out/--resume/--force against the disk, the run directory's lock;
                                       a resumed run takes its own settings back (a differing flag is an error)
    run.start(state)                   a new run: its directory and config.json; a resumed one: `state` (weights,
                                       SGD momentum, the path sampler ...) restored exactly as it was saved
    run.save_w0(model)                 train.py: W0, written once before the first step (a resumed run reads its own)
    for step, x, y in run.batches(dataset, epoch):     the epoch's batches on the device, in the order and with the
        ...                                            crops that (seed, epoch, rank) fix; a resumed run skips those
        run.after_step(loss, logits, y, lr)            it trained on. Running totals, progress, mid-epoch checkpoints
    run.end_epoch(**log_fields)        the epoch's log.jsonl line, then the checkpoint (Wt: supernet.pt)

What a stage wrote is recorded in the run directory's manifest.json, before it is written: `--force` removes those
files and nothing else (never by a file's name), and refuses a directory holding anything else. search.py's files
carry their own mark instead (claim_output), so that they can sit anywhere. The files' format is described in
docs/details.md ("Run directory and checkpoints").
"""

from __future__ import annotations

import json
import os
import subprocess

import torch

import cli
import distributed
import files
import random_labels
from cli import UsageError, print0
from loaders import epoch_loader, epoch_seed, in_memory
from rundir import CHECKPOINT, ROOT, STAGE_OF, W0_FILE, check_run_dir, make_run_dir, own_legacy_run, record_files


class Run:
    """One run directory of train.py or retrain.py and the bookkeeping of its loop; see the module docstring."""

    def __init__(self, args, parser, stage: str, keep=frozenset(), recorded_data: str | None = None):
        self.args, self.stage = args, stage
        self.d = distributed.setup(args.device, args.backend, args.dist_timeout)
        self.path, self.log = os.path.join(args.out, CHECKPOINT[stage]), os.path.join(args.out, "log.jsonl")
        self.ckpt = open_run(args, self.path, keep, parser)  # None: a new run, or one stopped before its checkpoint
        self.resumed, self.download = args.resume, data_dir(args, self.ckpt, recorded_data)
        self.epoch, self.step = (self.ckpt["epoch"], self.ckpt.get("step", 0)) if self.ckpt else (0, 0)
        self.fmt = distributed.memory_format(args.memory_format, self.d.device, args.amp)
        distributed.set_determinism(args.deterministic, self.d.device)  # cuDNN autotuning, or --deterministic
        self.cache, self.lr, self.state, self.owned = {}, None, {}, set()

    # ------------------------------------------------------------------------------------------
    def start(self, state: dict, **config) -> None:
        """`state`: model, optimizer, optionally rng (a torch.Generator), and plain fields (supernet_args, labels,
        arch ...): what every checkpoint holds besides the step counters. A new run makes its directory (once the
        data is read and the network built: a bad flag or missing data leaves nothing) and writes config.json
        (its resolved flags, the git commit and `config`); a resumed one gets all of `state` back."""
        args, d = self.args, self.d
        self.state = state
        if self.resumed and d.master:
            own_legacy_run(args.out, self.stage)  # a run written before manifests: its files are its own
        if self.ckpt is not None:
            self._restore()
        elif d.master:
            if not self.resumed:
                make_run_dir(args.out, args.force, self.stage)
            trim_log(self.log, -1)  # a resumed run that stopped in its first epoch starts again from epoch 0
            self._write_json("config.json", {**vars(args), **config, "git_commit": git_commit(), "world_size": d.world_size})
        distributed.barrier(d)
        cli.STOP["resume"] = f"python {self.stage}.py --resume --out {args.out}"  # what an interrupt's line suggests
        self.progress = cli.Progress(args.epochs, d.world_size, "acc" if self.stage == "train" else "train acc")
        if self.epoch >= args.epochs:
            print0(f"{args.out} already finished {self.epoch} epochs; nothing to do")

    def save_w0(self, model: torch.nn.Module, log0=None) -> dict:
        """train.py: W0, the weights before the first optimizer step, written once (never again: a resumed run reads
        its own back, checked against the fingerprint its checkpoints carry). Returns W0 (CPU state_dict). A run that
        starts at epoch 0 logs log0(w0, model, 0) as its epoch-0 line, when that is not empty (train.py --track-tau)."""
        path = os.path.join(self.args.out, W0_FILE)
        if self.ckpt is not None:
            w0 = load_w0(path, self.ckpt["w0"]["fingerprint"])
        elif self.resumed and os.path.lexists(path):  # stopped in its first epoch: again, from its own W0
            w0 = load_w0(path)
            try:
                model.load_state_dict(w0)
            except (RuntimeError, ValueError, KeyError, TypeError):
                raise UsageError(f"{path} is not the W0 of a supernet {model.args}; restore the run's own file") from None
        else:
            w0 = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if self.d.master:
                self._own(W0_FILE)
                init = {"stage": "init", "model": w0, "supernet_args": model.args, "fingerprint": files.state_fingerprint(w0)}
                files.atomic_save(init, path)
        self.state["w0"] = {"file": W0_FILE, "fingerprint": files.state_fingerprint(w0)}
        fields = log0(w0, model, 0) if log0 is not None and self.ckpt is None else {}
        if fields and self.d.master:
            self._own("log.jsonl")
            files.append_jsonl(self.log, {"epoch": 0, **fields})
        return w0

    def batches(self, dataset, epoch: int):
        """Yields (step, x (B, 3, H, W) on the device in the run's memory format, y (B,)) for `epoch`: `step` counts
        the steps before this one. The order and the augmentations are a function of (seed, epoch, rank), so a resumed
        run draws the same batches and skips those it trained on before it stopped."""
        args, d = self.args, self.d
        fast = args.data_path == "tensor" or (args.data_path == "auto" and in_memory(dataset))
        if fast and not in_memory(dataset):
            raise UsageError(f"--data-path tensor needs an in-memory dataset (cifar10/100, imagenet16-120, fake), not {args.dataset}")  # noqa: E501
        if not fast:
            torch.manual_seed(epoch_seed(args.seed, epoch, d.rank))  # per-sample augmentation draws: replayable
        loader = epoch_loader(dataset, args.batch_size, True, args.seed, epoch, d.device, d.rank, d.world_size,
                              args.workers, fast, self.cache)  # fmt: skip
        self.epoch, self.dataset, self.steps, self.total_steps = epoch, dataset, len(loader), args.epochs * len(loader)
        skip, self.totals = self._totals_at(epoch)  # loss sum, correct, images on this rank: kept on the device
        self.progress.start_epoch(epoch, len(loader), skip)
        cli.STOP["armed"] = not d.ddp  # SIGTERM: stop after the current step, with a checkpoint of it (one process)
        for i, (x, y) in enumerate(loader):
            if i < skip:
                continue  # drawn (same order, same crops) but already trained on before the interruption
            self.batch = i
            x = x.to(d.device, non_blocking=True).contiguous(memory_format=self.fmt)
            yield self.step, x, y.to(d.device, non_blocking=True)

    def after_step(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        """Running totals (no host sync), the progress line, and a mid-epoch checkpoint every --save-every-steps
        steps or on SIGTERM (then stop)."""
        t = self.totals
        t[0] += loss.detach().to(t.dtype) * len(y)
        t[1] += (logits.argmax(1) == y).sum()
        t[2] += len(y)
        self.step, self.lr = self.step + 1, lr
        self.progress.step(self.batch, len(y), t, lr, self.args.log_every)
        done, every = self.batch + 1, self.args.save_every_steps
        if done < self.steps and ((every and self.step % every == 0) or cli.stop_requested()):
            self._save(self.epoch, done)  # the epoch's last batch is left to end_epoch
            self._stop_if_requested()

    def end_epoch(self, **fields) -> None:
        """The epoch's line in log.jsonl (loss, accuracy, lr, speed, and `fields`), then the checkpoint: a crash in
        between only repeats the epoch. Weights that are no longer finite are never logged nor written."""
        args, d, model = self.args, self.d, self.state["model"]
        distributed.all_reduce(self.totals, d)  # the epoch's loss and accuracy over all ranks
        ranks = None
        if d.ddp:  # after each epoch: all ranks hold the same labels and the same weights (method.md pitfalls 3-4)
            labels = random_labels.checksum(self.dataset.labels)
            ranks = distributed.ranks_agree(d, labels, lambda: files.state_fingerprint(dict(model.named_parameters())), self.epoch)  # noqa: E501
        img_per_s, seconds = self.progress.end_epoch()
        bad = files.nonfinite(model.state_dict())
        if bad is not None:  # the checkpoint on disk stays the last good one
            raise UsageError(f"{bad} holds NaN or inf after epoch {self.epoch + 1} (the run diverged); lower --lr")
        t = self.totals
        loss, acc = t[0].item() / t[2].item(), 100 * t[1].item() / t[2].item()
        if self.stage == "train":
            entry = dict(epoch=self.epoch + 1, step=self.step, loss=loss, acc=acc, lr=self.lr, img_per_s=img_per_s, seconds=seconds)  # noqa: E501
        else:
            entry = dict(epoch=self.epoch + 1, loss=loss, train_acc=acc, lr=self.lr, seconds=seconds)
        entry.update(fields)
        self.state.update((k, v) for k, v in fields.items() if k in self.state)  # e.g. retrain's test accuracy
        if d.master:
            self._own("log.jsonl")
            files.append_jsonl(self.log, entry)
        self._save(self.epoch + 1, 0, ranks)
        keep = getattr(args, "keep_every", 0)
        if d.master and keep and (self.epoch + 1) % keep == 0:  # train.py --keep-every: resumable, searchable snapshots
            name = f"supernet_ep{self.epoch + 1}.pt"
            self._own(name)
            files.atomic_copy(self.path, os.path.join(args.out, name))
        self.epoch += 1
        self._stop_if_requested()  # SIGTERM in the epoch's last step or after it: the checkpoint just written
        if self.epoch == args.epochs:
            cli.STOP["armed"] = False

    # ------------------------------------------------------------------------------------------
    # Behind the five calls.
    def _save(self, epoch: int, batch: int, ranks=None) -> None:
        """The checkpoint, atomically, on the master. batch > 0 marks a mid-epoch one: every rank's running totals
        are gathered into it (a collective: every rank calls it), so the resumed epoch logs the same numbers."""
        s, d = self.state, self.d
        totals = None
        if batch:
            totals = [self.totals.cpu().double()]
            if d.ddp:
                totals = [None] * d.world_size
                torch.distributed.all_gather_object(totals, self.totals.cpu().double())
            totals = torch.stack(totals)  # (world_size, 3)
        if not d.master:
            return
        model = s["model"]
        plain = {k: v for k, v in s.items() if k not in ("model", "optimizer", "rng")}
        ckpt = dict(stage=self.stage, epoch=epoch, batch=batch, step=self.step, world_size=d.world_size, **plain,
                    model=model.state_dict(), optimizer=s["optimizer"].state_dict(), config=vars(self.args),
                    grad_holders=[n for n, q in model.named_parameters() if q.grad is not None], totals=totals,
                    ddp_ranks=ranks)  # fmt: skip
        if "rng" in s:
            ckpt["rng"] = {"path": s["rng"].get_state()}
        self._own(CHECKPOINT[self.stage])
        files.atomic_save(ckpt, self.path)

    def _restore(self) -> None:
        """Weights, optimizer state (momentum buffers), the path sampler's generator and which parameters hold a
        gradient tensor: with train.py --unsampled decay an op once sampled keeps a zero gradient, and so keeps
        getting weight decay and momentum. The plain fields must match: the same labels, the same network."""
        ckpt, s, d = self.ckpt, self.state, self.d
        for key, now in s.items():
            if now is None:  # a result (retrain's test accuracy): the run's own value comes back
                s[key] = ckpt.get(key)
            if key in ("model", "optimizer", "rng") or now is None or ckpt.get(key, now) == now:
                continue
            if key == "labels":
                check_labels(ckpt["labels"], now)
            raise UsageError(f"{self.path} holds {key} {cli.shorten(str(ckpt[key]), 200)}, not {cli.shorten(str(now), 200)}; "
                             "resume with the run's own flags, or start a new run with --out")  # fmt: skip
        try:
            s["model"].load_state_dict(ckpt["model"])
            s["optimizer"].load_state_dict(ckpt["optimizer"])
            if "rng" in s:
                s["rng"].set_state(ckpt["rng"]["path"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise UsageError(f"{self.path} does not fit the network it describes ({str(err).splitlines()[0][:120]})") from None
        if ckpt.get("world_size", d.world_size) != d.world_size:
            print0(f"warning: the run used {ckpt['world_size']} processes, now {d.world_size}: the data shards differ, so the "
                   "resumed run is not bit-identical to an uninterrupted one")  # fmt: skip
        params = dict(s["model"].named_parameters())
        for name in ckpt.get("grad_holders", ()):
            params[name].grad = torch.zeros_like(params[name])
        if d.master:
            trim_log(self.log, self.epoch)  # the lines of an epoch the crash lost: that epoch is redone
        print0(f"resumed {self.path} at epoch {self.epoch} + {ckpt.get('batch', 0)} batches, step {self.step}")

    def _totals_at(self, epoch: int) -> tuple[int, torch.Tensor]:
        """(batches to skip, running totals) at the start of `epoch`: (0, zeros) unless a mid-epoch checkpoint is being
        resumed inside this very epoch. float64 (float32 on MPS, which has no float64)."""
        d, ckpt = self.d, self.ckpt
        dtype = torch.float32 if d.device.type == "mps" else torch.float64
        if ckpt is not None and epoch == ckpt["epoch"] and ckpt.get("batch", 0):
            return ckpt["batch"], ckpt["totals"][d.rank].to(d.device, dtype)
        return 0, torch.zeros(3, dtype=dtype, device=d.device)

    def _stop_if_requested(self) -> None:
        if cli.stop_requested():
            cli.STOP["saved"] = self.path
            raise cli.Interrupted()

    def _own(self, name: str) -> None:
        if name not in self.owned:
            record_files(self.args.out, self.stage, [name])
            self.owned.add(name)

    def _write_json(self, name: str, obj: dict) -> None:
        self._own(name)
        files.atomic_write_json(obj, os.path.join(self.args.out, name))


# ----------------------------------------------------------------------------------------------
# W0 and Wt: one pair of readers for train.py's resume and search.py.
def load_w0(path: str, fingerprint: str | None = None) -> dict:
    """A run's W0 (supernet_init.pt), checked against the fingerprint its supernet.pt recorded (None: the one the
    file records, for a run that stopped before its first supernet.pt)."""
    init = files.check_checkpoint(files.load_checkpoint(path, "initial weights (W0)"), path, "init")
    fingerprint = fingerprint or init.get("fingerprint")
    if init.get("fingerprint") != fingerprint or files.state_fingerprint(init["model"]) != fingerprint:
        raise UsageError(f"{path} is not the W0 of this run (fingerprint differs): the angle needs the run's own initial "
                         "weights; restore the run's own file")  # fmt: skip
    return init["model"]


def load_supernet(path: str, w0_path: str | None, spaces: dict) -> tuple[dict, dict, dict, dict]:
    """(W0, Wt, supernet args, checkpoint) of a train.py checkpoint, checked against each other (search.py).

    W0 is the file the checkpoint names, read from beside the checkpoint only (never a path taken from the file), or
    --w0 as the user gave it. The supernet description is bounded (files.check_checkpoint) before it is built, and
    then built on the meta device only: shapes, no memory.
    """
    ckpt = files.check_checkpoint(files.load_checkpoint(path, "supernet checkpoint"), path, "supernet")
    args = dict(ckpt["supernet_args"])
    if args.get("space") not in spaces:
        raise UsageError(f"{path} is a {args.get('space')!r} supernet; this search knows {', '.join(spaces)}")
    space = spaces[args["space"]]
    if not set(space.ckpt_keys) <= set(args):
        raise UsageError(f"{path} does not describe its supernet (supernet_args {args}); the file is damaged or edited")
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in space.supernet(args).state_dict().items()}
    except (TypeError, ValueError, KeyError, RuntimeError, IndexError, AttributeError) as err:
        raise UsageError(f"{path} describes a supernet that cannot be built ({err}); the file is damaged or edited") from None
    if {k: tuple(v.shape) for k, v in ckpt["model"].items()} != expected:
        raise UsageError(f"{path} does not hold the weights of the supernet it describes {args}; the file is damaged or edited")  # noqa: E501
    # check_checkpoint refused a 'file' with a directory in it: this is a name beside the checkpoint
    w0_path = w0_path or os.path.join(os.path.dirname(path), ckpt["w0"]["file"])
    init = files.check_checkpoint(files.load_checkpoint(w0_path, "initial weights (W0)"), w0_path, "init")
    if {k: tuple(v.shape) for k, v in init["model"].items()} != expected:
        raise UsageError(f"{w0_path} is not the initial weights of a supernet of the same shape {args}")
    if files.state_fingerprint(init["model"]) != ckpt["w0"]["fingerprint"]:
        raise UsageError(f"{w0_path} is not the W0 of {path} (fingerprint differs): the angle needs the run's own initial weights")  # noqa: E501
    return init["model"], ckpt["model"], args, ckpt


# ----------------------------------------------------------------------------------------------
# Opening a run to resume: is it the same run?
def open_run(args, path: str, keep, parser) -> dict | None:
    """Check --out/--resume/--force against the disk (on every rank: all fail alike); with --resume, load the run's
    checkpoint `path`, refuse it unless it is a complete one of its stage whose settings its own parser accepts, and
    take the run's settings back (merge_flags). Returns the checkpoint, or None for a new run; None also with
    --resume when the run stopped before its first checkpoint: its settings then come from its config.json (written
    before anything else) and it starts again from epoch 0 (train.py: with its own W0)."""
    marker = os.path.basename(path)
    check_run_dir(args.out, args.resume, args.force, marker)
    if not args.resume:
        return None
    stage = STAGE_OF[marker]
    explicit = cli.explicit_flags(parser, parser.argv)
    if not os.path.lexists(path):  # stopped before its first checkpoint (killed in epoch 1): it restarts from epoch 0
        config_path = os.path.join(args.out, "config.json")
        config = files.check_config(files.load_json(config_path, "run config"), parser, config_path)
        merge_flags(args, config, keep, explicit)
        print0(f"{args.out} has no {marker} yet (stopped in its first epoch): restarting it from epoch 0")
        return None
    ckpt = files.load_checkpoint(path, f"{'supernet' if stage == 'train' else stage} checkpoint")
    files.check_checkpoint(ckpt, path, stage)
    files.check_config(ckpt["config"], parser, path)
    merge_flags(args, ckpt["config"], keep, explicit)
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
        config = ckpt["config"] if ckpt is not None else files.load_json(os.path.join(args.out, "config.json"), "run config")
        recorded = config.get("data", recorded)
    args.data = "./data"
    if args.dataset == "fake" or not isinstance(recorded, str) or not recorded.strip():
        return True
    args.data = recorded
    print0(f"--data {recorded}: where the run read {args.dataset} (images are read from {recorded} only, never downloaded "
           "there; override with --data)")  # fmt: skip
    return False


# How to run on this machine, never what the run is: never taken back from the run, whatever the command line says.
MACHINE_FLAGS = {"out", "resume", "force", "device", "backend", "dist_timeout", "data", "count_only"}


def merge_flags(args, config: dict, keep, explicit: set[str]) -> None:
    """A resumed run takes its own settings back from `config` (the run's vars(args)).

    `explicit` holds the flags given on this command line (cli.explicit_flags: a sentinel default, so a flag given
    with its default value counts too). A flag of the run given with another value is an error, never silently
    dropped; the flags in `keep` (how often to log, save, test ...) may change, and take the run's value when not
    given; MACHINE_FLAGS (--out, --device, --data ...) are always this command line's. Unknown keys are skipped.
    """
    for key, saved in config.items():
        if key in MACHINE_FLAGS or not hasattr(args, key):
            continue
        if key in explicit:
            now = getattr(args, key)
            if key not in keep and now != saved:
                raise UsageError(f"--{key.replace('_', '-')} {now} differs from the run being resumed ({saved}); "
                                 "drop the flag or start a new run with --out")  # fmt: skip
            if key in keep:
                continue
        setattr(args, key, saved)


def check_labels(saved: dict, record: dict) -> None:
    """The resumed run trains on the same random labels (sha256 of the draw) and the same images as before."""
    if saved.get("count") != record.get("count") and saved.get("kind") == record.get("kind"):
        raise UsageError(f"the training set has {record.get('count')} images now, {saved.get('count')} when the run started "
                         "(images were added to or removed from the dataset folder?); restore them, or start a new run with --out")  # fmt: skip  # noqa: E501
    try:
        random_labels.check_same_labels(dict(saved), record)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if saved.get("indices_sha256") != record["indices_sha256"]:
        raise UsageError("the resumed run would train on other images (split/subset changed); use the run's own settings")


def trim_log(log_path: str, epoch: int) -> None:
    """Keep the log lines of the first `epoch` epochs (the later ones belong to an epoch the crash lost: it is redone
    and logs them again), rewriting log.jsonl atomically.

    A damaged LAST line is what a kill during an append leaves behind; its epoch had no checkpoint yet, so it is redone:
    the line is dropped with a note. A damaged line before the last one is not a crash but an edit: refused.
    """
    if not os.path.lexists(log_path):
        return
    files.check_regular(log_path, "the run's log")
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
            raise UsageError(f"{log_path} line {n} is not a log entry (the file was edited?); fix or delete that line to resume") from None  # noqa: E501
        if line_epoch <= epoch:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        files.atomic_write_text("".join(kept), log_path)


def git_commit() -> str | None:
    """The code version, recorded in config.json instead of copying *.py into the run (anti-pattern 16)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
