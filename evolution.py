"""SPOS-style evolutionary search over a fixed-length integer encoding: the search step of RLNAS.

RLNAS finds its architecture in two steps: train a supernet on random labels, then run an
evolutionary search over its sub-networks, using as fitness the angle between each candidate's
weights at initialisation and after training (angle.py). This module is the second step's loop.
It knows nothing about networks: an architecture is a tuple of ints, one gene per decision
(6 op indices for NAS-Bench-201, 28 for the DARTS space, 21 block choices for MobileNet), and the
fitness is a function of a batch of such tuples. The loop is the one of Single Path One-Shot:

  - Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021, arXiv:2101.11834,
    the search step of the method (evolution with the angle as fitness; SPEC.md section 5 lists the
    official settings per search space).
  - The evolution itself is SPOS's: "Single Path One-Shot Neural Architecture Search with Uniform
    Sampling", Guo et al., ECCV 2020, arXiv:1904.00420 (its search.py), which the official RLNAS
    search scripts copy. The deliberate differences from that code are marked "SPOS:" below.

How it is used (search.py does this, with fitness = the batched angle against W0):

    from evolution import evolve
    result = evolve([[0, 1, 2, 3, 4]] * 6, fitness, mutation_choices=[[1, 2, 3, 4]] * 6, seed=0)
    winner = result.archive[0]          # largest fitness; result.evaluated holds every score

Check it with: python -m pytest -q tests/test_evolution.py
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable

import numpy as np

Arch = tuple[int, ...]  # one value per gene; hashable, so it is the key of every score dictionary


# ------------------------------------------------------------
# Ranking: sort by fitness, with a deterministic rule for (near-)ties
# ------------------------------------------------------------


def rank(scores: dict[Arch, float], tie_key: Callable[[Arch], Hashable] | None = None, tol: float = 1e-9) -> list[Arch]:
    """Archs sorted by score, best (largest) first; scores within `tol` of a group's top are tied.

    Ties are common in RLNAS: every disconnected NB201 cell has angle exactly 0 (pitfall 7), and
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


# ------------------------------------------------------------
# Candidate generators (one candidate per call; all randomness from the caller's rng)
# ------------------------------------------------------------


def _random_arch(choices: list[list[int]], rng: np.random.Generator) -> Arch:
    # RLNAS: every gene uniform over its allowed values. For NB201 this may draw a disconnected
    # cell (angle 0); the official search keeps those in the population too (pitfall 8).
    idx = rng.integers(0, [len(values) for values in choices])  # one index per gene, in a single draw
    return tuple(values[i] for values, i in zip(choices, idx.tolist()))


def _mutate(parent: Arch, mutation_choices: list[list[int]], prob: float, rng: np.random.Generator) -> Arch:
    # EXERCISE 6 BEGIN: resample each gene with probability `prob` from its `mutation_choices`, all draws from `rng`
    #   read: paper, method step 2 (evolutionary search, from SPOS); SPEC 5 and pitfall 8; README detail 8
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
    #   read: paper, method step 2 (evolutionary search, from SPOS); SPEC 5
    # RLNAS/SPOS crossover: uniform, each gene taken from either parent with probability 1/2.
    take_mother = rng.random(len(mother)) < 0.5
    return tuple(m if t else f for m, f, t in zip(mother, father, take_mother))
    # EXERCISE 6 END


def _collect(make: Callable[[], Arch], quota: int, max_tries: int, admit: Callable[[Arch], Arch | None]) -> list[Arch]:
    """Call `make` until `quota` candidates are admitted or `max_tries` calls are spent; may return fewer."""
    found: list[Arch] = []
    tries = 0
    while len(found) < quota and tries < max_tries:
        tries += 1
        arch = admit(make())
        if arch is not None:
            found.append(arch)
    return found


# ------------------------------------------------------------
# The evolutionary loop
# ------------------------------------------------------------


@dataclass
class Generation:
    """What on_generation receives after each generation is scored (search.py logs it and writes search.json)."""

    index: int  # 0-based
    candidates: list[Arch]  # scored (or taken from memo) this generation, in order
    archive: list[Arch]  # the elitist top-k archive after this generation, ranked
    evaluated: dict[Arch, float]  # every arch scored so far (insertion order = evaluation order)


@dataclass
class Result:
    archive: list[Arch]  # final ranked top-k archive; archive[0] is the winner
    evaluated: dict[Arch, float]  # every arch the trajectory scored, memo hits included, in trajectory order
    generations: int  # generations actually run (fewer than asked if the space ran out)


def evolve(
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
    constraint: Callable[[Arch], bool] | None = None,
    repair: Callable[[Arch], Arch] | None = None,
    tie_key: Callable[[Arch], Hashable] | None = None,
    tie_tol: float = 1e-9,
    seed: int = 0,
    memo: dict[Arch, float] | None = None,
    on_generation: Callable[[Generation], None] | None = None,
) -> Result:
    """Maximise `fitness` over archs whose gene g takes values in `choices[g]`; the defaults are RLNAS's NB201 ones.

    fitness(list of archs) -> one float per arch, larger is better; called at most once per generation,
    with only the archs that were never scored before and are not in `memo`.
    constraint(arch) -> bool rejects a candidate before it is scored; repair(arch) -> arch fixes every
    new candidate first. memo maps arch -> score from an interrupted run (search.json) of the same
    seed and settings: the run replays the same trajectory and only scores what the memo lacks.
    """
    choices = [[int(v) for v in values] for values in choices]
    mutation_choices = choices if mutation_choices is None else [[int(v) for v in values] for values in mutation_choices]
    if not choices or any(not values for values in choices + mutation_choices):
        raise ValueError("evolve: every gene needs at least one allowed value")
    if len(mutation_choices) != len(choices):
        raise ValueError(f"evolve: mutation_choices has {len(mutation_choices)} genes, choices has {len(choices)}")
    if min(population, topk, generations) < 1 or min(mutations, crossovers) < 0 or not 0.0 <= mutation_prob <= 1.0:
        msg = "need population, topk, generations >= 1; mutations, crossovers >= 0; 0 <= mutation_prob <= 1"
        raise ValueError(f"evolve: {msg}")

    # All randomness comes from this one local generator (no global seeding, STYLE point 10). The
    # fitness never touches it, so the trajectory is a pure function of the seed and the scores:
    # the same seed gives the same search, and a resumed run can replay an interrupted one.
    rng = np.random.default_rng(seed)
    memo = {} if memo is None else {tuple(arch): float(score) for arch, score in memo.items()}
    visited: set[Arch] = set()  # SPOS's vis_dict: every arch generated so far, scored or rejected
    evaluated: dict[Arch, float] = {}
    archive: list[Arch] = []

    def admit(arch: Arch) -> Arch | None:
        # RLNAS: repair first (the DARTS space maps any draw to a valid genotype), then the checks
        # run on the arch that would actually be scored.
        if repair is not None:
            arch = tuple(repair(arch))
            assert len(arch) == len(choices), f"repair returned {len(arch)} genes, expected {len(choices)}"
        # RLNAS: skip duplicates. Scoring an arch twice would waste budget (2,000 of 15,625 on NB201)
        # and, worse, put two copies into the archive, crowding out other parents.
        if arch in visited:
            return None
        visited.add(arch)
        # RLNAS: the FLOPs limit is checked BEFORE the angle (pitfall 8): a too-large arch must never
        # enter the archive, and scoring it would only waste time. A rejected arch stays visited,
        # so an expensive constraint is never evaluated twice on it either.
        if constraint is not None and not constraint(arch):
            return None
        return arch

    # RLNAS: generation 0 is `population` uniform random archs. SPOS loops until it has them; here the
    # number of draws is bounded so that an impossible constraint fails with a message instead of hanging.
    max_draws = 1000 * population
    candidates = _collect(lambda: _random_arch(choices, rng), population, max_draws, admit)
    if len(candidates) < population:
        raise ValueError(
            f"evolve: only {len(candidates)} of {population} initial architectures found in {max_draws} draws: "
            "no architecture meets the constraint, or the search space is smaller than the population"
        )

    index = 0
    for index in range(generations):
        # ---- score: one batched fitness call for what neither this run nor the memo has scored.
        # SPOS: it scores each candidate as soon as it is generated; batching changes nothing in the
        # trajectory (parents only come from the archive, updated once per generation) and lets the
        # NB201 angle be computed for the whole generation at once.
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
        for arch in candidates:
            evaluated[arch] = fresh[arch] if arch in fresh else memo[arch]

        # ---- select: RLNAS/SPOS keep an ELITIST top-k archive across generations. Merging the old
        # archive with the new candidates means the best arch found so far can never be lost to an
        # unlucky generation, and parents are always drawn from the best `topk` seen so far.
        archive = rank({arch: evaluated[arch] for arch in archive + candidates}, tie_key, tie_tol)[:topk]
        if on_generation is not None:
            on_generation(Generation(index, list(candidates), list(archive), dict(evaluated)))
        # SPOS: its loop builds the next offspring at the end of every iteration, the last one included,
        # and scores them while building (inside is_legal), so that last batch is scored but never
        # selected from. Stopping here keeps the budget at population x generations (2,000 on NB201).
        if index == generations - 1:
            break

        # ---- reproduce: mutants, then crossovers, each from parents drawn uniformly from the archive.
        # Each generator gets 10x its quota in tries (SPOS's max_iters = num * 10) and may come back
        # short, e.g. once the archive has converged and most children are duplicates.
        def mutant() -> Arch:
            return _mutate(archive[rng.integers(len(archive))], mutation_choices, mutation_prob, rng)

        def child() -> Arch:
            return _crossover(archive[rng.integers(len(archive))], archive[rng.integers(len(archive))], rng)

        candidates = _collect(mutant, mutations, 10 * mutations, admit)
        candidates += _collect(child, crossovers, 10 * crossovers, admit)
        # Random archs fill the population (none on NB201 when both quotas are met: 50 + 50 = 100).
        missing = max(0, population - len(candidates))
        candidates += _collect(lambda: _random_arch(choices, rng), missing, 1000 * missing, admit)
        if not candidates:  # every reachable arch has been visited: the space is exhausted
            break

    return Result(archive=archive, evaluated=evaluated, generations=index + 1)
