"""
Stage 3 of RLNAS: train the architecture the search found from scratch, on the real labels.

DARTS space: the ImageNet protocol of method.md §6 (--dataset imagenet) or the standard DARTS CIFAR-10 evaluation
(C=36, 20 cells, auxiliary head, drop path, cutout, 600 epochs). MobileNet space: the ImageNet protocol of
method.md §6. The RECIPES table below holds each protocol.

For NAS-Bench-201 the paper does not retrain: it looks the architecture up in the benchmark
(search.py --benchmark). This script is for everything the benchmark does not cover: another
dataset, a CIFAR-100 subset, your own ImageFolder. It follows the NAS-Bench-201 training
protocol (C=16, N=5, affine BN, 200 epochs, batch 256, SGD Nesterov momentum 0.9, lr 0.1 cosine
to 0, weight decay 5e-4, flip + crop augmentation) and reports top-1/top-5 test accuracy.

Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021,
arXiv:2101.11834, Sec. 4 (the evaluation of the searched architectures; method.md §6; NAS-Bench-201's
protocol, Dong & Yang 2020).

Read from here to main() and its loop: the data (real_label_data), the SGD (make_sgd, lr_at), one step (train_step),
the test (evaluate), then main(). The run directory and the exact resume are behind the `run.` calls (checkpoint.py).

The space comes from --space, or from the search.json (--ckpt-search), or is darts for --genotype; it is never
guessed from the architecture string. Defaults follow the space: without --dataset, the MobileNet space and the
DARTS imagenet variant retrain (and count) the ImageNet network at 224 px; with --ckpt-search, --dataset is the
supernet run's (its name only: the files are always read from --data).

    python retrain.py --ckpt-search runs/<run>/search.json               # the search winner, on the run's dataset
    python retrain.py --arch "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    python retrain.py --arch "..." --dataset fake --epochs 1 --channels 4 --layers 1   # a smoke run
    python retrain.py --genotype "Genotype(normal=[...], normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=[2, 3, 4, 5])"
    python retrain.py --ckpt-search runs/<darts run>/search.json --dataset imagenet --data /path/imagenet  # method.md §6
    python retrain.py --ckpt-search runs/<darts run>/search.json --dataset imagenet --count-only  # params, FLOPs
    python retrain.py --resume --out runs/<retrain-run>
    python retrain.py --space mobilenet --arch "2 0 -1 2 2 0 2 4 0 4 4 2 4 2 4 2 0 0 0 2 2" --count-only  # Table 5
    torchrun --standalone --nproc_per_node=4 retrain.py --ckpt-search runs/<run>/search.json
"""

from __future__ import annotations

import cli  # first: a Ctrl-C while torch loads is one line, not a traceback

# isort: split

import argparse
import hashlib
import json
import os

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import distributed
import files
from cli import UsageError, print0
from data import DATASETS, Relabeled, load_dataset, subset_indices
from loaders import epoch_loader, epoch_seed, in_memory
from spaces import SPACES, check_image_size
from supernet import count_all_params, count_flops

# ----------------------------------------------------------------------------------------------
# The training protocol per (space, network variant), method.md §6; flags left at None take these values (--help
# lists them; config.json records the filled ones).
RECIPES = {
    # NAS-Bench-201's protocol: C=16, N=5, 200 epochs, batch 256, SGD Nesterov, lr 0.1 cosine to 0, wd 5e-4
    ("nb201", "cifar"): dict(
        channels=16, layers=5, epochs=200, batch_size=256, lr=0.1, lr_schedule="cosine", warmup_epochs=0, momentum=0.9,
        nesterov=True, wd=5e-4, wd_on="all", grad_clip=0.0, clip_mode="norm", label_smoothing=0.0, aux_weight=0.0,
        drop_path=0.0, cutout=0,
    ),
    # The standard DARTS CIFAR-10 evaluation (Liu et al. 2019): C=36, 20 cells, auxiliary head 0.4, drop path 0.2,
    # cutout 16, 600 epochs, batch 96, SGD 0.025 cosine to 0, wd 3e-4, grad-norm clip 5. (RLNAS itself retrains its
    # DARTS cells on ImageNet only, method.md §6.)
    ("darts", "cifar"): dict(
        channels=36, layers=20, epochs=600, batch_size=96, lr=0.025, lr_schedule="cosine", warmup_epochs=0, momentum=0.9,
        nesterov=False, wd=3e-4, wd_on="all", grad_clip=5.0, clip_mode="norm", label_smoothing=0.0, aux_weight=0.4,
        drop_path=0.2, cutout=16,
    ),
    # RLNAS's ImageNet protocol (method.md §6): C=48 (46 for the <600M variant), 14 cells, auxiliary head 0.4, 250 epochs,
    # batch 1024 = 128 x 8 GPUs, lr 0.5 with a 5-epoch linear warm-up then linear decay per epoch, label smoothing
    # 0.1, wd 3e-5 on all parameters, grad-norm clip 5, no drop path
    ("darts", "imagenet"): dict(
        channels=48, layers=14, epochs=250, batch_size=128, lr=0.5, lr_schedule="linear", warmup_epochs=5, momentum=0.9,
        nesterov=False, wd=3e-5, wd_on="all", grad_clip=5.0, clip_mode="norm", label_smoothing=0.1, aux_weight=0.4,
        drop_path=0.0, cutout=0,
    ),
    # RLNAS's MobileNet protocol (method.md §6): 240 epochs, batch 1024 = 128 x 8 GPUs, lr 0.5 linear PER ITERATION to 0, no
    # warm-up, wd 4e-5 on conv weights only (the FC sits behind Dropout(0.2) and is not matched), label smoothing 0.1,
    # grad-norm clip 5; identity blocks removed
    ("mobilenet", "imagenet"): dict(
        width=1.0, dropout=0.2, epochs=240, batch_size=128, lr=0.5, lr_schedule="linear-iter", warmup_epochs=0,
        momentum=0.9, nesterov=False, wd=4e-5, wd_on="conv", grad_clip=5.0, clip_mode="norm", label_smoothing=0.1,
        aux_weight=0.0, drop_path=0.0, cutout=0,
    ),
}  # fmt: skip
# class counts known without reading the data (--count-only); folder data is listed to find out
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet16-120": 120, "imagenet": 1000, "fake": 10}

# ----------------------------------------------------------------------------------------------
# Config: one flag per line, the method first. A default of None means "the recipe's value" (RECIPES above).
# fmt: off
p = cli.Parser(prog="retrain.py", description="Retrain one searched architecture from scratch on the real labels (stage 3).")
g = p.add_argument_group("method: the architecture and its network (method.md §6)")
g.add_argument("--arch", type=cli.nonempty, default=None, help="architecture string: NB201 |op~0|+|op~0|op~1|+|op~0|op~1|op~2|, or with --space mobilenet a model_id '2 0 -1 2 ...'")
g.add_argument("--genotype", type=cli.nonempty, default=None, help="a DARTS Genotype(normal=[...], normal_concat=[...], reduce=[...], ...)")
g.add_argument("--ckpt-search", type=cli.nonempty, default=None, help="search.json written by search.py: retrain its winner")
g.add_argument("--space", default=None, choices=list(SPACES), help="search space (default: the search.json's; darts for --genotype; else nb201)")
g.add_argument("--variant", default=None, choices=["cifar", "imagenet"], help="network variant: cifar or imagenet (default: imagenet for --dataset imagenet, else cifar)")
g.add_argument("--channels", type=cli.channels, default=None, help="C, channels of the first stage")
g.add_argument("--layers", type=cli.layers, default=None, help="NB201: N cells per stage; DARTS: cells in all")
g.add_argument("--width", type=cli.width, default=None, help="MobileNet: channel multiplier")
g.add_argument("--dropout", type=cli.fraction, default=None, help="MobileNet: dropout before the classifier")
g = p.add_argument_group("method: training recipe (method.md §6)")
g.add_argument("--epochs", type=cli.number(int), default=None, help="epochs")
g.add_argument("--batch-size", type=cli.number(int), default=None, help="batch size per process")
g.add_argument("--lr", type=cli.number(float, 0), default=None, help="initial learning rate")
g.add_argument("--lr-schedule", default=None, choices=["cosine", "linear", "linear-iter"], help="cosine to 0 per epoch (NB201, DARTS-CIFAR), linear per epoch after --warmup-epochs (DARTS-ImageNet) or linear-iter: linear to 0 per iteration (MobileNet)")
g.add_argument("--warmup-epochs", type=cli.number(int, 0), default=None, help="linear warm-up epochs")
g.add_argument("--momentum", type=cli.fraction, default=None, help="SGD momentum")
g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum")
g.add_argument("--wd", type=cli.number(float, 0), default=None, help="weight decay")
g.add_argument("--wd-on", default=None, choices=["all", "conv", "conv+fc"], help="which parameters get weight decay: all, conv (4-D conv weights) or conv+fc (and the classifier weight)")
g.add_argument("--grad-clip", type=cli.number(float, 0), default=None, help="gradient clipping threshold (0 = off)")
g.add_argument("--clip-mode", default=None, choices=["norm", "value"], help="clip the gradient norm or each value")
g.add_argument("--label-smoothing", type=cli.fraction, default=None, help="label smoothing")
g.add_argument("--aux-weight", type=cli.number(float, 0), default=None, help="auxiliary-head loss weight (DARTS)")
g.add_argument("--drop-path", type=cli.fraction, default=None, help="final drop-path probability (DARTS)")
g.add_argument("--cutout", type=cli.number(int, 0, 1024), default=None, help="cutout square side in pixels (0 = off)")
g.add_argument("--seed", type=cli.seed, default=0, help="seed of the init and the data order (0)")
g = p.add_argument_group("data")
g.add_argument("--dataset", default=None, choices=DATASETS, help="dataset (default: with --ckpt-search the supernet run's; else imagenet for --space mobilenet and --variant imagenet, cifar10 otherwise)")
g.add_argument("--data", type=cli.nonempty, default=None, help="dataset directory (default: with --ckpt-search where the supernet run read its dataset, else ./data)")
g.add_argument("--image-size", type=cli.image_size, default=None, help="image side for folder/fake/imagenet data (32; imagenet 224)")
g.add_argument("--subset", type=cli.number(int), default=0, help="train on a seeded random subset of N images (default all)")
g.add_argument("--data-seed", type=cli.seed, default=0, help="seed of --subset and of the fake data (0)")
g.add_argument("--fake-images", type=cli.number(int, 1, 10**6), default=1024, help="size of the --dataset fake training set")
g = p.add_argument_group("run and resume")
g.add_argument("--count-only", action="store_true", help="print the parameters and multiply-adds of the network and exit")
g.add_argument("--eval-every", type=cli.number(int), default=1, help="test every N epochs (and after the last) (1)")
g.add_argument("--out", type=cli.nonempty, default=None, help="run directory (default runs/retrain-<dataset>-<arch hash>-s<seed>)")
g.add_argument("--resume", action="store_true", help="continue the run in --out")
g.add_argument("--force", action="store_true", help="replace a run directory of retrain.py: only the files it recorded as its own")
g.add_argument("--save-every-steps", type=cli.number(int, 0), default=0, help="also checkpoint every N steps inside an epoch (0 = off)")
g.add_argument("--log-every", type=cli.number(int), default=50, help="progress line every N steps (50)")
p.add_run_flags()  # the speed and device groups, shared with train.py (cli.py)
p.show_recipes(RECIPES)  # --help: "(recipe: nb201 0.1, darts-cifar 0.025, ...)" after every flag a recipe fills
# fmt: on

# ----------------------------------------------------------------------------------------------
# The protocol: the data with its real labels, the SGD, one step, the test.
def real_label_data(args, download: bool = True):
    """The training set with its real labels (standard augmentation) and the test set (none); (train, test, K).

    --dataset imagenet: the MobileNet retraining normalizes with ImageNet mean/std and has no lighting; the DARTS one
    keeps the supernet's pipeline (method.md §6).
    """
    kw = dict(image_size=args.image_size, fake_images=args.fake_images, fake_seed=args.data_seed, download=download)
    kw["imagenet_style"] = "normalize" if args.space == "mobilenet" else "lighting"
    base = load_dataset(args.dataset, args.data, "train", augment=True, **kw)
    test_set = load_dataset(args.dataset, args.data, "test", augment=False, **kw)
    indices = subset_indices(torch.arange(len(base)), args.subset, args.data_seed)
    train_set = Relabeled(base, indices, base.targets.long())
    if args.data_path == "tensor" and not in_memory(train_set):
        raise UsageError(
            f"--data-path tensor needs an in-memory dataset (cifar10/100, imagenet16-120, fake), not {args.dataset}"
        )
    return train_set, Relabeled(test_set, torch.arange(len(test_set)), test_set.targets.long()), base.num_classes


def make_sgd(model: torch.nn.Module, args) -> torch.optim.SGD:
    """SGD with weight decay on every parameter, or (MobileNet, method.md §6) on the 4-D conv weights only (conv+fc:
    and the classifier weight). Two param groups then, the second with wd 0."""
    nesterov = args.nesterov and args.momentum > 0
    if args.wd_on == "all":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=nesterov, weight_decay=args.wd)
    decay, rest = [], []
    for name, q in model.named_parameters():
        fc = args.wd_on == "conv+fc" and name.startswith("classifier.") and name.endswith("weight")
        (decay if q.ndim == 4 or fc else rest).append(q)
    groups = [{"params": decay, "weight_decay": args.wd}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=nesterov)


def lr_at(epoch: int, args, step: int = 0, total_steps: int = 1) -> float:
    if args.lr_schedule == "linear-iter":
        # method.md §6 (MobileNet): lr * (1 - t / T) at iteration t of T, no warm-up (the official per-step LambdaLR)
        return args.lr * (1.0 - step / total_steps)
    if args.lr_schedule == "linear":
        # method.md §6 (ImageNet), the official adjust_lr: linear decay per epoch, lr * (E-5-e) / (E-5), and over the last
        # 5 epochs a 5x smaller slope, lr * (E-e) / ((E-5)*5), so the lr never reaches 0 (the "tiny tail"). Runs of
        # at most 5 epochs (smoke runs) decay as lr * (E-e) / E instead. During the first W warm-up epochs that value
        # is multiplied by (e+1)/W, as the official code does (method.md §6 rounds it to lr * (e+1) / 5).
        e, total, tail = epoch, args.epochs, 5
        if total <= tail:
            lr = args.lr * (total - e) / total
        elif total - e > tail:
            lr = args.lr * (total - tail - e) / (total - tail)
        else:
            lr = args.lr * (total - e) / ((total - tail) * tail)
        return lr * (e + 1) / args.warmup_epochs if e < args.warmup_epochs else lr
    # cosine to 0 per epoch (NAS-Bench-201 and DARTS-CIFAR); computed in float32 as this script always has
    return 0.5 * args.lr * (1 + torch.cos(torch.tensor(torch.pi * epoch / args.epochs)).item())


def train_step(model, optimizer, x, y, *, aux_weight=0.0, label_smoothing=0.0, grad_clip=0.0, clip_mode="norm", amp=False):
    """One SGD step of the stand-alone network on a batch of real labels; returns (loss, logits (B, K))."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):  # --amp: bf16 forward
        out = model(x)  # (B, K), or with the auxiliary head in training: ((B, K), (B, K))
        logits, aux = out if isinstance(out, tuple) else (out, None)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        if aux is not None:  # DARTS: loss + 0.4 * the auxiliary head's loss (method.md §6)
            loss = loss + aux_weight * F.cross_entropy(aux.float(), y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:  # by the global norm (the DARTS and MobileNet protocols)
        params = [q for group in optimizer.param_groups for q in group["params"]]
        (torch.nn.utils.clip_grad_norm_ if clip_mode == "norm" else torch.nn.utils.clip_grad_value_)(params, grad_clip)
    optimizer.step()
    return loss, logits


@torch.no_grad()
def evaluate(model, loader, device, d, amp: bool = False, fmt=torch.contiguous_format) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%) over the whole test split, summed over all ranks.

    The counts stay on the device and are read once at the end: one host-device wait per evaluation, not per batch.
    Batches get the training's memory format and, with --amp, the same bf16 autocast as the training forward.
    """
    model.eval()
    k = min(5, model_classes(model))
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # exact counts either way (no fp64 on MPS)
    totals = torch.zeros(3, dtype=acc_dtype, device=device)  # top-1 hits, top-5 hits, images
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # (B, 3, H, W), (B,)
        x = x.contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)  # (B, K)
        top5 = logits.topk(k, dim=1).indices  # (B, 5)
        totals[0] += (top5[:, 0] == y).sum()
        totals[1] += (top5 == y[:, None]).any(1).sum()
        totals[2] += len(y)
    if d.ddp:
        torch.distributed.all_reduce(totals)
    top1, top5 = (100 * totals[:2] / totals[2]).tolist()  # the one synchronisation
    return top1, top5


# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    args = p.parse_args(argv)
    space, arch, found = resolve_arch(args)  # --arch, --genotype or the winner of a search.json
    took, run_data = default_dataset(args, found)  # the flag, else the supernet run's, else the space's own
    arch_text = space.format(arch)
    args.out = args.out or os.path.join("runs", f"retrain-{args.dataset}-{hashlib.sha1(arch_text.encode()).hexdigest()[:8]}-s{args.seed}")  # noqa: E501
    if args.count_only:
        return count_only(args, space, arch, took, run_data)
    # BOILERPLATE: torchrun, --out/--resume/--force and the run's lock; a resumed run takes its settings back
    run = checkpoint.Run(args, p, "retrain", keep=RUN_FLAGS, recorded_data=run_data)
    if took and not args.resume:
        print0(took)
    fill_recipe(args)

    # Data: the real labels, standard augmentation on train, none on test.
    train_set, test_set, num_classes = real_label_data(args, run.download)
    # The network from scratch (the only global seeding call: its init) and its SGD.
    net_args = network_args(args, space, arch, num_classes)
    torch.manual_seed(args.seed)
    raw_model, model = distributed.wrap(space.network(arch, net_args, aux=args.aux_weight > 0), run.d, run.fmt)
    optimizer = make_sgd(raw_model, args)
    run.start(dict(model=raw_model, optimizer=optimizer, arch=arch_text, test_top1=None, test_top5=None), arch=arch_text)
    test_loader = test_batches(args, run, test_set)
    print0(f"retrain {arch_text} | {args.space} {args.variant} {net_args} | {sizes(space, arch, net_args)} | "
           f"{len(train_set):,} train / {len(test_set):,} test images | {args.epochs} epochs | {run.d.device} x{run.d.world_size}")  # fmt: skip

    # The training loop; every --eval-every epochs (and after the last) a test on the whole test split.
    recipe = dict(aux_weight=args.aux_weight, label_smoothing=args.label_smoothing, grad_clip=args.grad_clip, clip_mode=args.clip_mode, amp=args.amp)  # noqa: E501
    for epoch in range(run.epoch, args.epochs):
        if args.drop_path > 0:  # DARTS: the drop-path probability grows linearly with the epoch
            raw_model.drop_path_prob = args.drop_path * epoch / args.epochs
        model.train()
        for step, x, y in run.batches(train_set, epoch):  # x (B, 3, H, W), y (B,) the real labels
            x = regularize(args, raw_model, x, step, run.d.rank).contiguous(memory_format=run.fmt)  # DARTS cutout
            lr = lr_at(epoch, args, step, run.total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, logits = train_step(model, optimizer, x, y, **recipe)
            run.after_step(loss, logits, y, lr)
        test = {}
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            top1, top5 = evaluate(model, test_loader, run.d.device, run.d, args.amp, run.fmt)
            print0(f"epoch {epoch + 1}/{args.epochs} | test top-1 {top1:.2f}% | top-5 {top5:.2f}%")
            test = dict(test_top1=top1, test_top5=top5)
        run.end_epoch(**test)  # the log line, then retrain.pt: an interrupted test is redone with its epoch
    print0(f"done: {arch_text} | test top-1 {run.state['test_top1']:.2f}% | top-5 {run.state['test_top5']:.2f}% | {run.path}")


# ==============================================================================================
# Machinery below: which architecture and dataset, the recipe, counting, the regularizers' draws.
# ==============================================================================================

# The flags that only say how to run: a resumed run may change these; every other flag takes the run's own value
# (checkpoint.merge_flags). What retrain.pt must hold is files.KINDS["retrain"].
RUN_FLAGS = {"out", "resume", "force", "log_every", "save_every_steps", "device", "backend", "dist_timeout", "data",
             "eval_every", "count_only", "arch", "genotype", "ckpt_search"}  # fmt: skip


def test_batches(args, run, test_set):
    """The test split's batches, made once: in order, on the device where the data is in memory (data.py)."""
    fast = args.data_path == "tensor" or (args.data_path == "auto" and in_memory(test_set))
    d = run.d
    return epoch_loader(test_set, args.batch_size, False, args.seed, 0, d.device, d.rank, d.world_size, args.workers, fast, run.cache)  # noqa: E501


def resolve_arch(args):
    """(space, architecture, search.json or None) from --arch, --genotype or the winner of a search.json (exactly one).

    `--resume --out RUN` alone retrains the run's own architecture (its config.json). The space is --space, else the
    search.json's supernet_args, else darts for --genotype, else the one space whose notation reads the string (the
    three notations never overlap: `|op~0|+...`, 21 integers, `Genotype(...)`).
    """
    if args.resume and args.out and not (args.arch or args.genotype or args.ckpt_search):  # resumed: its own architecture
        config = files.load_json(os.path.join(args.out, "config.json"), "run config")
        if not isinstance(config.get("arch"), str) or not isinstance(config.get("space"), str):
            raise UsageError(f"{args.out}/config.json names no architecture; pass the run's --arch (or --genotype)")
        args.arch, args.space = config["arch"], args.space or config["space"]
    given = [a for a in (args.arch, args.genotype, args.ckpt_search) if a is not None]
    if len(given) != 1:
        raise UsageError(
            "give exactly one of --arch STRING, --genotype 'Genotype(...)' or --ckpt-search runs/<run>/search.json"
        )
    text, space, found = args.arch or args.genotype, args.space or ("darts" if args.genotype is not None else None), None
    space_given = args.space is not None
    if args.ckpt_search is not None:
        found = files.load_json(args.ckpt_search, "--ckpt-search")  # a missing or damaged file is one line
        winner, net = found.get("winner"), found.get("supernet_args", {})
        text = winner.get("arch") if isinstance(winner, dict) else None
        searched = net.get("space") if isinstance(net, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise UsageError(f"{args.ckpt_search} is not a finished search.json (no winner); rerun or resume search.py")
        if searched is not None and not isinstance(searched, str):
            raise UsageError(f"{args.ckpt_search} is damaged or was edited: its supernet_args.space is not a name")
        if space is not None and searched is not None and space != searched:
            raise UsageError(f"--space {space}, but {args.ckpt_search} searched the {searched} space; drop --space")
        space = space or searched
    if space is None:
        readers = _readers(text)
        space = readers[0] if len(readers) == 1 else "nb201"
    args.space = space
    if args.space not in SPACES:
        raise UsageError(f"{args.ckpt_search} comes from an unknown search space {args.space!r}")
    try:
        return SPACES[args.space], SPACES[args.space].parse(text), found
    except ValueError as err:
        hint = "" if space_given else " (read as NB201: no space's notation reads it; for another space pass --space)"
        raise UsageError(f"{err}{hint}") from None


def _readers(text: str) -> list[str]:
    """The spaces whose parser accepts `text`."""
    names = []
    for name, space in SPACES.items():
        try:
            space.parse(text)
            names.append(name)
        except ValueError:
            pass
    return names


def default_dataset(args, found: dict | None) -> tuple[str | None, str | None]:
    """Fill --dataset when it is not given -> (the line that says what was taken or None, the supernet run's --data).

    With --ckpt-search: the dataset the supernet was trained on (its run's config.json), and the directory it was
    read from, for checkpoint.data_dir. Otherwise the space's own: imagenet for --space mobilenet and for the darts
    imagenet variant (224 px), cifar10 for the rest.
    """
    took, recorded = None, None
    if args.dataset is None and found is not None:
        supernet = found.get("ckpt")
        path = os.path.join(os.path.dirname(supernet), "config.json") if isinstance(supernet, str) else None
        try:
            with open(path) as f:
                config = json.load(f)
        except (TypeError, OSError, ValueError):
            config = None
        config = config if isinstance(config, dict) else {}
        if config.get("dataset") in DATASETS:
            args.dataset, recorded = config["dataset"], config.get("data")
            took = f"retrain.py: --dataset {args.dataset}, the supernet run's ({path}); override with --dataset"
        else:
            took = f"retrain.py: no config.json of the supernet run beside {supernet}: the space's dataset (or --dataset)"
    if args.dataset is None:
        args.dataset = "imagenet" if args.space == "mobilenet" or args.variant == "imagenet" else "cifar10"
    return took, recorded


def fill_recipe(args) -> None:
    """Fill every flag left at None from the (space, variant) recipe."""
    recipe = cli.pick_recipe(args, RECIPES, "retrain.py")
    if args.space != "darts" and any(getattr(args, k) for k in ("aux_weight", "drop_path", "cutout")):
        raise UsageError(f"--aux-weight, --drop-path and --cutout belong to the DARTS protocol, not to --space {args.space}")
    if args.space == "mobilenet" and (args.channels or args.layers):
        raise UsageError("--channels and --layers do not apply to --space mobilenet; scale it with --width")
    if args.space != "mobilenet" and (args.width is not None or args.dropout is not None):
        raise UsageError(f"--width and --dropout apply to --space mobilenet only, not to --space {args.space}")
    if args.dropout is not None and args.dropout >= 1:
        raise UsageError(f"--dropout {args.dropout} would drop every feature; give a probability below 1 (method.md §6: 0.2)")
    cli.fill_defaults(args, recipe)
    if args.image_size is None:
        args.image_size = {"imagenet": 224, "imagenet16-120": 16}.get(args.dataset, 32)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """DARTS cutout on a normalized batch (B, 3, H, W): one size x size square per image set to 0, its centre uniform
    over the image and the square clipped at the borders (DeVries & Taylor 2017, as in the DARTS evaluation)."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b, 1, 1), generator=gen, device=x.device)
    cx = torch.randint(0, w, (b, 1, 1), generator=gen, device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= cy - size // 2) & (rows < cy + size // 2) & (cols >= cx - size // 2) & (cols < cx + size // 2)
    return x * (~inside).unsqueeze(1).to(x.dtype)  # (B, 3, H, W)


def regularize(args, raw_model, x: torch.Tensor, step: int, rank: int) -> torch.Tensor:
    """DARTS cutout, drop-path and MobileNet dropout: their squares and masks come from a generator seeded by
    (seed, step, rank), so a resumed run draws the same ones and the data pipeline's own random stream is left
    untouched. Returns the batch (B, 3, H, W), with the cutout squares where --cutout asks for them."""
    if not (args.cutout or args.drop_path or args.dropout):
        return x
    gen = torch.Generator(device=x.device).manual_seed(epoch_seed(args.seed, step, rank))
    raw_model.drop_generator = gen
    return cutout(x, args.cutout, gen) if args.cutout else x


def count_only(args, space, arch, took, run_data) -> None:
    """--count-only: the network's parameters and multiply-adds, with no data read and no run directory."""
    if took:
        print(took)
    checkpoint.data_dir(args, None, run_data)  # --data, else where the supernet run read it, else ./data
    fill_recipe(args)
    num_classes = NUM_CLASSES.get(args.dataset)
    if num_classes is None:  # folder data: list the class folders
        num_classes = load_dataset(args.dataset, args.data, "train", augment=False).num_classes
    net_args = space.retrain_args(args, num_classes)
    print(f"{space.format(arch)}\n{args.space} {args.variant} network {net_args}: {sizes(space, arch, net_args)}")
    print("multiply-adds in the paper's units (its thop): one per weight use in a conv, (2 x in - 1) x out per linear layer")


def sizes(space, arch, net_args: dict) -> str:
    """'N parameters (x.xxM) | M multiply-adds at SxS', the auxiliary head named only where the network has one."""
    n_aux, n_bare, flops = count(space, arch, net_args)
    aux = f" without the auxiliary head, {n_aux:,} with it" if n_aux != n_bare else ""
    size = net_args.get("image_size", 32)
    return f"{n_bare:,} parameters ({n_bare / 1e6:.2f}M){aux} | {flops / 1e6:.1f}M multiply-adds at {size}x{size}"


def network_args(args, space, arch, num_classes: int) -> dict:
    """The network's constructor arguments, checked before anything is allocated: an auxiliary head the network
    cannot have, or an --image-size its downsampling cannot take, fails here in one line (a meta-device probe)."""
    net_args = space.retrain_args(args, num_classes)
    if args.aux_weight > 0:
        check_aux_head(space, arch, net_args)
    with torch.device("meta"):  # shapes only
        probe = space.network(arch, net_args, aux=args.aux_weight > 0)
    check_image_size(probe, args.image_size, what=f"{args.space} network")
    return net_args


def model_classes(model) -> int:
    return (model.module if isinstance(model, DDP) else model).classifier.out_features


def count(space, arch, net_args: dict) -> tuple[int, int, int]:
    """(parameters with the auxiliary head, parameters without it, multiply-adds without it at the input size).

    Table 3 convention (method.md §7.2): parameters and FLOPs of the network without the auxiliary head, FLOPs in the
    paper's units (supernet.count_flops: conv multiply-adds, a linear layer as (2 * in - 1) * out). Meta device.
    """
    with torch.device("meta"):
        full = space.network(arch, net_args, aux=True)
        bare = space.network(arch, net_args, aux=False)
    return count_all_params(full), count_all_params(bare), count_flops(bare, net_args.get("image_size", 32))


def check_aux_head(space, arch, net_args: dict) -> None:
    """DARTS: the auxiliary head pools a 5x5 window and applies a 2x2 conv to the feature map of cell 2L//3, which is
    8x8 at 32 px (CIFAR) and 7x7 at 224 px (ImageNet). A smaller --image-size leaves it no room: say so in one line
    now rather than fail inside the first forward pass. A meta-device forward pass checks the real shapes."""
    size = net_args.get("image_size", 32)
    with torch.device("meta"):
        probe = space.network(arch, net_args, aux=True).train()
        try:
            probe(torch.zeros(2, 3, size, size))
        except RuntimeError:
            fits, side = {"cifar": (32, 8), "imagenet": (224, 7)}.get(net_args.get("variant"), (32, 8))
            why = "too small for" if size < fits else "does not fit"
            raise UsageError(f"--image-size {size} {why} the auxiliary head (its classifier takes the {side}x{side} map of "
                             f"{fits} px images on this network); use --image-size {fits} or --aux-weight 0") from None  # fmt: skip




if __name__ == "__main__":
    cli.run(main)
