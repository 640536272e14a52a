"""
The NAS-Bench-201 search space of RLNAS and its weight-sharing supernet, trained by single-path one-shot (SPOS) sampling.

RLNAS step 1 trains this network with random labels: every step one architecture is drawn
uniformly and only its operations run forward and backward. This file holds the search
space (five ops on six edges), the architecture string format, the official sampling rule,
the supernet, and the stand-alone network (`Subnet`) that retrain.py trains from scratch.
The paper's two other spaces have a file each: darts.py (Table 3) and mobilenet.py (Table 5);
spaces.py puts the three behind one small table for the stage scripts.

Paper: "Neural Architecture Search with Random Labels", Zhang, Hou, Zhang, Sun, CVPR 2021,
arXiv:2101.11834, the supernet-training step of the method (paper Sec. 3; the SPOS supernet of
Guo et al., ECCV 2020, in the NAS-Bench-201 space of Dong & Yang, ICLR 2020; paper Table 1).
Every shape below is docs/method.md §2.1; the sampling quirks are method.md pitfalls 4-6.

The cell is a DAG of 4 nodes; node i sums one op applied to each earlier node j (edge "i<-j"):

    node1 = op[1<-0](node0)                                      node0 = the cell input
    node2 = op[2<-0](node0) + op[2<-1](node1)
    node3 = op[3<-0](node0) + op[3<-1](node1) + op[3<-2](node2)  node3 = the cell output

    genes (edge order): 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2; each op in none, skip_connect,
    nor_conv_1x1, nor_conv_3x3, avg_pool_3x3 -> 5^6 = 15,625 cells.

A training path is one genotype per searchable cell (3N of them: `sample_path`); an architecture that
search.py scores is one genotype shared by every cell, run as the path [arch] * 3N (`shared_path`).

Used by train.py (Supernet), angle.py (op and edge names), retrain.py (Subnet), darts.py (shared ops, count_flops):

    python -c "import supernet; print(supernet.Supernet())"
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

# ----------------------------------------------------------------------------------------------
# The search space (method.md §2.1): op indices follow NAS-Bench-201's list, edges its sorted keys.
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # gene g is edge EDGES[g] = (i, j): "i<-j"
EDGE_KEYS = tuple(f"{i}<-{j}" for i, j in EDGES)
EDGE_INDEX = {edge: g for g, edge in enumerate(EDGES)}  # (i, j) -> gene index
NUM_NODES = 4
Arch = tuple[int, ...]  # one op index per edge, in EDGES order: the cell genotype, shape (E,) = (6,)
NUM_ARCHS = len(OPS) ** len(EDGES)  # 5^6 = 15,625


# ----------------------------------------------------------------------------------------------
# Architecture strings: the only way an architecture crosses a boundary (CLI, logs, JSON, CSV).
def arch_to_str(arch: Sequence[int]) -> str:
    """(3, 0, 3, 1, 0, 1) -> '|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|'"""
    check_arch(arch)
    nodes = []
    for i in range(1, NUM_NODES):
        nodes.append("|" + "|".join(f"{OPS[arch[EDGE_INDEX[i, j]]]}~{j}" for j in range(i)) + "|")
    return "+".join(nodes)


def str_to_arch(text: str) -> Arch:
    """Parse an NB201 string; raise ValueError naming what is wrong (never a bare KeyError)."""
    example = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    hint = f"expected 3 '+'-separated nodes like {example}"
    if not isinstance(text, str):
        raise ValueError(f"architecture must be a string, got {type(text).__name__}; {hint}")
    nodes = text.strip().split("+")
    if len(nodes) != NUM_NODES - 1:
        raise ValueError(f"malformed NB201 architecture {text!r}: {len(nodes)} nodes; {hint}")
    ops = {}
    for i, node in enumerate(nodes, start=1):
        if not (node.startswith("|") and node.endswith("|")) or len(node) < 2:
            raise ValueError(f"malformed NB201 architecture {text!r}: node {i} {node!r} must be wrapped in '|'; {hint}")
        entries = node[1:-1].split("|")
        if len(entries) != i:
            raise ValueError(f"malformed NB201 architecture {text!r}: node {i} needs {i} inputs, got {len(entries)}; {hint}")
        for j, entry in enumerate(entries):
            op, sep, src = entry.partition("~")
            if not sep or src != str(j):
                raise ValueError(f"malformed NB201 architecture {text!r}: node {i} entry {entry!r} must read 'op~{j}'; {hint}")
            if op not in OPS:
                raise ValueError(f"unknown op {op!r} in architecture {text!r}; ops are {', '.join(OPS)}")
            ops[(i, j)] = OPS.index(op)
    return tuple(ops[edge] for edge in EDGES)


def check_arch(arch: Sequence[int]) -> None:
    """Fail fast on an internal architecture that is not 6 op indices in 0..4."""
    if len(arch) != len(EDGES) or any(not isinstance(o, int) or not 0 <= o < len(OPS) for o in arch):
        raise ValueError(f"an NB201 architecture is {len(EDGES)} op indices in 0..{len(OPS) - 1}, got {tuple(arch)}")


def all_archs() -> list[Arch]:
    """All 15,625 cells in lexicographic order of the op indices (gene 0 slowest)."""
    grids = torch.cartesian_prod(*[torch.arange(len(OPS))] * len(EDGES))  # (15625, E)
    return [tuple(row) for row in grids.tolist()]


# ----------------------------------------------------------------------------------------------
# RLNAS: single-path sampling with the official semantics (method.md §2.1 "Sampling", pitfalls 4-5).
def sample_cell(gen: torch.Generator) -> Arch:
    """One uniformly drawn cell, redrawing any node whose incoming ops are all 'none'.

    The official SPOS code (xautodl forward_urs) draws, for every node i, one op per incoming
    edge uniformly; if all of them are 'none' the whole node is redrawn, so the sampled
    sub-network never has a dead node. Marginals: edge 1<-0 is never 'none' (1/4 each other op).
    """
    # EXERCISE 2 BEGIN: draw one op per edge from `gen`, node by node, redrawing a node whose inputs are all 'none'
    #   read: paper, method step 1 (SPOS uniform sampling); method.md §2.1 "Sampling", pitfalls 4-5; details.md detail 3
    #   graded: python make_assignment.py --grade 2   (tests/test_supernet.py)
    ops = {}
    for i in range(1, NUM_NODES):
        while True:
            draw = torch.randint(len(OPS), (i,), generator=gen).tolist()  # one op per edge i<-j, j < i
            if any(o != 0 for o in draw):  # 0 = 'none': at least one live input
                break
        for j, o in enumerate(draw):
            ops[(i, j)] = o
    return tuple(ops[edge] for edge in EDGES)
    # EXERCISE 2 END


def sample_path(gen: torch.Generator, num_cells: int, share: bool = False) -> list[Arch]:
    """The path trained in one step: one cell genotype per searchable cell.

    Official behaviour (the default): each of the 3N searchable cells samples its own sub-cell
    independently; the architectures that search.py scores share one genotype across cells.
    share=True trains that shared form instead (one draw repeated in every cell).
    The generator is dedicated and seeded identically on every DDP rank (method.md pitfall 4), so all
    ranks train the same path without any communication.
    """
    if share:
        return shared_path(sample_cell(gen), num_cells)
    return [sample_cell(gen) for _ in range(num_cells)]


def shared_path(arch: Arch, num_cells: int) -> list[Arch]:
    """The path that runs one architecture: the same cell genotype in each of the `num_cells` searchable cells."""
    return [tuple(arch)] * num_cells


# RLNAS: the four input-to-output paths of the cell (method.md §4.2), as gene (edge) indices:
#   P1 = 0->3: edge 3<-0        P2 = 0->2->3: 2<-0, 3<-2
#   P3 = 0->1->2->3: 1<-0, 2<-1, 3<-2          P4 = 0->1->3: 1<-0, 3<-1
# The angle's weight vector is built path by path (angle.py); the tie rule below counts them.
PATHS = ((3,), (1, 5), (0, 2, 5), (0, 4))


def tie_key(arch: Arch) -> tuple:
    """How search.py orders cells whose angles tie (evolution.rank); the smallest key wins.

    RLNAS: ties are real. The angle reads only the weights on input-to-output paths free of 'none'; a skip adds no
    weight and a pool always adds the same constant, so tied cells differ only in what carries no trained weight.
    Rule (method.md §5.1, argued before any accuracy was looked at): prefer the cell with the fewest WEIGHTLESS
    live paths (all skips and pools: routes the angle cannot see), so that every path the chosen cell runs is one
    whose weights were scored; then the fewest dead edges (ops on no live path, which never run); then the smaller
    op-index tuple. Deterministic and independent of evaluation order.
    """
    none, skip, pool = OPS.index("none"), OPS.index("skip_connect"), OPS.index("avg_pool_3x3")
    live = [p for p in PATHS if all(arch[g] != none for g in p)]
    weightless = sum(all(arch[g] in (skip, pool) for g in p) for p in live)
    on_live = {g for p in live for g in p}
    dead = sum(op != none and g not in on_live for g, op in enumerate(arch))
    return (weightless, dead, tuple(arch))


# ----------------------------------------------------------------------------------------------
# Operations (method.md §2.1 table). Names mirror xautodl so state_dict keys read
# `cells.3.edges.2<-1.3.op.1.weight` (cell 3, edge 2<-1, op 3 = nor_conv_3x3, its conv).
class ReLUConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, affine: bool, track: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out, affine=affine, track_running_stats=track),
        )

    def forward(self, x):
        return self.op(x)  # (B, C_out, H/stride, W/stride)


class Zero(nn.Module):
    """'none': multiplies by zero. The supernet never runs it (a dropped edge adds nothing)."""

    def forward(self, x):
        return x.mul(0.0)


def make_op(name: str, c: int, affine: bool, track: bool) -> nn.Module:
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(c, c, 1, 1, affine, track)
    if name == "nor_conv_3x3":
        return ReLUConvBN(c, c, 3, 1, affine, track)
    if name == "avg_pool_3x3":  # no parameters: a cell's edges keep C_in == C_out
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"unknown op {name!r}")


class ResNetBlock(nn.Module):
    """The fixed reduction block between stages (not searched): a ResNet basic block, stride 2."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, affine=True)  # ReLU-conv3x3/2-BN
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, affine=True)  # ReLU-conv3x3-BN
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))  # shortcut, no BN

    def forward(self, x, arch=None):
        return self.conv_b(self.conv_a(x)) + self.downsample(x)  # (B, 2C, H/2, W/2)


# ----------------------------------------------------------------------------------------------
def live_nodes(arch: Arch) -> set[int]:
    """Nodes whose value reaches the cell output through non-'none' edges (the output node 3 always counts)."""
    live = {NUM_NODES - 1}
    for i, j in reversed(EDGES):  # edges sorted by target node: walk back from the output
        if arch[EDGE_INDEX[i, j]] and i in live:
            live.add(j)
    return live


def add_all(terms: list[torch.Tensor]) -> torch.Tensor:
    """t1 + t2 + ... without Python's sum() starting from the integer 0 (one tensor op fewer per node)."""
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


class SearchCell(nn.Module):
    """All 5 candidate ops on each of the 6 edges; forward runs only the ops named by `arch`."""

    def __init__(self, c: int, affine: bool = False, track: bool = True):
        super().__init__()
        self.c = c
        # edges["i<-j"][k] = candidate op k on edge i<-j. Cell BNs: affine=False (method.md §2.1, pitfall 6)
        self.edges = nn.ModuleDict({key: nn.ModuleList([make_op(op, c, affine, track) for op in OPS]) for key in EDGE_KEYS})

    def forward(self, x, arch: Arch):
        # EXERCISE 3 BEGIN: run only the ops `arch` names: node_i = sum over j < i of op[i<-j](node_j), 'none' skipped
        #   read: paper, method step 1 (single-path supernet); method.md §2.1 "Cell"; details.md detail 4
        #   graded: python make_assignment.py --grade 3   (tests/test_supernet.py)
        # RLNAS: single path. node_i = sum_j op_{i<-j}(node_j); 'none' edges are skipped outright, so their ops get
        # no gradient this step (like x*0 in the official code). A node that feeds only 'none' edges cannot reach the
        # output: it is not computed at all (same result, less work; its ops get no gradient either way).
        live = live_nodes(arch)
        nodes = [x]  # node0: (B, C, H, W)
        for i in range(1, NUM_NODES):
            if i not in live:
                nodes.append(None)
                continue
            terms = [self.edges[f"{i}<-{j}"][arch[EDGE_INDEX[i, j]]](nodes[j]) for j in range(i) if arch[EDGE_INDEX[i, j]]]
            nodes.append(add_all(terms) if terms else torch.zeros_like(x))  # (B, C, H, W); all-'none' node = 0
        return nodes[-1]
        # EXERCISE 3 END

    def extra_repr(self):
        return f"C={self.c}, edges={' '.join(EDGE_KEYS)}, ops={'/'.join(OPS)}"


def cell_layout(layers: int) -> list[str]:
    """Position of each module in `cells`: N searchable cells, a reduction block, N, a reduction, N."""
    return ["cell"] * layers + ["reduce"] + ["cell"] * layers + ["reduce"] + ["cell"] * layers


class _NB201Network(nn.Module):
    """Macro skeleton shared by the supernet and the subnet (method.md §2.1 'Macro')."""

    def __init__(self, channels: int, layers: int, num_classes: int, make_cell):
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        cells = []
        for kind in cell_layout(layers):
            if kind == "reduce":
                cells.append(ResNetBlock(c, 2 * c))
                c *= 2
            else:
                cells.append(make_cell(c))
        self.cells = nn.ModuleList(cells)  # 3N + 2 modules: C, 2C, 4C channels
        self.searchable = [k for k, kind in enumerate(cell_layout(layers)) if kind == "cell"]
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def _forward(self, x, cell_archs):
        x = self.stem(x)  # (B, C, H, W)
        archs = iter(cell_archs)
        for cell in self.cells:
            x = cell(x, next(archs) if isinstance(cell, SearchCell) else None)  # (B, C', H', W')
        x = self.global_pooling(self.lastact(x)).flatten(1)  # (B, 4C)
        return self.classifier(x)  # (B, K)


class Supernet(_NB201Network):
    """The NB201 supernet: C=16, N=5 cells per stage, K classes (default 10).

    forward(x, path) takes one cell genotype per searchable cell (3N of them): what sample_path() draws for
    training; one architecture shared by every cell, as search and evaluation see it, is shared_path(arch, 3N).
    """

    def __init__(self, channels: int = 16, layers: int = 5, num_classes: int = 10):
        super().__init__(channels, layers, num_classes, lambda c: SearchCell(c, affine=False, track=True))
        self.args = dict(space="nb201", channels=channels, layers=layers, num_classes=num_classes)

    def forward(self, x, path: Sequence[Arch]):
        assert len(path) == len(self.searchable), f"need {len(self.searchable)} cell genotypes, got {len(path)}"
        return self._forward(x, path)  # (B, K)


# ==============================================================================================
# Machinery below: not needed to follow the NB201 method. The stand-alone network retrain.py trains (InferCell,
# Subnet), parameter and FLOPs counts, the subnet's share of the supernet's weights.
# ==============================================================================================


class InferCell(nn.Module):
    """One fixed cell for retraining: only the chosen op on each edge, 'none' edges omitted."""

    def __init__(self, c: int, arch: Arch, affine: bool = True, track: bool = True):
        super().__init__()
        check_arch(arch)
        self.c, self.arch = c, tuple(arch)
        self.edges = nn.ModuleDict({key: make_op(OPS[o], c, affine, track) for key, o in zip(EDGE_KEYS, arch) if o != 0})

    def forward(self, x, arch=None):
        nodes = [x]
        for i in range(1, NUM_NODES):
            terms = [self.edges[f"{i}<-{j}"](nodes[j]) for j in range(i) if f"{i}<-{j}" in self.edges]
            nodes.append(add_all(terms) if terms else torch.zeros_like(x))
        return nodes[-1]

    def extra_repr(self):
        return f"C={self.c}, arch={arch_to_str(self.arch)}"


class Subnet(_NB201Network):
    """One NB201 architecture as a stand-alone network (the NB201 training protocol: affine BN)."""

    def __init__(self, arch: Arch, channels: int = 16, layers: int = 5, num_classes: int = 10, affine: bool = True):
        super().__init__(channels, layers, num_classes, lambda c: InferCell(c, arch, affine=affine))
        self.arch = tuple(arch)

    def forward(self, x, arch=None):
        return self._forward(x, shared_path(self.arch, len(self.searchable)))  # (B, K)


def count_params(arch: Arch, channels: int = 16, layers: int = 5, num_classes: int = 10) -> int:
    """Parameters of Subnet(arch) (affine BN), counted without building it: the trivial 'params' proxy."""
    check_arch(arch)
    per_op = {2: lambda c: c * c + 2 * c, 3: lambda c: 9 * c * c + 2 * c}  # conv weight + BN gamma, beta
    c, total = channels, 3 * channels * 9 + 2 * channels  # stem conv + BN
    for kind in cell_layout(layers):
        if kind == "reduce":  # conv_a + BN, conv_b + BN, 1x1 shortcut
            total += 9 * c * 2 * c + 2 * 2 * c + 9 * 2 * c * 2 * c + 2 * 2 * c + c * 2 * c
            c *= 2
        else:
            total += sum(per_op[o](c) for o in arch if o in per_op)
    return total + 2 * c + c * num_classes + num_classes  # head BN + classifier


def subnet_state_from_supernet(state: dict, arch: Arch) -> dict:
    """Copy the weights of `arch` out of a supernet state_dict, renamed for Subnet (used in tests)."""
    out = {}
    for name, tensor in state.items():
        parts = name.split(".")
        if len(parts) > 4 and parts[0] == "cells" and parts[2] == "edges":
            key, op = parts[3], int(parts[4])
            if arch[EDGE_KEYS.index(key)] != op:
                continue  # an op that is not on this architecture
            name = ".".join(parts[:4] + parts[5:])
        out[name] = tensor
    return out


# ----------------------------------------------------------------------------------------------
# Counting helpers shared by the spaces (retrain.py prints them; darts.py builds its FLOPs table with count_flops).
def linear_madds(in_features: int, out_features: int) -> int:
    """Multiply-adds of one nn.Linear on one input row, in the paper's units: (2 * in - 1) * out.

    RLNAS: the official code counts FLOPs with a vendored thop, which counts a convolution as one multiply-add per
    weight use but a linear layer as `in` multiplications plus `in - 1` additions per output. The paper's numbers
    and FLOPs limits are in those units: Table 5's network is 473M (in * out would give 471.5M), Table 3's
    CIFAR-searched cell at C=48 629M (628.4M), and the searches' limits (475M MobileNet, 600M DARTS ImageNet)
    refuse what those counts refuse.
    """
    return (2 * in_features - 1) * out_features


def count_flops(model: nn.Module, input_size: int) -> int:
    """Multiply-adds of one forward pass of `model` on a 1x3xSxS input, in the paper's units (see linear_madds).

    torch.utils.flop_counter counts 2 FLOPs per multiply-add of the convolutions and linear layers (pooling, BN,
    ReLU and adds count 0), so its count is halved; every linear layer that runs then gets (in - 1) * out more, as
    the official thop counts it. Built and run on the meta device by the caller, this costs no memory or math.
    """
    from torch.utils.flop_counter import FlopCounterMode

    extra = []  # per nn.Linear call: what thop counts beyond flop_counter's in * out, for each row it maps

    def thop_linear(m: nn.Linear, inputs, out: torch.Tensor) -> None:
        rows = out.numel() // m.out_features
        extra.append(rows * (linear_madds(m.in_features, m.out_features) - m.in_features * m.out_features))

    hooks = [m.register_forward_hook(thop_linear) for m in model.modules() if isinstance(m, nn.Linear)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    model.train(was_training)
    return counter.get_total_flops() // 2 + sum(extra)


def count_all_params(model: nn.Module, skip_prefix: str | None = None) -> int:
    """Parameters of a module, optionally leaving out one sub-tree (e.g. the auxiliary head)."""
    return sum(p.numel() for n, p in model.named_parameters() if skip_prefix is None or not n.startswith(skip_prefix))
