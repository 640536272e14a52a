"""
Stage 1 of RLNAS: train the weight-sharing supernet on random labels with single-path sampling.

Every step draws one architecture uniformly (SPOS) and trains only its ops on a batch whose
labels were drawn at random once, before training. The initial weights W0 are saved before the
first update (supernet_init.pt) and the trained weights Wt after every epoch (supernet.pt);
search.py compares the two.

Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021,
arXiv:2101.11834, the supernet-training step with random labels (SPOS sampling of Guo et al.,
ECCV 2020). Settings: SPEC.md 3 (the RECIPES table below); sampling: SPEC.md 2.1 (NB201), 2.2 (DARTS);
pitfalls 1, 3, 4, 10. The space-specific parts come from supernet.SPACES.

    python train.py --space nb201                                 # CIFAR-10, paper settings (250 epochs)
    python train.py --space darts --dataset cifar10               # DARTS space, CIFAR-10 supernet (SPEC 2.2, 3)
    torchrun --nproc_per_node=8 train.py --space darts --dataset imagenet --data /path/imagenet   # SPEC 2.3, 3
    python train.py --dataset folder --data ~/data/cifar10 --subset 10000 --epochs 10   # a CPU recipe
    python train.py --dataset fake --epochs 1 --channels 4 --layers 1                   # a smoke run
    python train.py --resume --out runs/<run>                     # continue exactly where it stopped
    python train.py --space mobilenet --width 0.125 --dataset fake --image-size 32 --epochs 1   # MobileNet smoke run
    torchrun --standalone --nproc_per_node=8 train.py --space nb201           # one node, 8 GPUs
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 train.py ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import common
import random_labels
from angle import AngleScorer
from benchmark import BenchmarkError, load_benchmark
from common import UsageError, print0
from data import (
    DATASETS,
    DataError,
    Relabeled,
    epoch_loader,
    epoch_seed,
    in_memory,
    load_dataset,
    split_indices,
    subset_indices,
)
from supernet import SPACES, all_archs, str_to_arch

# ----------------------------------------------------------------------------------------------
# The paper's settings per (space, network variant), SPEC 3. Every flag below whose default is None takes its
# value from here; config.json and the checkpoint record the filled values.
RECIPES = {
    # NB201: SGD Nesterov, wd 5e-4 on everything, cosine per epoch 0.025 -> 0.001, no clipping
    ("nb201", "cifar"): dict(
        channels=16, layers=5, epochs=250, batch_size=64, lr=0.025, lr_min=0.001, lr_schedule="cosine", momentum=0.9,
        nesterov=True, wd=5e-4, wd_on="all", grad_clip=0.0, clip_mode="norm", label_smoothing=0.0, sampling="per-cell",
    ),
    # DARTS CIFAR-10: C=16, 8 cells; SGD (no Nesterov) wd 3e-4 on everything, cosine 0.025 -> 0.001, grad-norm clip 5
    ("darts", "cifar"): dict(
        channels=16, layers=8, epochs=250, batch_size=64, lr=0.025, lr_min=0.001, lr_schedule="cosine", momentum=0.9,
        nesterov=False, wd=3e-4, wd_on="all", grad_clip=5.0, clip_mode="norm", label_smoothing=0.0,
    ),
    # DARTS ImageNet: C=48, 14 cells; batch 512 = 64 per GPU x 8; lr 0.1 linear per iteration down to 5e-4; label
    # smoothing 0.1 on the random labels; wd 4e-5 on conv weights only (not the FC); clip each gradient value at 5
    ("darts", "imagenet"): dict(
        channels=48, layers=14, epochs=50, batch_size=64, lr=0.1, lr_min=5e-4, lr_schedule="linear", momentum=0.9,
        nesterov=False, wd=4e-5, wd_on="conv", grad_clip=5.0, clip_mode="value", label_smoothing=0.1,
    ),
    # MobileNet (SPEC 3): 120 epochs, batch 512 = 64 x 8 GPUs, lr 0.25 linear per iteration down to 5e-4, label
    # smoothing 0.1 on the random labels, wd 4e-5 on conv weights AND the classifier weight, clip each value at 5
    ("mobilenet", "imagenet"): dict(
        width=1.0, epochs=120, batch_size=64, lr=0.25, lr_min=5e-4, lr_schedule="linear", momentum=0.9, nesterov=False,
        wd=4e-5, wd_on="conv+fc", grad_clip=5.0, clip_mode="value", label_smoothing=0.1,
    ),
}  # fmt: skip

# ----------------------------------------------------------------------------------------------
# Config: one flag per line; a default of None means "the recipe's value" (RECIPES above).
p = common.Parser(description="Train an RLNAS supernet on random labels (stage 1).")
p.add_argument("--space", default="nb201", choices=list(SPACES), help="search space (default nb201)")
p.add_argument(
    "--variant",
    default=None,
    choices=["cifar", "imagenet"],
    help="network variant of the space: cifar (32x32 stem) or imagenet (the ImageNet stems); default: imagenet for "
    "--dataset imagenet, else cifar",
)
p.add_argument("--channels", type=common.channels, default=None, help="C, channels of the first stage (NB201 16)")
p.add_argument(
    "--layers", type=common.layers, default=None, help="NB201: N cells per stage (5); DARTS: cells in all (8 or 14)"
)
p.add_argument("--width", type=common.width, default=None, help="MobileNet: channel multiplier (1.0; tiny runs 0.125)")
p.add_argument(
    "--sampling",
    default=None,
    choices=["per-cell", "shared"],
    help="NB201 only. per-cell: each cell samples its own sub-cell, as the official code (default); shared: one "
    "genotype for all cells",
)
# data
p.add_argument("--dataset", default="cifar10", choices=DATASETS, help="training data (default cifar10)")
p.add_argument("--data", type=common.nonempty, default="./data", help="dataset directory (default ./data)")
p.add_argument(
    "--image-size", type=common.image_size, default=None, help="image side for folder/fake/imagenet data (32; imagenet 224)"
)
p.add_argument(
    "--split",
    default="auto",
    choices=["auto", "half", "full"],
    help="half: a seeded 25k/25k split of the training set, as the official NB201 CIFAR-10 run; auto = half for nb201+cifar10",
)
p.add_argument(
    "--subset", type=common.number(int), default=0, help="train on a seeded random subset of N images (default all)"
)
p.add_argument("--data-seed", type=common.seed, default=0, help="seed of the half split and of --subset (default 0)")
p.add_argument(
    "--fake-images", type=common.number(int, 1, 10**6), default=1024, help="size of the --dataset fake training set"
)
p.add_argument("--workers", type=common.number(int, 0, 256), default=2, help="DataLoader worker processes (default 2)")
p.add_argument(
    "--data-path",
    default="auto",
    choices=["auto", "tensor", "loader"],
    help="tensor: images on the device, augmented in batches (cifar, imagenet16, fake); loader: per-image DataLoader; "
    "auto = tensor where the data is in memory",
)
p.add_argument("--amp", action="store_true", help="bf16 autocast for forward and loss (weights stay fp32)")
p.add_argument(
    "--memory-format",
    default="auto",
    choices=["auto", "channels_last", "contiguous"],
    help="layout of weights and batches; auto = channels_last on CPU (1.6x faster here, bench.py), contiguous on GPU",
)
# labels
p.add_argument("--labels", default="random", choices=["random", "true"], help="random (RLNAS) or true (the SPOS baseline)")
p.add_argument(
    "--label-mode",
    default="uniform",
    choices=list(random_labels.MODES),
    help="uniform: i.i.d. uniform labels drawn once (the paper); shuffle: permuted true labels; redraw: new labels "
    "every epoch (ablations)",
)
p.add_argument("--label-seed", type=common.seed, default=0, help="seed of the random-label draw, and nothing else (default 0)")
p.add_argument(
    "--label-classes", type=common.number(int, 2), default=0, help="K >= 2 for random labels (default: the dataset's)"
)
# optimisation (SPEC 3; the values in brackets are NB201's, RECIPES has the others)
p.add_argument("--epochs", type=common.number(int), default=None, help="training epochs (250)")
p.add_argument("--batch-size", type=common.number(int), default=None, help="batch size per process (64)")
p.add_argument("--lr", type=common.number(float, 0), default=None, help="initial learning rate (0.025)")
p.add_argument("--lr-min", type=common.number(float, 0), default=None, help="final learning rate (0.001)")
p.add_argument(
    "--lr-schedule",
    default=None,
    choices=["cosine", "linear"],
    help="cosine: per epoch, lr -> lr-min (NB201, DARTS-CIFAR); linear: per iteration, reaching lr-min at the last "
    "step (ImageNet supernets)",
)
p.add_argument("--momentum", type=common.fraction, default=None, help="SGD momentum (0.9)")
p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum (on for NB201)")
p.add_argument("--wd", type=common.number(float, 0), default=None, help="weight decay (5e-4)")
p.add_argument(
    "--wd-on",
    default=None,
    choices=list(common.WD_ON),
    help="which parameters get weight decay: all (NB201, DARTS-CIFAR), conv (4-D conv weights: DARTS-ImageNet), conv+fc",
)
p.add_argument("--grad-clip", type=common.number(float, 0), default=None, help="gradient clipping threshold (0 = off, NB201)")
p.add_argument(
    "--clip-mode", default=None, choices=["norm", "value"], help="clip the global gradient norm, or each value (ImageNet)"
)
p.add_argument(
    "--label-smoothing", type=common.fraction, default=None, help="label smoothing of the CE loss (0; ImageNet 0.1)"
)
p.add_argument(
    "--unsampled",
    default="decay",
    choices=["decay", "frozen"],
    help="ops off the sampled path: decay = keep weight decay and momentum once sampled (official, default); "
    "frozen = untouched",
)
p.add_argument(
    "--seed", type=common.seed, default=0, help="seed of the weight init, the path sampler and the data order (default 0)"
)
# run
p.add_argument(
    "--out",
    type=common.nonempty,
    default=None,
    help="run directory (default runs/<space>-<dataset>-<labels>-s<seed>-l<label-seed>)",
)
p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
p.add_argument(
    "--track-tau",
    default=None,
    help="NB201 benchmark CSV: at epoch 0 and every --track-every epochs, log Kendall tau-b of the angle of all "
    "15,625 cells against the accuracy column of the training dataset (cifar10 for folder/fake data)",
)
p.add_argument("--track-every", type=common.number(int), default=1, help="epochs between two --track-tau evaluations (1)")
p.add_argument(
    "--keep-every",
    type=common.number(int, 0),
    default=0,
    help="also keep a full snapshot supernet_ep<E>.pt every E epochs, e.g. for angle-vs-epoch studies (0 = off)",
)
p.add_argument(
    "--save-every-steps",
    type=common.number(int, 0),
    default=0,
    help="also checkpoint every N steps inside an epoch, for long epochs (0 = only at epoch ends)",
)
p.add_argument("--log-every", type=common.number(int), default=50, help="print a progress line every N steps (50)")
p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto = cuda if available, else cpu")
p.add_argument(
    "--backend",
    default="auto",
    choices=["auto", "nccl", "gloo"],
    help="DDP backend under torchrun (auto: nccl on GPU, gloo on CPU)",
)
p.add_argument(
    "--dist-timeout", type=common.number(float, 0.1, 1e5), default=30.0, help="minutes before DDP gives up on a dead rank (30)"
)

CKPT_KEYS = {"stage", "config", "model", "optimizer", "epoch", "step", "rng", "grad_holders", "w0", "labels", "supernet_args"}
# flags that only say how to run, not what the run is: a resumed run may change them
RUN_FLAGS = {
    "out",
    "resume",
    "force",
    "log_every",
    "keep_every",
    "track_tau",
    "track_every",
    "save_every_steps",
    "device",
    "backend",
    "dist_timeout",
    "data",
}
# (--workers is not among them: with workers the crops come from per-worker RNG streams, so it is part of the run)


def fill_recipe(args) -> None:
    """Fill every flag left at None from the (space, variant) recipe (SPEC 3)."""
    recipe = common.pick_recipe(args, RECIPES, "train.py")
    if args.space == "mobilenet" and (args.channels or args.layers):
        raise UsageError("--channels and --layers do not apply to --space mobilenet; scale it with --width")
    if args.space != "mobilenet" and args.width is not None:
        raise UsageError(f"--width applies to --space mobilenet only; {args.space} takes --channels and --layers")
    if args.space != "nb201" and args.sampling is not None:
        raise UsageError(f"--sampling applies to --space nb201 only; {args.space} samples one genotype per cell type")
    common.fill_defaults(args, recipe)


def lr_at(epoch: int, args, step: int = 0, total_steps: int = 1) -> float:
    if args.lr_schedule == "linear":
        # linear per iteration (SPEC 3, ImageNet spaces): lr at the first step, lr_min at the last one, held there
        frac = min(1.0, step / max(1, total_steps - 1))
        return max(args.lr_min, args.lr - (args.lr - args.lr_min) * frac)
    # cosine annealing per epoch, no warm-up (SPEC 3): lr_e = lr_min + (lr - lr_min) * (1 + cos(pi * e / E)) / 2
    return args.lr_min + (args.lr - args.lr_min) * (1 + math.cos(math.pi * epoch / args.epochs)) / 2


def train_step(
    model,
    optimizer,
    x,
    y,
    path,
    unsampled: str = "decay",
    grad_clip: float = 0.0,
    amp: bool = False,
    clip_mode: str = "norm",
    label_smoothing: float = 0.0,
):
    """One SPOS step on one sampled path; returns (loss, logits (B, K))."""
    # EXERCISE 4 BEGIN: forward `path`, cross-entropy, zero_grad as `unsampled` says, backward, clip, SGD step
    #   read: paper, method step 1 (SPOS training); SPEC 3 and pitfall 10; README detail 5
    #   graded: python make_assignment.py --grade 4   (tests/test_train.py)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):  # --amp: bf16 forward, fp32 weights
        logits = model(x, path)  # (B, K): only the ops on `path` run, so only they get a gradient
        # ImageNet spaces: label smoothing 0.1 even on the random labels (SPEC 3, pitfall 10)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    # What happens to ops off the path is a choice that changes Wt, hence the angle:
    # decay (official): zero_grad(set_to_none=False) keeps the zero gradient tensors of ops sampled earlier, so SGD
    #   still applies weight decay and momentum to them. PyTorch 1.4, which produced the paper's numbers, did this.
    # frozen: their gradients are None and SGD skips them entirely; an op changes only on steps that sample it.
    optimizer.zero_grad(set_to_none=unsampled == "frozen")
    loss.backward()
    common.clip_gradients(optimizer, clip_mode, grad_clip)  # by norm (DARTS-CIFAR) or by value (ImageNet spaces)
    optimizer.step()
    return loss, logits
    # EXERCISE 4 END


def tracked_tau(bench, w0: dict, wt: dict, args: dict, column: str) -> float | None:
    """Kendall tau-b of the angle of all 15,625 cells against a benchmark column (None while undefined)."""
    wt = {k: v.detach().cpu() for k, v in wt.items()}
    archs = all_archs()
    tau = bench.tau(dict(zip(archs, AngleScorer(w0, wt, args).angles(archs).tolist())), column)
    return None if math.isnan(tau) else tau


def main():
    args = p.parse_args()
    if args.out is None:
        args.out = os.path.join("runs", f"{args.space}-{args.dataset}-{args.labels}-s{args.seed}-l{args.label_seed}")
    if args.labels == "true" and (args.label_classes or args.label_mode != "uniform"):
        raise UsageError("--label-classes and --label-mode apply to random labels only; drop them with --labels true")
    if args.label_mode == "shuffle" and args.label_classes:
        raise UsageError("--label-mode shuffle permutes the true labels, so K is the dataset's: drop --label-classes")

    # ------------------------------------------------------------------------------------------
    # BOILERPLATE: devices, torchrun, run directory, resume.
    d = common.setup_distributed(args.device, args.backend, args.dist_timeout)
    ckpt_path = os.path.join(args.out, "supernet.pt")
    log_path = os.path.join(args.out, "log.jsonl")
    init_path = os.path.join(args.out, "supernet_init.pt")
    ckpt = None
    common.check_run_dir(args.out, args.resume, args.force, "supernet.pt")  # on every rank: all fail alike
    if args.resume:
        ckpt = common.load_checkpoint(ckpt_path, "supernet checkpoint")
        missing = CKPT_KEYS - set(ckpt)
        if ckpt.get("stage") != "train" or missing:
            raise UsageError(
                f"{ckpt_path} is not a complete train.py checkpoint (missing {sorted(missing)}); "
                "resume a directory written by train.py"
            )
        defaults = vars(p.parse_args([]))
        for key, saved in ckpt["config"].items():
            if key in RUN_FLAGS or key not in defaults:
                continue
            now = getattr(args, key)
            if now != defaults[key] and now != saved:  # given explicitly and different from the run's own value
                raise UsageError(
                    f"--{key.replace('_', '-')} {now} differs from the run being resumed ({saved}); "
                    "drop the flag or start a new run with --out"
                )
            setattr(args, key, saved)
    fill_recipe(args)  # after the resume merge: a resumed run keeps its own values
    space = SPACES[args.space]

    bench, tau_column = None, None
    if args.track_tau and args.space != "nb201":
        raise UsageError("--track-tau needs the NB201 benchmark: use it with --space nb201")
    if args.track_tau:  # read the benchmark before anything runs: a bad file fails in one line, at once
        bench = load_benchmark(args.track_tau, str_to_arch)
        tau_column = args.dataset if args.dataset in bench.acc else next(iter(bench.acc))

    # ------------------------------------------------------------------------------------------
    # Data and labels.
    base = load_dataset(
        args.dataset,
        args.data,
        "train",
        augment=True,
        image_size=args.image_size,
        fake_images=args.fake_images,
        fake_seed=args.data_seed,
    )
    n_full = len(base)
    half = args.split == "half" or (args.split == "auto" and args.space == "nb201" and args.dataset == "cifar10")
    indices = split_indices(n_full, args.data_seed)[0] if half else torch.arange(n_full)  # the 25k "train" half (SPEC 1)
    indices = subset_indices(indices, args.subset, args.data_seed)
    if args.labels == "random":
        num_classes = args.label_classes or base.num_classes
        # RLNAS: one label per image of the FULL training set, uniform over K, drawn once and fixed (SPEC 1)
        labels = random_labels.draw_labels(args.label_mode, n_full, num_classes, args.label_seed, base.targets)  # (N_full,)
        kind = "random" if args.label_mode == "uniform" else f"random-{args.label_mode}"
        record = random_labels.label_record(labels, kind, args.label_seed, num_classes)
    else:
        num_classes = base.num_classes
        labels = base.targets.long()  # (N_full,) the real labels: the SPOS baseline of Table 1 (A, B)
        record = random_labels.label_record(labels, "true", None, num_classes)
    record["indices_sha256"] = random_labels.checksum(indices)  # which images are trained on
    if ckpt is not None:
        saved = dict(ckpt["labels"])
        try:
            random_labels.check_same_labels(saved, record)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if saved.get("indices_sha256") != record["indices_sha256"]:
            raise UsageError("the resumed run would train on other images (split/subset changed); use the run's own settings")
    train_set = Relabeled(base, indices, labels)
    labels_sha = record["sha256"]
    if args.data_path == "tensor" and not in_memory(train_set):
        raise UsageError(
            f"--data-path tensor needs an in-memory dataset (cifar10/100, imagenet16-120, fake), not {args.dataset}"
        )
    fast, cache = args.data_path == "tensor" or (args.data_path == "auto" and in_memory(train_set)), {}
    if not args.resume and d.master:
        common.make_run_dir(args.out, args.force, "supernet.pt")  # only now: a bad flag or missing data leaves nothing behind
    if d.ddp:
        torch.distributed.barrier()

    # ------------------------------------------------------------------------------------------
    # Model, W0, optimizer. The only global seeding call: the weight init (PyTorch defaults, pitfall 2).
    torch.manual_seed(args.seed)
    if args.image_size is None:  # the side the network (and its FLOPs count) is built for
        args.image_size = {"imagenet": 224, "imagenet16-120": 16}.get(args.dataset, 32)
    net_args = space.net_args(args, num_classes)
    raw_model = space.supernet(net_args).to(d.device)
    fmt = common.memory_format(args.memory_format, d.device)
    acc_dtype = torch.float32 if d.device.type == "mps" else torch.float64  # running loss/accuracy sums (no fp64 on MPS)
    raw_model = raw_model.to(memory_format=fmt)
    if d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes per op: let cuDNN pick its fastest kernels
    model = raw_model
    if d.ddp:
        # Rule B: a single-path step leaves most parameters unused; DDP must be told, or it waits for their
        # gradients forever. All ranks train the same path, so "unused" is the same set everywhere, and DDP
        # leaves those gradients untouched (None stays None, zeros stay zeros) like a single process would.
        # DDP also broadcasts rank 0's initial weights, so W0 is the same on every rank.
        model = DDP(raw_model, device_ids=[d.device.index] if d.device.type == "cuda" else None, find_unused_parameters=True)
    # weight decay on every parameter (NB201, DARTS-CIFAR) or on conv weights only (ImageNet spaces), SPEC 3
    optimizer = common.make_sgd(raw_model, args.lr, args.momentum, args.nesterov, args.wd, args.wd_on)
    path_gen = torch.Generator().manual_seed(args.seed)  # Rule A: same seed on every rank -> same paths
    start_epoch, start_batch, step = 0, 0, 0
    if ckpt is None:
        # RLNAS: W0 is written before the first optimizer step and never again (pitfall 1).
        w0 = {k: v.detach().cpu().clone() for k, v in raw_model.state_dict().items()}
        w0_fp = common.state_fingerprint(w0)
        if d.master:
            common.atomic_save(
                {"stage": "init", "model": w0, "supernet_args": raw_model.args, "fingerprint": w0_fp}, init_path
            )
            config = {**vars(args), "git_commit": common.git_commit(), "world_size": d.world_size}
            common.atomic_write_json(config, os.path.join(args.out, "config.json"))
            if bench is not None:  # epoch 0: W0 against itself, every angle is 0, so tau is undefined (null)
                with open(log_path, "a") as f:
                    f.write(json.dumps({"epoch": 0, "tau": tracked_tau(bench, w0, w0, raw_model.args, tau_column)}) + "\n")
    else:
        if ckpt["supernet_args"] != raw_model.args:
            raise UsageError(f"{ckpt_path} holds a supernet {ckpt['supernet_args']}, not {raw_model.args}")
        try:
            raw_model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            path_gen.set_state(ckpt["rng"]["path"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise UsageError(
                f"{ckpt_path} does not fit the supernet it describes ({str(err).splitlines()[0][:120]})"
            ) from None
        if ckpt.get("world_size", 1) != d.world_size:
            print0(
                f"warning: the run used {ckpt.get('world_size', 1)} processes, now {d.world_size}: "
                "the data shards differ, so the resumed run is not bit-identical to an uninterrupted one"
            )
        start_epoch, start_batch, step, w0_fp = ckpt["epoch"], ckpt.get("batch", 0), ckpt["step"], ckpt["w0"]["fingerprint"]
        init = common.load_checkpoint(init_path, "initial weights")
        w0 = init.get("model")
        if init.get("fingerprint") != w0_fp:
            raise UsageError(f"{init_path} is not the W0 of this run (fingerprint differs); restore the run's own file")
        # With the official semantics, an op once sampled holds a zero gradient tensor forever and keeps
        # getting weight decay and momentum; restore exactly which parameters hold one.
        params = dict(raw_model.named_parameters())
        for name in ckpt["grad_holders"]:
            params[name].grad = torch.zeros_like(params[name])
        if d.master and os.path.exists(log_path):  # drop log lines of an epoch the crash lost: it is redone
            with open(log_path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["epoch"] <= start_epoch]
            with open(log_path, "w") as f:
                f.writelines(kept)
        print0(f"resumed {ckpt_path} at epoch {start_epoch} + {start_batch} batches, step {step}")
    if start_epoch >= args.epochs:
        print0(f"{args.out} already finished {start_epoch} epochs; nothing to do")

    # ------------------------------------------------------------------------------------------
    # Training loop.
    params = sum(q.numel() for q in raw_model.parameters())
    print0(
        f"{args.space} supernet {net_args} | {params:,} parameters | "
        f"{len(train_set):,} images, {args.labels} labels | {args.epochs} epochs | {d.device} x{d.world_size}"
    )

    def save(epoch: int, batch: int, totals, ranks=None):
        """Write supernet.pt atomically: everything that steers the next step, so a resumed run is exact.

        `epoch` counts finished epochs and `batch` the batches already trained in the next one (0 at an epoch
        boundary). Mid-epoch, every rank's running loss/accuracy totals are gathered so the epoch's log line
        comes out the same after a resume.
        """
        if batch:
            per_rank = [totals.cpu().double()]
            if d.ddp:
                per_rank = [None] * d.world_size
                torch.distributed.all_gather_object(per_rank, totals.cpu().double())
            totals = torch.stack(per_rank)  # (world_size, 3)
        if not d.master:
            return
        common.atomic_save(
            {
                "stage": "train",
                "space": args.space,
                "epoch": epoch,
                "batch": batch,
                "totals": totals,
                "step": step,
                "world_size": d.world_size,
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "supernet_args": raw_model.args,
                "config": vars(args),
                "labels": record,
                "rng": {"path": path_gen.get_state()},
                # which parameters hold a gradient tensor (zeros included): with --unsampled decay they keep decaying
                "grad_holders": [n for n, q in raw_model.named_parameters() if q.grad is not None],
                "w0": {"file": "supernet_init.pt", "fingerprint": w0_fp},
                "ddp_ranks": ranks,
            },
            ckpt_path,
        )

    t_run, steps_run = time.time(), 0
    for epoch in range(start_epoch, args.epochs):
        lr = lr_at(epoch, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if args.labels == "random" and args.label_mode == "redraw":  # the ablation that breaks fixed labels
            epoch_labels = random_labels.draw_labels("redraw", n_full, num_classes, args.label_seed, epoch=epoch)
            train_set = Relabeled(base, indices, epoch_labels)
            labels_sha = random_labels.checksum(epoch_labels)
        if not fast:
            torch.manual_seed(epoch_seed(args.seed, epoch, d.rank))  # per-sample augmentation draws: replayable on resume
        loader = epoch_loader(
            train_set, args.batch_size, True, args.seed, epoch, d.device, d.rank, d.world_size, args.workers, fast, cache
        )
        model.train()
        t0, seen = time.time(), 0
        totals = torch.zeros(3, dtype=acc_dtype, device=d.device)  # loss sum, correct, images on this rank
        skip = 0
        if epoch == start_epoch and start_batch:  # resuming inside this epoch: its first batches are done
            skip, totals = start_batch, ckpt["totals"][d.rank].to(d.device, acc_dtype)
        steps_per_epoch = len(loader)
        for i, (x, y) in enumerate(loader):
            if i < skip:
                continue  # drawn (same order, same crops) but already trained on before the interruption
            x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)  # (B, 3, H, W), (B,)
            x = x.contiguous(memory_format=fmt)
            if args.lr_schedule == "linear":  # per-iteration schedule (ImageNet spaces)
                lr = lr_at(epoch, args, epoch * steps_per_epoch + i, args.epochs * steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
            # RLNAS: SPOS step. One path per step, the same on every rank (sampled here, not inside forward).
            path = space.sample_path(path_gen, net_args, **({"shared": True} if args.sampling == "shared" else {}))
            loss, logits = train_step(
                model, optimizer, x, y, path, args.unsampled, args.grad_clip, args.amp, args.clip_mode, args.label_smoothing
            )
            # running sums stay on the device: no host synchronisation per step
            totals[0] += loss.detach().to(acc_dtype) * len(y)
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += len(y)
            step, steps_run, seen = step + 1, steps_run + 1, seen + len(y)
            if (i + 1) % args.log_every == 0 or i + 1 == len(loader):
                if not torch.isfinite(totals[0]):
                    raise SystemExit(f"train.py: error: the loss is not finite at epoch {epoch + 1} step {i + 1}; lower --lr")
                rate = seen * d.world_size / (time.time() - t0)
                eta = ((args.epochs - epoch) * len(loader) - (i + 1)) * (time.time() - t_run) / steps_run
                print0(
                    f"epoch {epoch + 1}/{args.epochs} | step {i + 1}/{len(loader)} | loss {totals[0] / totals[2]:.4f} | "
                    f"acc {100 * totals[1] / totals[2]:.1f}% | lr {lr:.2e} | {rate:.0f} img/s | ETA {common.format_time(eta)}"
                )
            if args.save_every_steps and step % args.save_every_steps == 0 and i + 1 < len(loader):
                save(epoch, i + 1, totals)  # bounds the work a crash loses inside a long epoch
        ranks = None
        if d.ddp:
            torch.distributed.all_reduce(totals)
            # Check what must agree across ranks (pitfalls 3-4): the labels and the weights. A desync here would
            # otherwise go unnoticed and silently corrupt Wt. (BN running stats may differ: the angle never uses them.)
            mine = [labels_sha, common.state_fingerprint(dict(raw_model.named_parameters()))]
            ranks = [None] * d.world_size
            torch.distributed.all_gather_object(ranks, mine)
            if any(r != mine for r in ranks):
                raise RuntimeError(f"DDP ranks disagree after epoch {epoch + 1} (labels sha256, weights fingerprint): {ranks}")
        seconds = time.time() - t0
        if d.master:
            entry = {
                "epoch": epoch + 1,
                "step": step,
                "loss": totals[0].item() / totals[2].item(),
                "acc": 100 * totals[1].item() / totals[2].item(),
                "lr": lr,
                "img_per_s": seen * d.world_size / seconds,
                "seconds": seconds,
            }
            if bench is not None and (epoch + 1) % args.track_every == 0:
                entry["tau"] = tracked_tau(bench, w0, raw_model.state_dict(), raw_model.args, tau_column)
                tau = "undefined" if entry["tau"] is None else f"{entry['tau']:+.4f}"
                print0(f"epoch {epoch + 1}/{args.epochs} | Kendall tau-b of the angle vs {tau_column}: {tau}")
            with open(log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
        # the log line first, then the checkpoint: a crash in between only repeats this epoch
        save(epoch + 1, 0, None, ranks)
        if d.master and args.keep_every and (epoch + 1) % args.keep_every == 0:
            snapshot = os.path.join(args.out, f"supernet_ep{epoch + 1}.pt")  # resumable and searchable
            shutil.copyfile(ckpt_path, snapshot + ".tmp")
            os.replace(snapshot + ".tmp", snapshot)
    print0(f"done: {ckpt_path}\nnext: python search.py --ckpt {ckpt_path}")
    common.cleanup_distributed(d)


if __name__ == "__main__":
    common.run(main, DataError, BenchmarkError)
