"""
Stage 2 of RLNAS: search the architecture whose weights moved the furthest from W0.

Loads the trained supernet (Wt) and its initial weights (W0), then runs the SPOS evolutionary
search with the angle between V(a, W0) and V(a, Wt) as fitness (angle.py); the largest angle
wins. No data and no forward pass are needed. --exhaustive scores all 15,625 NB201 cells
instead. An NB201 search also looks its result up in NAS-Bench-201 (the table shipped in
benchmarks/, or --benchmark FILE) and reports the winner's true accuracy and rank, and Kendall's
tau of the angle against the benchmark accuracy (benchmark.py, which also holds the baselines).

Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021,
arXiv:2101.11834, the angle-based evolutionary search step (paper Sec. 3; angle from ABS, Hu et al. 2020,
Algorithm 1). Settings: method.md §5 (RECIPES below, per space; --help lists them); ranking study: method.md §7.5.
The space comes from the checkpoint's supernet_args; --exhaustive, --benchmark and --plot are NB201 only.

    python search.py --ckpt runs/<run>/supernet.pt                         # evolution, prints the winner
    python search.py --ckpt runs/<run>/supernet.pt --exhaustive            # rank all 15,625 cells
    python search.py --ckpt runs/<run>/supernet.pt --benchmark my-table.csv    # another ground truth
    python search.py --ckpt runs/<run>/supernet.pt --resume                # continue an interrupted search
    python search.py --ckpt runs/<darts run>/supernet.pt --max-flops 600   # DARTS: at most 600M multiply-adds
    python search.py --ckpt runs/<mobilenet-run>/supernet.pt --max-flops 475   # MobileNet: method.md §5, FLOPs first

The search is single-process and needs no GPU (method.md pitfall 13); there is no torchrun mode. Only the
--fitness accuracy baseline runs the network (on --device).
"""

from __future__ import annotations

import os
import time

import torch

import benchmark
import common
from angle import VECTORS
from benchmark import BenchmarkError, default_benchmark, load_benchmark
from common import UsageError
from data import DataError
from evolution import evolve, rank, tie_group
from spaces import SPACES
from supernet import str_to_arch

# ----------------------------------------------------------------------------------------------
# The evolution settings per search space (method.md §5); flags left at None take these. NB201: population 100,
# top-30, 50 mutations with p=0.1 never to 'none', 50 crossovers, 20 generations. DARTS (and the SPOS defaults):
# population 50, top-10, 25 mutations, 25 crossovers, 20 generations = 1,000 candidates.
RECIPES = {
    "nb201": dict(population=100, topk=30, mutations=50, crossovers=50, mutation_prob=0.1, generations=20),
    "darts": dict(population=50, topk=10, mutations=25, crossovers=25, mutation_prob=0.1, generations=20),
    # MobileNet: the SPOS settings, p=0.1 per block over the block's own list, and FLOPs <= 475M (the official lookup
    # table; here multiply-adds at the supernet's image size, so 475 binds at 224 px and is moot at 32/64 px)
    "mobilenet": dict(population=50, topk=10, mutations=25, crossovers=25, mutation_prob=0.1, generations=20, max_flops=475.0),
}


def recipe(key: str) -> str:
    """What each space's recipe fills in for a flag left unset, for --help: 'nb201 100, darts 50, mobilenet 50'."""
    return ", ".join(f"{space} {r[key]:g}" for space, r in RECIPES.items() if key in r)


# Config
p = common.Parser(description="Search the architecture with the largest angle (stage 2).")
g = p.add_argument_group("method", "the fitness and the evolution (paper Sec. 3); an unset setting takes the space's recipe")
g.add_argument(
    "--fitness",
    default="angle",
    choices=["angle", "accuracy", "params", "random"],
    help="angle: RLNAS (default); accuracy: one-shot accuracy on held-out real labels after BN recalibration "
    "(Table 1 A/C); params: parameter count, the trivial proxy; random: a seeded random score (random search)",
)
g.add_argument(
    "--vector",
    choices=sorted(VECTORS),
    default="official",
    help="NB201 angle: which parts enter the weight vector; official (default) or an ablation without the stem/head "
    "and/or the reduction blocks (method.md §4.6)",
)
g.add_argument("--exhaustive", action="store_true", help="score all 15,625 NB201 architectures instead of evolving")
g.add_argument(
    "--population", type=common.number(int), default=None, help=f"candidates per generation ({recipe('population')})"
)
g.add_argument("--topk", type=common.number(int), default=None, help=f"elitist archive parents come from ({recipe('topk')})")
g.add_argument("--mutations", type=common.number(int, 0), default=None, help=f"mutants per generation ({recipe('mutations')})")
g.add_argument(
    "--crossovers", type=common.number(int, 0), default=None, help=f"crossovers per generation ({recipe('crossovers')})"
)
g.add_argument(
    "--mutation-prob",
    type=common.fraction,
    default=None,
    help=f"per-gene mutation probability ({recipe('mutation_prob')})",
)
g.add_argument("--generations", type=common.number(int), default=None, help=f"generations ({recipe('generations')})")
g.add_argument(
    "--max-flops",
    type=common.number(float, 0),
    default=None,
    help="only architectures with at most M million multiply-adds (the paper's units: a linear layer counts "
    "(2 in - 1) out) at the supernet's input size, checked before scoring "
    f"({recipe('max_flops')}; method.md §5 uses 600 for DARTS-ImageNet; otherwise no limit)",
)
g.add_argument("--seed", type=common.seed, default=0, help="seed of the evolution (default 0)")
g = p.add_argument_group("data", "the supernet to search, and the images of --fitness accuracy")
g.add_argument("--ckpt", type=common.nonempty, required=True, help="supernet.pt written by train.py (it names its W0 file)")
g.add_argument("--w0", type=common.nonempty, default=None, help="initial weights, if not the supernet_init.pt beside --ckpt")
g.add_argument(
    "--data",
    type=common.nonempty,
    default=None,
    help="--fitness accuracy: dataset directory (default: the one the supernet run read; the dataset's name and split "
    "come from the checkpoint; a path read from a file is only read from, never downloaded into)",
)
g.add_argument(
    "--recal-batches", type=common.number(int), default=20, help="--fitness accuracy: BN recalibration batches (20)"
)
g.add_argument(
    "--eval-images", type=common.number(int, 0), default=5000, help="--fitness accuracy: held-out images (5000; 0 = all)"
)
g.add_argument("--batch-size", type=common.number(int), default=256, help="--fitness accuracy: batch size (256)")
g = p.add_argument_group("report", "what is printed and written beside the result")
g.add_argument(
    "--benchmark",
    default=None,
    help="NAS-Bench-201 CSV, plain or .gz (ArchitectureString + accuracy columns) to report against "
    "(default: the shipped benchmarks/nb201_accuracy.csv.gz)",
)
g.add_argument(
    "--plot",
    action="store_true",
    help="write PNG plots beside search.json (needs matplotlib, optional): fitness vs benchmark accuracy, "
    "and tau vs epoch when train.py ran with --track-tau",
)
g.add_argument("--top", type=common.number(int), default=10, help="how many architectures to print (10)")
g = p.add_argument_group("run and resume")
g.add_argument("--out", type=common.nonempty, default=None, help="where to write search.json (default: beside --ckpt)")
g.add_argument("--resume", action="store_true", help="continue the search recorded in --out")
g.add_argument("--force", action="store_true", help="overwrite an existing search.json")
g = p.add_argument_group("speed")
g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="--fitness accuracy: device")

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
    "vector",
)


def tie_key(arch):
    """NB201's tie rule (supernet.tie_key), kept here for bench.py."""
    return SPACES["nb201"].tie_key(arch)


def make_fitness(args, space, w0: dict, wt: dict, net_args: dict, ckpt: dict):
    """The batched fitness the evolution maximises: list of archs -> list of floats."""
    if args.fitness == "angle":
        # RLNAS: the angle. One pass over both state_dicts, then any angle is a handful of sums (angle.py).
        try:
            scorer = space.scorer(w0, wt, net_args, vector=args.vector)  # --vector: which parts enter V (method.md §4.6)
        except ValueError as err:
            raise UsageError(f"--vector: {err}") from None
        return lambda archs: scorer.angles(archs).tolist()
    # the baselines the angle is compared with (paper Table 1), in benchmark.py
    if args.fitness == "params":
        return benchmark.params_fitness(space, net_args)
    if args.fitness == "random":
        return benchmark.random_fitness(args.seed)
    import train  # the checkpoint's data settings are checked against train.py's own flags (sizes bounded)

    common.check_config(ckpt["config"], train.p, args.ckpt)
    device = common.resolve_device(args.device)
    if args.data is None and ckpt["config"]["dataset"] != "fake":
        print(f"search.py: {ckpt['config']['dataset']} read from {ckpt['config']['data']}, the supernet run's --data "
              "(override with --data)")  # fmt: skip
    return benchmark.OneShotAccuracy(
        space, wt, net_args, ckpt["config"], device, args.data, args.recal_batches, args.eval_images, args.batch_size
    )


def output_path(args) -> str:
    """supernet.pt -> search.json beside it; a snapshot supernet_ep10.pt -> search_supernet_ep10.json."""
    stem = os.path.splitext(os.path.basename(args.ckpt))[0]
    out = args.out or os.path.join(
        os.path.dirname(args.ckpt) or ".", "search.json" if stem == "supernet" else f"search_{stem}.json"
    )
    if os.path.exists(out) and not (args.resume or args.force):  # before any work: nothing is overwritten silently
        raise UsageError(
            f"{out} already exists: pass --resume to continue that search, --force to overwrite it, or --out FILE"
        )
    common.check_writable(out, "--out")  # a directory, a file on the way or a read-only place fails now, not at the end
    return out


def flops_constraint(args, space, net_args):
    """--max-flops as the evolution's constraint (None without it), after checking that it can apply."""
    if args.max_flops is None:
        return None
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
        # RLNAS: the FLOPs filter runs BEFORE the angle (method.md §5, pitfall 8); evolve() calls it on every candidate
        return space.flops(arch, net_args) <= limit

    return constraint


def load_supernet_pair(path: str, w0_path: str | None):
    """(W0 state, Wt state, supernet args) from a train.py checkpoint, checked against each other.

    W0 is the file the checkpoint names, read from beside the checkpoint only (never a path taken from the file), or
    --w0 as the user gave it. The supernet description is bounded (common.check_checkpoint) before it is built, and
    then built on the meta device only: shapes, no memory.
    """
    ckpt = common.check_checkpoint(common.load_checkpoint(path, "supernet checkpoint"), path, "supernet")
    args = dict(ckpt["supernet_args"])
    if args.get("space") not in SPACES:
        raise UsageError(f"{path} is a {args.get('space')!r} supernet; this search knows {', '.join(SPACES)}")
    space = SPACES[args["space"]]
    if not set(space.ckpt_keys) <= set(args):
        raise UsageError(f"{path} does not describe its supernet (supernet_args {args}); the file is damaged or edited")
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in space.supernet(args).state_dict().items()}
    except (TypeError, ValueError, KeyError, RuntimeError, IndexError, AttributeError) as err:
        raise UsageError(f"{path} describes a supernet that cannot be built ({err}); the file is damaged or edited") from None
    if {k: tuple(v.shape) for k, v in ckpt["model"].items()} != expected:
        raise UsageError(
            f"{path} does not hold the weights of the supernet it describes {args}; the file is damaged or edited"
        )
    # check_checkpoint refused a 'file' with a directory in it: this is a name beside the checkpoint
    w0_path = w0_path or os.path.join(os.path.dirname(path), ckpt["w0"]["file"])
    init = common.check_checkpoint(common.load_checkpoint(w0_path, "initial weights (W0)"), w0_path, "init")
    if {k: tuple(v.shape) for k, v in init["model"].items()} != expected:
        raise UsageError(f"{w0_path} is not the initial weights of a supernet of the same shape {args}")
    if common.state_fingerprint(init["model"]) != ckpt["w0"]["fingerprint"]:
        raise UsageError(
            f"{w0_path} is not the W0 of {path} (fingerprint differs): the angle needs the run's own initial weights"
        )
    return init["model"], ckpt["model"], args, ckpt


def main():
    args = p.parse_args()
    out = output_path(args)
    t_start = time.time()
    w0, wt, net_args, ckpt = load_supernet_pair(args.ckpt, args.w0)
    space = SPACES[net_args["space"]]
    common.fill_defaults(args, RECIPES.get(space.name, RECIPES["darts"]))  # method.md §5 settings of this space
    if space.name != "nb201" and (args.exhaustive or args.benchmark or args.plot):
        raise UsageError("--exhaustive, --benchmark and --plot need the NB201 space (15,625 cells, the NB201 benchmark)")
    constraint = flops_constraint(args, space, net_args)
    if not args.exhaustive:  # a first generation larger than the space would draw for minutes, then fail
        common.check_population(args.population, space.gene_choices(net_args))
    # The ground truth to report against: --benchmark FILE, else the table shipped for this space (NB201 only).
    bench_file = args.benchmark or default_benchmark(space.name)
    bench = load_benchmark(bench_file, str_to_arch) if bench_file else None

    # ------------------------------------------------------------------------------------------
    # RLNAS: the fitness, the angle (or one of the baselines it is compared with).
    fitness = make_fitness(args, space, w0, wt, net_args, ckpt)
    t_load = time.time() - t_start
    # settings left at their neutral value are not recorded, so older search.json files still resume
    unset = {"max_flops": None, "vector": "official"}
    settings = {k: getattr(args, k) for k in SEARCH_KEYS if k not in unset or getattr(args, k) != unset[k]}
    ident = {"ckpt": os.path.abspath(args.ckpt), "ckpt_epoch": ckpt["epoch"], "ckpt_fingerprint": common.state_fingerprint(wt)}
    memo = load_previous(out, settings, ident, space) if args.resume else {}
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    print(f"loaded {args.ckpt} (epoch {ckpt['epoch']}) and its W0 in {t_load:.2f}s | supernet {net_args}")
    mode = "exhaustive" if args.exhaustive else "evolution"
    state = {"settings": settings, **ident, "supernet_args": net_args, "mode": mode}

    t0 = time.time()
    if args.exhaustive:
        archs = space.all_archs(net_args)
        scores = dict(zip(archs, fitness(archs)))
        print(f"scored all {len(archs):,} architectures in {time.time() - t0:.3f}s")
    else:

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
            common.STOP["resume"] = f"python search.py --ckpt {args.ckpt} --out {out} --resume (and the same flags)"

        try:
            # RLNAS: the SPOS evolution (evolution.py), maximising the fitness
            result = evolve(
                space.gene_choices(net_args),
                fitness,
                population=args.population,
                topk=args.topk,
                mutations=args.mutations,
                crossovers=args.crossovers,
                mutation_prob=args.mutation_prob,
                generations=args.generations,
                mutation_choices=space.mutation_choices(net_args),  # NB201: never mutate into 'none' (method.md §5)
                crossover_first=space.name == "mobilenet",  # the official MobileNet loop: population - #crossovers mutants
                constraint=constraint,
                repair=space.repair,
                tie_key=space.tie_key,
                tie_tol=TIE_TOL,
                seed=args.seed,
                memo=memo,
                on_generation=on_generation,
            )
        except ValueError as err:  # only the evolution's own two messages about its inputs; anything else is a bug
            if "initial architectures" in str(err):
                flag = f"--max-flops {args.max_flops:g}" if constraint is not None else f"--population {args.population}"
                fix = "raise --max-flops" if constraint is not None else "pass a smaller --population"
                raise UsageError(
                    f"{flag}: too few architectures to fill the initial population of {args.population}; {fix}"
                ) from None
            if "fitness is NaN" in str(err):
                raise UsageError(f"--fitness {args.fitness}: {err}; the checkpoint's weights cannot rank it") from None
            raise
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
    print_top(args, space, net_args, bench, scores, ordered, group)
    report = benchmark.benchmark_report(bench, winner, group, scores, ordered, space.format) if bench else {}
    state["benchmark"] = report
    done = args.generations if not args.exhaustive else 1
    archive = ordered[: max(args.topk, args.top)]
    write_state(out, state, scores, archive, done, space, done=True, winner=winner, group=group)
    print(f"wrote {out} ({time.time() - t_start:.2f}s in all)")
    if args.plot:
        log = os.path.join(os.path.dirname(args.ckpt) or ".", "log.jsonl")  # train.py's log: tau per epoch
        benchmark.plot(os.path.dirname(out) or ".", args.fitness, log, bench, scores, winner, report)


def print_top(args, space, net_args, bench, scores, ordered, group) -> None:
    """The top --top architectures (with their benchmark accuracies), then the winner and its tie group."""
    winner, cols = ordered[0], list(bench.acc) if bench else []
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


# ----------------------------------------------------------------------------------------------
# BOILERPLATE: search.json, the search's state, rewritten after every generation so that --resume can replay it


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
    prev = common.load_json(out, "search state")  # a missing, binary or damaged file is one line
    if prev.get("ckpt_fingerprint") != ident["ckpt_fingerprint"]:
        raise UsageError(f"{out} belongs to another checkpoint; use --out FILE or --force to start over")
    if prev.get("settings") != settings:
        raise UsageError(f"{out} was made with other settings {prev.get('settings')}; use the same flags or --force")
    try:
        return {space.parse(a): float(s) for a, s in prev["evaluated"]}
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise UsageError(f"{out} is not a readable search.json ({type(err).__name__}); use --force to start over") from None


if __name__ == "__main__":
    common.run(main, BenchmarkError, DataError)
