"""angle.py: the weight vector of SPEC 4.2, the reference angle, and the fast scorer against it."""

import math
import random

import pytest
import torch
from conftest import TINY

import angle as A
import supernet as S


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
    assert A.weight_vector(w0, S.str_to_arch(text), args).numel() == length  # SPEC 4.2, C=16 N=5, 10 classes


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
