"""darts.py (method.md §2.2/§2.3, §4.3, §5, §7.2, §7.4): networks, sampling and repair, genotypes, angle, FLOPs, scripts."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from test_errors import assert_user_error
from test_scripts import run

import darts as D
import supernet as S
from spaces import SPACES

SPACE = SPACES["darts"]


def tiny_args(variant="cifar", size=16, **kw):
    return dict(space="darts", channels=4, layers=3, num_classes=5, variant=variant, image_size=size, **kw)


# The searched genotypes of method.md §7.4, in the DARTS notation (input index = source node).
CIFAR_SEARCHED = (
    "Genotype(normal=[('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('dil_conv_3x3', 0), ('sep_conv_5x5', 2), "
    "('sep_conv_3x3', 0), ('dil_conv_5x5', 3), ('dil_conv_5x5', 1), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('sep_conv_5x5', 0), ('dil_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 2), ('dil_conv_3x3', 1), "
    "('sep_conv_3x3', 3), ('max_pool_3x3', 1), ('sep_conv_5x5', 2)], reduce_concat=[2, 3, 4, 5])"
)
IMAGENET_600M = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 1), ('sep_conv_3x3', 2), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 2), ('skip_connect', 0), ('sep_conv_3x3', 4)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('sep_conv_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 1), ('sep_conv_3x3', 0), "
    "('dil_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)
IMAGENET_600M_GENES = (4, 4, 0, 3, 4, 0, 4, 4, 0, 3, 0, 0, 0, 4) + (4, 1, 4, 3, 0, 4, 6, 0, 0, 3, 4, 0, 0, 0)  # method.md §7.4
IMAGENET_FREE = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2), "
    "('sep_conv_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 2), ('sep_conv_5x5', 0), "
    "('sep_conv_5x5', 2), ('sep_conv_3x3', 2), ('sep_conv_3x3', 4)], reduce_concat=[2, 3, 4, 5])"
)


# ----------------------------------------------------------------------------------------------
# Networks
def test_edge_indexing_and_reduction_positions():
    assert D.NUM_DARTS_EDGES == 14 and [D.darts_edge(k, 5) for k in range(5)] == [9, 10, 11, 12, 13]
    assert D.DARTS_NODE_EDGES == ((0, 1), (2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12, 13))  # method.md §2.2
    assert D.darts_reductions(8) == (2, 5) and D.darts_reductions(14) == (4, 9)  # C10; ImageNet 4N-R-4N-R-4N


@pytest.mark.parametrize("variant, size", [("cifar", 16), ("imagenet", 32)])
def test_supernet_shapes_and_only_sampled_ops_get_gradients(variant, size):
    args = tiny_args(variant, size)
    torch.manual_seed(0)
    net = SPACE.supernet(args)
    assert net.args == args
    arch = SPACE.sample_path(torch.Generator().manual_seed(3), args)
    out = net(torch.randn(2, 3, size, size), arch)
    assert out.shape == (2, 5)
    out.sum().backward()
    for name, q in net.named_parameters():
        parts = name.split(".")
        if parts[0] == "cells" and parts[2] == "edges":
            cell, edge, op = net.cells[int(parts[1])], int(parts[3]), int(parts[4])
            chosen = arch[14:] if cell.reduction else arch[:14]
            assert (q.grad is not None) == (chosen[edge] == op), name  # forward(x, arch) runs only the sampled edges
    # ImageNet stems: 3 -> C/2 -> C at 1/4, then C at 1/8; kaiming-uniform convs, Linear N(0, 0.01), bias 0 (method.md §2.3)
    if variant == "imagenet":
        assert net.stem0[0].weight.shape == (2, 3, 3, 3) and net.stem1[1].weight.shape == (4, 4, 3, 3)
        assert torch.all(net.classifier.bias == 0) and net.classifier.weight.std() < 0.02


def test_macro_shapes_match_spec():
    with torch.device("meta"):
        cifar = SPACE.supernet(dict(space="darts", channels=16, layers=8, num_classes=10, variant="cifar", image_size=32))
        inet_args = dict(space="darts", channels=48, layers=14, num_classes=1000, variant="imagenet", image_size=224)
        inet = SPACE.supernet(inet_args)
    assert cifar.stem[0].weight.shape == (48, 3, 3, 3) and cifar.classifier.weight.shape == (10, 256)  # method.md §2.2
    assert [c.reduction for c in cifar.cells] == [False, False, True, False, False, True, False, False]
    assert inet.classifier.weight.shape == (1000, 768) and [c.c for c in inet.cells] == [48] * 4 + [96] * 5 + [192] * 5
    assert isinstance(inet.cells[0].preprocess0, D.FactorizedReduce)  # stem0 is 56x56, stem1 28x28
    assert isinstance(cifar.cells[0].edges["0"][3], torch.nn.Identity)  # stride-1 skip
    assert isinstance(cifar.cells[2].edges["0"][3], D.FactorizedReduce)  # stride-2 skip
    assert cifar.cells[0].edges["0"][1].bn is not None  # BN after every pooling op in the supernet


def test_stand_alone_network_with_auxiliary_head():
    arch = SPACE.parse(CIFAR_SEARCHED)
    net = SPACE.network(arch, tiny_args("cifar", 32), aux=True).train()
    net.drop_path_prob = 0.2
    logits, aux = net(torch.randn(2, 3, 32, 32))  # the aux head sits after cell 2L//3 (8x8 at a 32 input)
    assert logits.shape == aux.shape == (2, 5)
    assert net.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 5)  # no aux output at evaluation
    inet = SPACE.network(arch, tiny_args("imagenet", 224), aux=True).train()
    logits, aux = inet(torch.randn(2, 3, 224, 224))  # ImageNet aux head: 7x7 input at 224
    assert logits.shape == aux.shape == (2, 5)
    assert all(len(cell.edges) == 8 for cell in inet.cells)  # two inputs per node, only the chosen ops


# ----------------------------------------------------------------------------------------------
# Sampling and repair (method.md §2.2)
def test_sampling_marginals_and_repair():
    args = tiny_args()
    gen = torch.Generator().manual_seed(0)
    archs = np.array([SPACE.sample_path(gen, args) for _ in range(3000)])  # (3000, 28)
    for cell in (0, 14):
        for node, edges in enumerate(D.DARTS_NODE_EDGES):
            live = archs[:, [cell + e for e in edges]] != 0
            assert np.all(live.sum(1) == 2)  # exactly two inputs per node, in every sample
            expected_none = 1 - 2 / len(edges)  # 0, 1/3, 1/2, 3/5 for nodes 2..5
            assert abs((~live).mean() - expected_none) < 0.03, (node, (~live).mean())
    ops = archs[archs != 0]
    freq = np.bincount(ops, minlength=8)[1:] / len(ops)
    assert np.all(np.abs(freq - 1 / 7) < 0.015), freq  # a uniform real op on every kept edge
    same = torch.Generator().manual_seed(0)
    assert SPACE.sample_path(same, args) == tuple(archs[0])  # only the generator decides: same seed, same path
    rng = np.random.default_rng(0)
    for _ in range(200):
        raw = tuple(int(g) for g in rng.integers(0, 8, 28))
        fixed = SPACE.repair(raw)
        assert fixed == SPACE.repair(raw) and SPACE.repair(fixed) == fixed  # deterministic, valid archs unchanged
        assert all(sum(fixed[c + e] != 0 for e in edges) == 2 for c in (0, 14) for edges in D.DARTS_NODE_EDGES)


def test_mutation_choices_cover_the_reduction_genes():
    cifar, inet = SPACE.mutation_choices(tiny_args()), SPACE.mutation_choices(tiny_args("imagenet"))
    assert len(cifar) == 28 and cifar[20] == list(range(8))  # reduction genes mutate too (official: normal only)
    assert inet[20] == list(range(1, 8))  # ImageNet: randint(1, 8), 'none' excluded (method.md §5)


# ----------------------------------------------------------------------------------------------
# Genotypes (method.md §7.4)
@pytest.mark.parametrize("text", [CIFAR_SEARCHED, IMAGENET_600M, IMAGENET_FREE])
def test_genotype_round_trip(text):
    arch = SPACE.parse(text)
    assert len(arch) == 28 and SPACE.format(arch) == text and SPACE.parse(SPACE.format(arch)) == arch
    assert SPACE.repair(arch) == arch  # the published cells are valid: two inputs per node


def test_raw_encoding_of_spec_7_4():
    assert SPACE.parse(IMAGENET_600M) == IMAGENET_600M_GENES
    cifar = SPACE.parse(CIFAR_SEARCHED)
    assert cifar[:14] == (5, 4, 6, 0, 5, 4, 0, 0, 7, 0, 7, 6, 0, 0)  # sep5<-0 sep3<-1 | dil3<-0 sep5<-2 | ...


@pytest.mark.parametrize(
    "text, words",
    [
        ("Genotype(normal=[])", ["malformed"]),
        ("not a genotype", ["malformed"]),
        (CIFAR_SEARCHED.replace("sep_conv_5x5", "conv_9x9", 1), ["conv_9x9"]),
        (CIFAR_SEARCHED.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 7)"), ["node 5"]),
        (CIFAR_SEARCHED.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[4, 5]"), ["concat"]),
        (CIFAR_SEARCHED.replace("('sep_conv_3x3', 1), ", "", 1), ["8 (op, input) pairs"]),
        ("__import__('os').system('true')", ["malformed"]),
    ],
)
def test_genotype_parse_errors(text, words):
    with pytest.raises(ValueError) as err:
        SPACE.parse(text)
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------
# Angle (method.md §4.3): fast == reference
@pytest.mark.parametrize("variant, size", [("cifar", 16), ("imagenet", 32)])
def test_fast_angle_matches_reference(variant, size):
    args = tiny_args(variant, size)
    torch.manual_seed(0)
    w0 = SPACE.supernet(args).state_dict()
    gen = torch.Generator().manual_seed(1)
    wt = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in w0.items()}
    archs = [SPACE.sample_path(gen, args) for _ in range(12)] + [SPACE.parse(CIFAR_SEARCHED)]
    fast = SPACE.scorer(w0, wt, args).angles(archs)
    ref = [D.darts_angle_reference(w0, wt, a, args) for a in archs]
    assert np.allclose(fast, ref, rtol=0, atol=1e-10) and len(set(np.round(fast, 8))) > 5
    assert np.all(SPACE.scorer(w0, w0, args).angles(archs) < 1e-6)  # W0 against itself: angle 0


def test_weight_vector_contents():
    args = tiny_args()
    torch.manual_seed(0)
    w0 = SPACE.supernet(args).state_dict()
    skip = (3, 3) + (0,) * 12  # node 2 <- skip(0) + skip(1); nodes 3..5 empty in an unrepaired arch
    v = D.darts_weight_vector(w0, skip + skip, args)
    names = [n for n in w0 if not n.endswith(("_mean", "_var", "batches_tracked"))]  # parameters only
    extra = sum(w0[k].numel() for k in D._darts_extra_names(args, names))
    # 3 cells: normal (C=4), reduction (C=8), reduction (C=16). Each keeps the 2 paths 0->2 and 1->2:
    # normal: eye(4) twice; reduction: FactorizedReduce(C, C) twice = conv_1, conv_2 (C/2, C, 1, 1) + BN gamma, beta
    fr = {c: 2 * (c // 2 * c) + 2 * c for c in (8, 16)}
    assert v.numel() == 2 * 16 + 2 * fr[8] + 2 * fr[16] + extra
    assert "classifier.bias" not in D._darts_extra_names(args, list(w0))  # CIFAR: classifier weight only (method.md §4.5)
    dil = (6, 6) + (0,) * 12
    parts = D._darts_edge_parts(w0, 0, 0, 6, 4, False)
    assert parts[-1] is w0["cells.0.edges.0.6.bn.bias"]  # the dil_conv bias fix (official: gamma twice)
    assert D.darts_weight_vector(w0, dil + dil, args) is not None
    # the constants (eye(C) of a skip, 1/9 of a pool) are made on the weights' device, in float64: on the meta
    # device (a stand-in for a GPU, which torch.cat refuses to mix with CPU tensors) the vector has the same length
    pools = (3, 2) + (0,) * 12  # node 2 <- skip(0) + avg_pool(1)
    meta = {k: v.to("meta") for k, v in w0.items()}
    for arch in (skip + skip, pools + pools):
        on_meta = D.darts_weight_vector(meta, arch, args)
        assert on_meta.device.type == "meta" and on_meta.shape == D.darts_weight_vector(w0, arch, args).shape
    assert D.darts_weight_vector({k: v.half() for k, v in w0.items()}, pools + pools, args).dtype == torch.float64


# ----------------------------------------------------------------------------------------------
# FLOPs and the Table 3 check (method.md §7.2)
def test_flops_table_equals_a_direct_flop_counter_count():
    from torch.utils.flop_counter import FlopCounterMode

    gen = torch.Generator().manual_seed(5)
    for args in (tiny_args("cifar", 16), tiny_args("imagenet", 40), tiny_args("cifar", 32, aux=None)):
        args.pop("aux", None)
        for _ in range(4):
            arch = SPACE.sample_path(gen, args)
            net = SPACE.network(arch, args).eval()
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                net(torch.randn(1, 3, args["image_size"], args["image_size"]))
            # flop_counter counts 2 per multiply-add; the paper's units (the official thop) count the classifier as
            # (2 * in - 1) * out instead of in * out
            fc = net.classifier
            direct = counter.get_total_flops() // 2 + (fc.in_features - 1) * fc.out_features
            assert SPACE.flops(arch, args) == direct == S.count_flops(net, args["image_size"])


@pytest.mark.parametrize(
    "text, channels, params_m, flops_m, official",
    [
        (CIFAR_SEARCHED, 48, 5.7, 629, 629_123_840),
        (CIFAR_SEARCHED, 46, 5.3, 581, None),
        (IMAGENET_600M, 48, 5.5, 597, 596_750_912),
    ],
)
def test_counts_match_table_3(text, channels, params_m, flops_m, official):
    # ImageNet network, 14 cells, 224x224, without the auxiliary head; multiply-adds of the convs, and the FC counted
    # as the official thop counts it, (2 * 768 - 1) * 1000. `official`: what the official search's thop gives on its
    # supernet with this path (its 600M check), a float32 sum, which our integer count rounds to exactly.
    args = dict(space="darts", channels=channels, layers=14, num_classes=1000, variant="imagenet", image_size=224)
    arch = SPACE.parse(text)
    with torch.device("meta"):
        params = S.count_all_params(SPACE.network(arch, args))
    flops = SPACE.flops(arch, args)
    assert abs(params / 1e6 - params_m) / params_m < 0.02, params
    assert abs(flops / 1e6 - flops_m) / flops_m < 0.002, flops  # 629.12M, 580.55M, 596.75M
    assert official is None or float(np.float32(flops)) == official


# ----------------------------------------------------------------------------------------------
# The scripts at toy scale: train -> search (--max-flops) -> retrain, CIFAR and ImageNet variants (the full tier; the
# unit tests above are in the default one)
def toy_flags(batch=16):
    return f"--channels 4 --layers 3 --batch-size {batch} --workers 0 --log-every 1".split()


def check_search(out, net_args, limit):
    result = json.load(open(out))
    assert result["done"] and result["supernet_args"] == net_args and result["settings"]["population"] == 50
    archs = [SPACE.parse(a) for a, _ in result["evaluated"]]
    assert len(archs) > 50 and all(SPACE.flops(a, net_args) <= limit * 1e6 for a in archs)  # never over the limit
    assert SPACE.flops(SPACE.parse(result["winner"]["arch"]), net_args) <= limit * 1e6


def median_flops(net_args):
    gen = torch.Generator().manual_seed(0)
    return float(np.median([SPACE.flops(SPACE.sample_path(gen, net_args), net_args) for _ in range(200)])) / 1e6


@pytest.mark.full
def test_cifar_train_search_retrain(tmp_path):
    sn = tmp_path / "sn"
    res = run("train.py", "--space", "darts", "--dataset", "fake", "--fake-images", 48, "--image-size", 16, *toy_flags(),
              "--epochs", 1, "--out", sn)  # fmt: skip
    assert "lr" in res.stdout
    config = json.load(open(sn / "config.json"))
    assert config["wd"] == 3e-4 and config["grad_clip"] == 5.0 and config["clip_mode"] == "norm"  # method.md §3, C10 column
    ckpt = torch.load(sn / "supernet.pt", weights_only=True)
    net_args = ckpt["supernet_args"]
    limit = median_flops(net_args)
    run("search.py", "--ckpt", sn / "supernet.pt", "--max-flops", limit, "--generations", 3, "--top", 1)
    check_search(sn / "search.json", net_args, limit)
    res = run("retrain.py", "--ckpt-search", sn / "search.json", "--count-only")
    assert "parameters" in res.stdout and "multiply-adds at 32x32" in res.stdout
    res = run("retrain.py", "--ckpt-search", sn / "search.json", "--dataset", "fake", "--fake-images", 32, "--image-size",
              32, *toy_flags(), "--epochs", 1, "--out", tmp_path / "rt")  # fmt: skip
    config = json.load(open(tmp_path / "rt" / "config.json"))
    assert config["aux_weight"] == 0.4 and config["drop_path"] == 0.2 and config["cutout"] == 16  # DARTS protocol
    assert "test top-1" in res.stdout and "multiply-adds" in res.stdout


@pytest.mark.full
def test_imagenet_train_search_retrain(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        for c in ("n01", "n02"):
            (tmp_path / "inet" / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "inet" / split / c / f"{i}.png")
    sn = tmp_path / "sn"
    run("train.py", "--space", "darts", "--dataset", "imagenet", "--data", tmp_path / "inet", "--image-size", 32,
        *toy_flags(8), "--epochs", 1, "--out", sn)  # fmt: skip
    config = json.load(open(sn / "config.json"))
    recipe = (config["variant"], config["lr_schedule"], config["clip_mode"], config["wd_on"])
    assert recipe == ("imagenet", "linear", "value", "conv")  # method.md §3, DARTS ImageNet column
    assert config["label_smoothing"] == 0.1 and config["epochs"] == 1
    log = [json.loads(line) for line in open(sn / "log.jsonl")]
    assert math.isclose(log[-1]["lr"], 5e-4)  # the linear schedule reaches its floor at the last step
    net_args = torch.load(sn / "supernet.pt", weights_only=True)["supernet_args"]
    limit = median_flops(net_args)
    run("search.py", "--ckpt", sn / "supernet.pt", "--max-flops", limit, "--generations", 2, "--top", 1)
    check_search(sn / "search.json", net_args, limit)
    res = run("retrain.py", "--ckpt-search", sn / "search.json", "--dataset", "imagenet", "--count-only")
    assert "224x224" in res.stdout and "'channels': 48" in res.stdout
    res = run("retrain.py", "--ckpt-search", sn / "search.json", "--dataset", "imagenet", "--data", tmp_path / "inet",
              "--image-size", 32, "--aux-weight", 0, *toy_flags(8), "--epochs", 1, "--out", tmp_path / "rt")  # fmt: skip
    assert "top-5" in res.stdout


@pytest.mark.full
def test_darts_user_errors(tmp_path):
    assert_user_error(run("retrain.py", "--genotype", "Genotype(normal=[])", "--count-only", check=False), "malformed")
    res = run("train.py", "--space", "darts", "--dataset", "imagenet", "--data", tmp_path / "none", "--out", tmp_path / "x",
              check=False)  # fmt: skip
    assert_user_error(res, "--dataset imagenet", "val/")
    assert_user_error(run("train.py", "--space", "darts", "--sampling", "shared", "--out", tmp_path / "y", check=False),
                      "--sampling")  # fmt: skip
    sn = tmp_path / "sn"
    run("train.py", "--space", "darts", "--dataset", "fake", "--fake-images", 16, "--image-size", 8, *toy_flags(),
        "--epochs", 1, "--out", sn)  # fmt: skip
    res = run("search.py", "--ckpt", sn / "supernet.pt", "--max-flops", 0.001, check=False)
    assert_user_error(res, "--max-flops", "no darts architecture is that small")
    assert_user_error(run("search.py", "--ckpt", sn / "supernet.pt", "--exhaustive", check=False), "NB201")


@pytest.mark.full
def test_imagenet_variant_resume_is_exact(tmp_path):
    # conv-only weight decay (two param groups), the per-step linear lr and the path sampler all survive a resume:
    # rebuild the run after epoch 1 from its snapshot, resume it, and compare with the uninterrupted run
    full = tmp_path / "full"
    run("train.py", "--space", "darts", "--variant", "imagenet", "--dataset", "fake", "--fake-images", 32, "--image-size",
        16, *toy_flags(), "--epochs", 2, "--keep-every", 1, "--out", full)  # fmt: skip
    part = tmp_path / "part"
    part.mkdir()
    for name in ("supernet_init.pt", "config.json"):
        shutil.copy(full / name, part / name)
    shutil.copy(full / "supernet_ep1.pt", part / "supernet.pt")
    assert "resumed" in run("train.py", "--resume", "--out", part).stdout
    a, b = (torch.load(r / "supernet.pt", weights_only=True) for r in (full, part))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert len(a["optimizer"]["param_groups"]) == 2 and a["optimizer"]["param_groups"][1]["weight_decay"] == 0.0
