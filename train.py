"""
Stage 1 of RLNAS: train the weight-sharing supernet on random labels with single-path sampling.

Every step draws one architecture uniformly (SPOS) and trains only its ops on a batch whose labels were drawn at
random once, before training. The initial weights W0 are saved before the first update (supernet_init.pt) and the
trained weights Wt after every epoch (supernet.pt); search.py compares the two.

Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021, arXiv:2101.11834, Sec. 3 (supernet
training with random labels; SPOS sampling of Guo et al., ECCV 2020). Settings: method.md §3 (RECIPES below);
sampling: method.md §2.1 (NB201), §2.2-2.3 (DARTS), §2.4 (MobileNet); pitfalls 1, 3, 4, 10.

Read from here to main() and its loop, the whole stage: the labels (random_label_data), the SGD (make_sgd, lr_at),
one SPOS step (train_step), then main(). Below the divider after main(): the flags' checks and the ablations. The
run directory and the exact resume are behind the `run.` calls (checkpoint.py); torchrun behind distributed.py.

    python train.py --space nb201                                 # CIFAR-10, paper settings (250 epochs)
    python train.py --dataset folder --data ~/data/cifar10 --subset 10000 --epochs 10   # a CPU recipe
    python train.py --dataset fake --epochs 1 --channels 4 --layers 1                   # a smoke run
    python train.py --resume --out runs/<run>                     # continue exactly where it stopped
    python train.py --space darts --dataset cifar10               # DARTS space (method.md §2.2, §3)
    python train.py --space mobilenet --width 0.125 --dataset fake --image-size 32 --epochs 1   # MobileNet smoke run
    torchrun --standalone --nproc_per_node=8 train.py --space nb201           # one node, 8 GPUs
    torchrun --nproc_per_node=8 train.py --space darts --dataset imagenet --data /path/imagenet   # method.md §2.3, §3
"""

from __future__ import annotations

import cli  # first: a Ctrl-C while torch loads is one line, not a traceback

# isort: split

import argparse
import math
import os

import torch
import torch.nn.functional as F

import checkpoint
import distributed
import random_labels
from angle import VECTORS
from benchmark import track_tau
from cli import UsageError, print0
from data import DATASETS, Relabeled, load_dataset, split_indices, subset_indices
from spaces import SPACES, check_image_size

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
    # MobileNet: 120 epochs, batch 512 = 64 x 8 GPUs, lr 0.25 linear per iteration down to 5e-4, label smoothing 0.1
    # on the random labels, wd 4e-5 on conv weights AND the classifier weight, clip each value at 5
    ("mobilenet", "imagenet"): dict(
        width=1.0, epochs=120, batch_size=64, lr=0.25, lr_min=5e-4, lr_schedule="linear", momentum=0.9, nesterov=False,
        wd=4e-5, wd_on="conv+fc", grad_clip=5.0, clip_mode="value", label_smoothing=0.1,
    ),
}  # fmt: skip

# ----------------------------------------------------------------------------------------------
# Config: one flag per line, the method first. A default of None means "the recipe's value" (RECIPES above).
# fmt: off
p = cli.Parser(prog="train.py", description="Train an RLNAS supernet on random labels (stage 1).")
g = p.add_argument_group("method: search space and path sampling (method.md §2)")
g.add_argument("--space", default="nb201", choices=list(SPACES), help="search space (default nb201)")
g.add_argument("--variant", default=None, choices=["cifar", "imagenet"], help="network variant of the space: cifar (32x32 stem) or imagenet (the ImageNet stems); default: imagenet for --dataset imagenet, else cifar")
g.add_argument("--channels", type=cli.channels, default=None, help="C, channels of the first stage")
g.add_argument("--layers", type=cli.layers, default=None, help="NB201: N cells per stage; DARTS: cells in all")
g.add_argument("--width", type=cli.width, default=None, help="MobileNet: channel multiplier (tiny runs 0.125)")
g.add_argument("--sampling", default=None, choices=["per-cell", "shared"], help="NB201 only. per-cell: each cell samples its own sub-cell, as the official code (default); shared: one genotype for all cells")
g = p.add_argument_group("method: random labels (method.md §1)")
g.add_argument("--labels", default="random", choices=["random", "true"], help="random (RLNAS) or true (the SPOS baseline)")
g.add_argument("--label-mode", default="uniform", choices=list(random_labels.MODES), help="uniform: i.i.d. uniform labels drawn once (the paper); shuffle: permuted true labels; redraw: new labels every epoch (ablations)")
g.add_argument("--label-seed", type=cli.seed, default=0, help="seed of the random-label draw, and nothing else (default 0)")
g.add_argument("--label-classes", type=cli.number(int, 2), default=0, help="K >= 2 for random labels (default: the dataset's)")
g = p.add_argument_group("method: training recipe (method.md §3)")
g.add_argument("--epochs", type=cli.number(int), default=None, help="training epochs")
g.add_argument("--batch-size", type=cli.number(int), default=None, help="batch size per process")
g.add_argument("--lr", type=cli.number(float, 0), default=None, help="initial learning rate")
g.add_argument("--lr-min", type=cli.number(float, 0), default=None, help="final learning rate")
g.add_argument("--lr-schedule", default=None, choices=["cosine", "linear"], help="cosine: per epoch, lr -> lr-min (NB201, DARTS-CIFAR); linear: per iteration, reaching lr-min at the last step (ImageNet supernets)")
g.add_argument("--momentum", type=cli.fraction, default=None, help="SGD momentum")
g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum")
g.add_argument("--wd", type=cli.number(float, 0), default=None, help="weight decay")
g.add_argument("--wd-on", default=None, choices=["all", "conv", "conv+fc"], help="which parameters get weight decay: all, conv (4-D conv weights) or conv+fc (and the classifier weight)")
g.add_argument("--grad-clip", type=cli.number(float, 0), default=None, help="gradient clipping threshold (0 = off)")
g.add_argument("--clip-mode", default=None, choices=["norm", "value"], help="clip the global gradient norm, or each value")
g.add_argument("--label-smoothing", type=cli.fraction, default=None, help="label smoothing of the CE loss")
g.add_argument("--unsampled", default="decay", choices=["decay", "frozen"], help="ops off the sampled path: decay = keep weight decay and momentum once sampled (official, default); frozen = untouched")
g.add_argument("--seed", type=cli.seed, default=0, help="seed of the weight init, the path sampler and the data order (default 0)")
g = p.add_argument_group("data")
g.add_argument("--dataset", default="cifar10", choices=DATASETS, help="training data (default cifar10)")
g.add_argument("--data", type=cli.nonempty, default=None, help="dataset directory (default ./data; with --resume, the directory the run read)")
g.add_argument("--image-size", type=cli.image_size, default=None, help="image side for folder/fake/imagenet data (32; imagenet 224)")
g.add_argument("--split", default="auto", choices=["auto", "half", "full"], help="half: a seeded 25k/25k split of the training set, as the official NB201 CIFAR-10 run; auto = half for nb201+cifar10")
g.add_argument("--subset", type=cli.number(int), default=0, help="train on a seeded random subset of N images (default all)")
g.add_argument("--data-seed", type=cli.seed, default=0, help="seed of the half split and of --subset (default 0)")
g.add_argument("--fake-images", type=cli.number(int, 1, 10**6), default=1024, help="size of the --dataset fake training set")
g = p.add_argument_group("run and resume")
g.add_argument("--out", type=cli.nonempty, default=None, help="run directory (default runs/<space>-<dataset>-<labels>-s<seed>-l<label-seed>)")
g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
g.add_argument("--force", action="store_true", help="replace a run directory of train.py: only the files it recorded as its own")
g.add_argument("--track-tau", nargs="?", const="default", default=None, help="at every --track-every epochs, log Kendall tau-b of the angle of all 15,625 NB201 cells against the accuracy column of the training dataset (cifar10 for folder/fake data), for every weight-vector variant (angle.VECTORS), and how far stem+head, reduction blocks and cell ops moved; the benchmark is the shipped NB201 table, or FILE")
g.add_argument("--vector", choices=sorted(VECTORS), default="official", help="--track-tau: the weight-vector variant whose tau is printed and logged as 'tau' (method.md §4.6)")
g.add_argument("--track-every", type=cli.number(int), default=1, help="epochs between two --track-tau evaluations (1)")
g.add_argument("--keep-every", type=cli.number(int, 0), default=0, help="also keep a full snapshot supernet_ep<E>.pt every E epochs, e.g. for angle-vs-epoch studies (0 = off)")
g.add_argument("--save-every-steps", type=cli.number(int, 0), default=0, help="also checkpoint every N steps inside an epoch, for long epochs (0 = only at epoch ends)")
g.add_argument("--log-every", type=cli.number(int), default=50, help="print a progress line every N steps (50)")
p.add_run_flags()  # the speed and device groups, shared with retrain.py (cli.py)
p.show_recipes(RECIPES)  # --help: "(recipe: nb201 0.025, darts-cifar 0.025, ...)" after every flag a recipe fills
# fmt: on


# ----------------------------------------------------------------------------------------------
# RLNAS: the random labels, the SGD of the recipe, one SPOS step.
def random_label_data(args, download: bool = True) -> tuple[Relabeled, dict]:
    """RLNAS: the training images, each with one random label (method.md §1; paper Sec. 3).

    Returns (the train set with its labels, the label record). The record (kind, seed, K, count, sha256 of the labels
    and of the indices) goes into every checkpoint: a resumed run must train on the same labels and images.
    """
    base = load_dataset(args.dataset, args.data, "train", augment=True, image_size=args.image_size,
                        fake_images=args.fake_images, fake_seed=args.data_seed, download=download)  # fmt: skip
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
        labels = base.targets.long()  # (N_full,) the real labels: the SPOS baseline of Table 1 (A, B)
        record = random_labels.label_record(labels, "true", None, base.num_classes)
    record["indices_sha256"] = random_labels.checksum(indices)  # which images are trained on
    return Relabeled(base, indices, labels), record


def make_sgd(model: torch.nn.Module, args) -> torch.optim.SGD:
    """SGD with weight decay on every parameter (NB201, DARTS-CIFAR) or, for the ImageNet spaces (method.md §3), on
    the 4-D conv weights only (DARTS: its name filter misses the FC) or the conv weights and the classifier weight
    (MobileNet). Two param groups then, the second with wd 0."""
    nesterov = args.nesterov and args.momentum > 0
    if args.wd_on == "all":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=nesterov, weight_decay=args.wd)
    decay, rest = [], []
    for name, q in model.named_parameters():
        fc = args.wd_on == "conv+fc" and name.startswith("classifier.") and name.endswith("weight")
        (decay if q.ndim == 4 or fc else rest).append(q)
    groups = [{"params": decay, "weight_decay": args.wd}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=nesterov)


def lr_at(args, epoch: int, step: int, total_steps: int) -> float:
    """The learning rate of global step `step` (of `total_steps`), in `epoch` (method.md §3)."""
    if args.lr_schedule == "linear":
        # linear per iteration (ImageNet spaces): lr at the first step, lr_min at the last one, held there
        frac = min(1.0, step / max(1, total_steps - 1))
        return max(args.lr_min, args.lr - (args.lr - args.lr_min) * frac)
    # cosine annealing per epoch, no warm-up: lr_e = lr_min + (lr - lr_min) * (1 + cos(pi * e / E)) / 2
    return args.lr_min + (args.lr - args.lr_min) * (1 + math.cos(math.pi * epoch / args.epochs)) / 2


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
    if grad_clip > 0:  # by the global norm (DARTS-CIFAR) or each value (ImageNet supernets)
        params = [q for group in optimizer.param_groups for q in group["params"]]
        (torch.nn.utils.clip_grad_norm_ if clip_mode == "norm" else torch.nn.utils.clip_grad_value_)(params, grad_clip)
    optimizer.step()
    return loss, logits
    # EXERCISE 4 END


# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    args = p.parse_args(argv)
    args.out = args.out or os.path.join("runs", f"{args.space}-{args.dataset}-{args.labels}-s{args.seed}-l{args.label_seed}")
    check_label_flags(args)
    # BOILERPLATE: torchrun, --out/--resume/--force against the disk and the run's lock; a resumed run takes its own
    # settings back, then the recipe fills every flag left unset (checkpoint.py)
    run = checkpoint.Run(args, p, "train", keep=RUN_FLAGS)
    fill_recipe(args)
    space = SPACES[args.space]  # the space's own parts: its supernet, its path sampler (spaces.py)
    tau = track_tau(args)  # --track-tau: a diagnostic, Kendall's tau of the angle during training (benchmark.py)

    # RLNAS: the training set, each image with one random label drawn once and never changed (method.md §1)
    train_set, labels = random_label_data(args, run.download)

    # The supernet and its SGD. The only global seeding call: the weight init (PyTorch defaults, method.md pitfall 2).
    net_args = supernet_args(args, space, labels["num_classes"])
    torch.manual_seed(args.seed)
    raw_model, model = distributed.wrap(space.supernet(net_args), run.d, run.fmt, single_path=True)  # DDP: Rule B
    optimizer = make_sgd(raw_model, args)
    path_gen = torch.Generator().manual_seed(args.seed)  # Rule A: the same seed on every rank -> the same paths
    # what every supernet.pt holds besides its counters: all that steers the next step, so a resumed run is exact
    run.start(dict(model=raw_model, optimizer=optimizer, rng=path_gen, supernet_args=net_args, labels=labels))

    # RLNAS: W0, the weights before the first optimizer step, saved once (Rule C; method.md pitfall 1): the angle is
    # measured from exactly these. A resumed run reads its own back. (--track-tau logs the epoch-0 line of tau.)
    w0 = run.save_w0(raw_model, log0=tau)

    # RLNAS: the SPOS loop (paper Sec. 3; method.md §2-3). Every step samples one path uniformly, trains only its ops
    # on a batch of random labels and takes one SGD step. Wt is saved after every epoch: search.py compares it to W0.
    params = sum(q.numel() for q in raw_model.parameters())
    print0(f"{args.space} supernet {net_args} | {params:,} parameters | {len(train_set):,} images, {args.labels} labels | "
           f"{args.epochs} epochs | {run.d.device} x{run.d.world_size}")  # fmt: skip
    recipe = dict(grad_clip=args.grad_clip, clip_mode=args.clip_mode, label_smoothing=args.label_smoothing, amp=args.amp)
    for epoch in range(run.epoch, args.epochs):
        if args.label_mode == "redraw":  # the ablation that breaks fixed labels: new ones every epoch
            train_set = redraw_labels(args, train_set, epoch)
        model.train()
        for step, x, y in run.batches(train_set, epoch):  # x (B, 3, H, W) images, y (B,) their random labels
            lr = lr_at(args, epoch, step, run.total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # RLNAS: one path per step, drawn from path_gen only: the same on every rank (method.md §2, pitfall 4)
            path = space.sample_path(path_gen, net_args, shared=args.sampling == "shared")
            loss, logits = train_step(model, optimizer, x, y, path, args.unsampled, **recipe)
            run.after_step(loss, logits, y, lr)  # running totals, progress line, mid-epoch checkpoint
        run.end_epoch(**tau(w0, raw_model, epoch + 1))  # the epoch's log line, then Wt: supernet.pt
    print0(f"done: {run.path}\nnext: python search.py --ckpt {run.path}")


# ==============================================================================================
# Machinery below: not needed to follow the method (the flags' checks, the recipe, the label ablation).
# ==============================================================================================

# The flags that only say how to run, not what the run is: a resumed run may change these (checkpoint.merge_flags);
# every other flag is the run's own. (--workers is not among them: with workers the crops come from per-worker RNG
# streams, so it is part of the run.) What supernet.pt must hold is files.KINDS["train"].
RUN_FLAGS = {"out", "resume", "force", "log_every", "keep_every", "track_tau", "track_every", "vector",
             "save_every_steps", "data", "device", "backend", "dist_timeout"}  # fmt: skip


def fill_recipe(args) -> None:
    """Fill every flag left at None from the (space, variant) recipe (method.md §3)."""
    recipe = cli.pick_recipe(args, RECIPES, "train.py")
    if args.space == "mobilenet" and (args.channels or args.layers):
        raise UsageError("--channels and --layers do not apply to --space mobilenet; scale it with --width")
    if args.space != "mobilenet" and args.width is not None:
        raise UsageError(f"--width applies to --space mobilenet only; {args.space} takes --channels and --layers")
    if args.space != "nb201" and args.sampling is not None:
        raise UsageError(f"--sampling applies to --space nb201 only; {args.space} samples one genotype per cell type")
    cli.fill_defaults(args, recipe)


def check_label_flags(args) -> None:
    if args.labels == "true" and (args.label_classes or args.label_mode != "uniform"):
        raise UsageError("--label-classes and --label-mode apply to random labels only; drop them with --labels true")
    if args.label_mode == "shuffle" and args.label_classes:
        raise UsageError("--label-mode shuffle permutes the true labels, so K is the dataset's: drop --label-classes")


def supernet_args(args, space, num_classes: int) -> dict:
    """The supernet's constructor arguments; --image-size defaults to the dataset's side. An --image-size the
    downsampling cannot take fails here, in one line, before anything is allocated (a meta-device probe)."""
    if args.image_size is None:  # the side the network (and its FLOPs count) is built for
        args.image_size = {"imagenet": 224, "imagenet16-120": 16}.get(args.dataset, 32)
    net_args = space.net_args(args, num_classes)
    with torch.device("meta"):  # shapes only
        probe = space.supernet(net_args)
    check_image_size(probe, args.image_size, space.sample_path(torch.Generator(), net_args), what="supernet")
    return net_args


def redraw_labels(args, train_set: Relabeled, epoch: int) -> Relabeled:
    """--label-mode redraw (an ablation, method.md §1): epoch `epoch`'s own uniform labels, one stream per epoch."""
    base, k = train_set.base, args.label_classes or train_set.base.num_classes
    return Relabeled(base, train_set.indices, random_labels.draw_labels("redraw", len(base), k, args.label_seed, epoch=epoch))


if __name__ == "__main__":
    cli.run(main)
