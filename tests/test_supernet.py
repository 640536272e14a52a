"""supernet.py: the NB201 search space, arch strings, the official sampling rule, single-path gradients."""

import collections

import pytest
import torch
from conftest import TINY

import supernet as S

RESNET = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"


def test_arch_string_round_trip_all_15625():
    archs = S.all_archs()
    assert len(archs) == S.NUM_ARCHS == 15625 and len(set(archs)) == 15625
    for a in archs:
        assert S.str_to_arch(S.arch_to_str(a)) == a


def test_arch_string_known_value():
    assert S.str_to_arch(RESNET) == (3, 0, 3, 1, 0, 1)  # edges 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2
    assert S.arch_to_str((3, 0, 3, 1, 0, 1)) == RESNET


@pytest.mark.parametrize(
    "bad, words",
    [
        ("|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|", "nodes"),
        ("|conv_7x7~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|", "unknown op"),
        ("|nor_conv_3x3~1|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|", "op~0"),
        ("|nor_conv_3x3~0|+|none~0|+|skip_connect~0|none~1|skip_connect~2|", "needs 2 inputs"),
        ("nor_conv_3x3~0+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|", "wrapped"),
        ("", "nodes"),
    ],
)
def test_malformed_strings_name_the_problem(bad, words):
    with pytest.raises(ValueError, match=words) as err:
        S.str_to_arch(bad)
    assert "\n" not in str(err.value)


def test_check_arch_rejects_bad_tuples():
    for bad in [(1, 2, 3), (0, 1, 2, 3, 4, 5), (0, 1, 2, 3, 4, -1)]:
        with pytest.raises(ValueError):
            S.arch_to_str(bad)


def test_sampling_redraws_dead_nodes_and_matches_official_marginals():
    # method.md §2.1: edge 1<-0 is never 'none'; no node has all inputs 'none'; edges into node 2 are 'none' with
    # probability (1/25)/(24/25)... = 4/24 = 0.167, into node 3 ~0.194.
    gen = torch.Generator().manual_seed(0)
    counts = collections.Counter()
    n = 6000
    for _ in range(n):
        a = S.sample_cell(gen)
        assert a[0] != 0
        assert a[1] != 0 or a[2] != 0
        assert a[3] != 0 or a[4] != 0 or a[5] != 0
        counts.update((g, o) for g, o in enumerate(a))
    for g, expected_none in [(0, 0.0), (1, 1 / 6), (2, 1 / 6), (3, 0.194), (4, 0.194), (5, 0.194)]:
        assert abs(counts[g, 0] / n - expected_none) < 0.025
    assert abs(counts[0, 3] / n - 0.25) < 0.025


def test_sample_path_seeded_per_cell_and_shared():
    a = S.sample_path(torch.Generator().manual_seed(5), 15)
    b = S.sample_path(torch.Generator().manual_seed(5), 15)
    c = S.sample_path(torch.Generator().manual_seed(6), 15)
    assert a == b and a != c
    assert len(set(a)) > 1  # official: each cell draws its own sub-cell
    shared = S.sample_path(torch.Generator().manual_seed(5), 15, share=True)
    assert len(set(shared)) == 1


def test_macro_shapes_and_parameter_counts():
    net = S.Supernet()
    assert len(net.cells) == 17 and net.searchable == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16]
    assert isinstance(net.cells[5], S.ResNetBlock) and isinstance(net.cells[11], S.ResNetBlock)
    # cell BN is affine=False with running stats (method.md §2.1): no BN parameters inside cells
    bn = net.cells[0].edges["1<-0"][3].op[2]
    assert not bn.affine and bn.track_running_stats
    # the smallest NB201 model (all skips) has 73,306 parameters (method.md §4.2)
    assert sum(p.numel() for p in S.Subnet((1,) * 6).parameters()) == 73306
    x = torch.randn(2, 3, 32, 32)
    assert net(x, S.shared_path((3,) * 6, 15)).shape == (2, 10)
    with pytest.raises(AssertionError, match="15 cell genotypes"):
        net(x, (3,) * 6)  # one form of path only: a genotype per searchable cell
    assert net(x, S.sample_path(torch.Generator().manual_seed(0), 15)).shape == (2, 10)
    assert "2<-1" in repr(net.cells[0])


def live_edges(arch):
    """Edges on some input-to-output path of the cell (an edge into a node that feeds only 'none' is dead)."""
    reaches_out = {3}
    for i, j in sorted(S.EDGES, reverse=True):
        if arch[S.EDGE_INDEX[i, j]] and i in reaches_out:
            reaches_out.add(j)
    from_in = {0}
    for i, j in S.EDGES:
        if arch[S.EDGE_INDEX[i, j]] and j in from_in:
            from_in.add(i)
    return {g for g, (i, j) in enumerate(S.EDGES) if arch[g] and j in from_in and i in reaches_out}


def test_only_sampled_ops_receive_gradients():
    torch.manual_seed(0)
    net = S.Supernet(**TINY)
    # cell 0 has a dead end: node 1 feeds only 'none' edges, so its conv gets no gradient (the official x*0 would
    # give it a zero gradient instead; with --unsampled decay both end the same once the op is ever sampled live)
    path = [(3, 1, 0, 2, 0, 4), (2, 0, 3, 4, 1, 1), (3, 3, 3, 3, 3, 3)]
    assert live_edges(path[0]) == {1, 3, 5}
    net(torch.randn(4, 3, 8, 8), path).sum().backward()
    for c, pos in enumerate(net.searchable):
        for g, key in enumerate(S.EDGE_KEYS):
            for op in (2, 3):
                grad = net.cells[pos].edges[key][op].op[1].weight.grad
                assert (grad is not None) == (path[c][g] == op and g in live_edges(path[c])), (pos, key, op)
                if grad is not None:
                    assert grad.abs().sum() > 0
    assert net.stem[0].weight.grad is not None and net.classifier.weight.grad is not None


@pytest.mark.parametrize("arch", [(3, 0, 3, 1, 0, 1), (2, 4, 1, 3, 2, 4), (1, 1, 1, 1, 1, 1), (3, 0, 0, 0, 0, 0), (0,) * 6])
def test_supernet_path_equals_standalone_subnet(arch):
    # the supernet run along one architecture computes exactly the network retrain.py builds for it
    torch.manual_seed(0)
    net = S.Supernet(**TINY)
    sub = S.Subnet(arch, TINY["channels"], TINY["layers"], TINY["num_classes"], affine=False)
    sub.load_state_dict(S.subnet_state_from_supernet(net.state_dict(), arch))
    x = torch.randn(3, 3, 8, 8)
    for mode in (True, False):
        net.train(mode)
        sub.train(mode)
        torch.testing.assert_close(net(x, S.shared_path(arch, len(net.searchable))), sub(x), rtol=0, atol=1e-6)


def test_count_params_matches_the_built_network():
    for arch in [(1,) * 6, (3,) * 6, (3, 0, 3, 1, 0, 1), (2, 4, 0, 3, 1, 2)]:
        for shape in [(16, 5, 10), (4, 1, 7), (8, 2, 100)]:
            assert S.count_params(arch, *shape) == sum(p.numel() for p in S.Subnet(arch, *shape).parameters())
    assert S.count_params((1,) * 6) == 73306
