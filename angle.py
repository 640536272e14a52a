"""
The RLNAS fitness: the angle between an architecture's initial and trained weight vectors.

For a candidate a, build V(a, W) by concatenating the supernet weights along every
input-to-output path of a's cell, once from the initial weights W0 and once from the trained
weights Wt. The score is

    angle(a) = arccos( <V(a,W0), V(a,Wt)> / (|V(a,W0)| |V(a,Wt)|) )      (radians, maximised; SPEC 4.1)

A bigger angle means the weights moved further: by the paper's ease-of-convergence hypothesis
that architecture "converged faster" and is expected to be better. No data and no forward pass
are needed, only two state_dicts.

Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021,
arXiv:2101.11834, the angle-based search metric of the method; the weight vector follows
"Algorithm 1: block-like weight vector construction" of ABS (Hu et al., ECCV 2020,
arXiv:2004.13431), as the official weight_angle.py says. Exact NB201 rules: SPEC.md 4.1-4.2.

Two implementations, tested against each other:
- `weight_vector` / `angle_reference`: builds the vectors literally, the way the official code
  does (about 20 ms per architecture).
- `AngleScorer`: one pass over both state_dicts computes, for every weight segment, the dot
  product and the two squared norms; the angle of any architecture is then a sum of a few
  precomputed numbers. All 15,625 NB201 architectures take milliseconds.

The other spaces have the same pair, each in its own delimited section below: DARTS (`darts_weight_vector` /
`darts_angle_reference` and `DartsAngleScorer`, SPEC 4.3) and MobileNet (`mb_weight_vector` / `mb_angle_reference`
and `MBAngleScorer`, SPEC 4.4). What each vector includes, space by space: SPEC 4.5.

    python search.py --ckpt runs/<run>/supernet.pt             # the scorer of the checkpoint's space
    python -c "import angle; help(angle.AngleScorer)"
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from supernet import EDGE_KEYS, MB_IDENTITY, MB_OPS, OPS, Supernet, cell_layout, mb_blocks

# RLNAS: the four input-to-output paths of the NB201 cell (SPEC 4.2), as gene (edge) indices.
#   P1 = 0->3: edge 3<-0        P2 = 0->2->3: 2<-0, 3<-2
#   P3 = 0->1->2->3: 1<-0, 2<-1, 3<-2          P4 = 0->1->3: 1<-0, 3<-1
# Edges on several paths (1<-0 on P3 and P4, 3<-2 on P2 and P3) are counted once per path.
PATHS = ((3,), (1, 5), (0, 2, 5), (0, 4))
NONE, SKIP, CONV1, CONV3, POOL = range(len(OPS))
HEAD = ("stem.0.weight", "stem.1.weight", "stem.1.bias")  # stem conv + stem BN gamma, beta (464 at C=16)
TAIL = ("lastact.0.weight", "lastact.0.bias", "classifier.weight", "classifier.bias")  # head BN + linear (778 at K=10)


def _param_names(args: dict) -> list[str]:
    """Names of the supernet's parameters in module order (BN running stats are buffers: never used)."""
    with torch.device("meta"):  # no memory, no init: only the names
        net = Supernet(args["channels"], args["layers"], args["num_classes"])
    return [name for name, _ in net.named_parameters()]


def _cell_channels(args: dict) -> dict[int, int]:
    """Channel count of each searchable cell position: C, 2C, 4C by stage."""
    out, c = {}, args["channels"]
    for pos, kind in enumerate(cell_layout(args["layers"])):
        if kind == "reduce":
            c *= 2
        else:
            out[pos] = c
    return out


def _op_weight(pos: int, gene: int, op: int) -> str:
    # the conv inside ReLU-conv-BN of candidate `op` on edge `gene` of cell `pos`; cell BNs are affine=False
    return f"cells.{pos}.edges.{EDGE_KEYS[gene]}.{op}.op.1.weight"


def _pool_constant(c: int) -> torch.Tensor:
    # ABS: pooling is a fixed kernel of 1/k^2. Official shape [C, 3, 3] (C*9 numbers, not C*C*9), pitfall 7
    return torch.full((c, 3, 3), 1.0 / 9.0, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# RLNAS: the reference implementation, a literal transcription of the official loops (SPEC 4.2).
def weight_vector(state: dict, arch, args: dict) -> torch.Tensor | None:
    """V(arch, W) as a float64 vector (P,), or None when no path reaches the cell output."""
    # EXERCISE 5 BEGIN: concatenate head, the weights along the 4 paths of every cell, the reduction blocks once, tail
    #   read: paper, method step 2 (angle-based metric; ABS Algorithm 1); SPEC 4.2 and pitfall 7; README detail 6
    #   graded: python make_assignment.py --grade 5   (tests/test_angle.py)
    names = _param_names(args)
    layout = cell_layout(args["layers"])
    channels = _cell_channels(args)
    parts = [state[n] for n in HEAD]
    fixed_added = set()  # each fixed reduction block is added once in total (global counter)
    dropped_paths = 0
    for path in PATHS:  # outer loop over paths ...
        for pos, kind in enumerate(layout):  # ... inner loop over the 3N+2 cell positions
            if kind == "reduce":
                if pos not in fixed_added:
                    fixed_added.add(pos)
                    parts += [state[n] for n in names if n.startswith(f"cells.{pos}.")]  # conv_a, BN, conv_b, BN, shortcut
                continue
            if any(arch[g] == NONE for g in path):
                # 'none' on the path: drop it. The genotype is shared by all cells, so every cell would
                # drop it too: the official code breaks out of the cell loop here (before any fixed block).
                dropped_paths += 1
                break
            for g in path:
                if arch[g] in (CONV1, CONV3):
                    parts.append(state[_op_weight(pos, g, arch[g])])
                elif arch[g] == POOL:
                    parts.append(_pool_constant(channels[pos]))
                # SKIP: identity has no weights in NB201 (empty), unlike DARTS' eye(C)
    if dropped_paths == len(PATHS):
        return None  # the cell output is disconnected from its input: angle 0 (pitfall 7)
    parts += [state[n] for n in TAIL]
    return torch.cat([p.detach().double().flatten() for p in parts])  # (P,)
    # EXERCISE 5 END


def angle_reference(w0: dict, wt: dict, arch, args: dict) -> float:
    # EXERCISE 5 BEGIN: the angle in radians between V(arch, W0) and V(arch, Wt); 0.0 for a disconnected cell
    #   read: paper, method step 2 (angle-based metric); SPEC 4.1 and pitfall 7; README detail 6
    v0, vt = weight_vector(w0, arch, args), weight_vector(wt, arch, args)
    if v0 is None:
        return 0.0
    # angle = arccos( <w0, wt> / (|w0| |wt|) ); clamp: round-off can push the cosine just past 1 (NaN in acos)
    cos = torch.dot(v0, vt) / (v0.norm() * vt.norm())
    return math.acos(max(-1.0, min(1.0, cos.item())))
    # EXERCISE 5 END


# ----------------------------------------------------------------------------------------------
# RLNAS: the fast implementation. Because the vector is a concatenation of segments,
#   <V0, Vt> = sum over segments s (with multiplicity) of <w0_s, wt_s>,
# and likewise |V0|^2 and |Vt|^2. Precompute (dot, n0, nt) per segment once; every angle is then
# a sum over the 4 paths of at most 3 table entries. Computed in float64: in float32 the round-off
# (about 2e-4 rad) is larger than the gaps between the best architectures and reorders them.
class AngleScorer:
    """Angles of NB201 architectures from two supernet state_dicts (W0 and Wt).

    scorer = AngleScorer(w0_state, wt_state, supernet_args)
    scorer.angles(archs)  # (M, 6) ints -> (M,) float64 radians, 0 for disconnected cells
    """

    def __init__(self, w0: dict, wt: dict, args: dict):
        names = _param_names(args)
        layout = cell_layout(args["layers"])

        def stats(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
            a, b = a.detach().double().flatten(), b.detach().double().flatten()
            return np.array([torch.dot(a, b).item(), torch.dot(a, a).item(), torch.dot(b, b).item()])  # (3,)

        # Fixed part, present once whenever at least one path survives: head, both reduction blocks, tail.
        fixed = list(HEAD) + list(TAIL)
        fixed += [n for n in names if any(n.startswith(f"cells.{p}.") for p, k in enumerate(layout) if k == "reduce")]
        self.fixed = sum((stats(w0[n], wt[n]) for n in fixed), np.zeros(3))  # (3,) = dot, |w0|^2, |wt|^2
        # table[g, o] = sum over the 3N searchable cells of the stats of op o on edge g (the genotype is shared).
        self.table = np.zeros((len(EDGE_KEYS), len(OPS), 3))  # (E, K, 3)
        for pos, c in _cell_channels(args).items():
            for g in range(len(EDGE_KEYS)):
                for op in (CONV1, CONV3):
                    name = _op_weight(pos, g, op)
                    self.table[g, op] += stats(w0[name], wt[name])
                self.table[g, POOL] += c * 9 / 81.0  # the constant 1/9 [C,3,3] tensor: dot = n0 = nt = C*9/81

    def angles(self, archs) -> np.ndarray:
        a = np.asarray(archs, dtype=np.int64).reshape(-1, len(EDGE_KEYS))  # (M, E)
        total = np.zeros((len(a), 3))  # (M, 3): <V0,Vt>, |V0|^2, |Vt|^2
        alive_any = np.zeros(len(a), dtype=bool)
        for path in PATHS:
            alive = np.all(a[:, path] != NONE, axis=1)  # (M,) a 'none' anywhere drops the whole path
            seg = sum(self.table[g, a[:, g]] for g in path)  # (M, 3): this path's edges in one cell stage sum
            total += alive[:, None] * seg
            alive_any |= alive
        total += alive_any[:, None] * self.fixed
        with np.errstate(invalid="ignore", divide="ignore"):
            # angle = arccos( <w0, wt> / (|w0| |wt|) ), cosine clamped to [-1, 1]
            cos = total[:, 0] / np.sqrt(total[:, 1] * total[:, 2])
        theta = np.arccos(np.clip(cos, -1.0, 1.0))
        return np.where(alive_any, theta, 0.0)  # disconnected cells score 0 and rank last

    def angle(self, arch) -> float:
        return float(self.angles([arch])[0])


# ==============================================================================================
# ===== DARTS space (SPEC 4.3/4.5) =============================================================
# ==============================================================================================
# The DARTS weight vector. Per cell, in network order, 30 input-to-output paths: from input node 0 or 1 through
# strictly increasing intermediate nodes to ANY intermediate node 2..5 (every intermediate node is concatenated into
# the cell output, so every such path reaches it): 2 end at node 2, 4 at node 3, 8 at node 4, 16 at node 5. A path
# with a 'none' edge is dropped; a surviving path contributes each of its edges (shared edges once per path):
#   max/avg pool       a constant 1/9 tensor of shape [C, 3, 3] (C*9 numbers) + the trained BN gamma, beta after it
#   skip, stride 1     a constant eye(C), flattened (C*C numbers; NB201's skip contributes nothing)
#   skip, stride 2     FactorizedReduce: conv_1, conv_2 weights + BN gamma, beta
#   sep_conv           dw1, pw1, dw2, pw2 weights, then BN1 gamma, beta and BN2 gamma, beta
#   dil_conv           dw, pw weights, then BN gamma, beta. FIX: the official test_server.py reads the BN's gamma
#                      twice (the bias slot reads .weight, a copy-paste bug); we use the bias. The angles differ
#                      from the official ones wherever a dil_conv is on a surviving path.
# After all cells, once: the stem(s) (conv + BN gamma, beta each), every cell's preprocess0 and preprocess1 (convs +
# BN gamma, beta), and the classifier: weight only on CIFAR, weight + bias on ImageNet (SPEC 4.5).
# The order inside the vector does not change the angle; the reference keeps the official one.
from supernet import DARTS_EDGES, DARTS_OPS, DARTS_SKIP, SPACES, darts_edge  # noqa: E402

DARTS_PATHS = tuple(
    tuple(darts_edge(a, b) for a, b in zip(nodes, nodes[1:]))
    for end in range(2, 6)
    for src in (0, 1)
    for mask in range(2 ** (end - 2))  # which of the intermediate nodes 2..end-1 the path visits
    for nodes in [[src] + [m for m in range(2, end) if mask >> (m - 2) & 1] + [end]]
)  # 30 paths, each a tuple of edge indices
assert len(DARTS_PATHS) == 30


def _darts_cells(args: dict) -> tuple[list[tuple[int, bool]], list[str]]:
    """(C, is_reduction) of every cell of the supernet in network order, and its parameter names in module order."""
    return _darts_cells_cached(tuple(sorted(args.items())))


@functools.lru_cache(maxsize=8)
def _darts_cells_cached(key: tuple) -> tuple[list[tuple[int, bool]], list[str]]:
    with torch.device("meta"):  # no memory, no init: only the structure
        net = SPACES["darts"].supernet(dict(key))
    return [(cell.c, cell.reduction) for cell in net.cells], [n for n, _ in net.named_parameters()]


def _darts_edge_parts(state: dict, i: int, e: int, op: int, c: int, reduction: bool) -> list[torch.Tensor]:
    """The pieces of edge e with op `op` in cell i (SPEC 4.3), as tensors."""
    name, pre = DARTS_OPS[op], f"cells.{i}.edges.{e}.{op}."
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        return [_pool_constant(c), state[pre + "bn.weight"], state[pre + "bn.bias"]]
    if op == DARTS_SKIP:
        if reduction and DARTS_EDGES[e][0] < 2:  # stride 2: FactorizedReduce
            return [state[pre + k] for k in ("conv_1.weight", "conv_2.weight", "bn.weight", "bn.bias")]
        return [torch.eye(c, dtype=torch.float64)]  # identity: eye(C)
    if name.startswith("sep_conv"):
        keys = ("dw1.weight", "pw1.weight", "dw2.weight", "pw2.weight", "bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias")
        return [state[pre + k] for k in keys]
    return [state[pre + k] for k in ("dw.weight", "pw.weight", "bn.weight", "bn.bias")]  # dil_conv, bias fixed


def _darts_extra_names(args: dict, names: list[str]) -> list[str]:
    """Stem(s), every cell's preprocess0 then preprocess1, the classifier (SPEC 4.3 'extra', 4.5)."""
    stems = [n for n in names if n.startswith(("stem.", "stem0.", "stem1."))]  # module order: stem0 before stem1
    cells = sorted({int(n.split(".")[1]) for n in names if n.startswith("cells.")})
    pre = [n for i in cells for p in ("preprocess0", "preprocess1") for n in names if n.startswith(f"cells.{i}.{p}.")]
    head = ["classifier.weight"] + (["classifier.bias"] if args["variant"] == "imagenet" else [])  # C10: weight only
    return stems + pre + head


def darts_weight_vector(state: dict, arch, args: dict) -> torch.Tensor | None:
    """Reference V(arch, W) for the DARTS space as a float64 vector (P,): the literal concatenation, in the official
    order (cells, then paths, then edges; then the extra parameters). None if no path survives anywhere."""
    cells, names = _darts_cells(args)
    n = len(DARTS_EDGES)
    parts, alive = [], False
    for i, (c, reduction) in enumerate(cells):
        genes = arch[n:] if reduction else arch[:n]  # all cells of a kind share one genotype
        for path in DARTS_PATHS:
            if any(genes[e] == 0 for e in path):
                continue  # 'none' on the path: drop it (and move on to the next path)
            alive = True
            for e in path:
                parts += _darts_edge_parts(state, i, e, genes[e], c, reduction)
    if not alive:
        return None
    parts += [state[k] for k in _darts_extra_names(args, names)]
    return torch.cat([p.detach().double().flatten() for p in parts])  # (P,)


def darts_angle_reference(w0: dict, wt: dict, arch, args: dict) -> float:
    v0, vt = darts_weight_vector(w0, arch, args), darts_weight_vector(wt, arch, args)
    if v0 is None:
        return 0.0
    cos = torch.dot(v0, vt) / (v0.norm() * vt.norm())  # clamp below: round-off can push it past 1
    return math.acos(max(-1.0, min(1.0, cos.item())))


class DartsAngleScorer:
    """Angles of DARTS genotypes (28 genes) from two supernet state_dicts, the same segment-sum design as AngleScorer:
    table[kind, e, op] = (dot, |w0|^2, |wt|^2) of edge e's pieces summed over the cells of that kind (normal or
    reduction, which share a genotype); an angle is then a sum over the 30 paths of each kind, plus the fixed part.
    """

    def __init__(self, w0: dict, wt: dict, args: dict):
        cells, names = _darts_cells(args)

        def stats(parts0, parts1) -> np.ndarray:
            out = np.zeros(3)
            for a, b in zip(parts0, parts1):
                a, b = a.detach().double().flatten(), b.detach().double().flatten()
                out += [torch.dot(a, b).item(), torch.dot(a, a).item(), torch.dot(b, b).item()]
            return out  # (3,)

        extra = _darts_extra_names(args, names)
        self.fixed = stats([w0[k] for k in extra], [wt[k] for k in extra])  # (3,)
        self.table = np.zeros((2, len(DARTS_EDGES), len(DARTS_OPS), 3))  # (kind, E, K, 3); op 0 ('none') stays 0
        for i, (c, reduction) in enumerate(cells):
            for e in range(len(DARTS_EDGES)):
                for op in range(1, len(DARTS_OPS)):
                    p0 = _darts_edge_parts(w0, i, e, op, c, reduction)
                    p1 = _darts_edge_parts(wt, i, e, op, c, reduction)
                    self.table[int(reduction), e, op] += stats(p0, p1)

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
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = total[:, 0] / np.sqrt(total[:, 1] * total[:, 2])  # clamped: round-off can push it past 1
        return np.where(alive_any, np.arccos(np.clip(cos, -1.0, 1.0)), 0.0)

    def angle(self, arch) -> float:
        return float(self.angles([arch])[0])


# ==============================================================================================
# ===== MobileNet space (SPEC 2.4, 4.4) =====
# V(a, W) for a model_id a (21 block choices), as the official test_server.py builds it:
#   fixed part first: stem conv, the expansion-1 block's dw and pw convs, the final 1x1 conv, the
#     classifier weight; NO BatchNorm parameters and NO classifier bias here (SPEC 4.5);
#   then for block 0..20: a chosen MBConv contributes expand conv, BN1 gamma, beta, dw conv, BN2 gamma, beta,
#     project conv (the projection BN3 is left out); identity contributes the constant eye(oup, inp), flattened.
# Every block lies on the single input-to-output path, so (ABS Algorithm 1) each appears exactly once.
# ==============================================================================================
MB_FIXED = ("stem.0.weight", "first.dw_conv.weight", "first.project_conv.weight", "head.0.weight", "classifier.weight")
MB_OP_PARTS = "expand_conv.weight bn1.weight bn1.bias dw_conv.weight bn2.weight bn2.bias project_conv.weight".split()


def _mb_op_names(block: int, choice: int) -> list[str]:
    # the candidate's parameters in the official order (conv[0], conv[1] w/b, conv[3], conv[4] w/b, conv[6])
    return [f"blocks.{block}.ops.{choice}.{part}" for part in MB_OP_PARTS]


def mb_weight_vector(state: dict, arch, args: dict) -> torch.Tensor:
    """Reference: V(arch, W) as a float64 vector (P,), a literal transcription of the official loop (SPEC 4.4)."""
    parts = [state[name] for name in MB_FIXED]
    for b, ((inp, oup, _), c) in enumerate(zip(mb_blocks(args.get("width", 1.0)), arch)):
        if c == MB_IDENTITY:
            parts.append(torch.eye(oup, inp, dtype=torch.float64))  # ABS: identity as a constant weight matrix
        else:
            parts += [state[name] for name in _mb_op_names(b, c)]
    return torch.cat([p.detach().double().flatten() for p in parts])  # (P,)


def mb_angle_reference(w0: dict, wt: dict, arch, args: dict) -> float:
    v0, vt = mb_weight_vector(w0, arch, args), mb_weight_vector(wt, arch, args)
    # angle = arccos( <w0, wt> / (|w0| |wt|) ); clamp: round-off can push the cosine just past 1 (NaN in acos)
    cos = torch.dot(v0, vt) / (v0.norm() * vt.norm())
    return math.acos(max(-1.0, min(1.0, cos.item())))


class MBAngleScorer:
    """Angles of MobileNet model_ids from two supernet state_dicts, the fast way.

    As for NB201: V is a concatenation of segments, so <V0,Vt>, |V0|^2 and |Vt|^2 are sums of per-segment
    numbers. table[b, c+1] holds (dot, |w0|^2, |wt|^2) of block b's choice c (column 0 = identity: eye(C)
    gives dot = n0 = nt = min(oup, inp)); an angle is the fixed part plus 21 table rows. Float64 throughout.

    scorer = MBAngleScorer(w0_state, wt_state, supernet_args)
    scorer.angles(archs)  # (M, 21) ints in -1..5 -> (M,) float64 radians
    """

    def __init__(self, w0: dict, wt: dict, args: dict):
        def stats(names: list[str]) -> np.ndarray:
            a = torch.cat([w0[n].detach().double().flatten() for n in names])  # (P_s,)
            b = torch.cat([wt[n].detach().double().flatten() for n in names])  # (P_s,)
            return np.array([torch.dot(a, b).item(), torch.dot(a, a).item(), torch.dot(b, b).item()])  # (3,)

        self.fixed = stats(list(MB_FIXED))  # (3,) = dot, |w0|^2, |wt|^2
        blocks = mb_blocks(args.get("width", 1.0))
        self.table = np.zeros((len(blocks), len(MB_OPS) + 1, 3))  # (21, 7, 3): column c+1 = choice c
        for b, (inp, oup, _) in enumerate(blocks):
            self.table[b, 0] = min(inp, oup)  # eye(oup, inp): min(oup, inp) ones, identical in W0 and Wt
            for c in range(len(MB_OPS)):
                self.table[b, c + 1] = stats(_mb_op_names(b, c))

    def angles(self, archs) -> np.ndarray:
        a = np.asarray(archs, dtype=np.int64).reshape(-1, self.table.shape[0])  # (M, 21)
        total = self.fixed + self.table[np.arange(a.shape[1]), a + 1].sum(axis=1)  # (M, 21, 3) -> (M, 3)
        # angle = arccos( <w0, wt> / (|w0| |wt|) ), cosine clamped to [-1, 1]
        cos = total[:, 0] / np.sqrt(total[:, 1] * total[:, 2])
        return np.arccos(np.clip(cos, -1.0, 1.0))

    def angle(self, arch) -> float:
        return float(self.angles([arch])[0])
