"""SPOS-style evolutionary search over a fixed-length integer encoding: the search step of RLNAS.

The second step of RLNAS: an evolutionary search over the supernet's sub-networks, with the angle between each
candidate's weights at initialisation and after training as fitness (angle.py). It knows nothing about networks: an
architecture is a tuple of ints, one gene per decision (6 op indices for NAS-Bench-201, 28 for the DARTS space, 21
block choices for MobileNet), and the fitness is a function of a batch of such tuples.

Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021, arXiv:2101.11834, the search step
(method.md §5: the official settings per space). The evolution is that of "Single Path One-Shot Neural Architecture
Search with Uniform Sampling", Guo et al., ECCV 2020, arXiv:1904.00420 (its search.py, which the official RLNAS
scripts copy); the deliberate differences from it are marked "SPOS:" below.

Read from here to generations(), the loop (score, select, breed), and evolve(), which runs it to the end. Below the
divider: the guard that stops the official loops' endless draws on an exhausted space, and the settings checks.

    from evolution import evolve
    result = evolve([[0, 1, 2, 3, 4]] * 6, fitness, mutation_choices=[[1, 2, 3, 4]] * 6, seed=0)
    winner = result.archive[0]          # largest fitness; result.evaluated holds every score
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Iterator

import numpy as np

Arch = tuple[int, ...]  # one value per gene; hashable, so it is the key of every score dictionary


# ------------------------------------------------------------
# Candidate generators (one candidate per call; all randomness from the caller's rng)
# ------------------------------------------------------------


def _random_arch(choices: list[list[int]], rng: np.random.Generator) -> Arch:
    # RLNAS: every gene uniform over its allowed values. For NB201 this may draw a disconnected
    # cell (angle 0); the official search keeps those in the population too (method.md pitfall 8).
    idx = rng.integers(0, [len(values) for values in choices])  # one index per gene, in a single draw
    return tuple(values[i] for values, i in zip(choices, idx.tolist()))


def _mutate(parent: Arch, mutation_choices: list[list[int]], prob: float, rng: np.random.Generator) -> Arch:
    # EXERCISE 6 BEGIN: resample each gene with probability `prob` from its `mutation_choices`, all draws from `rng`
    #   read: paper, method step 2 (evolutionary search, from SPOS); method.md §5 and pitfall 8; details.md detail 8
    #   graded: python make_assignment.py --grade 6   (tests/test_evolution.py)
    # RLNAS/SPOS mutation: each gene is resampled with probability `prob` from `mutation_choices`.
    # NB201 passes [1..4] there, so a mutation never writes `none` (the official randint(1, 5)):
    # mutating into `none` mostly produces disconnected or shrunken cells.
    flip = rng.random(len(parent)) < prob
    idx = rng.integers(0, [len(values) for values in mutation_choices])  # drawn for every gene, used where flipped
    return tuple(values[i] if f else gene for gene, values, i, f in zip(parent, mutation_choices, idx.tolist(), flip))
    # EXERCISE 6 END


def _crossover(mother: Arch, father: Arch, rng: np.random.Generator) -> Arch:
    # EXERCISE 6 BEGIN: uniform crossover: each gene from the mother or the father with probability 1/2, drawn from `rng`
    #   read: paper, method step 2 (evolutionary search, from SPOS); method.md §5
    # RLNAS/SPOS crossover: uniform, each gene taken from either parent with probability 1/2.
    take_mother = rng.random(len(mother)) < 0.5
    return tuple(m if t else f for m, f, t in zip(mother, father, take_mother))
    # EXERCISE 6 END


# ------------------------------------------------------------
# The evolutionary loop
# ------------------------------------------------------------


@dataclass
class Generation:
    """What generations() yields after each generation is scored (search.py logs it and writes search.json)."""

    index: int  # 0-based
    candidates: list[Arch]  # scored (or taken from memo) this generation, in order
    archive: list[Arch]  # the elitist top-k archive after this generation, ranked
    evaluated: dict[Arch, float]  # every arch scored so far (insertion order = evaluation order)
    made: dict[str, int] = field(default_factory=dict)  # how the candidates were made: mutation, crossover, random


def generations(
    choices: list[list[int]],
    fitness: Callable[[list[Arch]], Iterable[float]],
    *,
    population: int = 100,
    topk: int = 30,
    mutations: int = 50,
    crossovers: int = 50,
    mutation_prob: float = 0.1,
    generations: int = 20,
    mutation_choices: list[list[int]] | None = None,
    crossover_first: bool = False,
    constraint: Callable[[Arch], bool] | None = None,
    repair: Callable[[Arch], Arch] | None = None,
    tie_key: Callable[[Arch], Hashable] | None = None,
    tie_tol: float = 1e-9,
    seed: int = 0,
    memo: dict[Arch, float] | None = None,
) -> Iterator[Generation]:
    """Maximise `fitness` over archs whose gene g takes values in `choices[g]`, one Generation yielded per generation;
    the defaults are RLNAS's NB201 settings (method.md §5). evolve() runs it to the end.

    fitness(list of archs) -> one float per arch, larger is better; called once per generation, with only the archs
    never scored before and not in `memo` (arch -> score of an interrupted search of the same seed and settings: the
    run replays the same trajectory). constraint(arch) -> bool rejects a candidate before it is scored; repair(arch)
    fixes every new candidate first. A generation after the first is built as the official loop of the space does:
    crossover_first=False (NB201, DARTS): `mutations` mutants, then `crossovers` children from at most
    10 x (crossovers + 1) draws, then random archs up to `population`; crossover_first=True (MobileNet): the
    children first (1000 draws each), then population - #children mutants, then random archs (_offspring).
    """
    choices, mutation_choices = _check_settings(choices, mutation_choices, population, topk, generations, mutations,
                                                crossovers, mutation_prob)  # fmt: skip
    # All randomness comes from this one local generator (no global seeding, STYLE point 10). The fitness never
    # touches it, so the trajectory is a pure function of the seed and the scores: a resumed run replays it.
    rng = np.random.default_rng(seed)
    memo = {} if memo is None else {tuple(arch): float(score) for arch, score in memo.items()}
    gate = _Gate(len(choices), repair, constraint)  # repair, then no duplicates, then the FLOPs limit
    evaluated: dict[Arch, float] = {}
    archive: list[Arch] = []

    # RLNAS: generation 0 is `population` uniform random archs (the official loops draw until they have them; an
    # impossible constraint or too small a space fails here with a message instead of hanging: _random_fill).
    candidates = _random_fill(choices, population, gate, rng, tries=None)
    if len(candidates) < population:
        raise ValueError(f"evolve: only {len(candidates)} of {population} initial architectures found: no architecture "
                         "meets the constraint, or the search space is smaller than the population")  # fmt: skip
    made = {"mutation": 0, "crossover": 0, "random": len(candidates)}

    for index in range(generations):
        # ---- score: one batched fitness call for what neither this run nor the memo has scored. SPOS scores each
        # candidate as soon as it is generated; batching changes nothing in the trajectory (parents only come from
        # the archive, updated once per generation) and lets the angle of the whole generation be one computation.
        evaluated.update(_score(candidates, memo, fitness))

        # ---- select: RLNAS/SPOS keep an ELITIST top-k archive across generations. Merging the old archive with the
        # new candidates means the best arch found so far is never lost to an unlucky generation, and parents are
        # always drawn from the best `topk` seen so far.
        archive = rank({arch: evaluated[arch] for arch in archive + candidates}, tie_key, tie_tol)[:topk]
        yield Generation(index, list(candidates), list(archive), dict(evaluated), dict(made))
        # SPOS builds the next offspring at the end of every iteration, the last one included, and scores them while
        # building, so that last batch is scored but never selected from. Stopping here keeps the budget at
        # population x generations (2,000 on NB201).
        if index == generations - 1:
            break

        # ---- reproduce: mutants and crossovers of parents drawn uniformly from the archive, then random archs.
        def mutant() -> Arch:
            return _mutate(archive[rng.integers(len(archive))], mutation_choices, mutation_prob, rng)

        def child() -> Arch:
            return _crossover(archive[rng.integers(len(archive))], archive[rng.integers(len(archive))], rng)

        mutants, children = _offspring(mutant, child, archive, mutation_choices, mutation_prob, gate, rng, population,
                                       mutations, crossovers, crossover_first)  # fmt: skip
        candidates = mutants + children  # the official order of the list, in both loops
        randoms = _random_fill(choices, population - len(candidates), gate, rng, tries=1000 * population if crossover_first else None)  # noqa: E501
        candidates += randoms
        made = {"mutation": len(mutants), "crossover": len(children), "random": len(randoms)}
        if not candidates:  # every reachable arch has been visited: the space is exhausted
            break


@dataclass
class Result:
    archive: list[Arch]  # final ranked top-k archive; archive[0] is the winner
    evaluated: dict[Arch, float]  # every arch the trajectory scored, memo hits included, in trajectory order
    generations: int  # generations actually run (fewer than asked if the space ran out)


def evolve(choices, fitness, *, on_generation: Callable[[Generation], None] | None = None, **settings) -> Result:
    """generations() run to its end; on_generation(gen) after each generation. Returns the final archive."""
    for gen in generations(choices, fitness, **settings):
        if on_generation is not None:
            on_generation(gen)
    return Result(archive=gen.archive, evaluated=gen.evaluated, generations=gen.index + 1)


# ------------------------------------------------------------
# Ranking: sort by fitness, with a deterministic rule for (near-)ties
# ------------------------------------------------------------


def rank(scores: dict[Arch, float], tie_key: Callable[[Arch], Hashable] | None = None, tol: float = 1e-9) -> list[Arch]:
    """Archs sorted by score, best (largest) first; scores within `tol` of a group's top are tied.

    Ties are common in RLNAS: every disconnected NB201 cell has angle exactly 0 (method.md pitfall 7), and
    float noise can separate two archs whose weight vectors are equal. Walking the descending list, a
    new tie group starts when a score is more than `tol` below the FIRST (highest) score of the
    current group; inside a group archs are ordered by `tie_key(arch)` ascending (default: the tuple),
    with the tuple as a last resort, so the result depends only on the dict's content, never on its
    insertion order. That is what lets a resumed search retrace the same trajectory.
    """
    if any(math.isnan(s) for s in scores.values()):
        raise ValueError("rank: a score is NaN, so the order would be arbitrary")
    key = tie_key if tie_key is not None else (lambda arch: arch)
    # Descending by score; the tuple breaks exact ties only so that this first pass is deterministic.
    ordered = sorted(scores, key=lambda arch: (-scores[arch], arch))
    groups: list[list[Arch]] = []
    for arch in ordered:
        # "first - s > tol" rather than "s < first - tol": identical for finite scores, and two -inf stay tied.
        if not groups or scores[groups[-1][0]] - scores[arch] > tol:
            groups.append([arch])
        else:
            groups[-1].append(arch)
    return [arch for group in groups for arch in sorted(group, key=lambda arch: (key(arch), arch))]


# ==============================================================================================
# Machinery below: not needed to follow the method. The exhaustion guard (where the official loop would draw
# forever on an exhausted space), the gate every candidate passes, the settings checks.
# ==============================================================================================

# What a candidate generator can produce, for the exhaustion guard: a mixture of product distributions, each a
# weight and one {value: probability} dict per gene (a random arch: one uniform product; a mutant: one per parent).
Mixture = list[tuple[float, list[dict[int, float]]]]

# The exhaustion guard of the official loops that draw until their quota is met (_collect): after STALL misses in
# a row per candidate wanted, the rest is drawn from what the generator can still produce, listed exhaustively when
# it reaches at most ENUMERATE_LIMIT raw archs (NB201's 15,625 and the tests' spaces). A larger reach (DARTS 8^28,
# MobileNet 6^6 7^15) cannot be listed: there the guard takes the space as exhausted. Measured on tiny checkpoints
# with the default settings, the longest run of misses is 172-386 (NB201, quota 50) and 2 (DARTS, quota 25).
STALL = 100
ENUMERATE_LIMIT = 1_000_000


def tie_group(ordered: list[Arch], scores: dict[Arch, float], tol: float = 1e-9) -> list[Arch]:
    """The winner's tie group: the leading archs of a `rank`ed list that score within `tol` of its best score."""
    if not ordered:
        return []
    # Inside a group tie_key decides the order, so ordered[0] need not hold the group's highest score: use the max.
    top = max(scores[arch] for arch in ordered)
    group = []
    for arch in ordered:
        if top - scores[arch] > tol:
            break
        group.append(arch)
    return group


def _uniform(values: list[int]) -> dict[int, float]:
    # what one gene of _random_arch holds (and one resampled gene of _mutate): a uniform draw from `values`
    dist: dict[int, float] = {}
    for v in values:
        dist[v] = dist.get(v, 0.0) + 1.0 / len(values)
    return dist


def _mutated_gene(gene: int, values: list[int], prob: float) -> dict[int, float]:
    # what _mutate writes into one gene: the parent's value with probability 1 - prob, else a uniform draw from `values`
    dist = {gene: 1.0 - prob}
    for v, p in _uniform(values).items():
        dist[v] = dist.get(v, 0.0) + prob * p
    return {v: p for v, p in dist.items() if p > 0}


def _collect(
    make: Callable[[], Arch],
    quota: int,
    admit: Callable[[Arch], Arch | None],
    *,
    tries: int | None = None,
    leftovers: Callable[[int], list[Arch]] | None = None,
) -> list[Arch]:
    """Call `make` until `quota` candidates are admitted; fewer only when `tries` run out or nothing is left.

    tries: the official loop's bound on draws (crossovers; every MobileNet generator); it may then come back short.
    tries=None: the official loop draws until the quota is met (NB201 and DARTS mutants, the random fill), which
    would spin forever on an exhausted space. The guard: after STALL * quota misses in a row, `leftovers(n)` draws
    the rest from what `make` can still produce, and comes back short only when that is exhausted.
    """
    found: list[Arch] = []
    draws = misses = 0
    while len(found) < quota and (tries is None or draws < tries):
        draws += 1
        arch = admit(make())
        if arch is not None:
            found.append(arch)
            misses = 0
            continue
        misses += 1
        if tries is None and misses >= STALL * quota:
            return found + (leftovers(quota - len(found)) if leftovers is not None else [])
    return found


def _leftovers(reach: Mixture, n: int, gate: _Gate, rng: np.random.Generator) -> list[Arch]:
    """Up to n candidates drawn one after the other from `reach` restricted to the archs not visited yet.

    That is the distribution rejection sampling ends up drawing from, without its wait (with one arch left at a
    probability of 1e-11 per draw, rejection sampling would need some 10^11 draws to find it). Comes back short
    only when nothing is left (the space, or its admissible part, is exhausted); empty when `reach` has more than
    ENUMERATE_LIMIT raw archs to list (then, after STALL misses per candidate wanted, exhaustion is presumed).
    """
    if sum(math.prod(len(gene) for gene in genes) for _, genes in reach) > ENUMERATE_LIMIT:
        return []
    left: dict[Arch, float] = {}  # arch -> probability that the generator makes it (repair can merge raw archs)
    for weight, genes in reach:
        for combo in itertools.product(*(gene.items() for gene in genes)):
            arch = gate.fix(tuple(v for v, _ in combo))
            if arch not in gate.visited:
                left[arch] = left.get(arch, 0.0) + weight * math.prod(p for _, p in combo)
    archs, probs = list(left), np.array(list(left.values()), dtype=np.float64)
    found: list[Arch] = []
    while len(found) < n and probs.sum() > 0:
        i = int(rng.choice(len(archs), p=probs / probs.sum()))
        probs[i] = 0.0  # drawn: visited from now on, whether the constraint admits it or not
        arch = gate.accept(archs[i])
        if arch is not None:
            found.append(arch)
    return found


def _mutant_reach(archive: list[Arch], mutation_choices: list[list[int]], prob: float) -> Mixture:
    # what _mutate can make from a parent drawn uniformly from the archive: one product distribution per parent
    genes = [[_mutated_gene(g, values, prob) for g, values in zip(p, mutation_choices)] for p in archive]
    return [(1.0 / len(archive), per_gene) for per_gene in genes]


class _Gate:
    """What every new candidate passes before it is scored: repair, then the duplicate and constraint checks."""

    def __init__(self, n_genes: int, repair=None, constraint=None):
        self.n_genes, self.repair, self.constraint = n_genes, repair, constraint
        self.visited: set[Arch] = set()  # SPOS's vis_dict: every arch generated so far, scored or rejected

    def fix(self, arch: Arch) -> Arch:
        # RLNAS: repair first (the DARTS space maps any draw to a valid genotype), then the checks
        # run on the arch that would actually be scored.
        if self.repair is None:
            return arch
        arch = tuple(self.repair(arch))
        assert len(arch) == self.n_genes, f"repair returned {len(arch)} genes, expected {self.n_genes}"
        return arch

    def accept(self, arch: Arch) -> Arch | None:
        # RLNAS: skip duplicates. Scoring an arch twice would waste budget (2,000 of 15,625 on NB201)
        # and, worse, put two copies into the archive, crowding out other parents.
        if arch in self.visited:
            return None
        self.visited.add(arch)
        # RLNAS: the FLOPs limit is checked BEFORE the angle (method.md pitfall 8): a too-large arch must never
        # enter the archive, and scoring it would only waste time. A rejected arch stays visited,
        # so an expensive constraint is never evaluated twice on it either.
        if self.constraint is not None and not self.constraint(arch):
            return None
        return arch

    def admit(self, arch: Arch) -> Arch | None:
        return self.accept(self.fix(arch))


def _check_settings(choices, mutation_choices, population, topk, generations, mutations, crossovers, mutation_prob):
    """The gene values as lists of ints (mutation_choices defaults to choices); ValueError for impossible settings."""
    choices = [[int(v) for v in values] for values in choices]
    mutation_choices = choices if mutation_choices is None else [[int(v) for v in values] for values in mutation_choices]
    if not choices or any(not values for values in choices + mutation_choices):
        raise ValueError("evolve: every gene needs at least one allowed value")
    if len(mutation_choices) != len(choices):
        raise ValueError(f"evolve: mutation_choices has {len(mutation_choices)} genes, choices has {len(choices)}")
    if min(population, topk, generations) < 1 or min(mutations, crossovers) < 0 or not 0.0 <= mutation_prob <= 1.0:
        msg = "need population, topk, generations >= 1; mutations, crossovers >= 0; 0 <= mutation_prob <= 1"
        raise ValueError(f"evolve: {msg}")
    return choices, mutation_choices


def _score(candidates: list[Arch], memo: dict[Arch, float], fitness) -> dict[Arch, float]:
    """The candidates' scores: one batched fitness call for those the memo lacks (NaN or a wrong count: ValueError)."""
    new = [arch for arch in candidates if arch not in memo]
    fresh: dict[Arch, float] = {}
    if new:
        values = [float(v) for v in fitness(new)]
        if len(values) != len(new):
            raise ValueError(f"evolve: fitness returned {len(values)} scores for {len(new)} architectures")
        for arch, value in zip(new, values):
            if math.isnan(value):
                raise ValueError(f"evolve: fitness is NaN for {arch}")
            fresh[arch] = value
    return {arch: fresh[arch] if arch in fresh else memo[arch] for arch in candidates}


def _random_fill(choices, n: int, gate: _Gate, rng: np.random.Generator, tries: int | None) -> list[Arch]:
    """Up to `n` new uniform random archs; tries=None draws until they are found (NB201, DARTS), with the guard."""

    def more_random(k: int) -> list[Arch]:  # the exhaustion guard's view of _random_arch: one uniform product
        return _leftovers([(1.0, [_uniform(values) for values in choices])], k, gate, rng)

    return _collect(lambda: _random_arch(choices, rng), max(0, n), gate.admit, tries=tries, leftovers=more_random)


def _offspring(mutant, child, archive, mutation_choices, mutation_prob, gate, rng, population, mutations, crossovers,
               crossover_first) -> tuple[list[Arch], list[Arch]]:  # fmt: skip
    """(mutants, children) of one generation, drawn as the official loop of the space draws them."""

    def more_mutants(n: int) -> list[Arch]:  # the guard's view of mutant(): one product per parent
        return _leftovers(_mutant_reach(archive, mutation_choices, mutation_prob), n, gate, rng)

    if not crossover_first:
        # RLNAS NB201 and DARTS: the official mutation loop lowers its counter (10 x the quota) only when it finds a
        # new mutant, so it always delivers `mutations` of them; its crossover loop stops after crossovers + 1
        # batches of 10 draws
        mutants = _collect(mutant, mutations, gate.admit, leftovers=more_mutants)
        children = _collect(child, crossovers, gate.admit, tries=10 * (crossovers + 1))
    else:
        # RLNAS MobileNet: crossovers first, then as many mutants as the population still lacks, each loop with 1000
        # draws per candidate wanted
        children = _collect(child, crossovers, gate.admit, tries=1000 * crossovers)
        wanted = max(0, population - len(children))
        mutants = _collect(mutant, wanted, gate.admit, tries=1000 * wanted)
    return mutants, children
