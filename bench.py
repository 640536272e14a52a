"""
Benchmarks: how fast each stage runs on this machine, each figure beside a baseline measured in the same run.

Not part of the method and not a test: it prints ratios, so a noisy machine shifts both sides of each ratio alike.

1. Supernet training throughput (forward + backward + SGD step, batch 64, NB201 C=16 N=5, 32x32, one sampled path
   per step as train.py) and peak memory, beside a plain single-path forward of the same network, and beside the
   official code's figure on this kind of machine (about 174 images/s with 2 threads; target 1.2x).
2. Data pipeline: one epoch of CIFAR-sized images through torchvision's per-image transforms in a DataLoader,
   against the batched tensor path (loaders.TensorBatches); the data share of a training step; and training steps fed
   by the tensor path against the same steps on one fixed batch (what the data path costs end to end).
3. Angle: all 15,625 NB201 architectures ranked from checkpoint files, and the per-architecture speed-up of
   angle.AngleScorer over the literal reference angle.angle_reference.
4. A full NB201 evolution search (20 generations, 2,000 architectures), checkpoint loading included.
5. The DARTS and MobileNet spaces at paper size: supernet training throughput, the fast angle against the literal
   reference, and a method.md §5 search of 1,000 candidates under the paper's FLOPs limit (W0 = the init, Wt = the init
   plus noise: the speed of an angle does not depend on how the weights were trained).

    python bench.py                   # about 2-4 minutes on a 2-core CPU
    python bench.py --quick           # fewer steps, for a smoke run
    python bench.py --device cuda     # the same on a GPU (adds --amp and channels_last variants)
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import torch

import checkpoint
import cli
import distributed
import files
import search
from angle import AngleScorer, angle_reference
from darts import darts_angle_reference
from data import Relabeled, load_dataset
from evolution import evolve, rank
from loaders import TensorBatches, make_loader
from mobilenet import mb_angle_reference
from spaces import SPACES
from supernet import OPS, Supernet, all_archs, sample_path
from train import train_step

OFFICIAL_TRAIN_IMG_S = 174.0  # the official NB201 supernet on this kind of machine, 2 threads (issue 6)


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB, whole process


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_training(device, steps: int, amp: bool = False, channels_last: bool = False) -> tuple[float, float]:
    """(train images/s, forward-only images/s) for the NB201 supernet at batch 64 on 32x32 inputs."""
    torch.manual_seed(0)
    net = Supernet().to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (64,), device=device)
    for _ in range(3):  # warm-up: allocator, cuDNN autotuning
        train_step(net, opt, x, y, sample_path(gen, 15), amp=amp)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(net, opt, x, y, sample_path(gen, 15), amp=amp)
    sync(device)
    train = 64 * steps / (time.perf_counter() - t0)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for _ in range(2):
            net(x, sample_path(gen, 15))
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            net(x, sample_path(gen, 15))
        sync(device)
    forward = 64 * steps / (time.perf_counter() - t0)
    return train, forward


def bench_data(device, images: int) -> tuple[float, float]:
    """(DataLoader images/s, TensorBatches images/s) over one epoch of `images` CIFAR-sized training images."""
    base = load_dataset("fake", "", "train", augment=True, fake_images=images, image_size=32)
    ds = Relabeled(base, torch.arange(images), base.targets)
    t0 = time.perf_counter()
    for x, y in make_loader(ds, 64, train=True, seed=0, epoch=0, num_workers=0):
        x.to(device)
    sync(device)
    slow = images / (time.perf_counter() - t0)
    cache = {}
    list(TensorBatches(ds, 64, True, 0, 0, device, cache=cache))  # the one-off copy to the device
    sync(device)
    t0 = time.perf_counter()
    for x, y in TensorBatches(ds, 64, True, 0, 1, device, cache=cache):
        pass
    sync(device)
    return slow, images / (time.perf_counter() - t0)


def bench_fed_training(device, steps: int) -> float:
    """Training images/s with the batches drawn by loaders.TensorBatches, in train.py's layout and loop (running sums on
    the device, no logging). Unlike bench_data, which times the data loop alone, this includes every wait the data
    path makes the host do while the device trains: a per-batch host-to-device copy costs nothing in a data loop,
    but it stalls a training loop until the device has finished the step before."""
    torch.manual_seed(0)
    fmt = distributed.memory_format("auto", device)
    net = Supernet().to(device).to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    warmup, images = 3, 64 * (steps + 3)
    base = load_dataset("fake", "", "train", augment=True, fake_images=images, image_size=32)
    ds = Relabeled(base, torch.arange(images), base.targets)
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for i, (x, y) in enumerate(TensorBatches(ds, 64, True, 0, 0, device)):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        loss, logits = train_step(net, opt, x.contiguous(memory_format=fmt), y, sample_path(gen, 15))
        totals[0] += loss.detach().double() * len(y)
        totals[1] += (logits.argmax(1) == y).sum()
        totals[2] += len(y)
    sync(device)
    return 64 * steps / (time.perf_counter() - t0)


def write_checkpoints(folder: str) -> str:
    """A full-size NB201 supernet.pt + supernet_init.pt pair in train.py's format (Wt = W0 + noise)."""
    torch.manual_seed(0)
    net = Supernet()
    w0 = {k: v.clone() for k, v in net.state_dict().items()}
    wt = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in w0.items()}
    fp = files.state_fingerprint(w0)
    files.atomic_save(
        {"stage": "init", "model": w0, "supernet_args": net.args, "fingerprint": fp}, os.path.join(folder, "supernet_init.pt")
    )
    ckpt = {
        "stage": "train",
        "model": wt,
        "supernet_args": net.args,
        "epoch": 1,
        "w0": {"file": "supernet_init.pt", "fingerprint": fp},
    }
    files.atomic_save(ckpt, os.path.join(folder, "supernet.pt"))
    return os.path.join(folder, "supernet.pt")


def bench_search(ckpt: str) -> dict:
    t0 = time.perf_counter()
    w0, wt, args, _ = checkpoint.load_supernet(ckpt, None, SPACES)
    scorer = AngleScorer(w0, wt, args)
    archs = all_archs()
    ranked = rank(dict(zip(archs, scorer.angles(archs).tolist())), search.tie_key)
    t_rank_all = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(20):
        scorer.angles(archs)
    fast_per_arch = (time.perf_counter() - t0) / 20 / len(archs)
    sample = ranked[:: len(ranked) // 8][:8]
    t0 = time.perf_counter()
    for a in sample:
        angle_reference(w0, wt, a, args)
    ref_per_arch = (time.perf_counter() - t0) / len(sample)
    t0 = time.perf_counter()
    w0, wt, args, _ = checkpoint.load_supernet(ckpt, None, SPACES)
    scorer = AngleScorer(w0, wt, args)
    result = evolve(
        [list(range(len(OPS)))] * 6,
        lambda c: scorer.angles(c).tolist(),
        mutation_choices=[list(range(1, len(OPS)))] * 6,
        tie_key=search.tie_key,
        seed=0,
    )
    t_evolve = time.perf_counter() - t0
    return dict(rank_all=t_rank_all, fast=fast_per_arch, ref=ref_per_arch, evolve=t_evolve, evaluated=len(result.evaluated))


def bench_space(device, net_args: dict, batch: int, steps: int, limit_m: float | None, reference) -> dict:
    """Training img/s, fast and reference seconds per angle, and a 1,000-candidate search for one space."""
    space = SPACES[net_args["space"]]
    torch.manual_seed(0)
    net = space.supernet(net_args).to(device)
    w0 = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    out = {}
    if steps:
        fmt = torch.channels_last if device.type == "cpu" else torch.contiguous_format  # train.py's auto layout
        net = net.to(memory_format=fmt)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        gen = torch.Generator().manual_seed(0)
        size = net_args["image_size"]
        x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, net_args["num_classes"], (batch,), device=device)
        for i in range(steps + 1):
            if i == 1:  # the first step is warm-up
                sync(device)
                t0 = time.perf_counter()
            train_step(net, opt, x, y, space.sample_path(gen, net_args))
        sync(device)
        out["train"] = batch * steps / (time.perf_counter() - t0)
    noise = torch.Generator().manual_seed(1)
    wt = {k: v + 0.01 * torch.randn(v.shape, generator=noise) if v.is_floating_point() else v for k, v in w0.items()}
    t0 = time.perf_counter()
    scorer = space.scorer(w0, wt, net_args)
    out["build"] = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(2)
    archs = [space.repair(space.sample_path(gen, net_args)) for _ in range(1000)]
    t0 = time.perf_counter()
    scorer.angles(archs)
    out["fast"] = (time.perf_counter() - t0) / len(archs)
    t0 = time.perf_counter()
    for a in archs[:3]:
        reference(w0, wt, a, net_args)
    out["ref"] = (time.perf_counter() - t0) / 3
    t0 = time.perf_counter()
    result = evolve(
        space.gene_choices(net_args),
        lambda cands: scorer.angles(cands).tolist(),
        population=50,
        topk=10,
        mutations=25,
        crossovers=25,
        generations=20,
        mutation_choices=space.mutation_choices(net_args),
        constraint=None if limit_m is None else (lambda a: space.flops(a, net_args) <= limit_m * 1e6),
        repair=space.repair,
    )
    out["search"], out["evaluated"] = time.perf_counter() - t0, len(result.evaluated)
    return out


def main(argv=None):
    p = cli.Parser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="fewer steps and images: a smoke run")
    args = p.parse_args(argv)
    device = distributed.resolve_device(args.device)
    steps, images = (3, 1024) if args.quick else (30, 10000)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name} | torch {torch.__version__}")

    print("\n1. supernet training (NB201 C=16 N=5, batch 64, 32x32, one sampled path per step)")
    train, forward = bench_training(device, steps)
    print(
        f"   contiguous:    train {train:8.1f} img/s | plain single-path forward {forward:8.1f} img/s | "
        f"train/forward {train / forward:.2f} | peak memory {peak_memory_mb(device):,.0f} MiB"
    )
    t_cl, f_cl = bench_training(device, steps, channels_last=True)
    print(
        f"   channels_last: train {t_cl:8.1f} img/s | plain single-path forward {f_cl:8.1f} img/s | "
        f"train/forward {t_cl / f_cl:.2f} | {t_cl / train:.2f}x the contiguous layout"
    )
    fixed = t_cl if device.type == "cpu" else train  # the fixed-batch rate in train.py's default layout here
    if device.type == "cpu":
        best = max(train, t_cl)  # what train.py --memory-format auto runs on this device (channels_last on CPU)
        print(
            f"   vs the official code here ({OFFICIAL_TRAIN_IMG_S:.0f} img/s): {best / OFFICIAL_TRAIN_IMG_S:.2f}x "
            f"(target 1.20x); train.py's default layout here: channels_last"
        )
        train = best
    else:
        for amp, cl in [(True, False), (True, True)]:
            t, f = bench_training(device, steps, amp=amp, channels_last=cl)
            print(f"   --amp, channels_last={cl!s:5}: train {t:8.1f} img/s ({t / train:.2f}x) | forward {f:8.1f} img/s")
    print("   DARTS and MobileNet supernets: section 5")

    print(f"\n2. data pipeline: one epoch of {images:,} CIFAR-sized training images (flip + crop + normalize)")
    slow, fast = bench_data(device, images)
    step_s = 64 / train
    print(
        f"   DataLoader, per-image torchvision transforms: {slow:9,.0f} img/s | batched tensor path: {fast:9,.0f} img/s"
        f" | {fast / slow:.1f}x (target 3x)"
    )
    print(
        f"   data share of a training step, the data loop timed alone: {100 * (64 / fast) / (step_s + 64 / fast):.1f}% "
        f"with the tensor path, {100 * (64 / slow) / (step_s + 64 / slow):.1f}% with the DataLoader (target < 10%)"
    )
    fed = bench_fed_training(device, steps)
    print(
        f"   training fed by the tensor path (train.py's loop): {fed:8.1f} img/s = {100 * fed / fixed:.0f}% of the same "
        f"steps on one fixed batch: the data path's cost end to end, host-device waits included"
    )

    print("\n3-4. angle and search (a full-size NB201 checkpoint pair written to a temporary folder)")
    with tempfile.TemporaryDirectory() as folder:
        r = bench_search(write_checkpoints(folder))
    print(f"   rank all 15,625 architectures, checkpoint loading included: {r['rank_all']:.2f} s (target about 1 s)")
    print(
        f"   per architecture: fast {r['fast'] * 1e6:.2f} us | reference {r['ref'] * 1e3:.0f} ms | "
        f"{r['ref'] / r['fast']:,.0f}x (target 500x)"
    )
    print(
        f"   evolution, 20 generations ({r['evaluated']:,} architectures), checkpoint loading included: "
        f"{r['evolve']:.2f} s (target under 2 s)"
    )

    print("\n5. the DARTS and MobileNet spaces at paper size")
    spaces = [
        ("DARTS CIFAR supernet (C=16, 8 cells), batch 64 at 32x32, no FLOPs limit (as the official CIFAR search)",
         dict(space="darts", channels=16, layers=8, num_classes=10, variant="cifar", image_size=32), 64, None,
         darts_angle_reference),
        ("DARTS ImageNet supernet (C=48, 14 cells), batch 16 at 224x224, limit 600M",
         dict(space="darts", channels=48, layers=14, num_classes=1000, variant="imagenet", image_size=224), 16, 600,
         darts_angle_reference),
        ("MobileNet supernet (width 1.0), batch 16 at 224x224, limit 475M",
         dict(space="mobilenet", num_classes=1000, width=1.0, image_size=224), 16, 475, mb_angle_reference),
    ]  # fmt: skip
    for title, net_args, batch, limit, reference in spaces:
        r = bench_space(device, net_args, batch, max(2, steps // 5), limit, reference)
        print(f"   {title}")
        print(
            f"      train {r['train']:7.1f} img/s | angle tables built in {r['build']:.2f} s | per architecture: fast "
            f"{r['fast'] * 1e6:.1f} us, reference {r['ref'] * 1e3:.0f} ms, {r['ref'] / r['fast']:,.0f}x | "
            f"search (50 x 20 generations): {r['evaluated']:,} candidates in {r['search']:.2f} s"
        )


if __name__ == "__main__":
    cli.run(main)  # e.g. --device cuda without a GPU: one line, exit status 2
