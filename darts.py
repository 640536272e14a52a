"""
The DARTS-like search space of RLNAS (paper Table 3): cells, both macro networks, sampling and repair, the Genotype
notation, the exact FLOPs count, and the DARTS weight vector with its reference angle and fast scorer.

A student can read this file on its own, or skip it: nothing of the NB201 path (supernet.py, angle.py) depends on
it. It implements, in order, method.md §2.2 (the CIFAR supernet and its sampling), §2.3 (the ImageNet supernet),
§5 (the DARTS evolution settings: repair after mutation, the FLOPs limit), §6 (the stand-alone network retrain.py
trains) and §4.3/§4.5 (the weight vector); the searched cells of paper Table 3 are method.md §7.2 and §7.4.

Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021, arXiv:2101.11834, the DARTS-space
experiments (paper Sec. 4, Table 3), in the cell space of DARTS (Liu et al., ICLR 2019); the weight vector follows
ABS's "Algorithm 1: block-like weight vector construction" (Hu et al., ECCV 2020), as the official test_server.py.

    python train.py --space darts --dataset cifar10                       # the CIFAR-10 supernet (method.md §2.2, §3)
    python search.py --ckpt runs/<darts run>/supernet.pt --max-flops 600   # the FLOPs limit of the ImageNet search
    python -c "import darts; print(darts.DartsNetwork(16, 8, 10, 'cifar'))"
"""

from __future__ import annotations

import ast
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from angle import angle_from, parameter_names, pool_constant, segment_stats, to_host
from supernet import ReLUConvBN, Zero, add_all, count_all_params, count_flops

# ----------------------------------------------------------------------------------------------
# The search space (method.md §2.2)
# The DARTS-like space of RLNAS (paper Table 3). A cell has two inputs (node 0 = the cell before last, node 1 = the last
# cell) and 4 intermediate nodes 2..5; node j sums one op on each of its inputs k < j, and the cell output is the
# concatenation of nodes 2..5 (4C channels). 14 edges per cell:
#
#     edge:  0 1 | 2 3 4 | 5 6 7 8 | 9 10 11 12 13          edge index of k -> j = k + (2 + 3 + ... + (j - 1))
#     into:  n2  |  n3   |   n4    |      n5
#     from:  0 1 | 0 1 2 | 0 1 2 3 | 0 1  2  3  4
#
# A genotype is 28 genes (op indices 0..7): 14 for the normal cells, then 14 for the reduction cells; every normal
# cell shares the first 14, both reduction cells the last 14. A valid genotype has exactly two non-'none' inputs per
# intermediate node (the DARTS discrete cell); `darts_repair` makes any 28 genes valid (method.md §2.2 "check_cand").
DARTS_OPS = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)  # fmt: skip
DARTS_STEPS = 4  # intermediate nodes
DARTS_EDGES = tuple((k, j) for j in range(2, 2 + DARTS_STEPS) for k in range(j))  # edge e = (source k, target node j)
DARTS_NODE_EDGES = tuple(tuple(e for e, (_, j) in enumerate(DARTS_EDGES) if j == node) for node in range(2, 6))
NUM_DARTS_EDGES = len(DARTS_EDGES)  # 14
DARTS_NONE, DARTS_MAX, DARTS_AVG, DARTS_SKIP = 0, 1, 2, 3
DARTS_SEP3 = DARTS_OPS.index("sep_conv_3x3")


def darts_edge(k: int, j: int) -> int:
    """Edge index of source k -> node j: k + (2 + 3 + ... + (j - 1)) (method.md §4.3)."""
    return k + sum(range(2, j))


def darts_reductions(layers: int) -> tuple[int, int]:
    """Positions of the two reduction cells: L//3 and 2L//3 (CIFAR L=8: 2, 5; ImageNet L=14: 4, 9, i.e. 4N-R-4N-R-4N)."""
    return layers // 3, 2 * layers // 3


def darts_cells(channels: int, layers: int) -> list[tuple[int, bool]]:
    """(C, is_reduction) of every cell in network order: C doubles at each reduction cell."""
    out, c = [], channels
    for i in range(layers):
        reduction = i in darts_reductions(layers)
        c = 2 * c if reduction else c
        out.append((c, reduction))
    return out


def darts_repair(genes: Sequence[int], draw) -> tuple[int, ...]:
    """Give every intermediate node of both cells exactly two non-'none' inputs (the official check_cand, method.md §2.2).

    `draw(n)` returns a uniform int in [0, n). Too many live inputs: randomly chosen ones become 'none'. Too few:
    randomly chosen 'none' edges get a uniform non-'none' op. With uniform genes this keeps 2 inputs uniformly and a
    uniform real op on each: P(none) per edge = 0, 1/3, 1/2, 3/5 for nodes 2, 3, 4, 5.
    """
    out = list(genes)
    for cell in (0, NUM_DARTS_EDGES):  # the normal genes, then the reduction genes
        for edges in DARTS_NODE_EDGES:
            live = [cell + e for e in edges if out[cell + e] != DARTS_NONE]
            dead = [cell + e for e in edges if out[cell + e] == DARTS_NONE]
            too_many = len(live) > 2
            pool, fix = (live, len(live) - 2) if too_many else (dead, 2 - len(live))
            for _ in range(fix):  # pick `fix` distinct edges from `pool`, uniformly
                g = pool.pop(draw(len(pool)))
                out[g] = DARTS_NONE if too_many else 1 + draw(len(DARTS_OPS) - 1)
    return tuple(out)


def check_darts_arch(arch: Sequence[int]) -> None:
    if len(arch) != 2 * NUM_DARTS_EDGES or any(not isinstance(o, int) or not 0 <= o < len(DARTS_OPS) for o in arch):
        raise ValueError(f"a DARTS architecture is 28 op indices in 0..7, got {tuple(arch)}")


# ----------------------------------------------------------------------------------------------
# Genotypes: the standard DARTS notation at every boundary (CLI, logs, JSON), 28 genes inside.
def darts_to_genotype(arch: Sequence[int]) -> str:
    """28 genes -> "Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], reduce=[...], ...)".

    Each node's two live inputs are listed in the order of their source node. Only a repaired genotype (two live
    inputs per node) can be written: the notation has no node markers, it counts two pairs per node.
    """
    check_darts_arch(arch)
    for cell in (0, NUM_DARTS_EDGES):
        if any(sum(arch[cell + e] != DARTS_NONE for e in edges) != 2 for edges in DARTS_NODE_EDGES):
            raise ValueError(f"DARTS genotype {tuple(arch)} does not have exactly two inputs per node; repair it first")
    parts = []
    for cell in (0, NUM_DARTS_EDGES):
        pairs = [(DARTS_OPS[arch[cell + e]], DARTS_EDGES[e][0]) for e in range(NUM_DARTS_EDGES) if arch[cell + e]]
        parts.append("[" + ", ".join(f"('{op}', {k})" for op, k in pairs) + "]")
    concat = list(range(2, 2 + DARTS_STEPS))
    return f"Genotype(normal={parts[0]}, normal_concat={concat}, reduce={parts[1]}, reduce_concat={concat})"


def genotype_to_darts(text: str) -> tuple[int, ...]:
    """Parse the DARTS Genotype notation; raise ValueError naming what is wrong.

    Each list holds two (op, input) pairs per intermediate node, nodes in order (8 pairs), as DARTS prints them.
    """
    example = "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...8 pairs], normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=[2, 3, 4, 5])"  # noqa: E501
    if not isinstance(text, str):
        raise ValueError(f"a DARTS genotype must be a string; expected {example}")
    try:
        call = ast.parse(text.strip(), mode="eval").body
        ok = isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Genotype" and not call.args
        fields = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords} if ok else {}
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):  # TypeError: an unhashable literal {[1]}
        ok = False
    if not ok or set(fields) != {"normal", "normal_concat", "reduce", "reduce_concat"}:
        raise ValueError(f"malformed DARTS genotype {text[:80]!r}...; expected {example}")
    genes = [0] * (2 * NUM_DARTS_EDGES)
    for cell, key in ((0, "normal"), (NUM_DARTS_EDGES, "reduce")):
        concat = fields[f"{key}_concat"]
        if concat != list(range(2, 2 + DARTS_STEPS)) or any(type(c) is not int for c in concat):  # 2.0, True: no
            raise ValueError(f"DARTS genotype: {key}_concat must be [2, 3, 4, 5] (every node feeds the output)")
        pairs = fields[key]
        if not isinstance(pairs, (list, tuple)) or len(pairs) != 2 * DARTS_STEPS:
            raise ValueError(f"DARTS genotype: {key} needs 8 (op, input) pairs, two per node; got {pairs!r}")
        for i, pair in enumerate(pairs):
            node = 2 + i // 2
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and pair[0] in DARTS_OPS and pair[0] != "none"):
                ops = ", ".join(DARTS_OPS[1:])
                raise ValueError(f"DARTS genotype: {key} pair {pair!r} must be (op, input) with op in {ops}")
            if not (type(pair[1]) is int and 0 <= pair[1] < node):  # `type is`: True is an int, not an input index
                raise ValueError(f"DARTS genotype: {key} pair {pair!r} feeds node {node}, so its input must be 0..{node - 1}")
            e = cell + darts_edge(pair[1], node)
            if genes[e]:
                raise ValueError(f"DARTS genotype: {key} node {node} takes input {pair[1]} twice")
            genes[e] = DARTS_OPS.index(pair[0])
    return tuple(genes)


# ----------------------------------------------------------------------------------------------
# Operations (method.md §2.2). Named sub-modules (dw1, pw1, bn1, ...): the weight vector walks them by name.
class SepConv(nn.Module):
    """sep_conv_kxk: [ReLU, depthwise k x k (stride s), pointwise 1x1, BN] twice, the second time with stride 1."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int):
        super().__init__()
        self.dw1 = nn.Conv2d(c_in, c_in, k, stride, k // 2, groups=c_in, bias=False)
        self.pw1 = nn.Conv2d(c_in, c_in, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.dw2 = nn.Conv2d(c_in, c_in, k, 1, k // 2, groups=c_in, bias=False)
        self.pw2 = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x):
        x = self.bn1(self.pw1(self.dw1(torch.relu(x))))  # (B, C, H/s, W/s)
        return self.bn2(self.pw2(self.dw2(torch.relu(x))))  # (B, C_out, H/s, W/s)


class DilConv(nn.Module):
    """dil_conv_kxk: ReLU, depthwise k x k with dilation 2 (stride s), pointwise 1x1, BN."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int):
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, k, stride, k - 1, dilation=2, groups=c_in, bias=False)  # padding 2 or 4
        self.pw = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.bn(self.pw(self.dw(torch.relu(x))))  # (B, C_out, H/s, W/s)


class FactorizedReduce(nn.Module):
    """Halve H and W without losing every other pixel: ReLU, two 1x1 stride-2 convs (the second on the input shifted
    by one pixel) to C_out/2 channels each, concatenated, BN. The stride-2 skip_connect, and preprocess0 after a
    reduction (method.md §2.2)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        x = torch.relu(x)
        # DARTS shifts with x[:, :, 1:, 1:]; padding one zero row/column first reads exactly the same pixels for even
        # sizes (all of the paper's) and keeps both halves the same size for odd ones (toy image sizes).
        shifted = nn.functional.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))  # (B, C_out, H/2, W/2)


class PoolBN(nn.Module):
    """max_pool_3x3 / avg_pool_3x3 (stride s, padding 1); in the supernet followed by BN(affine=True) (method.md §2.2)."""

    def __init__(self, kind: str, c: int, stride: int, bn: bool):
        super().__init__()
        if kind == "max":
            self.pool = nn.MaxPool2d(3, stride, padding=1)
        else:
            self.pool = nn.AvgPool2d(3, stride, padding=1, count_include_pad=False)
        self.bn = nn.BatchNorm2d(c) if bn else None

    def forward(self, x):
        x = self.pool(x)  # (B, C, H/s, W/s)
        return x if self.bn is None else self.bn(x)


def make_darts_op(op: int, c: int, stride: int, pool_bn: bool) -> nn.Module:
    name = DARTS_OPS[op]
    if name == "none":
        return Zero()  # never run: a 'none' edge is skipped
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        return PoolBN(name[:3], c, stride, pool_bn)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c)
    if name.startswith("sep_conv"):
        return SepConv(c, c, int(name[-1]), stride)
    return DilConv(c, c, int(name[-1]), stride)  # dil_conv_3x3 / dil_conv_5x5


def drop_path(x: torch.Tensor, prob: float, gen: torch.Generator | None) -> torch.Tensor:
    """DARTS drop path: zero a whole op output per sample with probability `prob`, scale the rest by 1/(1-prob)."""
    keep = 1.0 - prob
    mask = (torch.rand(x.shape[0], 1, 1, 1, generator=gen, device=x.device) < keep).to(x.dtype)  # (B, 1, 1, 1)
    return x / keep * mask


class DartsCell(nn.Module):
    """One DARTS cell. supernet=True: all 8 candidate ops on each of the 14 edges, forward runs the genes it is given;
    supernet=False: only the ops of one fixed 14-gene genotype (the network retrain.py trains)."""

    def __init__(self, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool, genes=None):
        super().__init__()
        self.reduction, self.c = reduction, c
        # preprocess0: FactorizedReduce if the previous cell halved the size (s0 is twice as large as s1), else
        # ReLU-conv1x1-BN; preprocess1: ReLU-conv1x1-BN. Both map to C channels.
        self.preprocess0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, affine=True)
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, affine=True)
        edges = {}
        for e, (k, _) in enumerate(DARTS_EDGES):
            stride = 2 if reduction and k < 2 else 1  # reduction cells halve on the edges from the two inputs
            if genes is None:  # supernet: edges.e.op = candidate op of edge e; pools get their BN
                edges[str(e)] = nn.ModuleList([make_darts_op(op, c, stride, pool_bn=True) for op in range(len(DARTS_OPS))])
            elif genes[e] != DARTS_NONE:  # stand-alone: the chosen op only, DARTS's pools without BN
                edges[str(e)] = make_darts_op(genes[e], c, stride, pool_bn=False)
        self.edges = nn.ModuleDict(edges)
        self.genes = None if genes is None else tuple(genes)

    def forward(self, s0, s1, genes=None, drop_prob: float = 0.0, gen=None):
        genes = self.genes if genes is None else genes
        states = [self.preprocess0(s0), self.preprocess1(s1)]  # 2 x (B, C, H, W)
        for edges in DARTS_NODE_EDGES:
            terms = []
            for e in edges:
                if genes[e] == DARTS_NONE:
                    continue  # RLNAS single path: an edge off the sampled genotype is not computed at all
                op = self.edges[str(e)][genes[e]] if self.genes is None else self.edges[str(e)]
                h = op(states[DARTS_EDGES[e][0]])  # (B, C, H', W')
                if drop_prob > 0 and self.training and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob, gen)  # DARTS evaluation: never on an identity
                terms.append(h)
            if not terms:  # a node with no live input (only an unrepaired genotype has one) is 0
                step = 2 if self.reduction else 1
                terms = [torch.zeros_like(states[1][:, :, ::step, ::step])]
            states.append(add_all(terms))
        return torch.cat(states[2:], dim=1)  # (B, 4C, H', W'): every intermediate node feeds the output

    def extra_repr(self):
        return f"C={self.c}, reduction={self.reduction}" + ("" if self.genes is None else f", genes={self.genes}")


class AuxiliaryHead(nn.Module):
    """DARTS auxiliary classifier after cell 2L//3: CIFAR for 8x8 inputs, ImageNet for 7x7 (its 768-channel BN
    omitted, as in DARTS, method.md §6). Its parameters and FLOPs are not counted in Table 3."""

    def __init__(self, c: int, num_classes: int, imagenet: bool):
        super().__init__()
        layers = [nn.ReLU(), nn.AvgPool2d(5, stride=2 if imagenet else 3, padding=0, count_include_pad=False)]
        layers += [nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(), nn.Conv2d(128, 768, 2, bias=False)]
        layers += [nn.ReLU()] if imagenet else [nn.BatchNorm2d(768), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))  # (B, K)


class DartsNetwork(nn.Module):
    """The DARTS macro network (method.md §2.2/§2.3), as supernet (genotype=None) or as one stand-alone architecture.

    cifar:    stem conv3x3 3->3C + BN; L cells, reductions at L//3 and 2L//3; global average pool; Linear(4C', K).
    imagenet: stem0 = conv3x3/2 3->C/2, BN, ReLU, conv3x3/2 C/2->C, BN; stem1 = ReLU, conv3x3/2 C->C, BN (1/8 size);
              L cells laid out 4N-R-4N-R-4N for L=14; average pool (7x7 at 224) and Linear(4C', K).
    forward(x, arch) takes the 28 genes (supernet) or nothing (stand-alone).
    """

    def __init__(self, channels: int, layers: int, num_classes: int, variant: str, genotype=None, aux: bool = False):
        super().__init__()
        c, imagenet = channels, variant == "imagenet"
        if imagenet:
            self.stem0 = nn.Sequential(
                nn.Conv2d(3, c // 2, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c // 2),
                nn.ReLU(),
                nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c),
            )
            self.stem1 = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c))
            c_pp, c_p, reduction_prev = c, c, True  # stem0 (1/4 size) feeds the first cell's preprocess0: factorized
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, 3 * c, 3, padding=1, bias=False), nn.BatchNorm2d(3 * c))
            c_pp, c_p, reduction_prev = 3 * c, 3 * c, False  # stem_multiplier 3
        self.reductions = darts_reductions(layers)
        self.aux_pos = 2 * layers // 3 if aux else None
        cells = []
        for i, (c, reduction) in enumerate(darts_cells(channels, layers)):
            genes = None if genotype is None else genotype[NUM_DARTS_EDGES:] if reduction else genotype[:NUM_DARTS_EDGES]
            cells.append(DartsCell(c_pp, c_p, c, reduction, reduction_prev, genes))
            reduction_prev = reduction
            c_pp, c_p = c_p, DARTS_STEPS * c
            if i == self.aux_pos:
                self.aux_head = AuxiliaryHead(c_p, num_classes, imagenet)
        self.cells = nn.ModuleList(cells)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)  # = AvgPool2d(7) on the 7x7 maps of a 224 input
        self.classifier = nn.Linear(c_p, num_classes)
        self.imagenet = imagenet
        self.genotype = None if genotype is None else tuple(genotype)
        self.drop_path_prob, self.drop_generator = 0.0, None  # retrain.py sets them (DARTS-CIFAR protocol)
        if imagenet and genotype is None:
            # method.md §2.3: the ImageNet supernet's init is part of the angle (method.md pitfall 2): kaiming_uniform
            # convs, BN 1/0, Linear N(0, 0.01) with bias 0
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_uniform_(m.weight)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)

    def forward(self, x, arch=None):
        arch = self.genotype if arch is None else arch
        normal, reduce = arch[:NUM_DARTS_EDGES], arch[NUM_DARTS_EDGES:]
        if self.imagenet:
            s0 = self.stem0(x)  # (B, C, H/4, W/4)
            s1 = self.stem1(s0)  # (B, C, H/8, W/8)
        else:
            s0 = s1 = self.stem(x)  # (B, 3C, H, W)
        aux = None
        for i, cell in enumerate(self.cells):
            genes = reduce if cell.reduction else normal
            s0, s1 = s1, cell(s0, s1, genes, self.drop_path_prob, self.drop_generator)  # s1: (B, 4C', H', W')
            if i == self.aux_pos and self.training:
                aux = self.aux_head(s1)  # (B, K)
        logits = self.classifier(self.global_pooling(s1).flatten(1))  # (B, K)
        return logits if aux is None else (logits, aux)


# ----------------------------------------------------------------------------------------------
# RLNAS: sampling, repair and building, as functions of net_args (the dict checkpoints store; spaces.py wires them up)
def darts_net_args(args, num_classes: int) -> dict:
    """net_args of a DARTS network from train.py's or retrain.py's flags (supernet and stand-alone alike)."""
    return dict(
        space="darts",
        channels=args.channels,
        layers=args.layers,
        num_classes=num_classes,
        variant=args.variant,
        image_size=args.image_size,
    )


def darts_supernet(net_args: dict) -> nn.Module:
    a = net_args
    net = DartsNetwork(a["channels"], a["layers"], a["num_classes"], a["variant"])
    net.args = dict(net_args)
    return net


def darts_network(arch: Sequence[int], net_args: dict, aux: bool = False, **opts) -> nn.Module:
    """The stand-alone network of one genotype (what retrain.py trains), with the auxiliary head if `aux`."""
    check_darts_arch(arch)
    a = net_args
    return DartsNetwork(a["channels"], a["layers"], a["num_classes"], a["variant"], genotype=tuple(arch), aux=aux)


def darts_sample(gen: torch.Generator) -> tuple[int, ...]:
    """RLNAS (method.md §2.2): one normal and one reduction genotype per step, each gene uniform over the 8 ops, then
    repaired to two live inputs per node. Only `gen` is drawn from (no global reseeding): the same seed on every
    DDP rank gives the same path (method.md pitfall 4)."""
    genes = torch.randint(len(DARTS_OPS), (2 * NUM_DARTS_EDGES,), generator=gen).tolist()
    return darts_repair(genes, lambda n: int(torch.randint(n, (1,), generator=gen)))


def darts_mutation_choices(net_args: dict) -> list[list[int]]:
    # method.md §5: C10 mutates into randint(0, 8) ('none' allowed), ImageNet into randint(1, 8); repair follows either
    # way. Unlike the official code (its loop covers the first 14 genes only), the reduction genes mutate too.
    low = 1 if net_args.get("variant") == "imagenet" else 0
    return [list(range(low, len(DARTS_OPS)))] * (2 * NUM_DARTS_EDGES)


def darts_repaired(arch: Sequence[int]) -> tuple[int, ...]:
    """The evolution's repair: deterministic given the arch (a local generator seeded by the genes), so a resumed
    search replays the same trajectory; a valid arch is returned unchanged."""
    rng = np.random.default_rng([int(g) for g in arch])
    return darts_repair(arch, lambda n: int(rng.integers(n)))


def darts_params(arch: Sequence[int], net_args: dict) -> int:
    """Parameters of the stand-alone network (no auxiliary head), counted on the meta device."""
    with torch.device("meta"):
        return count_all_params(darts_network(arch, net_args))


# ----------------------------------------------------------------------------------------------
# RLNAS: the exact FLOPs count of the DARTS search (method.md §5, paper Table 3's multiply-adds).
# FLOPs add up over modules: count each candidate op once per (input shape, stride) with flop_counter, sum it over
# the cells of each kind, and get the fixed part (stems, preprocessing, classifier) as the direct count of one
# reference genotype minus its ops. tests/test_darts.py checks the sum against direct counts.
_FLOPS_TABLES: dict[tuple, tuple] = {}  # net_args -> (fixed multiply-adds, per-(cell kind, edge, op) multiply-adds)


def darts_flops(arch: Sequence[int], net_args: dict) -> int:
    """Multiply-adds of the stand-alone network (no auxiliary head) at net_args' image size, exactly as
    count_flops(darts_network(arch)) would count them, from a per-(cell, edge, op) table built once per net_args."""
    fixed, table = _flops_table(net_args)  # table: (2 cell kinds, 14 edges, 8 ops), summed over cells
    normal, reduce = arch[:NUM_DARTS_EDGES], arch[NUM_DARTS_EDGES:]
    return fixed + sum(table[0][e][normal[e]] + table[1][e][reduce[e]] for e in range(NUM_DARTS_EDGES))


def darts_min_flops(net_args: dict) -> int:
    """The smallest multiply-add count of any valid genotype: per node, its two cheapest inputs with their
    cheapest real op (search.py refuses a --max-flops below it at once)."""
    fixed, table = _flops_table(net_args)
    cheapest = [sorted(min(table[kind][e][1:]) for e in edges)[:2] for kind in (0, 1) for edges in DARTS_NODE_EDGES]
    return fixed + sum(sum(pair) for pair in cheapest)


def _flops_table(net_args: dict):
    key = tuple(sorted(net_args.items()))
    if key in _FLOPS_TABLES:
        return _FLOPS_TABLES[key]
    a = net_args
    shapes = []  # per cell: (C, H, W of the cell's nodes before its stride)
    with torch.device("meta"):
        net = DartsNetwork(a["channels"], a["layers"], a["num_classes"], a["variant"]).eval()
    for cell in net.cells:
        cell.preprocess1.register_forward_hook(lambda m, i, out: shapes.append(tuple(out.shape[1:])))
    ref = (DARTS_SEP3, DARTS_SEP3) + (0,) * 12  # node 2 <- sep3(0) + sep3(1); other nodes empty
    with torch.no_grad():
        net(torch.zeros(1, 3, a["image_size"], a["image_size"], device="meta"), ref + ref)
    cache, table = {}, [[[0] * len(DARTS_OPS) for _ in range(NUM_DARTS_EDGES)] for _ in range(2)]
    for cell, (c, hc, wc) in zip(net.cells, shapes):
        for e, (k, _) in enumerate(DARTS_EDGES):
            stride = 2 if cell.reduction and k < 2 else 1
            if cell.reduction and k >= 2:  # intermediate nodes of a reduction cell are already halved
                h, w = (hc + 1) // 2, (wc + 1) // 2
            else:
                h, w = hc, wc
            for op in range(1, len(DARTS_OPS)):
                if (op, c, h, w, stride) not in cache:
                    with torch.device("meta"):
                        module = make_darts_op(op, c, stride, pool_bn=False).eval()
                    with FlopCounterMode(display=False) as counter, torch.no_grad():
                        module(torch.zeros(1, c, h, w, device="meta"))
                    cache[op, c, h, w, stride] = counter.get_total_flops() // 2
                table[int(cell.reduction)][e][op] += cache[op, c, h, w, stride]
    with torch.device("meta"):
        direct = count_flops(darts_network(ref + ref, net_args), a["image_size"])
    fixed = direct - sum(table[0][e][ref[e]] + table[1][e][ref[e]] for e in range(NUM_DARTS_EDGES))
    _FLOPS_TABLES[key] = fixed, table
    return fixed, table


# ----------------------------------------------------------------------------------------------
# RLNAS: the DARTS weight vector (method.md §4.3, §4.5). Per cell, in network order, 30 input-to-output paths: from
# input node 0 or 1 through strictly increasing intermediate nodes to ANY intermediate node 2..5 (every intermediate
# node is concatenated into the cell output, so every such path reaches it): 2 end at node 2, 4 at node 3, 8 at
# node 4, 16 at node 5. A path with a 'none' edge is dropped; a surviving path contributes each of its edges (shared
# edges once per path):
#   max/avg pool       a constant 1/9 tensor of shape [C, 3, 3] (C*9 numbers) + the trained BN gamma, beta after it
#   skip, stride 1     a constant eye(C), flattened (C*C numbers; NB201's skip contributes nothing)
#   skip, stride 2     FactorizedReduce: conv_1, conv_2 weights + BN gamma, beta
#   sep_conv           dw1, pw1, dw2, pw2 weights, then BN1 gamma, beta and BN2 gamma, beta
#   dil_conv           dw, pw weights, then BN gamma, beta. FIX: the official test_server.py reads the BN's gamma
#                      twice (the bias slot reads .weight, a copy-paste bug); we use the bias. The angles differ
#                      from the official ones wherever a dil_conv is on a surviving path.
# After all cells, once: the stem(s) (conv + BN gamma, beta each), every cell's preprocess0 and preprocess1 (convs +
# BN gamma, beta), and the classifier: weight only on CIFAR, weight + bias on ImageNet (method.md §4.5).
# The order inside the vector does not change the angle; the reference keeps the official one.
DARTS_PATHS = tuple(
    tuple(darts_edge(a, b) for a, b in zip(nodes, nodes[1:]))
    for end in range(2, 6)
    for src in (0, 1)
    for mask in range(2 ** (end - 2))  # which of the intermediate nodes 2..end-1 the path visits
    for nodes in [[src] + [m for m in range(2, end) if mask >> (m - 2) & 1] + [end]]
)  # 30 paths, each a tuple of edge indices
assert len(DARTS_PATHS) == 30


def _darts_edge_parts(state: dict, i: int, e: int, op: int, c: int, reduction: bool) -> list[torch.Tensor]:
    """The pieces of edge e with op `op` in cell i (method.md §4.3), as tensors; constants on the weights' device."""
    name, pre = DARTS_OPS[op], f"cells.{i}.edges.{e}.{op}."
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        return [pool_constant(c, state[pre + "bn.weight"].device), state[pre + "bn.weight"], state[pre + "bn.bias"]]
    if op == DARTS_SKIP:
        if reduction and DARTS_EDGES[e][0] < 2:  # stride 2: FactorizedReduce
            return [state[pre + k] for k in ("conv_1.weight", "conv_2.weight", "bn.weight", "bn.bias")]
        return [torch.eye(c, dtype=torch.float64, device=state["classifier.weight"].device)]  # identity: eye(C)
    if name.startswith("sep_conv"):
        keys = ("dw1.weight", "pw1.weight", "dw2.weight", "pw2.weight", "bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias")
        return [state[pre + k] for k in keys]
    return [state[pre + k] for k in ("dw.weight", "pw.weight", "bn.weight", "bn.bias")]  # dil_conv, bias fixed


def _darts_extra_names(args: dict, names: list[str]) -> list[str]:
    """Stem(s), every cell's preprocess0 then preprocess1, the classifier (method.md §4.3 'extra', §4.5)."""
    stems = [n for n in names if n.startswith(("stem.", "stem0.", "stem1."))]  # module order: stem0 before stem1
    cells = sorted({int(n.split(".")[1]) for n in names if n.startswith("cells.")})
    pre = [n for i in cells for p in ("preprocess0", "preprocess1") for n in names if n.startswith(f"cells.{i}.{p}.")]
    head = ["classifier.weight"] + (["classifier.bias"] if args["variant"] == "imagenet" else [])  # C10: weight only
    return stems + pre + head


def darts_weight_vector(state: dict, arch, args: dict) -> torch.Tensor | None:
    """Reference V(arch, W) for the DARTS space as a float64 vector (P,): the literal concatenation, in the official
    order (cells, then paths, then edges; then the extra parameters). None if no path survives anywhere."""
    n = len(DARTS_EDGES)
    parts, alive = [], False
    for i, (c, reduction) in enumerate(darts_cells(args["channels"], args["layers"])):
        genes = arch[n:] if reduction else arch[:n]  # all cells of a kind share one genotype
        for path in DARTS_PATHS:
            if any(genes[e] == 0 for e in path):
                continue  # 'none' on the path: drop it (and move on to the next path)
            alive = True
            for e in path:
                parts += _darts_edge_parts(state, i, e, genes[e], c, reduction)
    if not alive:
        return None
    parts += [state[k] for k in _darts_extra_names(args, parameter_names(state))]
    return torch.cat([p.detach().double().flatten() for p in parts])  # (P,)


def darts_angle_reference(w0: dict, wt: dict, arch, args: dict) -> float:
    v0, vt = darts_weight_vector(w0, arch, args), darts_weight_vector(wt, arch, args)
    if v0 is None:
        return 0.0
    dot, sq0, sqt = segment_stats([v0], [vt]).tolist()  # <V0, Vt>, |V0|^2, |Vt|^2
    return float(angle_from(dot, sq0, sqt))


class DartsAngleScorer:
    """Angles of DARTS genotypes (28 genes) from two supernet state_dicts, the same segment-sum design as
    angle.AngleScorer: table[kind, e, op] = (dot, |w0|^2, |wt|^2) of edge e's pieces summed over the cells of that
    kind (normal or reduction, which share a genotype); an angle is then a sum over the 30 paths of each kind, plus
    the fixed part.
    """

    def __init__(self, w0: dict, wt: dict, args: dict, vector: str = "official"):
        if vector != "official":  # the vector ablations (angle.VECTORS) are defined for NB201 only
            raise ValueError(f"weight vector {vector!r} is an NB201 ablation; this space has the official one only")
        extra = _darts_extra_names(args, parameter_names(w0))
        fixed = segment_stats([w0[k] for k in extra], [wt[k] for k in extra])  # (3,)
        table = torch.zeros((2, len(DARTS_EDGES), len(DARTS_OPS), 3), dtype=torch.float64, device=fixed.device)
        for i, (c, reduction) in enumerate(darts_cells(args["channels"], args["layers"])):  # table: (kind, E, K, 3)
            for e in range(len(DARTS_EDGES)):
                for op in range(1, len(DARTS_OPS)):  # op 0 ('none') stays 0
                    p0 = _darts_edge_parts(w0, i, e, op, c, reduction)
                    p1 = _darts_edge_parts(wt, i, e, op, c, reduction)
                    table[int(reduction), e, op] += segment_stats(p0, p1)
        self.fixed, self.table = to_host(fixed, table)  # one wait on the device

    def angles(self, archs) -> np.ndarray:
        n = len(DARTS_EDGES)
        a = np.asarray(archs, dtype=np.int64).reshape(-1, 2 * n)  # (M, 28)
        total = np.zeros((len(a), 3))  # (M, 3): <V0,Vt>, |V0|^2, |Vt|^2
        alive_any = np.zeros(len(a), dtype=bool)
        for kind in (0, 1):  # normal genes, reduction genes
            genes = a[:, kind * n : (kind + 1) * n]  # (M, 14)
            for path in DARTS_PATHS:
                alive = np.all(genes[:, path] != 0, axis=1)  # (M,)
                total += alive[:, None] * sum(self.table[kind, e, genes[:, e]] for e in path)
                alive_any |= alive
        total += alive_any[:, None] * self.fixed
        return np.where(alive_any, angle_from(total[:, 0], total[:, 1], total[:, 2]), 0.0)  # (M,)

    def angle(self, arch) -> float:
        return float(self.angles([arch])[0])
