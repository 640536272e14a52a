"""
Stage 3 of RLNAS: train the architecture the search found from scratch, on the real labels.

For NAS-Bench-201 the paper does not retrain: it looks the architecture up in the benchmark
(search.py --benchmark). This script is for everything the benchmark does not cover: another
dataset, a CIFAR-100 subset, your own ImageFolder. It follows the NAS-Bench-201 training
protocol (C=16, N=5, affine BN, 200 epochs, batch 256, SGD Nesterov momentum 0.9, lr 0.1 cosine
to 0, weight decay 5e-4, flip + crop augmentation) and reports top-1/top-5 test accuracy.

Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021,
arXiv:2101.11834, the evaluation step (SPEC.md 6; NAS-Bench-201's protocol, Dong & Yang 2020).

    python retrain.py --ckpt-search runs/<run>/search.json               # the search winner, CIFAR-10
    python retrain.py --arch "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    python retrain.py --arch "..." --dataset fake --epochs 1 --channels 4 --layers 1   # a smoke run
    python retrain.py --resume --out runs/<retrain-run>
    torchrun --standalone --nproc_per_node=4 retrain.py --ckpt-search runs/<run>/search.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import common
from common import UsageError, print0
from data import DATASETS, DataError, Relabeled, epoch_loader, epoch_seed, in_memory, load_dataset, subset_indices
from supernet import Subnet, arch_to_str, str_to_arch

# ----------------------------------------------------------------------------------------------
# Config: the NAS-Bench-201 protocol by default.
p = common.Parser(description="Retrain one NB201 architecture from scratch on the real labels (stage 3).")
p.add_argument("--arch", default=None, help="NB201 architecture string |op~0|+|op~0|op~1|+|op~0|op~1|op~2|")
p.add_argument("--ckpt-search", default=None, help="search.json written by search.py: retrain its winner")
p.add_argument("--channels", type=common.number(int), default=16, help="C (16)")
p.add_argument("--layers", type=common.number(int), default=5, help="N cells per stage (5)")
p.add_argument("--dataset", default="cifar10", choices=DATASETS, help="dataset (default cifar10)")
p.add_argument("--data", default="./data", help="dataset directory (default ./data)")
p.add_argument("--image-size", type=common.number(int), default=None, help="image side for folder/fake data (default 32)")
p.add_argument("--subset", type=common.number(int, 0), default=0, help="train on a seeded random subset of N images (0 = all)")
p.add_argument("--data-seed", type=int, default=0, help="seed of --subset and of the fake data (0)")
p.add_argument("--fake-images", type=common.number(int), default=1024, help="size of the --dataset fake training set")
p.add_argument("--workers", type=common.number(int, 0), default=2, help="DataLoader worker processes (2)")
p.add_argument(
    "--data-path",
    default="auto",
    choices=["auto", "tensor", "loader"],
    help="tensor: batched on-device augmentation (in-memory data); loader: per-image DataLoader; auto = tensor if possible",
)
p.add_argument("--amp", action="store_true", help="bf16 autocast for forward and loss (weights stay fp32)")
p.add_argument(
    "--memory-format",
    default="auto",
    choices=["auto", "channels_last", "contiguous"],
    help="layout of weights and batches; auto = channels_last on CPU (1.6x faster here, bench.py), contiguous on GPU",
)
p.add_argument("--epochs", type=common.number(int), default=200, help="epochs (200)")
p.add_argument("--batch-size", type=common.number(int), default=256, help="batch size per process (256)")
p.add_argument("--lr", type=common.number(float, 0), default=0.1, help="initial learning rate, cosine to 0 (0.1)")
p.add_argument("--momentum", type=common.number(float, 0), default=0.9, help="SGD momentum (0.9)")
p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True, help="Nesterov momentum (on)")
p.add_argument("--wd", type=common.number(float, 0), default=5e-4, help="weight decay (5e-4)")
p.add_argument("--seed", type=int, default=0, help="seed of the init and the data order (0)")
p.add_argument("--eval-every", type=common.number(int), default=1, help="test every N epochs (and after the last) (1)")
p.add_argument("--out", default=None, help="run directory (default runs/retrain-<dataset>-<arch hash>-s<seed>)")
p.add_argument("--resume", action="store_true", help="continue the run in --out")
p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
p.add_argument(
    "--save-every-steps", type=common.number(int, 0), default=0, help="also checkpoint every N steps inside an epoch (0 = off)"
)
p.add_argument("--log-every", type=common.number(int), default=50, help="progress line every N steps (50)")
p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto = cuda if available, else cpu")
p.add_argument("--backend", default="auto", choices=["auto", "nccl", "gloo"], help="DDP backend under torchrun")
p.add_argument(
    "--dist-timeout", type=common.number(float, 0.1), default=30.0, help="minutes before DDP gives up on a dead rank"
)
RUN_FLAGS = {"out", "resume", "force", "log_every", "save_every_steps", "device", "backend", "dist_timeout", "data"}
RUN_FLAGS |= {"eval_every"}  # how often to test changes no weight


def resolve_arch(args) -> tuple:
    """The architecture from --arch or from the winner of a search.json (one of the two)."""
    if (args.arch is None) == (args.ckpt_search is None):
        raise UsageError("give exactly one of --arch STRING or --ckpt-search runs/<run>/search.json")
    text = args.arch
    if args.ckpt_search is not None:
        try:
            with open(args.ckpt_search) as f:
                text = json.load(f)["winner"]["arch"]
        except FileNotFoundError:
            raise UsageError(f"{args.ckpt_search} does not exist; pass the search.json written by search.py") from None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UsageError(
                f"{args.ckpt_search} is not a finished search.json (no winner); rerun or resume search.py"
            ) from None
    try:
        return str_to_arch(text)
    except ValueError as err:
        raise UsageError(str(err)) from None


@torch.no_grad()
def evaluate(model, loader, device, d) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%) over the whole test split, summed over all ranks."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, images
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        top5 = model(x).topk(min(5, model_classes(model)), dim=1).indices  # (B, 5)
        totals += torch.tensor(
            [(top5[:, 0] == y).sum().item(), (top5 == y[:, None]).any(1).sum().item(), len(y)],
            dtype=torch.float64,
            device=device,
        )
    if d.ddp:
        torch.distributed.all_reduce(totals)
    return (100 * totals[0] / totals[2]).item(), (100 * totals[1] / totals[2]).item()


def model_classes(model) -> int:
    return (model.module if isinstance(model, DDP) else model).classifier.out_features


def main():
    args = p.parse_args()
    arch = resolve_arch(args)
    if args.out is None:
        args.out = os.path.join(
            "runs", f"retrain-{args.dataset}-{hashlib.sha1(arch_to_str(arch).encode()).hexdigest()[:8]}-s{args.seed}"
        )

    # ------------------------------------------------------------------------------------------
    # BOILERPLATE: devices, torchrun, run directory, resume.
    d = common.setup_distributed(args.device, args.backend, args.dist_timeout)
    ckpt_path, log_path = os.path.join(args.out, "retrain.pt"), os.path.join(args.out, "log.jsonl")
    ckpt = None
    common.check_run_dir(args.out, args.resume, args.force, "retrain.pt")
    if args.resume:
        ckpt = common.load_checkpoint(ckpt_path, "retrain checkpoint")
        if ckpt.get("stage") != "retrain":
            raise UsageError(f"{ckpt_path} is not a retrain.py checkpoint")
        if ckpt["arch"] != arch_to_str(arch):
            raise UsageError(f"{ckpt_path} retrains {ckpt['arch']}, not {arch_to_str(arch)}")
        for key, saved in ckpt["config"].items():
            if key not in RUN_FLAGS and key not in ("arch", "ckpt_search"):
                setattr(args, key, saved)

    # ------------------------------------------------------------------------------------------
    # Data: real labels, standard augmentation on train, none on test.
    kw = dict(image_size=args.image_size, fake_images=args.fake_images, fake_seed=args.data_seed)
    base = load_dataset(args.dataset, args.data, "train", augment=True, **kw)
    test_set = load_dataset(args.dataset, args.data, "test", augment=False, **kw)
    indices = subset_indices(torch.arange(len(base)), args.subset, args.data_seed)
    train_set = Relabeled(base, indices, base.targets.long())
    if not args.resume and d.master:
        common.make_run_dir(args.out, args.force)
    if d.ddp:
        torch.distributed.barrier()
    test_view = Relabeled(test_set, torch.arange(len(test_set)), test_set.targets.long())
    if args.data_path == "tensor" and not in_memory(train_set):
        raise UsageError(
            f"--data-path tensor needs an in-memory dataset (cifar10/100, imagenet16-120, fake), not {args.dataset}"
        )
    fast, cache = args.data_path == "tensor" or (args.data_path == "auto" and in_memory(train_set)), {}
    test_loader = epoch_loader(
        test_view, args.batch_size, False, args.seed, 0, d.device, d.rank, d.world_size, args.workers, fast, cache
    )

    # ------------------------------------------------------------------------------------------
    # Model and optimizer.
    torch.manual_seed(args.seed)
    raw_model = Subnet(arch, args.channels, args.layers, base.num_classes).to(d.device)
    fmt = common.memory_format(args.memory_format, d.device)
    acc_dtype = torch.float32 if d.device.type == "mps" else torch.float64  # running loss/accuracy sums (no fp64 on MPS)
    raw_model = raw_model.to(memory_format=fmt)
    if d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = DDP(raw_model, device_ids=[d.device.index] if d.device.type == "cuda" else None) if d.ddp else raw_model
    optimizer = torch.optim.SGD(
        raw_model.parameters(),
        lr=args.lr,
        momentum=args.momentum,
        nesterov=args.nesterov and args.momentum > 0,
        weight_decay=args.wd,
    )
    start_epoch, start_batch, step = 0, 0, 0
    if ckpt is not None:
        try:
            raw_model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise UsageError(f"{ckpt_path} does not fit the network it describes ({str(err).splitlines()[0][:120]})") from None
        start_epoch, start_batch, step = ckpt["epoch"], ckpt.get("batch", 0), ckpt.get("step", 0)
        if d.master and os.path.exists(log_path):  # the epoch a crash lost is redone: drop its log line
            with open(log_path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["epoch"] <= start_epoch]
            with open(log_path, "w") as f:
                f.writelines(kept)
        print0(f"resumed {ckpt_path} at epoch {start_epoch}")
    elif d.master:
        common.atomic_write_json(
            {**vars(args), "arch": arch_to_str(arch), "git_commit": common.git_commit()}, os.path.join(args.out, "config.json")
        )
    params = sum(q.numel() for q in raw_model.parameters())
    print0(
        f"retrain {arch_to_str(arch)} | C={args.channels} N={args.layers} | {params:,} parameters | "
        f"{len(train_set):,} train / {len(test_set):,} test images | {args.epochs} epochs | {d.device} x{d.world_size}"
    )

    def save(epoch: int, batch: int, totals):
        """retrain.pt, atomically; `batch` > 0 marks a mid-epoch checkpoint (--save-every-steps), with every rank's
        running totals so the resumed epoch logs the same numbers."""
        if batch:
            per_rank = [totals.cpu().double()]
            if d.ddp:
                per_rank = [None] * d.world_size
                torch.distributed.all_gather_object(per_rank, totals.cpu().double())
            totals = torch.stack(per_rank)  # (world_size, 3)
        if d.master:
            state = {
                "stage": "retrain",
                "epoch": epoch,
                "batch": batch,
                "step": step,
                "totals": totals,
                "arch": arch_to_str(arch),
            }
            state.update(model=raw_model.state_dict(), optimizer=optimizer.state_dict(), config=vars(args))
            common.atomic_save({**state, "test_top1": top1, "test_top5": top5}, ckpt_path)

    # ------------------------------------------------------------------------------------------
    # Training loop (cosine to 0 per epoch, as NAS-Bench-201).
    t_run, steps_run = time.time(), 0
    top1, top5 = (ckpt.get("test_top1"), ckpt.get("test_top5")) if ckpt else (None, None)
    for epoch in range(start_epoch, args.epochs):
        lr = 0.5 * args.lr * (1 + torch.cos(torch.tensor(torch.pi * epoch / args.epochs)).item())
        for group in optimizer.param_groups:
            group["lr"] = lr
        if not fast:
            torch.manual_seed(epoch_seed(args.seed, epoch, d.rank))  # per-sample augmentation: replayable on resume
        loader = epoch_loader(
            train_set, args.batch_size, True, args.seed, epoch, d.device, d.rank, d.world_size, args.workers, fast, cache
        )
        model.train()
        t0, seen, skip = time.time(), 0, 0
        totals = torch.zeros(3, dtype=acc_dtype, device=d.device)  # loss sum, correct, images on this rank
        if epoch == start_epoch and start_batch:  # resuming inside this epoch: its first batches are done
            skip, totals = start_batch, ckpt["totals"][d.rank].to(d.device, acc_dtype)
        for i, (x, y) in enumerate(loader):
            if i < skip:
                continue  # drawn again (same order, same crops) but already trained on
            x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)  # (B, 3, H, W), (B,)
            x = x.contiguous(memory_format=fmt)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.amp):  # --amp: bf16 forward
                logits = model(x)  # (B, K)
                loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # running sums stay on the device: no host synchronisation per step
            totals[0] += loss.detach().to(acc_dtype) * len(y)
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += len(y)
            steps_run, seen, step = steps_run + 1, seen + len(y), step + 1
            if (i + 1) % args.log_every == 0 or i + 1 == len(loader):
                if not torch.isfinite(totals[0]):
                    raise SystemExit(
                        f"retrain.py: error: the loss is not finite at epoch {epoch + 1} step {i + 1}; lower --lr"
                    )
                rate = seen * d.world_size / (time.time() - t0)
                eta = ((args.epochs - epoch) * len(loader) - i - 1) * (time.time() - t_run) / steps_run
                print0(
                    f"epoch {epoch + 1}/{args.epochs} | step {i + 1}/{len(loader)} | loss {totals[0] / totals[2]:.4f} | "
                    f"train acc {100 * totals[1] / totals[2]:.1f}% | lr {lr:.2e} | {rate:.0f} img/s | "
                    f"ETA {common.format_time(eta)}"
                )
            if args.save_every_steps and step % args.save_every_steps == 0 and i + 1 < len(loader):
                save(epoch, i + 1, totals)
        if d.ddp:  # the epoch's loss and accuracy over all ranks
            torch.distributed.all_reduce(totals)
        entry = {
            "epoch": epoch + 1,
            "loss": (totals[0] / totals[2]).item(),
            "train_acc": (100 * totals[1] / totals[2]).item(),
            "lr": lr,
            "seconds": time.time() - t0,
        }
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            top1, top5 = evaluate(model, test_loader, d.device, d)
            entry.update(test_top1=top1, test_top5=top5)
            print0(f"epoch {epoch + 1}/{args.epochs} | test top-1 {top1:.2f}% | top-5 {top5:.2f}%")
        if d.master:
            with open(log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
        save(epoch + 1, 0, None)  # after the log line: a crash in between only repeats this epoch
    print0(f"done: {arch_to_str(arch)} | test top-1 {top1:.2f}% | top-5 {top5:.2f}% | {ckpt_path}")
    common.cleanup_distributed(d)


if __name__ == "__main__":
    common.run(main, DataError)
