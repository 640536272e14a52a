"""MobileNet space (method.md §2.4, §4.4, §5, §7.3, §7.4): supernet, model_id, sampling, angle, FLOPs table, Table 5 sizes."""

import json
import math
import os
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import mobilenet as M
from spaces import SPACES
from supernet import count_flops

WIDTH, K = 0.125, 5  # a tiny supernet: 5..216 channels, 0.6M parameters
ARGS = dict(space="mobilenet", num_classes=K, width=WIDTH, image_size=16)


def direct_madds(model, size):
    """Multiply-adds of one image through `model` in the paper's units: torch's own flop counter (2 FLOPs per
    multiply-add), plus (in - 1) * out for the classifier, which the official thop counts as (2 * in - 1) * out."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    fc = model.classifier
    return counter.get_total_flops() // 2 + (fc.in_features - 1) * fc.out_features


def random_archs(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [M.mb_sample(gen) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return M.MobileNetSupernet(K, WIDTH)


def test_layout_matches_spec():
    blocks = M.mb_blocks()
    assert len(blocks) == 21 and blocks[0] == (24, 32, 2) and blocks[4] == (32, 56, 2) and blocks[20] == (256, 432, 1)
    assert [b for b, (i, o, s) in enumerate(blocks) if s == 2] == [0, 4, 8, 16]
    allowed = [b for b, c in enumerate(M.MB_CHOICES) if M.MB_IDENTITY in c]
    assert allowed == [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19]  # method.md §2.4
    assert all(blocks[b][0] == blocks[b][1] and blocks[b][2] == 1 for b in allowed)  # identity only where shapes allow
    assert math.prod(len(c) for c in M.MB_CHOICES) == 6**6 * 7**15


def test_shapes_at_toy_sizes(tiny):
    for arch in random_archs(3) + [M.MB_OFFICIAL, (0,) * 21]:
        for size in (8, 16, 33):
            assert tiny(torch.randn(2, 3, size, size), arch).shape == (2, K)
    net = M.MobileNetSubnet(M.MB_OFFICIAL, K, WIDTH)
    assert len(net.blocks) == 20  # the one identity block is removed
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, K)


def test_init_follows_spec(tiny):
    w = tiny.blocks[3].ops[5].dw_conv.weight  # depthwise 7x7 over 4*6=24 channels: std sqrt(2 / (49 * 24))
    assert abs(w.std().item() / math.sqrt(2 / (49 * w.shape[0])) - 1) < 0.1
    assert torch.equal(tiny.blocks[3].ops[5].bn2.weight, torch.ones(w.shape[0]))
    assert torch.equal(tiny.head[1].bias, torch.zeros_like(tiny.head[1].bias))


def test_supernet_path_equals_subnet_with_its_weights(tiny):
    arch = M.MB_OFFICIAL
    sub = M.MobileNetSubnet(arch, K, WIDTH)
    kept = [b for b, c in enumerate(arch) if c != M.MB_IDENTITY]
    state = {}
    for name, t in tiny.state_dict().items():
        parts = name.split(".")
        if parts[0] != "blocks":
            state[name] = t
        elif int(parts[1]) in kept and int(parts[3]) == arch[int(parts[1])]:
            state[".".join(["blocks", str(kept.index(int(parts[1])))] + parts[4:])] = t
    sub.load_state_dict(state)  # strict: every subnet tensor comes from the supernet
    tiny.eval(), sub.eval()
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(tiny(x, arch), sub(x))
    tiny.train()


def test_only_the_sampled_ops_get_gradients(tiny):
    arch = random_archs(1, seed=3)[0]
    tiny.zero_grad(set_to_none=True)
    tiny(torch.randn(2, 3, 16, 16), arch).sum().backward()
    for b, block in enumerate(tiny.blocks):
        for c, op in enumerate(block.ops):
            assert all((p.grad is not None) == (c == arch[b]) for p in op.parameters()), (b, c)
    tiny.zero_grad(set_to_none=True)


def test_sampling_is_uniform_per_block_and_reproducible():
    archs = random_archs(2800, seed=1)
    assert archs[:5] == random_archs(5, seed=1)  # same seed (every DDP rank) -> same paths
    for b, choices in enumerate(M.MB_CHOICES):
        counts = Counter(a[b] for a in archs)
        assert set(counts) == set(choices), b
        expected = len(archs) / len(choices)
        assert all(abs(n - expected) < 5 * math.sqrt(expected) for n in counts.values()), (b, counts)


def test_model_id_round_trip_and_errors():
    text = "2 0 -1 2 2 0 2 4 0 4 4 2 4 2 4 2 0 0 0 2 2"  # method.md §7.4
    assert M.mb_parse(text) == M.MB_OFFICIAL and M.mb_format(M.MB_OFFICIAL) == text
    assert M.mb_parse("[2, 0, -1, 2, 2, 0, 2, 4, 0, 4, 4, 2, 4, 2, 4, 2, 0, 0, 0, 2, 2]") == M.MB_OFFICIAL
    for arch in random_archs(20):
        assert M.mb_parse(M.mb_format(arch)) == arch
    bad = {
        "2 0 -1": "21 block choices, got 3",
        text.replace("-1", "7"): "block 2: 7 is not a choice",
        "-1" + text[1:]: "block 0: identity (-1) is not allowed",
        text[:-1] + "x": "block 20 choice 'x' is not an integer",
    }
    for wrong, message in bad.items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
            M.mb_parse(wrong)
        assert "\n" not in str(err.value)


def test_fast_angle_equals_reference(tiny):
    w0 = {k: v.clone() for k, v in tiny.state_dict().items()}
    gen = torch.Generator().manual_seed(5)
    wt = {k: v + 0.1 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in w0.items()}
    archs = random_archs(40) + [M.MB_OFFICIAL, (0,) * 21, tuple(-1 if -1 in c else 5 for c in M.MB_CHOICES)]
    fast = M.MBAngleScorer(w0, wt, ARGS).angles(archs)
    ref = [M.mb_angle_reference(w0, wt, a, ARGS) for a in archs]
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12)
    assert len(set(np.round(fast, 9))) > 35 and all(0 < t < math.pi / 2 for t in fast)
    assert np.allclose(M.MBAngleScorer(w0, w0, ARGS).angles(archs), 0.0, atol=1e-6)  # W0 vs itself: 0 rad


def test_weight_vector_contents(tiny):
    state = tiny.state_dict()
    arch = M.MB_OFFICIAL
    v = M.mb_weight_vector(state, arch, ARGS)
    fixed = sum(state[n].numel() for n in M.MB_FIXED)
    blocks = M.mb_blocks(WIDTH)
    per_block = [
        blocks[b][1] * blocks[b][0] if c == -1 else sum(state[n].numel() for n in M._mb_op_names(b, c))
        for b, c in enumerate(arch)
    ]
    assert v.numel() == fixed + sum(per_block)
    # no BN in the fixed part, no classifier bias, no projection BN (method.md §4.5)
    assert "classifier.bias" not in M.MB_FIXED and not any("bn3" in p for p in M.MB_OP_PARTS)
    start = fixed + sum(per_block[:2])  # block 2 is the identity: eye(C) flattened
    c = blocks[2][0]
    assert torch.equal(v[start : start + c * c], torch.eye(c, dtype=torch.float64).flatten())
    # the eye(C) constants are made on the weights' device (meta stands in for a GPU here) and in float64
    on_meta = M.mb_weight_vector({k: t.to("meta") for k, t in state.items()}, arch, ARGS)
    assert on_meta.device.type == "meta" and on_meta.shape == v.shape
    assert M.mb_weight_vector({k: t.half() for k, t in state.items()}, arch, ARGS).dtype == torch.float64


def test_flops_table_equals_direct_count():
    for size in (16, 33):  # 33: odd sides exercise the floor in every strided conv
        for arch in random_archs(3, seed=size) + [M.MB_OFFICIAL]:
            net = M.MobileNetSubnet(arch, K, WIDTH)
            assert M.mb_flops(arch, size, WIDTH, K) == direct_madds(net, size), (size, arch)
            assert M.mb_params(arch, WIDTH, K) == sum(p.numel() for p in net.parameters())
    identity = tuple(-1 if -1 in c else 0 for c in M.MB_CHOICES)
    assert M.mb_flops(identity, 32, WIDTH, K) < M.mb_flops((0,) * 21, 32, WIDTH, K) < M.mb_flops((5,) * 21, 32, WIDTH, K)


def test_table5_params_and_madds():
    """method.md §7.3/§7.4: the searched model_id is 5.3M parameters and 473M multiply-adds at 224 px (paper Table 5)."""
    with torch.device("meta"):  # shapes only: no memory, no init cost
        net = M.MobileNetSubnet(M.MB_OFFICIAL, num_classes=1000)
    params = sum(p.numel() for p in net.parameters())
    madds = M.mb_flops(M.MB_OFFICIAL, 224, 1.0, 1000)
    assert madds == direct_madds(net, 224) == count_flops(net, 224)  # table, torch's counter and count_flops agree
    assert params == M.mb_params(M.MB_OFFICIAL) == 5_255_648  # -0.8% vs 5.3M
    # the official thop count (its FLOPs lookup table): the FC is 1000 x (2 x 1728 - 1); in x out would give 471,521,184
    assert madds == 473_248_184  # +0.05% vs 473M
    assert abs(params / 5.3e6 - 1) < 0.02 and abs(madds / 473e6 - 1) < 0.002


def test_space_interface():
    space = SPACES["mobilenet"]
    model = space.supernet(ARGS)
    assert model.args == ARGS and isinstance(model, M.MobileNetSupernet)
    arch = space.sample_path(torch.Generator().manual_seed(0), ARGS)
    assert space.parse(space.format(arch)) == arch and space.repair(arch) == arch
    assert space.gene_choices(ARGS) == space.mutation_choices(ARGS) == [list(c) for c in M.MB_CHOICES]
    state = model.state_dict()
    assert space.scorer(state, state, ARGS).angles([arch]).shape == (1,)
    assert space.flops(arch, ARGS) == M.mb_flops(arch, 16, WIDTH, K)
    assert space.network(arch, ARGS).dropout == 0.2 and space.network(arch, {**ARGS, "dropout": 0.5}).dropout == 0.5
    assert SPACES["mobilenet"] is space and space.all_archs(ARGS) is None


# ----------------------------------------------------------------------------------------------
# Smoke tests of the real scripts: train -> search (FLOPs limit) -> retrain, tiny MobileNet on fake 32x32 images (the
# full tier; the unit tests above are in the default one).
TINY_MB = f"--space mobilenet --width {WIDTH} --dataset fake --fake-images 64 --image-size 32 --batch-size 32 --workers 0"
FAST_SEARCH = "--population 12 --topk 4 --mutations 6 --crossovers 6 --generations 3".split()


@pytest.fixture(scope="module")
def mb_run(tmp_path_factory):
    from test_scripts import run

    out = tmp_path_factory.mktemp("mb") / "sn"
    res = run("train.py", *TINY_MB.split(), "--epochs", 2, "--keep-every", 1, "--log-every", 1, "--out", out)
    return out, res.stdout, run


@pytest.mark.full
def test_train_search_retrain_scripts(mb_run):
    out, stdout, run = mb_run
    assert "mobilenet supernet" in stdout and "ETA" in stdout
    config = json.load(open(out / "config.json"))
    # method.md §3 recipe filled in: linear per-iteration lr 0.25 -> 5e-4, label smoothing, conv+fc wd, clip by value
    assert (config["lr"], config["lr_min"], config["lr_schedule"], config["epochs"]) == (0.25, 5e-4, "linear", 2)
    assert (config["wd"], config["wd_on"], config["clip_mode"], config["label_smoothing"]) == (4e-5, "conv+fc", "value", 0.1)
    net_args = torch.load(out / "supernet.pt", weights_only=True)["supernet_args"]
    assert net_args == dict(space="mobilenet", num_classes=10, width=WIDTH, image_size=32)

    # search with a FLOPs limit between the cheapest and the dearest architecture: nothing above it is ever scored
    limit = 0.4  # M multiply-adds at 32 px: the tiny space spans 0.11M .. 0.87M, the median random draw is 0.44M
    res = run("search.py", "--ckpt", out / "supernet.pt", *FAST_SEARCH, "--max-flops", limit, "--out", out / "s.json")
    found = json.load(open(out / "s.json"))
    assert found["settings"]["max_flops"] == limit and len(found["evaluated"]) == 36
    flops = [M.mb_flops(M.mb_parse(a), 32, WIDTH, 10) for a, _ in found["evaluated"]]
    assert max(flops) <= limit * 1e6 < M.mb_flops((5,) * 21, 32, WIDTH, 10)
    assert M.mb_flops(M.mb_parse(found["winner"]["arch"]), 32, WIDTH, 10) <= limit * 1e6
    assert "winner:" in res.stdout and "M multiply-adds" in res.stdout
    import search  # the default (method.md §5) settings: population 50, top-10, 25 + 25 children, 20 generations, 475M

    assert search.RECIPES["mobilenet"] == dict(
        population=50, topk=10, mutations=25, crossovers=25, mutation_prob=0.1, generations=20, max_flops=475.0
    )

    # retrain: --count-only, then one epoch of the winner
    res = run("retrain.py", "--ckpt-search", out / "s.json", *TINY_MB.split(), "--count-only")
    winner = M.mb_parse(found["winner"]["arch"])
    assert f"{M.mb_params(winner, WIDTH, 10):,} parameters" in res.stdout
    assert f"{M.mb_flops(winner, 32, WIDTH, 10) / 1e6:.1f}M multiply-adds" in res.stdout
    assert not os.path.exists(out.parent / "rt")
    res = run("retrain.py", "--ckpt-search", out / "s.json", *TINY_MB.split(), "--epochs", 1, "--out", out.parent / "rt")
    log = [json.loads(line) for line in open(out.parent / "rt" / "log.jsonl")]
    assert {"test_top1", "test_top5"} <= set(log[-1]) and "top-5" in res.stdout
    ckpt = torch.load(out.parent / "rt" / "retrain.pt", weights_only=True)
    assert ckpt["config"]["lr_schedule"] == "linear-iter" and ckpt["config"]["dropout"] == 0.2
    assert ckpt["config"]["wd_on"] == "conv" and ckpt["config"]["clip_mode"] == "norm"


@pytest.mark.full
def test_script_errors_are_one_line(mb_run):
    out, _, run = mb_run
    cases = [
        ("search.py", "--ckpt", out / "supernet.pt", "--max-flops", 0.05, "--out", out / "x.json"),  # below the cheapest
        ("retrain.py", "--space", "mobilenet", "--arch", "2 0 -1", "--count-only"),  # a model_id of the wrong length
        ("train.py", *TINY_MB.split(), "--channels", 8, "--out", out.parent / "bad"),  # NB201 flag on mobilenet
    ]
    messages = ["no mobilenet architecture is that small", "21 block choices, got 3", "scale it with --width"]
    for args, message in zip(cases, messages):
        res = run(*args, check=False)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, (args, res.stderr)
    assert not os.path.exists(out / "x.json") and not os.path.exists(out.parent / "bad")


@pytest.mark.full
def test_train_resume_is_exact(mb_run, tmp_path):
    """Resuming from the epoch-1 snapshot ends bit-identical to the uninterrupted 2-epoch run (same paths, same W0)."""
    from test_scripts import assert_same_weights_and_momentum, load

    out, _, run = mb_run
    copy = tmp_path / "resumed"
    copy.mkdir()
    for name in ("config.json", "supernet_init.pt"):
        shutil.copy(out / name, copy / name)
    shutil.copy(out / "supernet_ep1.pt", copy / "supernet.pt")
    with open(out / "log.jsonl") as f:
        (copy / "log.jsonl").write_text(f.readline())
    run("train.py", "--resume", "--out", copy)
    resumed, full = load(copy / "supernet.pt"), load(out / "supernet.pt")
    assert resumed["epoch"] == full["epoch"] == 2 and resumed["rng"]["path"].equal(full["rng"]["path"])
    assert_same_weights_and_momentum(resumed, full)
