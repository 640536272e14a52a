"""
Stage 2 of RLNAS: search the architecture whose weights moved the furthest from W0.

Loads the trained supernet (Wt) and its initial weights (W0), then runs the SPOS evolutionary search with the angle
between V(a, W0) and V(a, Wt) as fitness (angle.py); the largest angle wins. No data and no forward pass are needed.
--exhaustive scores all 15,625 NB201 cells instead. An NB201 search also looks its result up in NAS-Bench-201 (the
table shipped in benchmarks/, or --benchmark FILE): the winner's true accuracy and rank, and Kendall's tau of the
angle against the benchmark accuracy (benchmark.py, which also holds the baselines).

Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021, arXiv:2101.11834, the angle-based
evolutionary search step (paper Sec. 3; angle from ABS, Hu et al. 2020, Algorithm 1). Settings: method.md §5
(RECIPES below, per space); ranking study: method.md §7.5. The space comes from the checkpoint's supernet_args.

Read from here to main(): the fitness (make_fitness), then main(), whose loop runs the evolution (evolution.py) one
generation at a time. Below the divider: search.json (written after every generation, for --resume), the report.

    python search.py --ckpt runs/<run>/supernet.pt                         # evolution, prints the winner
    python search.py --ckpt runs/<run>/supernet.pt --exhaustive            # rank all 15,625 cells
    python search.py --ckpt runs/<run>/supernet.pt --resume                # continue an interrupted search
    python search.py --ckpt runs/<darts run>/supernet.pt --max-flops 600   # DARTS: at most 600M multiply-adds
    python search.py --ckpt runs/<mobilenet-run>/supernet.pt --max-flops 475   # MobileNet: method.md §5, FLOPs first

The search is single-process and needs no GPU (method.md pitfall 13); there is no torchrun mode. Only the
--fitness accuracy baseline runs the network (on --device).
"""

from __future__ import annotations

import cli  # first: a Ctrl-C while torch loads is one line, not a traceback

# isort: split

import math
import os
import time

import benchmark
import checkpoint
import distributed
import files
import rundir
from angle import VECTORS
from benchmark import default_benchmark, load_benchmark
from cli import UsageError
from evolution import generations, rank, tie_group
from spaces import SPACES
from supernet import str_to_arch

# ----------------------------------------------------------------------------------------------
# The evolution settings per search space (method.md §5); flags left at None take these. NB201: population 100,
# top-30, 50 mutations with p=0.1 never to 'none', 50 crossovers, 20 generations. DARTS (and the SPOS defaults):
# population 50, top-10, 25 mutations, 25 crossovers, 20 generations = 1,000 candidates. MobileNet: the SPOS
# settings, p=0.1 per block over the block's own list, and FLOPs <= 475M (the official lookup table; here
# multiply-adds at the supernet's image size, so 475 binds at 224 px and is moot at 32/64 px).
RECIPES = {
    "nb201": dict(population=100, topk=30, mutations=50, crossovers=50, mutation_prob=0.1, generations=20),
    "darts": dict(population=50, topk=10, mutations=25, crossovers=25, mutation_prob=0.1, generations=20),
    "mobilenet": dict(population=50, topk=10, mutations=25, crossovers=25, mutation_prob=0.1, generations=20, max_flops=475.0),
}

# Config: one flag per line. An evolution setting left unset takes the space's recipe (--help lists them).
# fmt: off
p = cli.Parser(prog="search.py", description="Search the architecture with the largest angle (stage 2).")
g = p.add_argument_group("method", "the fitness and the evolution (paper Sec. 3); an unset setting takes the space's recipe")
g.add_argument("--fitness", default="angle", choices=["angle", "accuracy", "params", "random"], help="angle: RLNAS (default); accuracy: one-shot accuracy on held-out real labels after BN recalibration (Table 1 A/C); params: parameter count, the trivial proxy; random: a seeded random score (random search)")
g.add_argument("--vector", choices=sorted(VECTORS), default="official", help="NB201 angle: which parts enter the weight vector; official (default) or an ablation without the stem/head and/or the reduction blocks (method.md §4.6)")
g.add_argument("--exhaustive", action="store_true", help="score all 15,625 NB201 architectures instead of evolving")
g.add_argument("--population", type=cli.number(int), default=None, help="candidates per generation")
g.add_argument("--topk", type=cli.number(int), default=None, help="size of the elitist archive the parents come from")
g.add_argument("--mutations", type=cli.number(int, 0), default=None, help="mutants per generation")
g.add_argument("--crossovers", type=cli.number(int, 0), default=None, help="crossovers per generation")
g.add_argument("--mutation-prob", type=cli.fraction, default=None, help="per-gene mutation probability")
g.add_argument("--generations", type=cli.number(int), default=None, help="generations")
g.add_argument("--max-flops", type=cli.number(float, 0), default=None, help="only architectures with at most M million multiply-adds (the paper's units: a linear layer counts (2 in - 1) out) at the supernet's input size, checked before scoring (method.md §5 uses 600 for DARTS-ImageNet; otherwise no limit)")
g.add_argument("--seed", type=cli.seed, default=0, help="seed of the evolution (default 0)")
g = p.add_argument_group("data", "the supernet to search, and the images of --fitness accuracy")
g.add_argument("--ckpt", type=cli.nonempty, required=True, help="supernet.pt written by train.py (it names its W0 file)")
g.add_argument("--w0", type=cli.nonempty, default=None, help="initial weights, if not the supernet_init.pt beside --ckpt")
g.add_argument("--data", type=cli.nonempty, default=None, help="--fitness accuracy: dataset directory (default: the one the supernet run read; the dataset's name and split come from the checkpoint; a path read from a file is only read from, never downloaded into)")
g.add_argument("--recal-batches", type=cli.number(int), default=20, help="--fitness accuracy: BN recalibration batches (20)")
g.add_argument("--eval-images", type=cli.number(int, 0), default=5000, help="--fitness accuracy: held-out images (5000; 0 = all)")
g.add_argument("--batch-size", type=cli.number(int), default=256, help="--fitness accuracy: batch size (256)")
g = p.add_argument_group("report", "what is printed and written beside the result")
g.add_argument("--benchmark", default=None, help="NAS-Bench-201 CSV, plain or .gz (ArchitectureString + accuracy columns) to report against (default: the shipped benchmarks/nb201_accuracy.csv.gz)")
g.add_argument("--plot", action="store_true", help="write PNG plots beside search.json (needs matplotlib, optional): fitness vs benchmark accuracy, and tau vs epoch when train.py ran with --track-tau")
g.add_argument("--top", type=cli.number(int), default=10, help="how many architectures to print (10)")
g = p.add_argument_group("run and resume")
g.add_argument("--out", type=cli.nonempty, default=None, help="where to write search.json (default: beside --ckpt)")
g.add_argument("--resume", action="store_true", help="continue the search recorded in --out")
g.add_argument("--force", action="store_true", help="replace a search.json that search.py wrote (never another file)")
g = p.add_argument_group("speed")
g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="--fitness accuracy: device")
p.show_recipes(RECIPES)
# fmt: on

TIE_TOL = 1e-9  # angles closer than this are ties (float64 round-off is ~1e-13)


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
    config = ckpt["config"]
    if args.data is None and config.get("dataset") != "fake":
        print(f"search.py: {config.get('dataset')} read from {config.get('data')}, the supernet run's --data (override with --data)")
    device = distributed.resolve_device(args.device)
    return benchmark.OneShotAccuracy(space, wt, net_args, config, device, args.data, args.recal_batches, args.eval_images, args.batch_size)  # noqa: E501


# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    args = p.parse_args(argv)
    out = output_path(args)  # search.json beside --ckpt; only ever over a file search.py wrote (checkpoint.py)
    t_start = time.time()
    # W0 and Wt, checked against each other (the same reader as train.py's resume uses for W0)
    w0, wt, net_args, ckpt = checkpoint.load_supernet(args.ckpt, args.w0, SPACES)
    space = SPACES[net_args["space"]]
    settings = evolution_settings(args, space, net_args)  # the space's recipe for every setting left unset, checked
    bench_file = args.benchmark or default_benchmark(space.name)  # the ground truth to report against: NB201 only
    bench = load_benchmark(bench_file, str_to_arch) if bench_file else None

    # RLNAS: the fitness: the angle (or one of the baselines it is compared with)
    fitness = make_fitness(args, space, w0, wt, net_args, ckpt)
    record = SearchRecord(out, args, space, net_args, ckpt, wt, bench, fitness)  # search.json, rewritten after each generation
    print(f"loaded {args.ckpt} (epoch {ckpt['epoch']}) and its W0 in {time.time() - t_start:.2f}s | supernet {net_args}")

    t0 = time.time()
    if args.exhaustive:
        archs = space.all_archs(net_args)
        scores = dict(zip(archs, fitness(archs)))
        print(f"scored all {len(archs):,} architectures in {time.time() - t0:.3f}s")
    else:
        # RLNAS: the SPOS evolution (evolution.py): score, keep the elitist top-k, breed the next generation
        try:
            for gen in generations(space.gene_choices(net_args), fitness, **settings, **space.evolution(net_args), memo=record.memo):  # noqa: E501
                record.generation(gen, t0)  # its progress line (rate, ETA, best so far), then search.json
        except ValueError as err:  # the evolution's own two: too few archs for generation 0, a NaN fitness
            raise evolution_error(args, settings, err) from None
        scores = gen.evaluated
        print(f"evolution: {len(scores):,} architectures evaluated in {time.time() - t0:.3f}s ({record.reused:,} taken from the interrupted run)")  # noqa: E501

    # The winner: the largest angle; among exact ties (edges that add no weights) the space's tie rule decides.
    ordered = rank(scores, space.tie_key, TIE_TOL)
    group = tie_group(ordered, scores, TIE_TOL)
    record.finish(scores, ordered, group)  # search.json first: a closed or full stdout costs no result
    print_top(args, space, net_args, bench, scores, ordered, group)
    print(f"wrote {out} ({time.time() - t_start:.2f}s in all)")
    if args.plot:
        log = os.path.join(os.path.dirname(args.ckpt) or ".", "log.jsonl")  # train.py's log: tau per epoch
        benchmark.plot(os.path.dirname(out) or ".", args.fitness, log, bench, scores, ordered[0], record.state["benchmark"])


# ==============================================================================================
# Machinery below: not needed to follow the method (the settings' checks, search.json and --resume, the report).
# ==============================================================================================

SEARCH_KEYS = ("fitness", "exhaustive", "population", "topk", "mutations", "crossovers", "mutation_prob", "generations",
               "seed", "max_flops", "vector")  # fmt: skip
MEMORY_PER_CANDIDATE = 1024  # bytes an evaluated candidate costs (its tuple, score, dict slots, its JSON line), measured


def output_path(args) -> str:
    """supernet.pt -> search.json beside it; a snapshot supernet_ep10.pt -> search_supernet_ep10.json. Checked and
    locked before any work (rundir.claim_output): nothing but a search.py result is ever replaced."""
    stem = os.path.splitext(os.path.basename(args.ckpt))[0]
    out = args.out or os.path.join(os.path.dirname(args.ckpt) or ".", "search.json" if stem == "supernet" else f"search_{stem}.json")  # noqa: E501
    rundir.claim_output(out, args.resume, args.force)
    return out


def evolution_settings(args, space, net_args: dict) -> dict:
    """The keywords of evolution.generations(): the space's recipe for every flag left unset (method.md §5), --max-flops
    as the constraint, each checked before any work."""
    cli.fill_defaults(args, RECIPES[space.name])
    if space.name != "nb201" and (args.exhaustive or args.benchmark or args.plot):
        raise UsageError("--exhaustive, --benchmark and --plot need the NB201 space (15,625 cells, the NB201 benchmark)")
    constraint = flops_constraint(args, space, net_args)
    if not args.exhaustive:  # a first generation larger than the space would draw for minutes, then fail
        check_population(args.population, space.gene_choices(net_args))
        need = args.population * args.generations * MEMORY_PER_CANDIDATE
        have = distributed.physical_memory()
        if need > have / 2:
            raise UsageError(f"--population {args.population} x --generations {args.generations} would hold about {need / 2**30:,.1f} GiB of candidates, more than half of this machine's {have / 2**30:.1f} GiB; pass a smaller --population")  # noqa: E501
    keys = ("population", "topk", "mutations", "crossovers", "mutation_prob", "generations", "seed")
    return {**{k: getattr(args, k) for k in keys}, "constraint": constraint, "tie_tol": TIE_TOL}


def check_population(population: int, choices: list[list[int]]) -> None:
    """A first generation of `population` distinct architectures needs a space at least that large (the evolution
    would otherwise draw 1000 x population times before giving up: minutes on NB201, then an error)."""
    size = math.prod(len(c) for c in choices)
    if population > size:
        raise UsageError(f"--population {population} is larger than the search space ({size:,} architectures); pass a smaller --population, or score every architecture with --exhaustive (NB201)")  # noqa: E501


def flops_constraint(args, space, net_args):
    """--max-flops as the evolution's constraint (None without it), after checking that it can apply."""
    if args.max_flops is None:
        return None
    if space.flops is None:
        raise UsageError(f"the {space.name} space has no FLOPs count, so --max-flops cannot apply; drop it")
    if args.exhaustive:
        raise UsageError("--max-flops applies to the evolution, not to --exhaustive")
    limit = args.max_flops * 1e6
    if space.min_flops(net_args) > limit:
        raise UsageError(f"--max-flops {args.max_flops:g}: no {space.name} architecture is that small (the smallest has {space.min_flops(net_args) / 1e6:.3f}M multiply-adds at {space.input_size(net_args)}px); raise --max-flops")  # noqa: E501

    def constraint(arch) -> bool:
        # RLNAS: the FLOPs filter runs BEFORE the angle (method.md §5, pitfall 8); the evolution calls it on every candidate
        return space.flops(arch, net_args) <= limit

    return constraint


def evolution_error(args, settings: dict, err: ValueError) -> UsageError:
    """The evolution's ValueErrors about its inputs, as the flag to change; anything else is a bug: re-raised."""
    if "initial architectures" in str(err):
        limited = settings["constraint"] is not None
        flag = f"--max-flops {args.max_flops:g}" if limited else f"--population {args.population}"
        fix = "raise --max-flops" if limited else "pass a smaller --population"
        return UsageError(f"{flag}: too few architectures to fill the initial population of {args.population}; {fix}")
    if "fitness is NaN" in str(err):
        return UsageError(f"--fitness {args.fitness}: {err}; the checkpoint's weights cannot rank it")
    raise err


class SearchRecord:
    """search.json: the search's settings and the checkpoint it searched, every score, the archive; rewritten after
    every generation so that --resume continues an interrupted search, and marked ("stage": "search") so that only
    search.py ever replaces it. The final one adds the winner, its tie group and the benchmark report."""

    def __init__(self, out: str, args, space, net_args: dict, ckpt: dict, wt: dict, bench, fitness):
        self.out, self.args, self.space, self.bench, self.reused = out, args, space, bench, 0
        unset = {"max_flops": None, "vector": "official"}  # left at their neutral value: not recorded (older files resume)
        settings = {k: getattr(args, k) for k in SEARCH_KEYS if k not in unset or getattr(args, k) != unset[k]}
        self.state = {"stage": rundir.SEARCH_MARK, "settings": settings, "ckpt": os.path.abspath(args.ckpt),
                      "ckpt_epoch": ckpt["epoch"], "ckpt_fingerprint": files.state_fingerprint(wt),
                      "supernet_args": net_args, "mode": "exhaustive" if args.exhaustive else "evolution"}  # fmt: skip
        self.memo = self.load_previous(fitness) if args.resume else {}
        cli.STOP["resume"] = f"python search.py --ckpt {args.ckpt} --out {out} --resume (and the same flags)"

    def load_previous(self, fitness) -> dict:
        """What an interrupted search already scored, after checking that it is the same search (the checkpoint's
        fingerprint, the settings) and that its scores are what this search computes: each architecture once, a
        finite score in the fitness's range, and, for every fitness but the one-shot accuracy (seconds per
        candidate), equal to the score recomputed now (an NB201 angle costs microseconds). An edited score is one
        line, never a winner."""
        if not os.path.lexists(self.out):
            raise UsageError(f"nothing to resume: {self.out} does not exist; drop --resume")
        prev = files.load_json(self.out, "search state")  # a missing, binary or damaged file is one line
        if prev.get("ckpt_fingerprint") != self.state["ckpt_fingerprint"]:
            raise UsageError(f"{self.out} belongs to another checkpoint; use --out FILE or --force to start over")
        if prev.get("settings") != self.state["settings"]:
            raise UsageError(f"{self.out} was made with other settings {cli.shorten(str(prev.get('settings')), 300)}; use the same flags or --force")  # noqa: E501
        low, high = {"angle": (0.0, math.pi), "accuracy": (0.0, 100.0), "random": (0.0, 1.0)}.get(self.args.fitness, (0.0, math.inf))  # noqa: E501
        memo = {}
        try:
            for text, score in prev["evaluated"]:
                arch = self.space.parse(text)
                if arch in memo:
                    raise ValueError(f"{cli.shorten(text, 80)} is listed twice")
                if type(score) not in (int, float) or not low <= score <= high:
                    raise ValueError(f"{cli.shorten(text, 80)} has the score {score!r}, outside {low:g}..{high:g}")
                memo[arch] = float(score)
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            raise UsageError(f"{self.out} is not a search.json this search wrote ({cli.shorten(str(err), 200)}); use --force to start over") from None  # noqa: E501
        if self.args.fitness != "accuracy" and memo:
            for (arch, saved), now in zip(memo.items(), fitness(list(memo))):
                if not abs(saved - now) <= 1e-9 * max(1.0, abs(now)):
                    raise UsageError(f"{self.out} was edited: it gives {self.space.format(arch)} the score {saved!r}, this checkpoint {now!r}; use --force to start over")  # noqa: E501
        self.reused = len(memo)
        return memo

    def generation(self, gen, t0: float) -> None:
        """One generation: its progress line, then search.json rewritten."""
        args, best = self.args, gen.archive[0]
        rate = len(gen.evaluated) / max(time.time() - t0, 1e-9)
        eta = (args.generations - gen.index - 1) * (time.time() - t0) / (gen.index + 1)
        digits = 0 if rate >= 10 else 2  # the one-shot accuracy fitness runs below 1 candidate/s
        line = (f"gen {gen.index + 1:2d}/{args.generations} | {len(gen.evaluated):5d} evaluated | {rate:,.{digits}f} archs/s"
                f" | ETA {cli.format_time(eta)} | best {gen.evaluated[best]:.6f} {self.space.format(best)}")  # fmt: skip
        if self.bench is not None and len(gen.evaluated) > 1:
            col = next(iter(self.bench.acc))
            line += f" | tau({col}) {self.bench.tau(gen.evaluated, col):+.3f}"
        print(line)
        self.write(gen.evaluated, gen.archive, gen.index + 1, done=False)

    def finish(self, scores: dict, ordered: list, group: list) -> None:
        fmt, winner = self.space.format, ordered[0]
        self.state["benchmark"] = benchmark.benchmark_report(self.bench, winner, group, scores, ordered, fmt) if self.bench else {}  # noqa: E501
        self.state["winner"] = {"arch": fmt(winner), "score": scores[winner], "tie_group": [fmt(a) for a in group]}
        done = 1 if self.args.exhaustive else self.args.generations
        self.write(scores, ordered[: max(self.args.topk, self.args.top)], done, done=True)

    def write(self, scores: dict, archive: list, generations_done: int, done: bool) -> None:
        fmt = self.space.format
        state = dict(self.state, generations_done=generations_done, done=done, evaluated=[[fmt(a), s] for a, s in scores.items()],
                     archive=[[fmt(a), scores[a]] for a in archive])  # fmt: skip
        if not done:
            state.pop("winner", None)
            state.pop("benchmark", None)
        files.atomic_write_json(state, self.out)


def print_top(args, space, net_args, bench, scores, ordered, group) -> None:
    """The top --top architectures (with their benchmark accuracies), then the winner and its tie group."""
    winner, cols = ordered[0], list(bench.acc) if bench else []
    unit = " (radians)" if args.fitness == "angle" else ""
    print(f"\ntop {min(args.top, len(ordered))} by {args.fitness}{unit}, larger is better:")
    print(f"{'#':>3} {args.fitness:>10}  " + "".join(f"{c:>16}" for c in cols) + "  architecture")
    for i, a in enumerate(ordered[: args.top]):
        accs = "".join(f"{bench.accuracy(a, c):16.2f}" if a in bench.index else f"{'n/a':>16}" for c in cols) if bench else ""
        print(f"{i + 1:3d} {scores[a]:10.6f}  {accs}  {space.format(a)}")
    flops = f"  {space.flops(winner, net_args) / 1e6:.1f}M multiply-adds" if space.flops is not None else ""
    print(f"\nwinner: {space.format(winner)}  {args.fitness} {scores[winner]:.6f}{flops}  tie group of {len(group)} "
          f"(scores within {TIE_TOL:g}; ties broken by the space's rule, docs/method.md §5.1)")  # fmt: skip


def tie_key(arch):
    """NB201's tie rule (supernet.tie_key), kept here for bench.py."""
    return SPACES["nb201"].tie_key(arch)


if __name__ == "__main__":
    cli.run(main)
