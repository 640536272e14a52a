"""
The RLNAS fitness: the angle between an architecture's initial and trained weight vectors.

For a candidate a, build V(a, W) by concatenating the supernet weights along every
input-to-output path of a's cell, once from the initial weights W0 and once from the trained
weights Wt. The score is

    angle(a) = arccos( <V(a,W0), V(a,Wt)> / (|V(a,W0)| |V(a,Wt)|) )      (radians, maximised)

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

    python search.py --ckpt runs/<run>/supernet.pt             # uses AngleScorer
    python -c "import angle; help(angle.AngleScorer)"
"""

from __future__ import annotations

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


def angle_reference(w0: dict, wt: dict, arch, args: dict) -> float:
    v0, vt = weight_vector(w0, arch, args), weight_vector(wt, arch, args)
    if v0 is None:
        return 0.0
    # angle = arccos( <w0, wt> / (|w0| |wt|) ); clamp: round-off can push the cosine just past 1 (NaN in acos)
    cos = torch.dot(v0, vt) / (v0.norm() * vt.norm())
    return math.acos(max(-1.0, min(1.0, cos.item())))


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
