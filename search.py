"""
Stage 2 of RLNAS: search the architecture whose weights moved the furthest from W0.

Loads the trained supernet (Wt) and its initial weights (W0), then runs the SPOS evolutionary
search with the angle between V(a, W0) and V(a, Wt) as fitness (angle.py); the largest angle
wins. No data and no forward pass are needed. --exhaustive scores all 15,625 NB201 cells
instead. With --benchmark it also looks the result up in NAS-Bench-201 and reports Kendall's tau
of the angle against the benchmark accuracy.

Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021,
arXiv:2101.11834, the angle-based evolutionary search step (angle from ABS, Hu et al. 2020,
Algorithm 1). Settings: SPEC.md 5 (RECIPES below, per space); ranking study: SPEC.md 7.5. The space comes from
the checkpoint's supernet_args; --exhaustive, --benchmark and --plot are NB201 only.

    python search.py --ckpt runs/<run>/supernet.pt                         # evolution, prints the winner
    python search.py --ckpt runs/<run>/supernet.pt --exhaustive            # rank all 15,625 cells
    python search.py --ckpt runs/<run>/supernet.pt --benchmark ../shared/data/nb201-accuracy.csv
    python search.py --ckpt runs/<run>/supernet.pt --resume                # continue an interrupted search
    python search.py --ckpt runs/<darts run>/supernet.pt --max-flops 600   # DARTS: at most 600M multiply-adds
    python search.py --ckpt runs/<mobilenet-run>/supernet.pt --max-flops 475   # MobileNet: SPEC 5, FLOPs table first

The search is single-process and needs no GPU (SPEC 8, pitfall 13); there is no torchrun mode.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

import common
from benchmark import BenchmarkError, load_benchmark
from common import UsageError
from data import DataError, Relabeled, epoch_loader, in_memory, load_dataset, split_indices, subset_indices
from evolution import evolve, rank, tie_group
from supernet import SPACES, arch_to_str, str_to_arch

# ----------------------------------------------------------------------------------------------
# The evolution settings per search space (SPEC 5); flags left at None take these. NB201: population 100, top-30,
# 50 mutations with p=0.1 never to 'none', 50 crossovers, 20 generations. DARTS (and the SPOS defaults): population
# 50, top-10, 25 mutations, 25 crossovers, 20 generations = 1,000 candidates.
RECIPES = {
    "nb201": dict(population=100, topk=30, mutations=50, crossovers=50, mutation_prob=0.1, generations=20),
    "darts": dict(population=50, topk=10, mutations=25, crossovers=25, mutation_prob=0.1, generations=20),
    # MobileNet: the SPOS settings, p=0.1 per block over the block's own list, and FLOPs <= 475M (the official lookup
    # table; here multiply-adds at the supernet's image size, so 475 binds at 224 px and is moot at 32/64 px)
    "mobilenet": dict(population=50, topk=10, mutations=25, crossovers=25, mutation_prob=0.1, generations=20, max_flops=475.0),
}

# Config
p = common.Parser(description="Search the architecture with the largest angle (stage 2).")
p.add_argument("--ckpt", type=common.nonempty, required=True, help="supernet.pt written by train.py (it names its W0 file)")
p.add_argument("--w0", type=common.nonempty, default=None, help="initial weights, if not the supernet_init.pt beside --ckpt")
p.add_argument(
    "--fitness",
    default="angle",
    choices=["angle", "accuracy", "params", "random"],
    help="angle: RLNAS (default); accuracy: one-shot accuracy on held-out real labels after BN recalibration "
    "(Table 1 A/C); params: parameter count, the trivial proxy; random: a seeded random score (random search)",
)
p.add_argument(
    "--data", type=common.nonempty, default=None, help="--fitness accuracy: dataset directory (default: the one train.py used)"
)
p.add_argument("--recal-batches", type=common.number(int), default=20, help="--fitness accuracy: BN recalibration batches")
p.add_argument(
    "--eval-images", type=common.number(int, 0), default=5000, help="--fitness accuracy: held-out images (5000; 0 = all)"
)
p.add_argument("--batch-size", type=common.number(int), default=256, help="--fitness accuracy: batch size (256)")
p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="--fitness accuracy: device")
p.add_argument("--exhaustive", action="store_true", help="score all 15,625 NB201 architectures instead of evolving")
p.add_argument("--population", type=common.number(int), default=None, help="candidates per generation (NB201 100, DARTS 50)")
p.add_argument("--topk", type=common.number(int), default=None, help="elitist archive that parents come from (30; 10)")
p.add_argument("--mutations", type=common.number(int, 0), default=None, help="mutants per generation (50; 25)")
p.add_argument("--crossovers", type=common.number(int, 0), default=None, help="crossover children per generation (50; 25)")
p.add_argument("--mutation-prob", type=common.fraction, default=None, help="per-gene mutation probability (0.1)")
p.add_argument("--generations", type=common.number(int), default=None, help="generations (20)")
p.add_argument(
    "--max-flops",
    type=common.number(float, 0),
    default=None,
    help="only architectures with at most M million multiply-adds at the supernet's input size (checked before "
    "scoring; SPEC 5: 600 for DARTS-ImageNet; default 475 for MobileNet)",
)
p.add_argument("--seed", type=common.seed, default=0, help="seed of the evolution (default 0)")
p.add_argument("--benchmark", default=None, help="NAS-Bench-201 CSV (ArchitectureString + accuracy columns) to report against")
p.add_argument(
    "--plot",
    action="store_true",
    help="write PNG plots beside search.json (needs matplotlib, optional): fitness vs benchmark accuracy "
    "(with --benchmark), and tau vs epoch when train.py ran with --track-tau",
)
p.add_argument("--top", type=common.number(int), default=10, help="how many architectures to print (10)")
p.add_argument("--out", type=common.nonempty, default=None, help="where to write search.json (default: beside --ckpt)")
p.add_argument("--resume", action="store_true", help="continue the search recorded in --out")
p.add_argument("--force", action="store_true", help="overwrite an existing search.json")

TIE_TOL = 1e-9  # angles closer than this are ties (float64 round-off is ~1e-13)
SEARCH_KEYS = (
    "fitness",
    "exhaustive",
    "population",
    "topk",
    "mutations",
    "crossovers",
    "mutation_prob",
    "generations",
    "seed",
    "max_flops",
)


def tie_key(arch):
    """NB201's tie rule (supernet.NB201Space.tie_key), kept here for bench.py."""
    return SPACES["nb201"].tie_key(arch)


class OneShotAccuracy:
    """The one-shot accuracy fitness (the paper's Table 1, configurations A and C; SPEC 7.1 and pitfall 6).

    For each candidate: the supernet's trained weights along that cell (shared by all cells), its BN running
    statistics recalibrated on a fixed set of training batches (the supernet's statistics were collected over
    random paths and are wrong for any single one: without this the accuracy is near chance), then top-1 accuracy
    with the REAL labels on held-out images: for NB201 CIFAR-10 the other half of the 25k/25k split, otherwise the
    test split. The same batches for every candidate, no augmentation: deterministic.
    """

    def __init__(self, wt: dict, net_args: dict, config: dict, args):
        self.device = common.resolve_device(args.device)
        self.net = SPACES[net_args["space"]].supernet(net_args).to(self.device)
        self.net.load_state_dict(wt)
        name, root = config["dataset"], args.data or config["data"]
        kw = dict(
            image_size=config.get("image_size"),
            fake_images=config.get("fake_images", 1024),
            fake_seed=config.get("data_seed", 0),
        )
        train = load_dataset(name, root, "train", augment=False, **kw)
        half = config.get("split") == "half" or (
            config.get("split") == "auto" and name == "cifar10" and config.get("space", "nb201") == "nb201"
        )
        if half:  # the valid half that the supernet never saw
            held, held_idx = train, split_indices(len(train), config.get("data_seed", 0))[1]
        else:
            held = load_dataset(name, root, "test", augment=False, **kw)
            held_idx = torch.arange(len(held))
        held_idx = subset_indices(held_idx, args.eval_images, 0)
        calib_idx = subset_indices(torch.arange(len(train)), args.recal_batches * args.batch_size, 1)

        def batches(ds, idx):
            view = Relabeled(ds, idx, ds.targets.long())
            return list(epoch_loader(view, args.batch_size, False, 0, 0, self.device, fast=in_memory(view)))

        self.calib, self.held = batches(train, calib_idx), batches(held, held_idx)

    @torch.no_grad()
    def __call__(self, archs) -> list[float]:
        scores, t0 = [], time.time()
        for n, arch in enumerate(archs):
            if n and n % 25 == 0:  # slow work: say how fast it goes
                rate = n / (time.time() - t0)
                print(
                    f"  one-shot accuracy: {n}/{len(archs)} candidates | {rate:.2f}/s | "
                    f"ETA {common.format_time((len(archs) - n) / rate)}",
                    flush=True,
                )
            for m in self.net.modules():  # BN recalibration: forget the supernet's statistics, average afresh
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None  # cumulative moving average over the calibration batches
            self.net.train()
            for x, _ in self.calib:
                self.net(x, arch)
            self.net.eval()
            hits = sum((self.net(x, arch).argmax(1) == y).sum().item() for x, y in self.held)
            scores.append(100.0 * hits / sum(len(y) for _, y in self.held))
        return scores


def make_fitness(kind: str, w0: dict, wt: dict, net_args: dict, seed: int, ckpt: dict | None = None, args=None):
    """The batched fitness the evolution maximises: list of archs -> list of floats."""
    if kind == "accuracy":
        return OneShotAccuracy(wt, net_args, ckpt["config"], args)
    space = SPACES[net_args["space"]]
    if kind == "angle":
        # RLNAS: the angle. One pass over both state_dicts, then any angle is a handful of sums (angle.py).
        scorer = space.scorer(w0, wt, net_args)
        return lambda archs: scorer.angles(archs).tolist()
    if kind == "params":
        # baseline: the parameter count of the stand-alone network, a proxy that needs no training at all
        return lambda archs: [float(space.params(a, net_args)) for a in archs]
    # baseline: random search. The score is a function of (seed, arch) only, so a resumed search sees the same one.
    return lambda archs: [float(np.random.default_rng([seed & 0xFFFFFFFF, *a]).random()) for a in archs]


def load_supernet_pair(path: str, w0_path: str | None):
    """(W0 state, Wt state, supernet args) from a train.py checkpoint, checked against each other."""
    ckpt = common.load_checkpoint(path, "supernet checkpoint")
    if ckpt.get("stage") != "train" or not {"model", "supernet_args", "w0", "epoch"} <= set(ckpt):
        raise UsageError(f"{path} is not a supernet checkpoint written by train.py")
    args = dict(ckpt["supernet_args"])
    if args.get("space") not in SPACES:
        raise UsageError(f"{path} is a {args.get('space')!r} supernet; this search knows {', '.join(SPACES)}")
    space = SPACES[args["space"]]
    if not set(space.ckpt_keys) <= set(args):
        raise UsageError(f"{path} does not describe its supernet (supernet_args {args}); the file is damaged or edited")
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in space.supernet(args).state_dict().items()}
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise UsageError(f"{path} describes a supernet that cannot be built ({err}); the file is damaged or edited") from None
    if {k: tuple(v.shape) for k, v in ckpt["model"].items()} != expected:
        raise UsageError(
            f"{path} does not hold the weights of the supernet it describes {args}; the file is damaged or edited"
        )
    w0_path = w0_path or os.path.join(os.path.dirname(path), ckpt["w0"]["file"])
    init = common.load_checkpoint(w0_path, "initial weights (W0)")
    if "model" not in init or {k: tuple(v.shape) for k, v in init["model"].items()} != expected:
        raise UsageError(f"{w0_path} is not the initial weights of a supernet of the same shape {args}")
    if common.state_fingerprint(init["model"]) != ckpt["w0"]["fingerprint"]:
        raise UsageError(
            f"{w0_path} is not the W0 of {path} (fingerprint differs): the angle needs the run's own initial weights"
        )
    return init["model"], ckpt["model"], args, ckpt


def main():
    args = p.parse_args()
    # supernet.pt -> search.json beside it; a snapshot supernet_ep10.pt -> search_supernet_ep10.json
    stem = os.path.splitext(os.path.basename(args.ckpt))[0]
    out = args.out or os.path.join(
        os.path.dirname(args.ckpt) or ".", "search.json" if stem == "supernet" else f"search_{stem}.json"
    )
    if os.path.exists(out) and not (args.resume or args.force):  # before any work: nothing is overwritten silently
        raise UsageError(
            f"{out} already exists: pass --resume to continue that search, --force to overwrite it, or --out FILE"
        )
    t_start = time.time()
    w0, wt, net_args, ckpt = load_supernet_pair(args.ckpt, args.w0)
    space = SPACES[net_args["space"]]
    for key, value in RECIPES.get(space.name, RECIPES["darts"]).items():  # SPEC 5 settings of this space
        if getattr(args, key) is None:
            setattr(args, key, value)
    if space.name != "nb201" and (args.exhaustive or args.benchmark or args.plot):
        raise UsageError("--exhaustive, --benchmark and --plot need the NB201 space (15,625 cells, the NB201 benchmark)")
    constraint = None
    if args.max_flops is not None:
        if space.flops is None:
            raise UsageError(f"the {space.name} space has no FLOPs count, so --max-flops cannot apply; drop it")
        if args.exhaustive:
            raise UsageError("--max-flops applies to the evolution, not to --exhaustive")
        limit = args.max_flops * 1e6
        if hasattr(space, "min_flops") and space.min_flops(net_args) > limit:
            raise UsageError(
                f"--max-flops {args.max_flops:g}: no {space.name} architecture is that small (the smallest has "
                f"{space.min_flops(net_args) / 1e6:.3f}M multiply-adds at {space.input_size(net_args)}px); raise --max-flops"
            )

        def constraint(arch) -> bool:
            # RLNAS: the FLOPs filter runs BEFORE the angle (SPEC 5, pitfall 8); evolve() calls it on every candidate
            return space.flops(arch, net_args) <= limit

    bench = None
    if args.benchmark:
        bench = load_benchmark(args.benchmark, str_to_arch)

    # ------------------------------------------------------------------------------------------
    # RLNAS: the fitness. One pass over both state_dicts, then any angle is a handful of sums (angle.py).
    fitness = make_fitness(args.fitness, w0, wt, net_args, args.seed, ckpt, args)
    t_load = time.time() - t_start
    settings = {k: getattr(args, k) for k in SEARCH_KEYS if k != "max_flops" or args.max_flops is not None}
    ident = {"ckpt": os.path.abspath(args.ckpt), "ckpt_epoch": ckpt["epoch"], "ckpt_fingerprint": common.state_fingerprint(wt)}
    memo = {}
    if args.resume:
        memo = load_previous(out, settings, ident, space)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    print(f"loaded {args.ckpt} (epoch {ckpt['epoch']}) and its W0 in {t_load:.2f}s | supernet {net_args}")

    state = {
        "settings": settings,
        **ident,
        "supernet_args": net_args,
        "mode": "exhaustive" if args.exhaustive else "evolution",
    }
    if args.exhaustive:
        t0 = time.time()
        archs = space.all_archs(net_args)
        scores = dict(zip(archs, fitness(archs)))
        print(f"scored all {len(archs):,} architectures in {time.time() - t0:.3f}s")
    else:
        t0 = time.time()

        def on_generation(gen):
            # progress, the current best, and search.json rewritten so an interrupted search can resume
            best = gen.archive[0]
            rate = len(gen.evaluated) / max(time.time() - t0, 1e-9)
            eta = (args.generations - gen.index - 1) * (time.time() - t0) / (gen.index + 1)
            digits = 0 if rate >= 10 else 2  # the one-shot accuracy fitness runs below 1 candidate/s
            line = (
                f"gen {gen.index + 1:2d}/{args.generations} | {len(gen.evaluated):5d} evaluated | {rate:,.{digits}f} archs/s"
                f" | ETA {common.format_time(eta)} | best {gen.evaluated[best]:.6f} {space.format(best)}"
            )
            if bench is not None and len(gen.evaluated) > 1:
                col = next(iter(bench.acc))
                line += f" | tau({col}) {bench.tau(gen.evaluated, col):+.3f}"
            print(line)
            write_state(out, state, gen.evaluated, gen.archive, gen.index + 1, space, done=False)

        try:
            result = evolve(
                space.gene_choices(net_args),
                fitness,
                population=args.population,
                topk=args.topk,
                mutations=args.mutations,
                crossovers=args.crossovers,
                mutation_prob=args.mutation_prob,
                generations=args.generations,
                mutation_choices=space.mutation_choices(net_args),  # NB201: never mutate into 'none' (SPEC 5)
                constraint=constraint,
                repair=space.repair,
                tie_key=space.tie_key,
                tie_tol=TIE_TOL,
                seed=args.seed,
                memo=memo,
                on_generation=on_generation,
            )
        except ValueError as err:
            if constraint is None or "initial architectures" not in str(err):
                raise
            raise UsageError(
                f"--max-flops {args.max_flops:g}: too few architectures of at most {args.max_flops:g}M multiply-adds to "
                f"fill the initial population of {args.population}; raise --max-flops"
            ) from None
        scores = result.evaluated
        print(
            f"evolution: {len(scores):,} architectures evaluated in {time.time() - t0:.3f}s "
            f"({len(memo):,} taken from the interrupted run)"
        )

    # ------------------------------------------------------------------------------------------
    # Report: the top architectures, the winner's tie group, and the benchmark view.
    ordered = rank(scores, space.tie_key, TIE_TOL)
    group = tie_group(ordered, scores, TIE_TOL)
    winner = ordered[0]
    cols = list(bench.acc) if bench else []
    unit = " (radians)" if args.fitness == "angle" else ""
    print(f"\ntop {min(args.top, len(ordered))} by {args.fitness}{unit}, larger is better:")
    header = f"{'#':>3} {args.fitness:>10}  " + "".join(f"{c:>16}" for c in cols) + "  architecture"
    print(header)
    for i, a in enumerate(ordered[: args.top]):
        accs = "".join(f"{bench.accuracy(a, c):16.2f}" if a in bench.index else f"{'n/a':>16}" for c in cols) if bench else ""
        print(f"{i + 1:3d} {scores[a]:10.6f}  {accs}  {space.format(a)}")
    flops = ""
    if space.flops is not None:
        flops = f"  {space.flops(winner, net_args) / 1e6:.1f}M multiply-adds"
    print(
        f"\nwinner: {space.format(winner)}  {args.fitness} {scores[winner]:.6f}{flops}  tie group of {len(group)} "
        f"(scores within {TIE_TOL:g}; ties broken by the space's rule)"
    )
    report = {}
    if bench is not None:
        report = benchmark_report(bench, winner, group, scores, ordered)
    state["benchmark"] = report
    write_state(
        out,
        state,
        scores,
        ordered[: max(args.topk, args.top)],
        args.generations if not args.exhaustive else 1,
        space,
        done=True,
        winner=winner,
        group=group,
    )
    print(f"wrote {out} ({time.time() - t_start:.2f}s in all)")
    if args.plot:
        plot(args, out, bench, scores, winner, report)


def benchmark_report(bench, winner, group, scores, ordered) -> dict:
    """Print and return the winner's NB201 accuracies, its rank, the tie group's spread, Kendall's tau, and the
    mean accuracy of the top 10 and top 100 architectures by this fitness (top-k quality, not only tau)."""
    report = {}
    if winner not in bench.index:
        print(f"the winner {arch_to_str(winner)} is not in the benchmark file")
        return report
    n = len(bench.archs)
    for col in bench.acc:
        acc = bench.accuracy(winner, col)
        group_acc = [bench.accuracy(a, col) for a in group if a in bench.index]
        tau = bench.tau(scores, col)
        report[col] = {
            "accuracy": acc,
            "rank": bench.rank(winner, col),
            "of": n,
            "tie_group_min": min(group_acc),
            "tie_group_max": max(group_acc),
            "kendall_tau_b": tau,
            "tau_over": sum(a in bench.index for a in scores),
        }
        for k in (10, 100):
            top = [bench.accuracy(a, col) for a in ordered[:k] if a in bench.index]
            report[col][f"top{k}_mean"] = sum(top) / len(top) if top else None
        print(
            f"benchmark {col:15s} winner {acc:6.2f}% (rank {report[col]['rank']:,} of {n:,}; "
            f"best {bench.acc[col].max():.2f}) | tie group {min(group_acc):.2f}-{max(group_acc):.2f} | "
            f"Kendall tau-b {tau:+.4f} over {report[col]['tau_over']:,} archs | mean of the top 10 "
            f"{report[col]['top10_mean']:.2f}, top 100 {report[col]['top100_mean']:.2f}"
        )
    return report


def plot(args, out: str, bench, scores: dict, winner, report: dict) -> None:
    """Optional pictures: fitness vs benchmark accuracy (tau in the title, the winner marked), tau vs epoch."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("--plot needs matplotlib (pip install matplotlib); no plots written, everything else is done")
        return
    folder, written = os.path.dirname(out) or ".", []
    unit = " (radians)" if args.fitness == "angle" else ""
    for col in bench.acc if bench is not None else []:
        archs = [a for a in scores if a in bench.index]
        # Cells whose output is cut off from their input all score an angle of exactly 0 (SPEC 4.2, rule 4); drawn
        # at x=0 they would squeeze every other point into a sliver at the right, so they are left out and counted.
        shown = [a for a in archs if scores[a] != 0.0] if args.fitness == "angle" else archs
        shown = shown or archs
        label = f"evaluated ({len(shown):,})"
        if len(shown) < len(archs):
            label += f"; {len(archs) - len(shown):,} disconnected (angle 0) not drawn"
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
        ax.scatter([scores[a] for a in shown], [bench.accuracy(a, col) for a in shown], s=4, alpha=0.4, label=label)
        if winner in bench.index:
            ax.scatter([scores[winner]], [bench.accuracy(winner, col)], s=120, marker="*", color="red", label="winner")
        ax.set_xlabel(f"{args.fitness}{unit}")
        ax.set_ylabel(f"NAS-Bench-201 {col} test accuracy (%)")
        ax.set_title(f"{args.fitness} vs {col}: Kendall tau-b {report[col]['kendall_tau_b']:+.3f} ({len(archs):,} cells)")
        ax.legend(loc="best", fontsize=8, framealpha=0.9)
        fig.tight_layout()
        written.append(os.path.join(folder, f"{args.fitness}_vs_{col}.png"))
        fig.savefig(written[-1])
        plt.close(fig)
    log = os.path.join(os.path.dirname(args.ckpt) or ".", "log.jsonl")
    points = []
    if os.path.isfile(log):
        with open(log) as f:
            points = [(e["epoch"], e["tau"]) for e in map(json.loads, f) if e.get("tau") is not None]
    if points:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        ax.plot(*zip(*points), marker="o")
        ax.set_xlabel("supernet training epoch")
        ax.set_ylabel("Kendall tau-b of the angle")
        ax.set_title("angle vs benchmark during supernet training")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(os.path.join(folder, "tau_vs_epoch.png"))
        fig.savefig(written[-1])
        plt.close(fig)
    print("plots: " + (", ".join(written) if written else "nothing to plot (give --benchmark, or train with --track-tau)"))


def write_state(out, state, scores, archive, generations_done, space, done, winner=None, group=None):
    fmt = space.format
    state = dict(
        state,
        generations_done=generations_done,
        done=done,
        evaluated=[[fmt(a), s] for a, s in scores.items()],
        archive=[[fmt(a), scores[a]] for a in archive],
    )
    if winner is not None:
        state["winner"] = {"arch": fmt(winner), "score": scores[winner], "tie_group": [fmt(a) for a in group]}
    common.atomic_write_json(state, out)


def load_previous(out: str, settings: dict, ident: dict, space) -> dict:
    """The angles an interrupted search already computed, after checking it is the same search."""
    if not os.path.isfile(out):
        raise UsageError(f"nothing to resume: {out} does not exist; drop --resume")
    try:
        with open(out) as f:
            prev = json.load(f)
        if prev.get("ckpt_fingerprint") != ident["ckpt_fingerprint"]:
            raise UsageError(f"{out} belongs to another checkpoint; use --out FILE or --force to start over")
        if prev.get("settings") != settings:
            raise UsageError(f"{out} was made with other settings {prev.get('settings')}; use the same flags or --force")
        return {space.parse(a): float(s) for a, s in prev["evaluated"]}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise UsageError(f"{out} is not a readable search.json ({type(err).__name__}); use --force to start over") from None


if __name__ == "__main__":
    common.run(main, BenchmarkError, DataError)
