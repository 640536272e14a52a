"""
Stage 1 of RLNAS: train the weight-sharing supernet on random labels with single-path sampling.

Every step draws one architecture uniformly (SPOS) and trains only its ops on a batch whose
labels were drawn at random once, before training. The initial weights W0 are saved before the
first update (supernet_init.pt) and the trained weights Wt after every epoch (supernet.pt);
search.py compares the two.

Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021,
arXiv:2101.11834, Sec. 3 (supernet training with random labels; SPOS sampling of Guo et al.,
ECCV 2020). Settings: method.md §3 (the RECIPES table below); sampling: method.md §2.1 (NB201),
§2.2-2.3 (DARTS), §2.4 (MobileNet); method.md pitfalls 1, 3, 4, 10. The space-specific parts come
from spaces.SPACES.

Reading path: main() at the bottom is the whole stage, top to bottom. The method is random_label_data()
(the labels), train_step() (one SPOS step) and the loop at the end of main(). The exact-resume
machinery is behind the checkpoint.* calls (checkpoint.py) and the rest of the plumbing in common.py;
neither is needed to follow the method.

    python train.py --space nb201                                 # CIFAR-10, paper settings (250 epochs)
    python train.py --space darts --dataset cifar10               # DARTS space, CIFAR-10 supernet (method.md §2.2, §3)
    torchrun --nproc_per_node=8 train.py --space darts --dataset imagenet --data /path/imagenet   # method.md §2.3, §3
    python train.py --dataset folder --data ~/data/cifar10 --subset 10000 --epochs 10   # a CPU recipe
    python train.py --dataset fake --epochs 1 --channels 4 --layers 1                   # a smoke run
    python train.py --resume --out runs/<run>                     # continue exactly where it stopped
    python train.py --space mobilenet --width 0.125 --dataset fake --image-size 32 --epochs 1   # MobileNet smoke run
    torchrun --standalone --nproc_per_node=8 train.py --space nb201           # one node, 8 GPUs
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 train.py ...
"""

from __future__ import annotations

import argparse
import math
import os

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import common
import random_labels
from angle import VECTORS, AngleScorer, movement
from benchmark import BenchmarkError, default_benchmark, load_benchmark
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
from spaces import SPACES
from supernet import all_archs, str_to_arch

# ----------------------------------------------------------------------------------------------
# The paper's settings per (space, network variant), method.md §3. Every flag below whose default is None takes its
# value from here (--help lists them); config.json and the checkpoint record the filled values.
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
    # MobileNet (method.md §3): 120 epochs, batch 512 = 64 x 8 GPUs, lr 0.25 linear per iteration down to 5e-4, label
    # smoothing 0.1 on the random labels, wd 4e-5 on conv weights AND the classifier weight, clip each value at 5
    ("mobilenet", "imagenet"): dict(
        width=1.0, epochs=120, batch_size=64, lr=0.25, lr_min=5e-4, lr_schedule="linear", momentum=0.9, nesterov=False,
        wd=4e-5, wd_on="conv+fc", grad_clip=5.0, clip_mode="value", label_smoothing=0.1,
    ),
}  # fmt: skip

# ----------------------------------------------------------------------------------------------
# Config: one flag per line, the method first. A default of None means "the recipe's value" (RECIPES above).
p = common.Parser(description="Train an RLNAS supernet on random labels (stage 1).")
g = p.add_argument_group("method: search space and path sampling (method.md §2)")
g.add_argument("--space", default="nb201", choices=list(SPACES), help="search space (default nb201)")
g.add_argument(
    "--variant",
    default=None,
    choices=["cifar", "imagenet"],
    help="network variant of the space: cifar (32x32 stem) or imagenet (the ImageNet stems); default: imagenet for "
    "--dataset imagenet, else cifar",
)
g.add_argument("--channels", type=common.channels, default=None, help="C, channels of the first stage")
g.add_argument("--layers", type=common.layers, default=None, help="NB201: N cells per stage; DARTS: cells in all")
g.add_argument("--width", type=common.width, default=None, help="MobileNet: channel multiplier (tiny runs 0.125)")
g.add_argument(
    "--sampling",
    default=None,
    choices=["per-cell", "shared"],
    help="NB201 only. per-cell: each cell samples its own sub-cell, as the official code (default); shared: one "
    "genotype for all cells",
)
g = p.add_argument_group("method: random labels (method.md §1)")
g.add_argument("--labels", default="random", choices=["random", "true"], help="random (RLNAS) or true (the SPOS baseline)")
g.add_argument(
    "--label-mode",
    default="uniform",
    choices=list(random_labels.MODES),
    help="uniform: i.i.d. uniform labels drawn once (the paper); shuffle: permuted true labels; redraw: new labels "
    "every epoch (ablations)",
)
g.add_argument("--label-seed", type=common.seed, default=0, help="seed of the random-label draw, and nothing else (default 0)")
g.add_argument(
    "--label-classes", type=common.number(int, 2), default=0, help="K >= 2 for random labels (default: the dataset's)"
)
g = p.add_argument_group("method: training recipe (method.md §3)")
g.add_argument("--epochs", type=common.number(int), default=None, help="training epochs")
g.add_argument("--batch-size", type=common.number(int), default=None, help="batch size per process")
g.add_argument("--lr", type=common.number(float, 0), default=None, help="initial learning rate")
g.add_argument("--lr-min", type=common.number(float, 0), default=None, help="final learning rate")
g.add_argument(
    "--lr-schedule",
    default=None,
    choices=["cosine", "linear"],
    help="cosine: per epoch, lr -> lr-min (NB201, DARTS-CIFAR); linear: per iteration, reaching lr-min at the last "
    "step (ImageNet supernets)",
)
g.add_argument("--momentum", type=common.fraction, default=None, help="SGD momentum")
g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum")
g.add_argument("--wd", type=common.number(float, 0), default=None, help="weight decay")
g.add_argument(
    "--wd-on",
    default=None,
    choices=list(common.WD_ON),
    help="which parameters get weight decay: all, conv (4-D conv weights) or conv+fc (and the classifier weight)",
)
g.add_argument("--grad-clip", type=common.number(float, 0), default=None, help="gradient clipping threshold (0 = off)")
g.add_argument("--clip-mode", default=None, choices=["norm", "value"], help="clip the global gradient norm, or each value")
g.add_argument("--label-smoothing", type=common.fraction, default=None, help="label smoothing of the CE loss")
g.add_argument(
    "--unsampled",
    default="decay",
    choices=["decay", "frozen"],
    help="ops off the sampled path: decay = keep weight decay and momentum once sampled (official, default); "
    "frozen = untouched",
)
g.add_argument(
    "--seed", type=common.seed, default=0, help="seed of the weight init, the path sampler and the data order (default 0)"
)
g = p.add_argument_group("data")
g.add_argument("--dataset", default="cifar10", choices=DATASETS, help="training data (default cifar10)")
g.add_argument(
    "--data",
    type=common.nonempty,
    default=None,
    help="dataset directory (default ./data; with --resume, the directory the run read)",
)
g.add_argument(
    "--image-size", type=common.image_size, default=None, help="image side for folder/fake/imagenet data (32; imagenet 224)"
)
g.add_argument(
    "--split",
    default="auto",
    choices=["auto", "half", "full"],
    help="half: a seeded 25k/25k split of the training set, as the official NB201 CIFAR-10 run; auto = half for nb201+cifar10",
)
g.add_argument(
    "--subset", type=common.number(int), default=0, help="train on a seeded random subset of N images (default all)"
)
g.add_argument("--data-seed", type=common.seed, default=0, help="seed of the half split and of --subset (default 0)")
g.add_argument(
    "--fake-images", type=common.number(int, 1, 10**6), default=1024, help="size of the --dataset fake training set"
)
g = p.add_argument_group("run and resume")
g.add_argument(
    "--out",
    type=common.nonempty,
    default=None,
    help="run directory (default runs/<space>-<dataset>-<labels>-s<seed>-l<label-seed>)",
)
g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
g.add_argument("--force", action="store_true", help="overwrite an existing run directory")
g.add_argument(
    "--track-tau",
    nargs="?",
    const="default",
    default=None,
    help="at epoch 0 and every --track-every epochs, log Kendall tau-b of the angle of all 15,625 NB201 cells "
    "against the accuracy column of the training dataset (cifar10 for folder/fake data), for every weight-vector "
    "variant (angle.VECTORS), and how far stem+head, reduction blocks and cell ops moved; the benchmark is the "
    "shipped NB201 table, or FILE",
)
g.add_argument(
    "--vector",
    choices=sorted(VECTORS),
    default="official",
    help="--track-tau: the weight-vector variant whose tau is printed and logged as 'tau' (method.md §4.6)",
)
g.add_argument("--track-every", type=common.number(int), default=1, help="epochs between two --track-tau evaluations (1)")
g.add_argument(
    "--keep-every",
    type=common.number(int, 0),
    default=0,
    help="also keep a full snapshot supernet_ep<E>.pt every E epochs, e.g. for angle-vs-epoch studies (0 = off)",
)
g.add_argument(
    "--save-every-steps",
    type=common.number(int, 0),
    default=0,
    help="also checkpoint every N steps inside an epoch, for long epochs (0 = only at epoch ends)",
)
g.add_argument("--log-every", type=common.number(int), default=50, help="print a progress line every N steps (50)")
p.add_run_flags()  # the speed and device groups, shared with retrain.py (common.py)
p.show_recipes(RECIPES)  # --help: "(recipe: nb201 0.025, darts-cifar 0.025, ...)" after every flag a recipe fills

# The flags that only say how to run, not what the run is: a resumed run may change these (checkpoint.merge_flags);
# every other flag is the run's own. What supernet.pt must hold is common.KINDS["train"].
RUN_FLAGS = {
    "out",
    "resume",
    "force",
    "log_every",
    "keep_every",
    "track_tau",
    "track_every",
    "vector",
    "save_every_steps",
    "data",
}
RUN_FLAGS |= {"device", "backend", "dist_timeout"}
# (--workers is not among them: with workers the crops come from per-worker RNG streams, so it is part of the run)


def fill_recipe(args) -> None:
    """Fill every flag left at None from the (space, variant) recipe (method.md §3)."""
    recipe = common.pick_recipe(args, RECIPES, "train.py")
    if args.space == "mobilenet" and (args.channels or args.layers):
        raise UsageError("--channels and --layers do not apply to --space mobilenet; scale it with --width")
    if args.space != "mobilenet" and args.width is not None:
        raise UsageError(f"--width applies to --space mobilenet only; {args.space} takes --channels and --layers")
    if args.space != "nb201" and args.sampling is not None:
        raise UsageError(f"--sampling applies to --space nb201 only; {args.space} samples one genotype per cell type")
    common.fill_defaults(args, recipe)


def check_label_flags(args) -> None:
    if args.labels == "true" and (args.label_classes or args.label_mode != "uniform"):
        raise UsageError("--label-classes and --label-mode apply to random labels only; drop them with --labels true")
    if args.label_mode == "shuffle" and args.label_classes:
        raise UsageError("--label-mode shuffle permutes the true labels, so K is the dataset's: drop --label-classes")


def lr_at(epoch: int, args, step: int = 0, total_steps: int = 1) -> float:
    if args.lr_schedule == "linear":
        # linear per iteration (method.md §3, ImageNet spaces): lr at the first step, lr_min at the last one, held there
        frac = min(1.0, step / max(1, total_steps - 1))
        return max(args.lr_min, args.lr - (args.lr - args.lr_min) * frac)
    # cosine annealing per epoch, no warm-up (method.md §3): lr_e = lr_min + (lr - lr_min) * (1 + cos(pi * e / E)) / 2
    return args.lr_min + (args.lr - args.lr_min) * (1 + math.cos(math.pi * epoch / args.epochs)) / 2


def random_label_data(args, ckpt, download: bool = True):
    """RLNAS: the training images, each with one random label (method.md §1; paper Sec. 3).

    Returns (base dataset, indices trained on, train set with its labels, label record, K). The record (kind, seed,
    K, sha256 of the labels and of the indices) goes into every checkpoint; a resumed run must match it.
    """
    base = load_dataset(
        args.dataset,
        args.data,
        "train",
        augment=True,
        image_size=args.image_size,
        fake_images=args.fake_images,
        fake_seed=args.data_seed,
        download=download,
    )
    n_full = len(base)
    half = args.split == "half" or (args.split == "auto" and args.space == "nb201" and args.dataset == "cifar10")
    indices = split_indices(n_full, args.data_seed)[0] if half else torch.arange(n_full)  # the 25k "train" half (§1)
    indices = subset_indices(indices, args.subset, args.data_seed)
    if args.labels == "random":
        num_classes = args.label_classes or base.num_classes
        # RLNAS: one label per image of the FULL training set, uniform over K, drawn once and fixed (method.md §1)
        labels = random_labels.draw_labels(args.label_mode, n_full, num_classes, args.label_seed, base.targets)  # (N_full,)
        kind = "random" if args.label_mode == "uniform" else f"random-{args.label_mode}"
        record = random_labels.label_record(labels, kind, args.label_seed, num_classes)
    else:
        num_classes = base.num_classes
        labels = base.targets.long()  # (N_full,) the real labels: the SPOS baseline of Table 1 (A, B)
        record = random_labels.label_record(labels, "true", None, num_classes)
    record["indices_sha256"] = random_labels.checksum(indices)  # which images are trained on
    if ckpt is not None:
        checkpoint.check_labels(ckpt["labels"], record)  # a resumed run: the same labels, the same images
    train_set = Relabeled(base, indices, labels)
    if args.data_path == "tensor" and not in_memory(train_set):
        raise UsageError(
            f"--data-path tensor needs an in-memory dataset (cifar10/100, imagenet16-120, fake), not {args.dataset}"
        )
    return base, indices, train_set, record, num_classes


def build_supernet(args, space, net_args: dict, d):
    """BOILERPLATE: the supernet on its device -> (raw_model, model, memory format).

    `model` is what the loop calls (the DDP wrapper under torchrun), `raw_model` the module itself, whose state_dict
    is saved: its names have no "module." prefix, which angle.py relies on.
    """
    raw_model = space.supernet(net_args).to(d.device)
    fmt = common.memory_format(args.memory_format, d.device, args.amp)
    raw_model = raw_model.to(memory_format=fmt)
    common.set_determinism(args.deterministic, d.device)  # cuDNN autotuning, or --deterministic kernels
    model = raw_model
    if d.ddp:
        # Rule B: a single-path step leaves most parameters unused; DDP must be told, or it waits for their
        # gradients forever. All ranks train the same path, so "unused" is the same set everywhere, and DDP
        # leaves those gradients untouched (None stays None, zeros stay zeros) like a single process would.
        # DDP also broadcasts rank 0's initial weights, so W0 is the same on every rank. (static_graph and
        # find_unused_parameters=False both fail here: the set of unused parameters changes with every path.)
        # BN buffers are not broadcast before every forward (DDP's default would send every running mean and variance
        # of the whole supernet each step): in training mode BN normalizes with the batch statistics, so the buffers
        # change no gradient; the angle never reads them (method.md §4.5); and rank 0, whose state_dict is saved, only
        # ever received its own buffers from that broadcast, so supernet.pt is the same bit for bit without it.
        # Gradients as views of DDP's buckets save a copy per gradient per step (same weights and grad holders).
        model = DDP(
            raw_model,
            device_ids=[d.device.index] if d.device.type == "cuda" else None,
            find_unused_parameters=True,
            gradient_as_bucket_view=True,
            **common.NO_BUFFER_BROADCAST,
        )
    return raw_model, model, fmt


def train_step(
    model, optimizer, x, y, path, unsampled="decay", *, grad_clip=0.0, clip_mode="norm", label_smoothing=0.0, amp=False
):
    """One SPOS step on one sampled path (paper Sec. 3; method.md §3); returns (loss, logits (B, K)).

    x (B, 3, H, W) images, y (B,) their random labels, path what space.sample_path drew; the keyword arguments are
    the recipe's clipping and label smoothing, and --amp.
    """
    # EXERCISE 4 BEGIN: forward `path`, cross-entropy, zero_grad as `unsampled` says, backward, clip, SGD step
    #   read: paper Sec. 3 (SPOS training on random labels); method.md §3 and pitfall 10; details.md detail 5
    #   graded: python make_assignment.py --grade 4   (tests/test_train.py)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):  # --amp: bf16 forward, fp32 weights
        logits = model(x, path)  # (B, K): only the ops on `path` run, so only they get a gradient
        # ImageNet spaces: label smoothing 0.1 even on the random labels (method.md §3, pitfall 10)
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


def tau_tracker(args):
    """--track-tau: tau(w0, wt, supernet_args) -> Kendall tau-b of the angle of all 15,625 NB201 cells against the
    benchmark's accuracy column of the training dataset (None while undefined); None without the flag. The benchmark
    is read at once, before anything runs: a bad file fails in one line."""
    if not args.track_tau:
        return None
    if args.space != "nb201":
        raise UsageError("--track-tau needs the NB201 benchmark: use it with --space nb201")
    bench = load_benchmark(default_benchmark("nb201") if args.track_tau == "default" else args.track_tau, str_to_arch)
    column = args.dataset if args.dataset in bench.acc else next(iter(bench.acc))

    def tau(w0: dict, wt: dict, net_args: dict, epoch: int = 0) -> dict:
        """The log.jsonl fields: tau (of --vector), tau_vectors (every variant) and moved (degrees per part)."""
        wt = {k: v.detach().cpu() for k, v in wt.items()}
        archs = all_archs()
        taus = {}
        for vector in VECTORS:
            value = bench.tau(dict(zip(archs, AngleScorer(w0, wt, net_args, vector).angles(archs).tolist())), column)
            taus[vector] = None if math.isnan(value) else value
        moved = movement(w0, wt, net_args)
        if epoch:
            shown = "undefined" if taus[args.vector] is None else f"{taus[args.vector]:+.4f}"
            parts = ", ".join(f"{k} {v:.1f}" for k, v in moved.items())
            print0(
                f"epoch {epoch}/{args.epochs} | Kendall tau-b of the angle ({args.vector}) vs {column}: {shown} | "
                f"moved (degrees): {parts}"
            )
        return {"tau": taus[args.vector], "tau_vectors": taus, "moved": moved}

    return tau


def save_w0(raw_model, args, d, path: str, tau) -> tuple[dict, str]:
    """RLNAS: W0, the weights before the first optimizer step, written once (Rule C; method.md pitfall 1): the angle
    is measured from exactly these. Also the run's config.json and, with --track-tau, log.jsonl's epoch-0 line.
    Returns (W0, its fingerprint), which ties every later supernet.pt to this file."""
    w0 = {k: v.detach().cpu().clone() for k, v in raw_model.state_dict().items()}
    w0_fp = common.state_fingerprint(w0)
    if d.master:  # config.json first: a run killed before its W0 is written can still be resumed (from epoch 0)
        config = {**vars(args), "git_commit": common.git_commit(), "world_size": d.world_size}
        common.atomic_write_json(config, os.path.join(args.out, "config.json"))
        common.atomic_save({"stage": "init", "model": w0, "supernet_args": raw_model.args, "fingerprint": w0_fp}, path)
        if tau is not None:  # epoch 0: W0 against itself, every angle is 0, so tau is undefined (null)
            common.append_jsonl(os.path.join(args.out, "log.jsonl"), {"epoch": 0, **tau(w0, w0, raw_model.args)})
    return w0, w0_fp


def supernet_args(args, space, num_classes: int) -> dict:
    """The supernet's constructor arguments; --image-size defaults to the dataset's side. An --image-size the
    downsampling cannot take fails here, in one line, before anything is allocated (a meta-device probe)."""
    if args.image_size is None:  # the side the network (and its FLOPs count) is built for
        args.image_size = {"imagenet": 224, "imagenet16-120": 16}.get(args.dataset, 32)
    net_args = space.net_args(args, num_classes)
    with torch.device("meta"):  # shapes only
        probe = space.supernet(net_args)
    common.check_image_size(probe, args.image_size, space.sample_path(torch.Generator(), net_args), what="supernet")
    return net_args


def start_or_resume(args, ckpt, raw_model, optimizer, d, path_gen, tau):
    """W0 and where the loop starts -> (W0, its fingerprint, start_epoch, step).

    A new run saves W0 now, before the first step (save_w0). A run stopped in its first epoch starts again from
    its own W0. Any other resumed run restores weights, momentum, the path generator and its place (checkpoint.py).
    """
    ckpt_path, init_path, log_path = (os.path.join(args.out, f) for f in ("supernet.pt", "supernet_init.pt", "log.jsonl"))
    if ckpt is None and args.resume and os.path.isfile(init_path):  # stopped in epoch 1: again, from its own W0
        w0 = checkpoint.load_w0(init_path)
        try:
            raw_model.load_state_dict(w0)
        except (RuntimeError, ValueError, KeyError, TypeError):
            raise UsageError(f"{init_path} is not the W0 of a supernet {raw_model.args}; restore the run's own file") from None
        w0_fp, start_epoch, step = common.state_fingerprint(w0), 0, 0
        if d.master:
            checkpoint.trim_log(log_path, -1)  # the lines of the lost epoch go; the epoch-0 line is written again
            if tau is not None:
                common.append_jsonl(log_path, {"epoch": 0, **tau(w0, w0, raw_model.args)})
    elif ckpt is None:  # RLNAS: W0 is saved before the first optimizer step, and never again (method.md pitfall 1)
        if args.resume and d.master:
            checkpoint.trim_log(log_path, -1)
        w0, w0_fp = save_w0(raw_model, args, d, init_path, tau)
        start_epoch, step = 0, 0
    else:  # BOILERPLATE: continue exactly where the run stopped (checkpoint.py)
        if ckpt["supernet_args"] != raw_model.args:
            raise UsageError(f"{ckpt_path} holds a supernet {ckpt['supernet_args']}, not {raw_model.args}")
        w0_fp = ckpt["w0"]["fingerprint"]
        w0 = checkpoint.load_w0(init_path, w0_fp)
        start_epoch, _, step = checkpoint.restore(ckpt, ckpt_path, raw_model, optimizer, d, log_path, path_gen, "supernet")
    return w0, w0_fp, start_epoch, step


def main():
    args = p.parse_args()
    if args.out is None:
        args.out = os.path.join("runs", f"{args.space}-{args.dataset}-{args.labels}-s{args.seed}-l{args.label_seed}")
    check_label_flags(args)

    # ------------------------------------------------------------------------------------------
    # BOILERPLATE: devices, torchrun, run directory; a resumed run takes its own settings back (checkpoint.py).
    d = common.setup_distributed(args.device, args.backend, args.dist_timeout)
    ckpt_path, log_path = os.path.join(args.out, "supernet.pt"), os.path.join(args.out, "log.jsonl")
    ckpt = checkpoint.open_run(args, ckpt_path, RUN_FLAGS, p)  # None: a new run
    download = checkpoint.data_dir(args, ckpt)  # --data, else ./data, else (resumed) where the run read
    fill_recipe(args)  # after the resume merge: a resumed run keeps its own values
    space = SPACES[args.space]
    tau = tau_tracker(args)

    # ------------------------------------------------------------------------------------------
    # RLNAS: the training set with its random labels, drawn once (method.md §1).
    base, indices, train_set, record, num_classes = random_label_data(args, ckpt, download)
    labels_sha = record["sha256"]
    fast, cache = args.data_path == "tensor" or (args.data_path == "auto" and in_memory(train_set)), {}
    if not args.resume and d.master:
        checkpoint.make_run_dir(args.out, args.force, "supernet.pt")  # only now: a bad flag or missing data leaves nothing
    if d.ddp:
        torch.distributed.barrier()
    common.STOP["resume"] = f"python train.py --resume --out {args.out}"  # what an interrupt's one line suggests

    # ------------------------------------------------------------------------------------------
    # Model, optimizer, W0. The only global seeding call: the weight init (PyTorch defaults, method.md pitfall 2).
    net_args = supernet_args(args, space, num_classes)
    torch.manual_seed(args.seed)
    raw_model, model, fmt = build_supernet(args, space, net_args, d)
    # weight decay on every parameter (NB201, DARTS-CIFAR) or on conv weights only (ImageNet spaces), method.md §3
    optimizer = common.make_sgd(raw_model, args.lr, args.momentum, args.nesterov, args.wd, args.wd_on)
    path_gen = torch.Generator().manual_seed(args.seed)  # Rule A: same seed on every rank -> same paths
    w0, w0_fp, start_epoch, step = start_or_resume(args, ckpt, raw_model, optimizer, d, path_gen, tau)
    if start_epoch >= args.epochs:
        print0(f"{args.out} already finished {start_epoch} epochs; nothing to do")

    def save(epoch: int, batch: int, totals=None, ranks=None):
        """supernet.pt: everything that steers the next step, so that a resumed run is exact. `epoch` counts finished
        epochs, `batch` the batches already trained in the next one (0 at an epoch boundary)."""
        state = dict(
            stage="train", space=args.space, epoch=epoch, batch=batch, step=step, world_size=d.world_size,
            model=raw_model.state_dict(), optimizer=optimizer.state_dict(), supernet_args=raw_model.args,
            config=vars(args), labels=record, rng={"path": path_gen.get_state()},
            grad_holders=checkpoint.grad_holders(raw_model), w0={"file": "supernet_init.pt", "fingerprint": w0_fp},
            ddp_ranks=ranks,
        )  # fmt: skip
        checkpoint.save(ckpt_path, d, state, totals)

    # ------------------------------------------------------------------------------------------
    # RLNAS: the SPOS loop (paper Sec. 3; method.md §2-3). Every step samples one path uniformly, trains only its ops
    # on a batch of random labels and takes one SGD step. Wt is saved after every epoch: search.py compares it to W0.
    params = sum(q.numel() for q in raw_model.parameters())
    print0(
        f"{args.space} supernet {net_args} | {params:,} parameters | "
        f"{len(train_set):,} images, {args.labels} labels | {args.epochs} epochs | {d.device} x{d.world_size}"
    )
    recipe = dict(grad_clip=args.grad_clip, clip_mode=args.clip_mode, label_smoothing=args.label_smoothing, amp=args.amp)
    progress = common.Progress("train.py", args.epochs, d.world_size)
    common.STOP["armed"] = not d.ddp  # SIGTERM: stop after the current step, with a checkpoint of it (one process)
    for epoch in range(start_epoch, args.epochs):
        lr = lr_at(epoch, args)
        common.set_lr(optimizer, lr)
        if args.labels == "random" and args.label_mode == "redraw":  # the ablation that breaks fixed labels
            labels = random_labels.draw_labels("redraw", len(base), num_classes, args.label_seed, epoch=epoch)
            train_set, labels_sha = Relabeled(base, indices, labels), random_labels.checksum(labels)
        if not fast:
            torch.manual_seed(epoch_seed(args.seed, epoch, d.rank))  # per-sample augmentation draws: replayable on resume
        loader = epoch_loader(
            train_set, args.batch_size, True, args.seed, epoch, d.device, d.rank, d.world_size, args.workers, fast, cache
        )
        model.train()
        skip, totals = checkpoint.epoch_totals(ckpt, epoch, d)  # loss sum, correct, images on this rank
        progress.start_epoch(epoch, len(loader), skip)
        for i, (x, y) in enumerate(loader):
            if i < skip:
                continue  # drawn (same order, same crops) but already trained on before the interruption
            x = x.to(d.device, non_blocking=True).contiguous(memory_format=fmt)  # (B, 3, H, W)
            y = y.to(d.device, non_blocking=True)  # (B,) the random labels
            if args.lr_schedule == "linear":  # per-iteration schedule (ImageNet spaces)
                lr = lr_at(epoch, args, epoch * len(loader) + i, args.epochs * len(loader))
                common.set_lr(optimizer, lr)
            # RLNAS: one path per step, drawn from path_gen only: the same on every rank (method.md §2, pitfall 4)
            path = space.sample_path(path_gen, net_args, shared=args.sampling == "shared")
            loss, logits = train_step(model, optimizer, x, y, path, args.unsampled, **recipe)
            totals[0] += loss.detach().to(totals.dtype) * len(y)  # running sums stay on the device: no host sync
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += len(y)
            step += 1
            progress.step(i, len(y), totals, lr, args.log_every)
            # --save-every-steps, and SIGTERM: a mid-epoch checkpoint (then stop)
            checkpoint.within_epoch(save, ckpt_path, epoch, i + 1, len(loader), step, args.save_every_steps, totals)
        if d.ddp:
            torch.distributed.all_reduce(totals)  # the epoch's loss and accuracy over all ranks
        ranks = checkpoint.ranks_agree(d, labels_sha, raw_model, epoch)  # DDP: same labels, same weights everywhere
        img_per_s, seconds = progress.end_epoch()
        if d.master:
            loss, acc = totals[0].item() / totals[2].item(), 100 * totals[1].item() / totals[2].item()
            entry = dict(epoch=epoch + 1, step=step, loss=loss, acc=acc, lr=lr, img_per_s=img_per_s, seconds=seconds)
            if tau is not None and (epoch + 1) % args.track_every == 0:
                entry.update(tau(w0, raw_model.state_dict(), raw_model.args, epoch + 1))  # and prints it
            common.append_jsonl(log_path, entry)
        save(epoch + 1, 0, ranks=ranks)  # the log line first, then the checkpoint: a crash in between repeats the epoch
        if d.master and args.keep_every and (epoch + 1) % args.keep_every == 0:  # resumable and searchable snapshots
            checkpoint.keep_copy(ckpt_path, os.path.join(args.out, f"supernet_ep{epoch + 1}.pt"))
        checkpoint.stop_if_requested(ckpt_path)  # SIGTERM in the epoch's last step: the checkpoint just written
    common.STOP["armed"] = False
    print0(f"done: {ckpt_path}\nnext: python search.py --ckpt {ckpt_path}")
    common.cleanup_distributed(d)


if __name__ == "__main__":
    common.run(main, DataError, BenchmarkError)
