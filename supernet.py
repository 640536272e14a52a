"""
The search spaces of RLNAS and their weight-sharing supernets, trained by single-path one-shot (SPOS) sampling.

Four parts, each in its own delimited section: the NAS-Bench-201 space (this docstring, SPEC 2.1), the interface the
stage scripts use (`SPACES`, one small class per space), the DARTS-like space of the paper's Table 3 (SPEC 2.2/2.3)
and the MobileNet-like space of its Table 5 (SPEC 2.4); each section's banner says what it implements.

RLNAS step 1 trains this network with random labels: every step one architecture is drawn
uniformly and only its operations run forward and backward. This file holds the search
space (five ops on six edges), the architecture string format, the official sampling rule,
the supernet, and the stand-alone network (`Subnet`) that retrain.py trains from scratch.

Paper: "Neural Architecture Search with Random Labels", Zhang, Hou, Zhang, Sun, CVPR 2021,
arXiv:2101.11834, the supernet-training step of the method (the SPOS supernet of Guo et al.,
ECCV 2020, in the NAS-Bench-201 space of Dong & Yang, ICLR 2020). Every shape below is
SPEC.md section 2.1; the sampling quirks are SPEC.md section 8, pitfalls 4-6.

The cell is a DAG of 4 nodes; node i sums one op applied to each earlier node j (edge "i<-j"):

    node1 = op[1<-0](node0)                                      node0 = the cell input
    node2 = op[2<-0](node0) + op[2<-1](node1)
    node3 = op[3<-0](node0) + op[3<-1](node1) + op[3<-2](node2)  node3 = the cell output

    genes (edge order): 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2; each op in none, skip_connect,
    nor_conv_1x1, nor_conv_3x3, avg_pool_3x3 -> 5^6 = 15,625 cells.

Used by train.py (Supernet), search.py/angle.py (parameter names) and retrain.py (Subnet):

    python -c "import supernet; print(supernet.Supernet())"
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

# ----------------------------------------------------------------------------------------------
# The search space (SPEC 2.1): op indices follow NAS-Bench-201's list, edges its sorted keys.
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
# RLNAS: single-path sampling with the official semantics (SPEC 2.1 "Sampling", pitfalls 4-5).
def sample_cell(gen: torch.Generator) -> Arch:
    """One uniformly drawn cell, redrawing any node whose incoming ops are all 'none'.

    The official SPOS code (xautodl forward_urs) draws, for every node i, one op per incoming
    edge uniformly; if all of them are 'none' the whole node is redrawn, so the sampled
    sub-network never has a dead node. Marginals: edge 1<-0 is never 'none' (1/4 each other op).
    """
    # EXERCISE 2 BEGIN: draw one op per edge from `gen`, node by node, redrawing a node whose inputs are all 'none'
    #   read: paper, method step 1 (SPOS uniform sampling); SPEC 2.1 "Sampling", pitfalls 4-5; README detail 3
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
    The generator is dedicated and seeded identically on every DDP rank (pitfall 4), so all
    ranks train the same path without any communication.
    """
    if share:
        return [sample_cell(gen)] * num_cells
    return [sample_cell(gen) for _ in range(num_cells)]


# ----------------------------------------------------------------------------------------------
# Operations (SPEC 2.1 table). Names mirror xautodl so state_dict keys read
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
        # edges["i<-j"][k] = candidate op k on edge i<-j. Cell BNs: affine=False (SPEC 2.1, pitfall 6)
        self.edges = nn.ModuleDict({key: nn.ModuleList([make_op(op, c, affine, track) for op in OPS]) for key in EDGE_KEYS})

    def forward(self, x, arch: Arch):
        # EXERCISE 3 BEGIN: run only the ops `arch` names: node_i = sum over j < i of op[i<-j](node_j), 'none' skipped
        #   read: paper, method step 1 (single-path supernet); SPEC 2.1 "Cell"; README detail 4
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


def cell_layout(layers: int) -> list[str]:
    """Position of each module in `cells`: N searchable cells, a reduction block, N, a reduction, N."""
    return ["cell"] * layers + ["reduce"] + ["cell"] * layers + ["reduce"] + ["cell"] * layers


class _NB201Network(nn.Module):
    """Macro skeleton shared by the supernet and the subnet (SPEC 2.1 'Macro')."""

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

    forward(x, arch) takes either one cell genotype (6 ints, shared by every cell: how search
    and evaluation see an architecture) or a list of 3N genotypes (one per searchable cell:
    what sample_path() draws for training).
    """

    def __init__(self, channels: int = 16, layers: int = 5, num_classes: int = 10):
        super().__init__(channels, layers, num_classes, lambda c: SearchCell(c, affine=False, track=True))
        self.args = dict(space="nb201", channels=channels, layers=layers, num_classes=num_classes)

    def forward(self, x, arch):
        if len(arch) and isinstance(arch[0], int):
            arch = [tuple(arch)] * len(self.searchable)  # one genotype for every cell
        assert len(arch) == len(self.searchable), f"need {len(self.searchable)} cell genotypes, got {len(arch)}"
        return self._forward(x, arch)


class Subnet(_NB201Network):
    """One NB201 architecture as a stand-alone network (the NB201 training protocol: affine BN)."""

    def __init__(self, arch: Arch, channels: int = 16, layers: int = 5, num_classes: int = 10, affine: bool = True):
        super().__init__(channels, layers, num_classes, lambda c: InferCell(c, arch, affine=affine))
        self.arch = tuple(arch)

    def forward(self, x, arch=None):
        return self._forward(x, [self.arch] * len(self.searchable))


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


# ==============================================================================================
# ===== Search-space interface: what train.py, search.py and retrain.py need from a space =====
# ==============================================================================================
# The three stage scripts know no space. They look one up in SPACES by name (--space for train.py and
# retrain.py, the checkpoint's supernet_args["space"] for search.py) and call only these methods.
# Inside the code an architecture is a tuple of ints (one gene per decision); strings only cross
# boundaries (CLI, logs, JSON), through parse() and format().
#
#   name                                  "nb201", "darts", "mobilenet"
#   net_args(args, num_classes) -> dict   the plain dict that fully describes a supernet, stored in checkpoints as
#                                         "supernet_args": always "space" and "num_classes", plus what the space
#                                         needs (channels, layers, variant, image_size). Plain types only.
#   supernet(net_args) -> nn.Module       the weight-sharing supernet; model(x, path) runs only the sampled path;
#                                         model.args == net_args
#   sample_path(gen, net_args)            one training step's path, drawn ONLY from `gen` (same seed on every DDP
#                                         rank -> same path); whatever model(x, path) accepts. NB201 also takes
#                                         shared=True (train.py --sampling shared, passed only when given)
#   gene_choices(net_args)                allowed values per gene: list[list[int]] (evolution's initial population)
#   mutation_choices(net_args)            values a mutation may draw per gene (SPEC 5)
#   repair(arch) -> arch                  identity where the space needs none; deterministic given the arch
#   parse(text) -> arch                   ValueError with a one-line message naming what is wrong
#   format(arch) -> str                   the string users see
#   tie_key(arch)                         how search.py orders archs whose fitness ties (evolution.rank)
#   scorer(w0, wt, net_args)              object with .angles(list of archs) -> 1-D array (angle.py)
#   flops                                 None where the space has no FLOPs count, else a method
#                                         flops(arch, net_args) -> multiply-adds of the candidate at the input size
#   min_flops(net_args) (optional)        multiply-adds of the cheapest architecture: search.py refuses a lower
#                                         --max-flops at once instead of drawing candidates in vain
#   params(arch, net_args) -> int         parameters of the stand-alone network (search.py --fitness params)
#   all_archs(net_args)                   every architecture (search.py --exhaustive), or None if too many
#   network(arch, net_args, **opts)       the stand-alone network retrain.py trains; model(x) -> logits, or in
#                                         training (logits, aux_logits) with aux=True (DARTS); opts it lacks: ignore
#   retrain_args(args, num_classes)       net_args of that network from retrain.py's flags
#   input_size(net_args) -> int           the image side the FLOPs are counted at
#   ckpt_keys                             the keys a valid supernet_args must have (search.py checks them)


def count_flops(model: nn.Module, input_size: int) -> int:
    """Multiply-adds of one forward pass of `model` on a 1x3xSxS input, counted by torch.utils.flop_counter.

    flop_counter counts 2 FLOPs per multiply-add of the convolutions and linear layers (pooling, BN, ReLU and adds
    count 0), so the result is halved. Built and run on the meta device by the caller, this costs no memory or math.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2


def count_all_params(model: nn.Module, skip_prefix: str | None = None) -> int:
    """Parameters of a module, optionally leaving out one sub-tree (e.g. the auxiliary head)."""
    return sum(p.numel() for n, p in model.named_parameters() if skip_prefix is None or not n.startswith(skip_prefix))


# ===== NB201 space (SPEC 2.1) ==================================================================
class NB201Space:
    """The NAS-Bench-201 space through the shared interface: a thin wrapper around the code above."""

    name = "nb201"
    ckpt_keys = ("space", "channels", "layers", "num_classes")
    flops = None  # no FLOPs count: search.py --max-flops refuses this space with one line

    def net_args(self, args, num_classes: int) -> dict:
        return dict(space="nb201", channels=args.channels, layers=args.layers, num_classes=num_classes)

    def supernet(self, net_args: dict) -> nn.Module:
        return Supernet(net_args["channels"], net_args["layers"], net_args["num_classes"])

    def sample_path(self, gen: torch.Generator, net_args: dict, shared: bool = False):
        return sample_path(gen, 3 * net_args["layers"], share=shared)  # 3N searchable cells

    def gene_choices(self, net_args: dict) -> list[list[int]]:
        return [list(range(len(OPS)))] * len(EDGES)

    def mutation_choices(self, net_args: dict) -> list[list[int]]:
        return [list(range(1, len(OPS)))] * len(EDGES)  # never mutate into 'none' (SPEC 5)

    def repair(self, arch: tuple) -> tuple:
        return tuple(arch)

    def parse(self, text: str) -> Arch:
        return str_to_arch(text)

    def format(self, arch: tuple) -> str:
        return arch_to_str(arch)

    def tie_key(self, arch: tuple):
        # RLNAS: ties are real. A skip on a path whose other edges are skips adds no weights, exactly like 'none',
        # so such cells share one angle. Documented rule: prefer fewer 'none' edges (keep the connection), then the
        # smaller op-index tuple; deterministic and independent of evaluation order.
        return (sum(o == 0 for o in arch), tuple(arch))

    def scorer(self, w0: dict, wt: dict, net_args: dict):
        from angle import AngleScorer  # angle.py imports this module: import at call time

        return AngleScorer(w0, wt, net_args)

    def params(self, arch: tuple, net_args: dict) -> int:
        return count_params(arch, net_args["channels"], net_args["layers"], net_args["num_classes"])

    def all_archs(self, net_args: dict):
        return all_archs()

    def retrain_args(self, args, num_classes: int) -> dict:
        return dict(space="nb201", channels=args.channels, layers=args.layers, num_classes=num_classes)

    def network(self, arch: tuple, net_args: dict, **opts) -> nn.Module:
        return Subnet(arch, net_args["channels"], net_args["layers"], net_args["num_classes"])

    def input_size(self, net_args: dict) -> int:
        return net_args.get("image_size", 32)


# ==============================================================================================
# ===== DARTS space (SPEC 2.2/2.3) =============================================================
# ==============================================================================================
# The DARTS-like space of RLNAS (Table 3). A cell has two inputs (node 0 = the cell before last, node 1 = the last
# cell) and 4 intermediate nodes 2..5; node j sums one op on each of its inputs k < j, and the cell output is the
# concatenation of nodes 2..5 (4C channels). 14 edges per cell:
#
#     edge:  0 1 | 2 3 4 | 5 6 7 8 | 9 10 11 12 13          edge index of k -> j = k + (2 + 3 + ... + (j - 1))
#     into:  n2  |  n3   |   n4    |      n5
#     from:  0 1 | 0 1 2 | 0 1 2 3 | 0 1  2  3  4
#
# A genotype is 28 genes (op indices 0..7): 14 for the normal cells, then 14 for the reduction cells; every normal
# cell shares the first 14, both reduction cells the last 14. A valid genotype has exactly two non-'none' inputs per
# intermediate node (the DARTS discrete cell); `darts_repair` makes any 28 genes valid (SPEC 2.2 "check_cand").
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
    """Edge index of source k -> node j: k + (2 + 3 + ... + (j - 1)) (SPEC 4.3)."""
    return k + sum(range(2, j))


def darts_reductions(layers: int) -> tuple[int, int]:
    """Positions of the two reduction cells: L//3 and 2L//3 (CIFAR L=8: 2, 5; ImageNet L=14: 4, 9, i.e. 4N-R-4N-R-4N)."""
    return layers // 3, 2 * layers // 3


def darts_repair(genes: Sequence[int], draw) -> tuple[int, ...]:
    """Give every intermediate node of both cells exactly two non-'none' inputs (the official check_cand, SPEC 2.2).

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
    import ast

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
# Operations (SPEC 2.2). Named sub-modules (dw1, pw1, bn1, ...) so angle.py walks parameters by name.
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
    reduction (SPEC 2.2)."""

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
    """max_pool_3x3 / avg_pool_3x3 (stride s, padding 1); in the supernet followed by BN(affine=True) (SPEC 2.2)."""

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
    omitted, as in DARTS, SPEC 6). Its parameters and FLOPs are not counted in Table 3."""

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
    """The DARTS macro network (SPEC 2.2/2.3), as supernet (genotype=None) or as one stand-alone architecture.

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
        for i in range(layers):
            reduction = i in self.reductions
            if reduction:
                c *= 2
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
            # SPEC 2.3: the ImageNet supernet's init is part of the angle (pitfall 2): kaiming_uniform convs, BN 1/0,
            # Linear N(0, 0.01) with bias 0
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


class DartsSpace:
    """The DARTS space through the shared interface (SPEC 2.2, 2.3, 4.3, 5)."""

    name = "darts"
    ckpt_keys = ("space", "channels", "layers", "num_classes", "variant", "image_size")

    def __init__(self):
        self._flops_tables = {}  # net_args -> (fixed multiply-adds, per-(cell kind, edge, op) multiply-adds)

    def net_args(self, args, num_classes: int) -> dict:
        return dict(
            space="darts",
            channels=args.channels,
            layers=args.layers,
            num_classes=num_classes,
            variant=args.variant,
            image_size=args.image_size,
        )

    retrain_args = net_args  # the stand-alone network is described by the same fields

    def supernet(self, net_args: dict) -> nn.Module:
        a = net_args
        net = DartsNetwork(a["channels"], a["layers"], a["num_classes"], a["variant"])
        net.args = dict(net_args)
        return net

    def sample_path(self, gen: torch.Generator, net_args: dict, shared: bool = False) -> tuple[int, ...]:
        """RLNAS (SPEC 2.2): one normal and one reduction genotype per step, each gene uniform over the 8 ops, then
        repaired to two live inputs per node. Only `gen` is drawn from (no global reseeding): the same seed on every
        DDP rank gives the same path (pitfall 4)."""
        genes = torch.randint(len(DARTS_OPS), (2 * NUM_DARTS_EDGES,), generator=gen).tolist()
        return darts_repair(genes, lambda n: int(torch.randint(n, (1,), generator=gen)))

    def gene_choices(self, net_args: dict) -> list[list[int]]:
        return [list(range(len(DARTS_OPS)))] * (2 * NUM_DARTS_EDGES)

    def mutation_choices(self, net_args: dict) -> list[list[int]]:
        # SPEC 5: C10 mutates into randint(0, 8) ('none' allowed), ImageNet into randint(1, 8); repair follows either
        # way. Unlike the official code (its loop covers the first 14 genes only), the reduction genes mutate too.
        low = 1 if net_args.get("variant") == "imagenet" else 0
        return [list(range(low, len(DARTS_OPS)))] * (2 * NUM_DARTS_EDGES)

    def repair(self, arch: tuple) -> tuple:
        # deterministic given the arch (a local generator seeded by the genes), so a resumed search replays the same
        # trajectory; a valid arch is returned unchanged
        rng = np.random.default_rng([int(g) for g in arch])
        return darts_repair(arch, lambda n: int(rng.integers(n)))

    def parse(self, text: str) -> tuple[int, ...]:
        return genotype_to_darts(text)

    def format(self, arch: tuple) -> str:
        return darts_to_genotype(arch)

    def tie_key(self, arch: tuple):
        return tuple(arch)

    def scorer(self, w0: dict, wt: dict, net_args: dict):
        from angle import DartsAngleScorer

        return DartsAngleScorer(w0, wt, net_args)

    def network(self, arch: tuple, net_args: dict, aux: bool = False, **opts) -> nn.Module:
        check_darts_arch(arch)
        a = net_args
        return DartsNetwork(a["channels"], a["layers"], a["num_classes"], a["variant"], genotype=tuple(arch), aux=aux)

    def params(self, arch: tuple, net_args: dict) -> int:
        with torch.device("meta"):
            return count_all_params(self.network(arch, net_args))

    def all_archs(self, net_args: dict):
        return None  # 8^28 genotypes: no exhaustive search

    def input_size(self, net_args: dict) -> int:
        return net_args["image_size"]

    def flops(self, arch: tuple, net_args: dict) -> int:
        """Multiply-adds of the stand-alone network (no auxiliary head) at net_args' image size, exactly as
        count_flops(network(arch)) would count them, from a per-(cell, edge, op) table built once per net_args."""
        key = tuple(sorted(net_args.items()))
        if key not in self._flops_tables:
            self._flops_tables[key] = self._flops_table(net_args)
        fixed, table = self._flops_tables[key]  # table: (2 cell kinds, 14 edges, 8 ops), summed over cells
        normal, reduce = arch[:NUM_DARTS_EDGES], arch[NUM_DARTS_EDGES:]
        return fixed + sum(table[0][e][normal[e]] + table[1][e][reduce[e]] for e in range(NUM_DARTS_EDGES))

    def min_flops(self, net_args: dict) -> int:
        """The smallest multiply-add count of any valid genotype: per node, its two cheapest inputs with their
        cheapest real op (search.py refuses a --max-flops below it at once)."""
        self.flops((DARTS_SEP3, DARTS_SEP3) + (0,) * 26, net_args)  # builds the table
        fixed, table = self._flops_tables[tuple(sorted(net_args.items()))]
        cheapest = [sorted(min(table[kind][e][1:]) for e in edges)[:2] for kind in (0, 1) for edges in DARTS_NODE_EDGES]
        return fixed + sum(sum(pair) for pair in cheapest)

    def _flops_table(self, net_args: dict):
        # FLOPs add up over modules: count each candidate op once per (input shape, stride) with flop_counter, sum it
        # over the cells of each kind, and get the fixed part (stems, preprocessing, classifier) as the direct count
        # of one reference genotype minus its ops. tests/test_darts.py checks the sum against direct counts.
        from torch.utils.flop_counter import FlopCounterMode

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
            direct = count_flops(self.network(ref + ref, net_args), a["image_size"])
        fixed = direct - sum(table[0][e][ref[e]] + table[1][e][ref[e]] for e in range(NUM_DARTS_EDGES))
        return fixed, table


# ===== MobileNet space (SPEC 2.4) =====
# The ProxylessNAS-GPU-like space of the paper's Table 5: a fixed stem, 21 searchable MobileNetV2
# blocks (kernel 3/5/7 x expansion 3/6, or identity where the shape allows it) and a fixed head.
# An architecture is a "model_id": 21 ints, one per block, in {-1 (identity), 0..5}, e.g. the
# paper's searched network (SPEC 7.4): "2 0 -1 2 2 0 2 4 0 4 4 2 4 2 4 2 0 0 0 2 2".
# Everything is built at a width multiplier (1.0 = the paper's channels; tests use ~0.125).
# ==============================================================================================
MB_STAGES = ((32, 4, 2), (56, 4, 2), (112, 4, 2), (128, 4, 1), (256, 4, 2), (432, 1, 1))  # (out_ch, repeats, stride)
MB_OPS = ((3, 3), (3, 6), (5, 3), (5, 6), (7, 3), (7, 6))  # choice index 0..5 = (kernel, expansion)
MB_OP_NAMES = tuple(f"k{k}e{e}" for k, e in MB_OPS)  # 'k3e3' ... 'k7e6'
MB_IDENTITY = -1  # the skip choice
MB_STEM, MB_FIRST, MB_LAST = 40, 24, 1728  # stem conv out, fixed expansion-1 block out, final 1x1 conv out
MB_NUM_BLOCKS = sum(n for _, n, _ in MB_STAGES)  # 21
MB_OFFICIAL = (2, 0, -1, 2, 2, 0, 2, 4, 0, 4, 4, 2, 4, 2, 4, 2, 0, 0, 0, 2, 2)  # SPEC 7.4, Table 5: 5.3M params, 473M


def mb_width(c: int, width: float) -> int:
    """Channels at a width multiplier (1.0 = the paper's). Every block of a stage scales alike, so inp == oup stays true."""
    return max(1, int(round(c * width)))


def mb_blocks(width: float = 1.0) -> list[tuple[int, int, int]]:
    """(inp, oup, stride) of the 21 searchable blocks; the first block of each stage changes channels (and/or stride)."""
    out, inp = [], mb_width(MB_FIRST, width)
    for c, repeats, stride in MB_STAGES:
        for i in range(repeats):
            out.append((inp, mb_width(c, width), stride if i == 0 else 1))
            inp = mb_width(c, width)
    return out


# SPEC 2.4: identity only where a residual would be legal AND the block is not a stage's first: blocks
# 1-3, 5-7, 9-11, 13-15, 17-19. (The official `stage_last_id=[4,8,12,16,20]` names these first blocks.)
MB_STAGE_FIRST = tuple(sum(n for _, n, _ in MB_STAGES[:s]) for s in range(len(MB_STAGES)))  # (0, 4, 8, 12, 16, 20)
MB_CHOICES = tuple(
    tuple(range(len(MB_OPS))) if b in MB_STAGE_FIRST else (MB_IDENTITY, *range(len(MB_OPS))) for b in range(MB_NUM_BLOCKS)
)  # per block: 6 or 7 allowed values; 6^6 * 7^15 architectures


def mb_format(arch: Sequence[int]) -> str:
    """(2, 0, -1, ...) -> '2 0 -1 ...' (the official model_id format)."""
    mb_check(arch)
    return " ".join(str(c) for c in arch)


def mb_parse(text: str) -> tuple[int, ...]:
    """'2 0 -1 2 ...' (spaces and/or commas, optional brackets) -> a checked tuple; ValueError names the problem."""
    if not isinstance(text, str):
        raise ValueError(f"a MobileNet model_id must be a string, got {type(text).__name__}")
    tokens = text.strip().strip("[]()").replace(",", " ").split()
    if len(tokens) != MB_NUM_BLOCKS:
        n, example = len(tokens), mb_format(MB_OFFICIAL)
        raise ValueError(f"a MobileNet model_id has {MB_NUM_BLOCKS} block choices, got {n} in {text!r}; e.g. '{example}'")
    arch = []
    for b, tok in enumerate(tokens):
        try:
            arch.append(int(tok))
        except ValueError:
            raise ValueError(f"MobileNet model_id {text!r}: block {b} choice {tok!r} is not an integer") from None
    mb_check(arch)
    return tuple(arch)


def mb_check(arch: Sequence[int]) -> None:
    """ValueError (one line) unless arch is 21 allowed choices: 0..5 everywhere, -1 only where SPEC 2.4 allows it."""
    if len(arch) != MB_NUM_BLOCKS:
        raise ValueError(f"a MobileNet architecture has {MB_NUM_BLOCKS} block choices, got {len(arch)}")
    for b, c in enumerate(arch):
        if c == MB_IDENTITY and b in MB_STAGE_FIRST:
            raise ValueError(
                f"MobileNet block {b}: identity (-1) is not allowed on blocks {', '.join(map(str, MB_STAGE_FIRST))} "
                "(each is a stage's first block, which changes the channels or the resolution); use 0..5"
            )
        if not isinstance(c, int) or c not in MB_CHOICES[b]:
            raise ValueError(
                f"MobileNet block {b}: {c!r} is not a choice; use 0..5 = {' '.join(MB_OP_NAMES)} or -1 = identity"
            )


def mb_sample(gen: torch.Generator) -> tuple[int, ...]:
    """RLNAS/SPOS: every block draws uniformly from its own choice list (SPEC 2.4 'Sampling').

    Only `gen` is used: seeded identically on every DDP rank, all ranks train the same path (pitfall 4).
    """
    draw = torch.rand(MB_NUM_BLOCKS, generator=gen)  # (21,) in [0, 1)
    return tuple(MB_CHOICES[b][int(u * len(MB_CHOICES[b]))] for b, u in enumerate(draw.tolist()))


class MBConv(nn.Module):
    """MobileNetV2 inverted residual (SPEC 2.4): pw expand + BN + ReLU6 -> dw kxk/s + BN + ReLU6 -> pw linear + BN.

    expansion 1 (the fixed block after the stem) has no expand conv. The residual is added when
    stride == 1 and inp == oup. Names (expand_conv, bn1, dw_conv, bn2, project_conv, bn3) are what
    angle.py walks; they match the official conv[0], conv[1], conv[3], conv[4], conv[6], conv[7].
    """

    def __init__(self, inp: int, oup: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        self.inp, self.oup, self.kernel, self.stride, self.expansion = inp, oup, kernel, stride, expansion
        hidden = inp * expansion
        if expansion != 1:
            self.expand_conv = nn.Conv2d(inp, hidden, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden)
        self.dw_conv = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.project_conv = nn.Conv2d(hidden, oup, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(oup)
        self.residual = stride == 1 and inp == oup

    def forward(self, x):
        y = x
        if self.expansion != 1:
            y = nn.functional.relu6(self.bn1(self.expand_conv(y)))  # (B, e*inp, H, W)
        y = nn.functional.relu6(self.bn2(self.dw_conv(y)))  # (B, e*inp, H/s, W/s)
        y = self.bn3(self.project_conv(y))  # (B, oup, H/s, W/s): linear bottleneck, no activation
        return x + y if self.residual else y

    def extra_repr(self):
        return f"{self.inp}->{self.oup}, k{self.kernel}, e{self.expansion}, stride {self.stride}"


class MBChoiceBlock(nn.Module):
    """One searchable position: the 6 MBConv candidates; forward runs only the chosen one (-1: returns x)."""

    def __init__(self, inp: int, oup: int, stride: int, choices: Sequence[int]):
        super().__init__()
        self.inp, self.oup, self.choices = inp, oup, tuple(choices)
        self.ops = nn.ModuleList([MBConv(inp, oup, k, stride, e) for k, e in MB_OPS])  # ops[c] = choice c

    def forward(self, x, choice: int):
        if choice == MB_IDENTITY:
            return x  # ops not chosen get no gradient this step (nor weight decay: SGD skips grad-less params)
        return self.ops[choice](x)  # (B, oup, H/s, W/s)


def mb_init(model: nn.Module) -> None:
    """SPEC 2.4 init: conv N(0, sqrt(2 / (k*k*out))), BN gamma 1 / beta 0, Linear left at PyTorch's default.

    Part of the metric (pitfall 2): the angle is measured from these W0.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels  # depthwise: out_channels = hidden, as officially
            nn.init.normal_(m.weight, 0.0, (2.0 / n) ** 0.5)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _MobileNetBase(nn.Module):
    """The fixed parts (SPEC 2.4 'Macro'): stem, the expansion-1 block, final 1x1 conv, pooling, classifier."""

    def __init__(self, num_classes: int, width: float):
        super().__init__()
        stem, first, last = mb_width(MB_STEM, width), mb_width(MB_FIRST, width), mb_width(MB_LAST, width)
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6())  # 224 -> 112
        self.first = MBConv(stem, first, 3, 1, 1)  # dw3x3(40) + BN + ReLU6 + pw 40->24 + BN (no residual: 40 != 24)
        self.head = nn.Sequential(nn.Conv2d(mb_blocks(width)[-1][1], last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6())
        # Official: AvgPool2d(7) on the 7x7 map at 224 px; adaptive pooling is the same there and also runs at 32/64 px.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def _head(self, x):
        x = self.pool(self.head(x)).flatten(1)  # (B, 1728)
        return self.classifier(x)  # (B, K)


class MobileNetSupernet(_MobileNetBase):
    """All 21 x 6 candidate blocks; forward(x, arch) runs only arch's choice in each block (SPOS single path)."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0):
        super().__init__(num_classes, width)
        self.blocks = nn.ModuleList([MBChoiceBlock(i, o, s, MB_CHOICES[b]) for b, (i, o, s) in enumerate(mb_blocks(width))])
        mb_init(self)
        self.args = dict(space="mobilenet", num_classes=num_classes, width=width)

    def forward(self, x, arch):
        assert len(arch) == MB_NUM_BLOCKS, f"need {MB_NUM_BLOCKS} block choices, got {len(arch)}"
        x = self.first(self.stem(x))  # (B, 24, H/2, W/2)
        for block, choice in zip(self.blocks, arch):
            x = block(x, choice)  # (B, oup, H', W')
        return self._head(x)


class MobileNetSubnet(_MobileNetBase):
    """One model_id as a stand-alone network (what retrain.py trains): identity blocks are removed,
    dropout 0.2 before the classifier (SPEC 6 'MobileNet')."""

    def __init__(self, arch: Sequence[int], num_classes: int = 1000, width: float = 1.0, dropout: float = 0.2):
        super().__init__(num_classes, width)
        mb_check(arch)
        self.arch = tuple(arch)
        kept = [(i, o, s, *MB_OPS[c]) for (i, o, s), c in zip(mb_blocks(width), arch) if c != MB_IDENTITY]
        self.blocks = nn.Sequential(*[MBConv(i, o, k, s, e) for i, o, s, k, e in kept])  # identity blocks: removed
        self.dropout = dropout
        self.drop_generator = None  # retrain.py sets one per step, seeded by (seed, step, rank): exact resume
        mb_init(self)

    def forward(self, x, arch=None):
        x = self.blocks(self.first(self.stem(x)))  # (B, 432, H/32, W/32)
        x = self.pool(self.head(x)).flatten(1)  # (B, 1728)
        if self.training and self.dropout > 0:
            # Dropout(0.2) before the classifier (SPEC 6). Its mask comes from drop_generator when one is set, not
            # from the global RNG, so a resumed run draws exactly the masks the interrupted one would have.
            keep = 1.0 - self.dropout
            mask = torch.rand(x.shape, generator=self.drop_generator, device=x.device) < keep
            x = x * mask / keep
        return self.classifier(x)  # (B, K)

    def extra_repr(self):
        return f"model_id='{mb_format(self.arch)}'"


# ----------------------------------------------------------------------------------------------
# RLNAS: the FLOPs lookup table of the MobileNet search (SPEC 5, "MobileNet FLOPs lookup table").
# "FLOPs" in the paper's Table 5 are multiply-adds: one per weight use in a conv or linear layer
# (BN, ReLU6, pooling and the residual add are not counted). A candidate's count is the fixed stem +
# expansion-1 block + final 1x1 conv + classifier, plus its 21 chosen blocks; identity costs 0. The
# table is counted once from the real modules (built on the meta device: shapes only, no memory) by
# shape arithmetic, which takes milliseconds; tests/test_mobilenet.py checks it against
# torch.utils.flop_counter run on whole assembled networks.
def mb_madds(module: nn.Module, size: int) -> tuple[int, int]:
    """Exact multiply-adds of the Conv2d/Linear layers of `module` for one size x size input; returns (madds, out size).

    The layers are taken in registration order and assumed to run one after the other, which holds for the
    stem, MBConv (expand -> dw -> project) and the head; a Linear comes after global pooling.
    """
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            (k, _), (s, _), (pad, _) = m.kernel_size, m.stride, m.padding
            size = (size + 2 * pad - k) // s + 1  # output side H' (dilation 1)
            # every output element (C_out x H' x W') sums C_in/groups x k x k products
            total += m.out_channels * size * size * (m.in_channels // m.groups) * k * k
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
    return total, size


MBTable = tuple[int, tuple[dict[int, int], ...]]  # (fixed part, per block {choice: count})
_MB_TABLES: dict[tuple, dict[str, MBTable]] = {}  # (image_size, width, num_classes) -> {"madds": ..., "params": ...}


def mb_cost_table(image_size: int = 224, width: float = 1.0, num_classes: int = 1000) -> dict[str, MBTable]:
    """Lookup tables {"madds": (fixed, rows), "params": (fixed, rows)}, rows[b][choice]; computed once per configuration.

    At 224 px (width 1, 1000 classes) the fixed multiply-adds are 68.4M: stem + first block 30.1M, 1x1 conv + FC 38.3M.
    Parameters (BN and biases included) do not depend on the image size; they serve search.py --fitness params.
    """
    key = (int(image_size), float(width), int(num_classes))
    if key not in _MB_TABLES:
        with torch.device("meta"):  # shapes only: PyTorch's default init on meta tensors costs nothing
            base = _MobileNetBase(num_classes, width)
            blocks = [MBChoiceBlock(i, o, s, MB_CHOICES[b]) for b, (i, o, s) in enumerate(mb_blocks(width))]

        def size_of(*modules):
            return sum(p.numel() for m in modules for p in m.parameters())

        fixed, side = mb_madds(nn.Sequential(base.stem, base.first), image_size)  # side: H/2
        madds, params = [], []
        for block in blocks:
            madds.append({MB_IDENTITY: 0} if MB_IDENTITY in block.choices else {})  # identity: no weights, no work
            params.append(dict(madds[-1]))
            for c, op in enumerate(block.ops):
                madds[-1][c], out = mb_madds(op, side)  # every choice maps the input to the same side
                params[-1][c] = size_of(op)
            side = out
        head, _ = mb_madds(nn.Sequential(base.head, base.classifier), side)  # 1x1 conv on side x side, FC after pooling
        _MB_TABLES[key] = dict(madds=(fixed + head, tuple(madds)), params=(size_of(base), tuple(params)))
    return _MB_TABLES[key]


def mb_flops(arch: Sequence[int], image_size: int = 224, width: float = 1.0, num_classes: int = 1000) -> int:
    """Multiply-adds of MobileNetSubnet(arch) on one image, from the lookup table: a sum of 22 numbers."""
    fixed, rows = mb_cost_table(image_size, width, num_classes)["madds"]
    return fixed + sum(row[c] for row, c in zip(rows, arch))


def mb_params(arch: Sequence[int], width: float = 1.0, num_classes: int = 1000) -> int:
    """Parameters of MobileNetSubnet(arch), from the lookup table (any image size gives the same counts)."""
    size = next((k[0] for k in _MB_TABLES if k[1:] == (float(width), int(num_classes))), 32)  # reuse a table if any
    fixed, rows = mb_cost_table(size, width, num_classes)["params"]
    return fixed + sum(row[c] for row, c in zip(rows, arch))


# ----------------------------------------------------------------------------------------------
class MobileNetSpace:
    """The MobileNet space through the shared search-space interface (one object, no state).

    net_args = {"space": "mobilenet", "num_classes": K, "width": 1.0, "image_size": 224}: the supernet is rebuilt
    from it, and the FLOPs table is measured at its image size (224 px reproduces the paper's 475M limit).
    """

    name = "mobilenet"
    ckpt_keys = ("space", "num_classes", "width", "image_size")

    def net_args(self, args, num_classes: int) -> dict:
        width = getattr(args, "width", None) or 1.0
        image_size = getattr(args, "image_size", None) or 224
        return dict(space="mobilenet", num_classes=int(num_classes), width=float(width), image_size=int(image_size))

    def supernet(self, net_args: dict) -> nn.Module:
        model = MobileNetSupernet(net_args["num_classes"], net_args.get("width", 1.0))
        model.args = dict(net_args)
        return model

    def sample_path(self, gen: torch.Generator, net_args: dict, shared: bool = False) -> tuple[int, ...]:
        return mb_sample(gen)  # one choice per block; `shared` means nothing here (no repeated cells)

    def gene_choices(self, net_args: dict) -> list[list[int]]:
        return [list(c) for c in MB_CHOICES]  # 6 or 7 values per block

    def mutation_choices(self, net_args: dict) -> list[list[int]]:
        return [list(c) for c in MB_CHOICES]  # SPEC 5: uniform over the block's own list, identity where allowed

    def repair(self, arch: tuple) -> tuple:
        return tuple(arch)  # every draw from MB_CHOICES is valid

    def parse(self, text: str) -> tuple[int, ...]:
        return mb_parse(text)

    def format(self, arch: tuple) -> str:
        return mb_format(arch)

    def tie_key(self, arch: tuple):
        return tuple(arch)  # equal float64 angles are unlikely here; the tuple keeps any tie deterministic

    def scorer(self, w0: dict, wt: dict, net_args: dict):
        from angle import MBAngleScorer  # angle.py imports this module: import at call time

        return MBAngleScorer(w0, wt, net_args)

    def flops(self, arch: tuple, net_args: dict) -> int:
        return mb_flops(arch, net_args.get("image_size", 224), net_args.get("width", 1.0), net_args["num_classes"])

    def min_flops(self, net_args: dict) -> int:
        """Multiply-adds of the cheapest architecture (the cheapest choice in every block): search.py's early check."""
        fixed, rows = mb_cost_table(net_args.get("image_size", 224), net_args.get("width", 1.0), net_args["num_classes"])[
            "madds"
        ]
        return fixed + sum(min(row.values()) for row in rows)

    def params(self, arch: tuple, net_args: dict) -> int:
        return mb_params(arch, net_args.get("width", 1.0), net_args["num_classes"])

    def all_archs(self, net_args: dict):
        return None  # 6^6 * 7^15 = 2.2e17 architectures: no exhaustive search

    def retrain_args(self, args, num_classes: int) -> dict:
        # the stand-alone network: width, the image side its FLOPs are counted at, and the classifier's dropout
        return dict(
            space="mobilenet",
            num_classes=int(num_classes),
            width=float(getattr(args, "width", None) or 1.0),
            image_size=int(getattr(args, "image_size", None) or 224),
            dropout=float(0.2 if getattr(args, "dropout", None) is None else args.dropout),
        )

    def network(self, arch: tuple, net_args: dict, **opts) -> nn.Module:
        # SPEC 6: Dropout(0.2) before the classifier; identity blocks removed. (`aux` is DARTS's: ignored here.)
        return MobileNetSubnet(arch, net_args["num_classes"], net_args.get("width", 1.0), net_args.get("dropout", 0.2))

    def input_size(self, net_args: dict) -> int:
        return net_args.get("image_size", 224)


# ===== The registry ===========================================================================
SPACES = {"nb201": NB201Space(), "darts": DartsSpace(), "mobilenet": MobileNetSpace()}
