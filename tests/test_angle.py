"""angle.py: the weight vector of method.md §4.2, the reference angle, and the fast scorer against it."""

import math
import random

import numpy as np
import pytest
import torch
from conftest import TINY

import angle as A
import supernet as S
from spaces import SPACES


def perturbed(state, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone() for k, v in state.items()
    }


@pytest.fixture(scope="module")
def full_size():
    torch.manual_seed(0)
    w0 = S.Supernet().state_dict()
    return w0, perturbed(w0, 0.05, 1), S.Supernet().args


@pytest.mark.parametrize(
    "text, length",
    [
        ("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|", 73306),
        ("|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|", 113626),
        ("|nor_conv_1x1~0|+|nor_conv_1x1~0|nor_conv_1x1~1|+|nor_conv_1x1~0|nor_conv_1x1~1|nor_conv_1x1~2|", 288346),
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", 2008666),
        ("|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|", 557146),
    ],
)
def test_vector_lengths_match_spec_table(full_size, text, length):
    w0, _, args = full_size
    assert A.weight_vector(w0, S.str_to_arch(text), args).numel() == length  # method.md §4.2, C=16 N=5, 10 classes
    # weights on another device (meta stands in for a GPU: torch.cat refuses to mix it with CPU constants) or in
    # another dtype give the same float64 vector there: the pooling constant is made beside the weights
    on_meta = A.weight_vector({k: v.to("meta") for k, v in w0.items()}, S.str_to_arch(text), args)
    assert on_meta.device.type == "meta" and on_meta.dtype == torch.float64 and on_meta.numel() == length
    half = {k: v.half() for k, v in w0.items()}
    v16 = A.weight_vector(half, S.str_to_arch(text), args)
    assert v16.dtype == torch.float64 and torch.equal(v16, A.weight_vector(half, S.str_to_arch(text), args))


def test_all_none_has_no_vector_and_angle_zero(full_size):
    w0, wt, args = full_size
    assert A.weight_vector(w0, (0,) * 6, args) is None
    scorer = A.AngleScorer(w0, wt, args)
    # every path has a 'none': 1<-0, 2<-0 and 3<-0 are none, so P1..P4 are all cut
    for arch in [(0,) * 6, (0, 0, 3, 0, 3, 3), (3, 0, 0, 0, 0, 3)]:
        assert scorer.angle(arch) == 0.0 == A.angle_reference(w0, wt, arch, args)


def test_fast_scorer_equals_reference_full_size(full_size):
    w0, wt, args = full_size
    scorer = A.AngleScorer(w0, wt, args)
    archs = random.Random(0).sample(S.all_archs(), 6) + [(3,) * 6, (1, 0, 1, 0, 1, 1)]
    for arch in archs:
        assert abs(scorer.angle(arch) - A.angle_reference(w0, wt, arch, args)) < 1e-6


def test_fast_scorer_equals_reference_on_many_archs():
    torch.manual_seed(3)
    w0 = S.Supernet(**TINY).state_dict()
    wt = perturbed(w0, 0.3, 4)
    args = S.Supernet(**TINY).args
    scorer = A.AngleScorer(w0, wt, args)
    archs = random.Random(1).sample(S.all_archs(), 150)
    fast = scorer.angles(archs)
    for arch, theta in zip(archs, fast):
        assert abs(theta - A.angle_reference(w0, wt, arch, args)) < 1e-6
    assert fast.max() > 0.1  # the perturbation is large enough for the check to mean something


def test_identical_scaled_and_opposite_weights():
    torch.manual_seed(0)
    w0 = S.Supernet(**TINY).state_dict()
    args = S.Supernet(**TINY).args
    archs = S.all_archs()
    assert A.AngleScorer(w0, w0, args).angles(archs).max() < 1e-6  # W0 vs W0: angle 0 everywhere
    # positive scaling of every weight keeps the direction (the constant pooling segment aside): pool-free archs only
    scaled = {k: 3 * v if v.is_floating_point() else v for k, v in w0.items()}
    no_pool = [a for a in archs if 4 not in a]
    assert A.AngleScorer(w0, scaled, args).angles(no_pool).max() < 1e-6
    # orthogonal halves: a vector and its negation are at pi
    neg = {k: -v if v.is_floating_point() else v for k, v in w0.items()}
    assert abs(A.AngleScorer(w0, neg, args).angle((3,) * 6) - math.pi) < 1e-6


def test_angle_grows_with_movement_and_ignores_bn_buffers():
    torch.manual_seed(0)
    w0 = S.Supernet(**TINY).state_dict()
    args = S.Supernet(**TINY).args
    small, large = perturbed(w0, 0.01, 1), perturbed(w0, 0.1, 1)
    arch = (3, 2, 3, 2, 3, 3)
    assert A.AngleScorer(w0, small, args).angle(arch) < A.AngleScorer(w0, large, args).angle(arch)
    moved = {k: v + 5 if "running" in k else v for k, v in w0.items()}  # running stats are buffers, never in V
    assert A.AngleScorer(w0, moved, args).angle(arch) < 1e-6


def test_float64_precision_matters():
    # the scorer works in float64: the same computation in float32 differs by more than the tie tolerance
    torch.manual_seed(0)
    w0 = S.Supernet().state_dict()
    wt = perturbed(w0, 0.02, 2)
    args = S.Supernet().args
    v0, vt = A.weight_vector(w0, (3,) * 6, args), A.weight_vector(wt, (3,) * 6, args)
    c32 = torch.dot(v0.float(), vt.float()) / (v0.float().norm() * vt.float().norm())
    c64 = torch.dot(v0, vt) / (v0.norm() * vt.norm())
    assert abs(math.acos(min(1.0, c32.item())) - math.acos(c64.item())) > 1e-9
    assert abs(A.AngleScorer(w0, wt, args).angle((3,) * 6) - math.acos(c64.item())) < 1e-12


def test_angle_from_is_the_formula_with_a_clamp():
    # angle = arccos( <v0, vt> / (|v0| |vt|) ) against a direct float64 computation, then the edge cases
    gen = torch.Generator().manual_seed(0)
    v0, vt = torch.randn(50, generator=gen, dtype=torch.float64), torch.randn(50, generator=gen, dtype=torch.float64)
    dot, sq0, sqt = A.segment_stats([v0[:20], v0[20:]], [vt[:20], vt[20:]]).tolist()  # two segments, summed
    expected = math.acos(torch.dot(v0, vt).item() / (v0.norm().item() * vt.norm().item()))
    assert abs(A.angle_from(dot, sq0, sqt) - expected) < 1e-12
    assert A.angle_from(dot * 3, sq0 * 9, sqt) == pytest.approx(expected, abs=1e-12)  # scaling V0 keeps the angle
    assert A.angle_from(sq0, sq0, sq0) == 0.0 and A.angle_from(0.0, sq0, sqt) == pytest.approx(math.pi / 2)
    # round-off can push the cosine past 1 or -1: clamped, never NaN
    np.testing.assert_array_equal(A.angle_from(np.array([1.0 + 1e-15, -1.0 - 1e-15]), np.ones(2), np.ones(2)), [0.0, math.pi])


def tiny_state(space: str):
    net_args = {
        "nb201": dict(space="nb201", **TINY),
        "darts": dict(space="darts", channels=4, layers=3, num_classes=5, variant="cifar", image_size=16),
        "mobilenet": dict(space="mobilenet", num_classes=5, width=0.125, image_size=16),
    }[space]
    torch.manual_seed(0)
    w0 = SPACES[space].supernet(net_args).state_dict()
    return w0, perturbed(w0, 0.1, 1), net_args


@pytest.mark.parametrize("space", ["nb201", "darts", "mobilenet"])
def test_scorers_read_the_device_once(space, monkeypatch):
    # a scorer adds its per-segment numbers up where the weights are and copies the tables to the host in ONE
    # transfer: no .item() or .tolist() per segment (each one waits for a GPU), a single .numpy()
    w0, wt, net_args = tiny_state(space)
    rng, choices = random.Random(0), SPACES[space].gene_choices(net_args)
    archs = [SPACES[space].repair(tuple(rng.choice(c) for c in choices)) for _ in range(20)]
    expected = SPACES[space].scorer(w0, wt, net_args).angles(archs)
    reads = []

    def refuse(self, *a):
        raise AssertionError("a per-segment read from the device")

    to_numpy = torch.Tensor.numpy
    monkeypatch.setattr(torch.Tensor, "item", refuse)
    monkeypatch.setattr(torch.Tensor, "tolist", refuse)
    monkeypatch.setattr(torch.Tensor, "numpy", lambda self, *a, **k: reads.append(1) or to_numpy(self, *a, **k))
    scorer = SPACES[space].scorer(w0, wt, net_args)
    assert len(reads) == 1
    monkeypatch.undo()
    np.testing.assert_array_equal(scorer.angles(archs), expected)
    assert expected.max() > 0.01


def literal_vector(state, arch, args, parts):
    """The vector of a VECTORS variant built literally, independently of angle.py's loops: per path that has no
    'none', per searchable cell, the weights of its edges; then, once, the parts the variant keeps."""
    cells, reduce = [], []
    for pos, kind in enumerate(S.cell_layout(args["layers"])):
        (reduce if kind == "reduce" else cells).append(pos)
    c_of = {pos: args["channels"] * 2 ** sum(r < pos for r in reduce) for pos in cells}
    out, alive = [], False
    for path in A.PATHS:
        if any(arch[g] == 0 for g in path):
            continue
        alive = True
        for pos in cells:
            for g in path:
                if arch[g] in (2, 3):
                    out.append(state[f"cells.{pos}.edges.{S.EDGE_KEYS[g]}.{arch[g]}.op.1.weight"])
                elif arch[g] == 4:
                    out.append(torch.full((c_of[pos], 3, 3), 1 / 9, dtype=torch.float64))
    if not alive:
        return None
    if "ends" in parts:
        out += [state[n] for n in A.HEAD + A.TAIL]
    if "reductions" in parts:
        out += [
            v
            for n, v in state.items()
            if n.startswith(tuple(f"cells.{r}." for r in reduce)) and "running" not in n and "num_batches" not in n
        ]
    return torch.cat([p.double().flatten() for p in out]) if out else torch.zeros(0, dtype=torch.float64)


@pytest.mark.parametrize("vector", sorted(A.VECTORS))
def test_vector_variants_equal_their_literal_construction(vector):
    torch.manual_seed(0)
    net = S.Supernet(**TINY)
    w0 = net.state_dict()
    wt = perturbed(w0, 0.1, 3)
    scorer = A.AngleScorer(w0, wt, net.args, vector=vector)
    rng = random.Random(0)
    archs = [(3, 1, 1, 1, 1, 1), (1, 0, 0, 1, 0, 0), (4, 4, 4, 4, 4, 4), (0,) * 6] + [
        tuple(rng.randrange(5) for _ in range(6)) for _ in range(60)
    ]
    for arch in archs:
        v0, vt = (literal_vector(s, arch, net.args, A.VECTORS[vector]) for s in (w0, wt))
        if v0 is None or v0.numel() == 0:
            assert scorer.angle(arch) == 0.0, (vector, arch)  # disconnected, or nothing of the variant on its paths
            continue
        # compared as cosines: arccos is ill-conditioned near 0 (a pool-only cell of the 'cells' variant)
        cos = (torch.dot(v0, vt) / (v0.norm() * vt.norm())).item()
        assert abs(math.cos(scorer.angle(arch)) - cos) < 1e-12, (vector, arch)


def test_official_vector_is_the_default_and_unchanged(full_size):
    w0, wt, args = full_size
    archs = S.all_archs()
    default = A.AngleScorer(w0, wt, args).angles(archs)
    assert np.array_equal(default, A.AngleScorer(w0, wt, args, vector="official").angles(archs))
    ablated = A.AngleScorer(w0, wt, args, vector="cells").angles(archs)
    assert not np.allclose(default, ablated)  # the variants are different metrics
    with pytest.raises(ValueError, match="unknown weight vector"):
        A.AngleScorer(w0, wt, args, vector="all")


def test_movement_per_part():
    torch.manual_seed(0)
    net = S.Supernet(**TINY)
    w0 = net.state_dict()
    moved = A.movement(w0, w0, net.args)
    assert set(moved) == {"stem+head", "reductions", "cell ops"} and all(abs(v) < 1e-5 for v in moved.values())
    # move only the stem: only the stem+head angle changes
    wt = {k: (-v if k == "stem.0.weight" else v) for k, v in w0.items()}
    moved = A.movement(w0, wt, net.args)
    assert moved["stem+head"] > 1 and moved["reductions"] < 1e-5 and moved["cell ops"] < 1e-5


def test_nb201_tie_rule_prefers_the_cell_whose_paths_the_angle_scored():
    """method.md §5.1: inside a tie group, fewest weightless live paths, then fewest dead edges, then the op tuple.

    X runs one weighted path (3x3 conv on 1<-0, skip on 3<-1). Y adds a skip-only path 0->3 (weightless, unseen by
    the angle); Z adds a skip on 2<-0 that reaches no output (dead). All three tie exactly; the rule orders X, Z, Y,
    where the former rule (fewest 'none') put Y or Z first.
    """
    from evolution import rank, tie_group

    X = S.str_to_arch("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|")
    Y = S.str_to_arch("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|skip_connect~1|none~2|")
    Z = S.str_to_arch("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|skip_connect~1|none~2|")
    P = S.str_to_arch("|nor_conv_3x3~0|+|none~0|none~1|+|avg_pool_3x3~0|skip_connect~1|none~2|")  # a pool-only path
    assert [S.tie_key(a)[:2] for a in (X, Y, Z, P)] == [(0, 0), (1, 0), (0, 1), (1, 0)]
    torch.manual_seed(5)
    w0 = S.Supernet(**TINY).state_dict()
    wt, args = perturbed(w0, 0.3, 6), S.Supernet(**TINY).args
    scores = dict(zip(S.all_archs(), A.AngleScorer(w0, wt, args).angles(S.all_archs()).tolist()))
    assert scores[X] == scores[Y] == scores[Z] != scores[P]  # bit-identical sums: a real tie
    ordered = rank(scores, S.tie_key, 1e-9)
    assert [a for a in ordered if a in (X, Y, Z)] == [X, Z, Y]
    group = tie_group(ordered, scores, 1e-9)  # the winner's group: its first member has the smallest key
    assert ordered[0] == min(group, key=S.tie_key) and len(group) == sum(scores[a] == scores[ordered[0]] for a in scores)
