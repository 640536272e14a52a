"""Property tests of evolution.py on synthetic, batched fitness functions (no network, CPU, seconds)."""

import itertools
import time

import numpy as np
import pytest

import evolution
from evolution import Generation, _crossover, _Gate, _leftovers, _mutate, evolve, rank, tie_group

TARGET = (1, 2, 3, 4, 1, 2, 3, 4, 1, 2)  # unique optimum of the Hamming fitness below
CHOICES10 = [[0, 1, 2, 3, 4]] * 10
SMALL = dict(population=40, topk=10, mutations=20, crossovers=20)


class Recorder:
    """Batched fitness = number of genes equal to TARGET (minus the Hamming distance, shifted); records every call."""

    def __init__(self, target=TARGET):
        self.target = target
        self.calls: list[list[tuple]] = []

    def __call__(self, archs):
        self.calls.append(list(archs))
        return [float(sum(a == t for a, t in zip(arch, self.target))) for arch in archs]

    @property
    def scored(self):
        return [arch for call in self.calls for arch in call]


def test_finds_the_unique_optimum():
    fitness = Recorder()
    result = evolve(CHOICES10, fitness, generations=15, seed=0, **SMALL)
    assert result.archive[0] == TARGET
    assert result.evaluated[TARGET] == 10.0
    # the search used a small fraction of the 5^10 space, so it did not find TARGET by enumeration
    assert len(result.evaluated) <= 15 * 40


def test_no_arch_is_scored_twice_and_evaluated_lists_them_in_order():
    fitness = Recorder()
    result = evolve(CHOICES10, fitness, generations=10, seed=1, **SMALL)
    scored = fitness.scored
    assert len(scored) == len(set(scored))
    assert list(result.evaluated) == scored
    assert len(fitness.calls) == result.generations == 10  # one batched call per generation
    assert all(0 < len(call) <= 40 for call in fitness.calls)


def test_archive_is_elitist_top_k_of_everything_scored():
    seen: list[Generation] = []
    evolve(CHOICES10, Recorder(), generations=6, seed=2, on_generation=seen.append, **SMALL)
    assert [g.index for g in seen] == list(range(6))
    best_so_far = -1.0
    for g in seen:
        # integer scores: tie groups are exact ties, so the elitist archive is the top-k of all archs scored so far
        assert g.archive == rank(g.evaluated)[:10]
        assert all(arch in g.evaluated for arch in g.candidates)
        assert g.evaluated[g.archive[0]] >= best_so_far  # the best never gets lost
        best_so_far = g.evaluated[g.archive[0]]


def test_constraint_is_checked_before_scoring():
    # TARGET sums to 23; allow at most 15, so the unconstrained optimum is forbidden.
    checked = []

    def small(arch):
        checked.append(arch)
        return sum(arch) <= 15

    fitness = Recorder()
    result = evolve(CHOICES10, fitness, generations=10, seed=3, constraint=small, **SMALL)
    assert fitness.scored and all(sum(arch) <= 15 for arch in fitness.scored)
    assert sum(result.archive[0]) <= 15
    assert any(sum(arch) > 15 for arch in checked)  # the constraint did reject something
    assert len(checked) == len(set(checked))  # a rejected arch counts as visited: never checked again


def test_repair_is_applied_to_every_candidate():
    fitness = Recorder()
    evolve(CHOICES10, fitness, generations=5, seed=4, repair=lambda arch: (0,) + tuple(arch[1:]), **SMALL)
    assert fitness.scored and all(arch[0] == 0 for arch in fitness.scored)


def test_mutation_helper_only_writes_mutation_choices():
    rng = np.random.default_rng(0)
    parent = (2,) * 6
    children = [_mutate(parent, [[1, 3, 4]] * 6, 0.5, rng) for _ in range(500)]
    genes = np.array(children).ravel()
    # a gene keeps the parent's 2 or is resampled from [1, 3, 4]: never 0, and 2 survives with prob 1/2
    assert set(genes.tolist()) == {1, 2, 3, 4}
    assert abs((genes == 2).mean() - 0.5) < 0.05
    mother, father = (1,) * 8, (2,) * 8
    kids = [_crossover(mother, father, rng) for _ in range(200)]
    assert all(set(kid) <= {1, 2} for kid in kids) and len(set(kids)) > 100


def test_mutants_never_introduce_excluded_values():
    # Mutation only (no crossover, and the 10x tries make a random fill unlikely): a gene equal to 0 in a
    # later candidate must then be inherited from some parent in the previous archive.
    def introduced_zeros(mutation_choices):
        seen: list[Generation] = []
        evolve(
            CHOICES10,
            Recorder(),
            population=30,
            topk=10,
            mutations=30,
            crossovers=0,
            generations=10,
            seed=5,
            mutation_choices=mutation_choices,
            on_generation=seen.append,
        )
        return sum(
            1
            for before, after in zip(seen, seen[1:])
            for arch in after.candidates
            for g, gene in enumerate(arch)
            if gene == 0 and not any(parent[g] == 0 for parent in before.archive)
        )

    assert introduced_zeros([[1, 2, 3, 4]] * 10) == 0
    assert introduced_zeros(None) > 0  # the check has teeth: with 0 allowed, mutants do write new zeros


def test_same_seed_same_result_different_seed_different_trajectory():
    a = evolve(CHOICES10, Recorder(), generations=5, seed=7, **SMALL)
    b = evolve(CHOICES10, Recorder(), generations=5, seed=7, **SMALL)
    c = evolve(CHOICES10, Recorder(), generations=5, seed=8, **SMALL)
    assert a.archive == b.archive and list(a.evaluated.items()) == list(b.evaluated.items())
    assert list(a.evaluated) != list(c.evaluated)


def test_resume_by_replay_scores_only_what_is_missing():
    full = evolve(CHOICES10, Recorder(), generations=10, seed=9, **SMALL)
    interrupted = evolve(CHOICES10, Recorder(), generations=5, seed=9, **SMALL)
    fitness = Recorder()
    resumed = evolve(CHOICES10, fitness, generations=10, seed=9, memo=dict(interrupted.evaluated), **SMALL)
    assert resumed.archive == full.archive and resumed.generations == full.generations
    assert list(resumed.evaluated.items()) == list(full.evaluated.items())
    assert set(fitness.scored) == set(full.evaluated) - set(interrupted.evaluated)
    assert len(fitness.scored) == len(full.evaluated) - len(interrupted.evaluated)
    assert len(fitness.calls) == 5  # generations 0-4 came entirely from the memo


def test_memo_entries_off_the_trajectory_are_not_reported():
    memo = {(4,) * 10: 10.0}  # a perfect score for an arch this run would never draw
    result = evolve(CHOICES10, Recorder(), generations=3, seed=9, memo=memo, **SMALL)
    assert (4,) * 10 not in result.evaluated


def test_nb201_defaults_score_exactly_2000():
    fitness = Recorder(target=(3, 3, 3, 1, 3, 2))
    checked, seen = [], []
    result = evolve(
        [[0, 1, 2, 3, 4]] * 6,
        fitness,
        mutation_choices=[[1, 2, 3, 4]] * 6,
        seed=0,
        constraint=lambda arch: checked.append(arch) or True,
        on_generation=seen.append,
    )
    assert len(result.evaluated) == 2000 and result.generations == 20
    assert len(checked) == 2000  # no offspring are built (and checked) after the last generation
    assert [len(call) for call in fitness.calls] == [100] * 20
    assert len(result.archive) == 30 and result.archive[0] == (3, 3, 3, 1, 3, 2)
    # the official NB201 loop: 50 mutants every generation, then up to 50 crossovers, random archs for the rest
    assert seen[0].made == {"mutation": 0, "crossover": 0, "random": 100}
    for g in seen[1:]:
        assert g.made["mutation"] == 50 and g.made["crossover"] <= 50 and sum(g.made.values()) == 100


def test_exhausted_space_stops_early_and_visits_everything():
    space = set(itertools.product(range(3), repeat=3))  # 27 archs
    fitness = Recorder(target=(2, 1, 0))
    result = evolve([[0, 1, 2]] * 3, fitness, population=10, topk=5, mutations=5, crossovers=5, generations=20, seed=0)
    assert set(result.evaluated) == space and len(fitness.scored) == 27
    assert result.generations < 20 and result.archive[0] == (2, 1, 0)


def test_impossible_constraint_or_tiny_space_raises_promptly():
    start = time.perf_counter()
    with pytest.raises(ValueError, match="no architecture meets the constraint"):
        evolve(CHOICES10, Recorder(), constraint=lambda arch: False, seed=0, **SMALL)
    assert time.perf_counter() - start < 5.0
    with pytest.raises(ValueError, match="smaller than the population"):
        evolve([[0, 1]] * 3, Recorder(), population=9, topk=3, mutations=4, crossovers=4)


def test_bad_fitness_and_arguments_raise():
    with pytest.raises(ValueError, match="scores for"):
        evolve(CHOICES10, lambda archs: [0.0], generations=2, **SMALL)
    with pytest.raises(ValueError, match="NaN"):
        evolve(CHOICES10, lambda archs: [float("nan")] * len(archs), generations=2, **SMALL)
    with pytest.raises(ValueError, match="mutation_choices"):
        evolve(CHOICES10, Recorder(), mutation_choices=[[1]] * 3, **SMALL)


def test_rank_ties_tolerance_and_tie_key():
    scores = {(3,): 1.0, (1,): 1.0, (2,): 1.0 - 5e-10, (0,): 0.5, (5,): 0.5, (4,): 2.0}
    assert rank(scores) == [(4,), (1,), (2,), (3,), (0,), (5,)]  # (1,),(2,),(3,) tie within 1e-9
    assert rank(scores, tol=0.0) == [(4,), (1,), (3,), (2,), (0,), (5,)]  # exact ties only
    assert rank(scores, tie_key=lambda arch: -arch[0]) == [(4,), (3,), (2,), (1,), (5,), (0,)]
    # a group is measured from its FIRST score: 1.0 and 0.9 tie (tol 0.15), 0.8 starts a new group
    chain = {(9,): 1.0, (1,): 0.9, (0,): 0.8}
    assert rank(chain, tol=0.15) == [(1,), (9,), (0,)]
    assert tie_group(rank(chain, tol=0.15), chain, tol=0.15) == [(1,), (9,)]
    # independent of insertion order
    for perm in itertools.permutations(scores.items()):
        assert rank(dict(perm), tol=1e-9) == rank(scores)
    assert tie_group(rank(scores), scores) == [(4,)]
    ordered = rank(scores, tol=1.2)
    assert ordered[:4] == [(1,), (2,), (3,), (4,)]  # 2.0 and the three 1.0s tie; 0.5 is 1.5 below the top
    assert tie_group(ordered, scores, tol=1.2) == ordered[:4]
    assert tie_group([], {}) == []
    with pytest.raises(ValueError, match="NaN"):
        rank({(0,): float("nan"), (1,): 1.0})


# ----------------------------------------------------------------------------------------------
# The official loops, generation by generation. These tests bring their own mutation and crossover (the same
# definition as exercise 6), so they check evolve() itself, and hold in a student copy too.
@pytest.fixture
def operators(monkeypatch):
    """Replace _mutate and _crossover by test-local ones; returns the log of their calls: ("m" or "c", child)."""
    calls = []

    def mutate(parent, choices, prob, rng):
        flip = rng.random(len(parent)) < prob
        child = tuple(int(values[rng.integers(len(values))]) if f else g for g, values, f in zip(parent, choices, flip))
        calls.append(("m", child))
        return child

    def crossover(mother, father, rng):
        take = rng.random(len(mother)) < 0.5
        child = tuple(m if t else f for m, f, t in zip(mother, father, take))
        calls.append(("c", child))
        return child

    monkeypatch.setattr(evolution, "_mutate", mutate)
    monkeypatch.setattr(evolution, "_crossover", crossover)
    return calls


def per_generation(calls, seen):
    """Split the operator log at the on_generation calls: offspring[i] = the calls that built generation i + 1."""
    return [calls[a:b] for a, b in zip([g.marker for g in seen], [g.marker for g in seen[1:]])]


def run_logged(calls, **kw):
    seen = []

    def on_generation(g):
        g.marker = len(calls)
        seen.append(g)

    result = evolve(on_generation=on_generation, **kw)
    return result, seen, per_generation(calls, seen)


def test_nb201_loop_delivers_every_mutant_even_when_most_are_duplicates(operators):
    # One parent (topk=1) that stays the best: its mutants are soon almost all visited, yet the official loop lowers
    # its counter only on success, so every generation still gets its 50 mutants (and 50 random archs, since the
    # crossover of a parent with itself is that visited parent).
    target = (3, 3, 3, 1, 3, 2)
    result, seen, offspring = run_logged(
        operators,
        choices=[[0, 1, 2, 3, 4]] * 6,
        fitness=Recorder(target),
        mutation_choices=[[1, 2, 3, 4]] * 6,
        topk=1,
        generations=8,
        seed=0,
    )
    assert result.archive == [target] and result.generations == 8
    for g in seen[1:]:
        assert g.made == {"mutation": 50, "crossover": 0, "random": 50}
    # the test has teeth: some generation needed over 500 mutation draws, the 10x bound the loop used to stop at
    assert max(sum(kind == "m" for kind, _ in calls) for calls in offspring) > 500


def test_mobilenet_loop_builds_crossovers_first_then_population_minus_crossovers_mutants(operators):
    fitness = Recorder()
    common = dict(choices=CHOICES10, population=40, topk=10, mutations=5, crossovers=20, generations=6, seed=3)
    result, seen, offspring = run_logged(operators, fitness=fitness, crossover_first=True, **common)
    assert result.generations == 6
    for g, calls in zip(seen[1:], offspring):
        kinds = "".join(kind for kind, _ in calls)
        assert kinds == "c" * kinds.count("c") + "m" * kinds.count("m")  # every crossover is drawn before any mutant
        n_mut, n_cross = g.made["mutation"], g.made["crossover"]
        assert n_mut == 40 - n_cross and g.made["random"] == 0  # `mutations` is not used: the population is filled
        # the list is the official one: the mutants, then the crossover children
        assert set(g.candidates[:n_mut]) <= {child for kind, child in calls if kind == "m"}
        assert set(g.candidates[n_mut:]) <= {child for kind, child in calls if kind == "c"}
    # one parent: every crossover is that visited parent, so the mutants fill the whole population
    operators.clear()
    _, seen, _ = run_logged(operators, fitness=Recorder(), crossover_first=True, **{**common, "topk": 1})
    assert all(g.made == {"mutation": 40, "crossover": 0, "random": 0} for g in seen[1:])
    # the NB201/DARTS loop draws its mutants first, and exactly `mutations` of them
    operators.clear()
    _, seen, offspring = run_logged(operators, fitness=Recorder(), **common)
    for g, calls in zip(seen[1:], offspring):
        kinds = "".join(kind for kind, _ in calls)
        assert kinds == "m" * kinds.count("m") + "c" * kinds.count("c") and g.made["mutation"] == 5


def test_guard_stops_only_when_the_space_is_exhausted(operators):
    # (1) A constraint admits 17 of 27 archs: every generation is full until all 17 are scored, then the run stops.
    admissible = {a for a in itertools.product(range(3), repeat=3) if sum(a) <= 3}
    fitness = Recorder(target=(1, 1, 1))
    _, seen, _ = run_logged(
        operators,
        choices=[[0, 1, 2]] * 3,
        fitness=fitness,
        population=5,
        topk=3,
        mutations=3,
        crossovers=2,
        generations=50,
        constraint=lambda arch: sum(arch) <= 3,
        seed=0,
    )
    assert len(admissible) == 17 and set(fitness.scored) == admissible
    assert [len(g.candidates) for g in seen] == [5, 5, 5, 2]
    # (2) Mutants can only write 0 and there is one parent, so a mutant differs from it only where it puts a 0:
    # at most 16 of the 81 archs are reachable. Each generation gets min(quota, what is reachable and unvisited).
    operators.clear()
    result, seen, _ = run_logged(
        operators,
        choices=[[0, 1, 2]] * 4,
        fitness=Recorder(target=(2, 2, 2, 2)),
        mutation_choices=[[0]] * 4,
        population=10,
        topk=1,
        mutations=10,
        crossovers=0,
        generations=12,
        seed=1,
    )
    short = 0
    for before, after in zip(seen, seen[1:]):
        parent = before.archive[0]
        reach = set(itertools.product(*[{gene, 0} for gene in parent])) - set(before.evaluated)
        assert after.made["mutation"] == min(10, len(reach))
        short += len(reach) < 10
    assert short and sum(g.made["mutation"] for g in seen) > 0  # the guard did cut some quotas, not all
    assert result.generations == 12 or len(result.evaluated) == 81


def test_leftovers_draw_from_the_generator_restricted_to_what_is_new(monkeypatch):
    # P(arch) = 0.35, 0.35, 0.15, 0.15 for (0,0), (0,1), (1,0), (1,1); with (0,0) visited: 0.54, 0.23, 0.23
    reach = [(1.0, [{0: 0.7, 1: 0.3}, {0: 0.5, 1: 0.5}])]
    rng = np.random.default_rng(0)
    counts = {(0, 1): 0, (1, 0): 0, (1, 1): 0}
    for _ in range(4000):
        gate = _Gate(2)
        gate.visited.add((0, 0))
        (arch,) = _leftovers(reach, 1, gate, rng)
        counts[arch] += 1
    assert abs(counts[(0, 1)] / 4000 - 0.35 / 0.65) < 0.03 and abs(counts[(1, 0)] / 4000 - 0.15 / 0.65) < 0.03
    # asked for more than is left: everything left, then short; a rejecting constraint leaves it out
    gate = _Gate(2, constraint=lambda a: a != (1, 1))
    gate.visited.add((0, 0))
    got = _leftovers(reach, 9, gate, rng)
    assert sorted(got) == [(0, 1), (1, 0)] and gate.visited == {(0, 0), (0, 1), (1, 0), (1, 1)}
    # a reach too large to list: nothing (exhaustion is presumed after STALL misses per candidate)
    monkeypatch.setattr(evolution, "ENUMERATE_LIMIT", 3)
    assert _leftovers(reach, 1, _Gate(2), rng) == []
