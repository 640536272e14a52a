"""
The RLNAS fitness: the angle between an architecture's initial and trained weight vectors.

For a candidate a, build V(a, W) by concatenating the supernet weights along every
input-to-output path of a's cell, once from the initial weights W0 and once from the trained
weights Wt. The score is

    angle(a) = arccos( <V(a,W0), V(a,Wt)> / (|V(a,W0)| |V(a,Wt)|) )      (radians, maximised; method.md §4.1)

A bigger angle means the weights moved further: by the paper's ease-of-convergence hypothesis
that architecture "converged faster" and is expected to be better. No data and no forward pass
are needed, only two state_dicts.

Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021,
arXiv:2101.11834, the angle-based search metric of the method (paper Sec. 3); the weight vector
follows "Algorithm 1: block-like weight vector construction" of ABS (Hu et al., ECCV 2020,
arXiv:2004.13431), as the official weight_angle.py says. Exact NB201 rules: method.md §4.1-4.2.

This file holds the formula once (`angle_from`), the per-segment statistics every scorer is built
from (`segment_stats`), and the NB201 vector in two implementations, tested against each other:
- `weight_vector` / `angle_reference`: builds the vectors literally, the way the official code
  does (about 20 ms per architecture).
- `AngleScorer`: one pass over both state_dicts computes, for every weight segment, the dot
  product and the two squared norms; the angle of any architecture is then a sum of a few
  precomputed numbers. All 15,625 NB201 architectures take milliseconds.

The DARTS and MobileNet vectors (method.md §4.3 and §4.4; what enters each vector: §4.5) have the same
pair in darts.py and mobilenet.py, built from the three functions of the first section below.

    python search.py --ckpt runs/<run>/supernet.pt             # the scorer of the checkpoint's space
    python -c "import angle; help(angle.AngleScorer)"
"""

from __future__ import annotations

import numpy as np
import torch

from supernet import EDGE_KEYS, OPS, PATHS, cell_layout  # PATHS: the cell's four input-output paths


# ----------------------------------------------------------------------------------------------
# RLNAS: the formula and the numbers it is computed from, shared by the references and scorers of all three spaces.
def angle_from(dot, sq_norm0, sq_norm1):
    """The angle in radians between V0 and Vt from <V0, Vt>, |V0|^2 and |Vt|^2 (floats, or numpy arrays (M,))."""
    # angle = arccos( <w0, wt> / (|w0| |wt|) )
    with np.errstate(invalid="ignore", divide="ignore"):  # an empty vector gives NaN here; callers score it 0
        cos = dot / np.sqrt(sq_norm0 * sq_norm1)
    # clamp: round-off can push the cosine just past 1 (or -1), where arccos is NaN
    return np.arccos(np.clip(cos, -1.0, 1.0))


def segment_stats(w0_parts, wt_parts, device=None) -> torch.Tensor:
    """(<w0, wt>, |w0|^2, |wt|^2) summed over pairs of weight segments, in float64 on the weights' device: (3,).

    Nothing is read back to the host here: a scorer adds these up where the weights are and copies its finished
    tables once (`to_host`), instead of waiting on the device three times per segment.
    """
    total = torch.zeros(3, dtype=torch.float64, device=device if device is not None else w0_parts[0].device)
    for a, b in zip(w0_parts, wt_parts):
        a, b = a.detach().double().flatten(), b.detach().double().flatten()  # (P_s,), (P_s,)
        total = total + torch.stack([torch.dot(a, b), torch.dot(a, a), torch.dot(b, b)])
    return total  # (3,)


def to_host(*tensors: torch.Tensor) -> list[np.ndarray]:
    """The tensors as numpy arrays, copied in one transfer: the one point where a scorer waits for the device."""
    flat = torch.cat([t.flatten() for t in tensors]).cpu().numpy()
    ends = np.cumsum([t.numel() for t in tensors])
    return [flat[end - t.numel() : end].reshape(t.shape) for t, end in zip(tensors, ends)]


def parameter_names(state: dict) -> list[str]:
    """The parameters of a state_dict in module order: its keys without the BN running statistics (buffers)."""
    return [n for n in state if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))]


def pool_constant(c: int, device) -> torch.Tensor:
    # ABS: pooling is a fixed kernel of 1/k^2. Official shape [C, 3, 3] (C*9 numbers, not C*C*9), method.md pitfall 7.
    # float64 (the vector's dtype) on the weights' device: torch.cat refuses a CPU constant beside GPU weights.
    return torch.full((c, 3, 3), 1.0 / 9.0, dtype=torch.float64, device=device)


NONE, SKIP, CONV1, CONV3, POOL = range(len(OPS))
HEAD = ("stem.0.weight", "stem.1.weight", "stem.1.bias")  # stem conv + stem BN gamma, beta (464 at C=16)
TAIL = ("lastact.0.weight", "lastact.0.bias", "classifier.weight", "classifier.bias")  # head BN + linear (778 at K=10)


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


# ----------------------------------------------------------------------------------------------
# RLNAS: the reference implementation, a literal transcription of the official loops (method.md §4.2).
def weight_vector(state: dict, arch, args: dict) -> torch.Tensor | None:
    """V(arch, W) as a float64 vector (P,) on the weights' device, or None when no path reaches the cell output."""
    # EXERCISE 5 BEGIN: concatenate head, the weights along the 4 paths of every cell, the reduction blocks once, tail
    #   read: paper, method step 2 (angle-based metric; ABS Algorithm 1); method.md §4.2 and pitfall 7; details.md detail 6
    #   graded: python make_assignment.py --grade 5   (tests/test_angle.py)
    names = parameter_names(state)
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
                    parts.append(pool_constant(channels[pos], state[HEAD[0]].device))
                # SKIP: identity has no weights in NB201 (empty), unlike DARTS' eye(C)
    if dropped_paths == len(PATHS):
        return None  # the cell output is disconnected from its input: angle 0 (method.md pitfall 7)
    parts += [state[n] for n in TAIL]
    return torch.cat([p.detach().double().flatten() for p in parts])  # (P,)
    # EXERCISE 5 END


def angle_reference(w0: dict, wt: dict, arch, args: dict) -> float:
    # EXERCISE 5 BEGIN: the angle in radians between V(arch, W0) and V(arch, Wt); 0.0 for a disconnected cell
    #   read: paper, method step 2 (angle-based metric); method.md §4.1 and pitfall 7; details.md detail 6
    v0, vt = weight_vector(w0, arch, args), weight_vector(wt, arch, args)
    if v0 is None:
        return 0.0
    dot, sq0, sqt = segment_stats([v0], [vt]).tolist()  # <V0, Vt>, |V0|^2, |Vt|^2
    return float(angle_from(dot, sq0, sqt))
    # EXERCISE 5 END


# ----------------------------------------------------------------------------------------------
# Which parts of the supernet enter V(a, W) (method.md §4.6). The official vector (default) is the cell ops along the
# paths plus, once, the stem and head ("ends") and the two reduction blocks. Those fixed parts are in every
# architecture's vector, so for small cells they dominate the angle; the ablations leave them out to show which
# part carries the ranking. The cell-op segments are the same precomputed numbers in every variant.
VECTORS = {
    "official": ("cells", "ends", "reductions"),
    "cells": ("cells",),
    "cells+reductions": ("cells", "reductions"),
    "cells+stem+head": ("cells", "ends"),
}


def _fixed_names(state: dict, args: dict) -> tuple[list[str], list[str]]:
    """Parameter names of the stem and head (in vector order: stem first, head last) and of the reduction blocks."""
    reduce = tuple(f"cells.{p}." for p, kind in enumerate(cell_layout(args["layers"])) if kind == "reduce")
    return list(HEAD) + list(TAIL), [n for n in parameter_names(state) if n.startswith(reduce)]


# ----------------------------------------------------------------------------------------------
# RLNAS: the fast implementation. Because the vector is a concatenation of segments,
#   <V0, Vt> = sum over segments s (with multiplicity) of <w0_s, wt_s>,
# and likewise |V0|^2 and |Vt|^2. Precompute (dot, n0, nt) per segment once; every angle is then
# a sum over the 4 paths of at most 3 table entries. Computed in float64: in float32 the round-off
# (about 2e-4 rad) is larger than the gaps between the best architectures and reorders them.
class AngleScorer:
    """Angles of NB201 architectures from two supernet state_dicts (W0 and Wt, on any one device).

    scorer = AngleScorer(w0_state, wt_state, supernet_args)          # vector="official" (or an ablation of VECTORS)
    scorer.angles(archs)  # (M, 6) ints -> (M,) float64 radians, 0 for disconnected cells
    """

    def __init__(self, w0: dict, wt: dict, args: dict, vector: str = "official"):
        if vector not in VECTORS:
            raise ValueError(f"unknown weight vector {vector!r}; choose one of {', '.join(VECTORS)}")
        self.vector = vector
        # Fixed parts, present once whenever at least one path survives: the ends (stem + head) and the two
        # reduction blocks. The official vector has both; the ablations of VECTORS leave one or both out.
        ends, reductions = _fixed_names(w0, args)
        kept = ("ends" in VECTORS[vector]) * ends + ("reductions" in VECTORS[vector]) * reductions
        device = w0[HEAD[0]].device
        fixed = segment_stats([w0[n] for n in kept], [wt[n] for n in kept], device)  # (3,) = dot, |w0|^2, |wt|^2
        # table[g, o] = sum over the 3N searchable cells of the stats of op o on edge g (the genotype is shared).
        table = torch.zeros((len(EDGE_KEYS), len(OPS), 3), dtype=torch.float64, device=device)  # (E, K, 3)
        for pos, c in _cell_channels(args).items():
            for g in range(len(EDGE_KEYS)):
                for op in (CONV1, CONV3):
                    name = _op_weight(pos, g, op)
                    table[g, op] += segment_stats([w0[name]], [wt[name]])
                table[g, POOL] += c * 9 / 81.0  # the constant 1/9 [C,3,3] tensor: dot = n0 = nt = C*9/81
        self.fixed, self.table = to_host(fixed, table)  # (3,), (E, K, 3)

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
        theta = angle_from(total[:, 0], total[:, 1], total[:, 2])  # (M,)
        # disconnected cells score 0 and rank last; so does an empty vector (the 'cells' ablation of a skip-only cell)
        return np.where(alive_any & (total[:, 1] > 0), theta, 0.0)

    def angle(self, arch) -> float:
        return float(self.angles([arch])[0])


# ==============================================================================================
# Machinery below: not needed to follow the method. A diagnostic of train.py --track-tau.
# ==============================================================================================


def movement(w0: dict, wt: dict, args: dict) -> dict[str, float]:
    """How far each part of the supernet has moved from W0, in degrees: stem + head, reduction blocks, cell ops.

    The cell ops are all conv weights of all searchable cells (every candidate op, sampled or not). Logged beside
    the tau by train.py --track-tau so the tau-vs-epoch curve of each vector variant can be read.
    """
    ends, reductions = _fixed_names(w0, args)
    cells = [n for n in parameter_names(w0) if n.startswith("cells.") and ".edges." in n]
    moved = {}
    for part, names in (("stem+head", ends), ("reductions", reductions), ("cell ops", cells)):
        dot, sq0, sqt = to_host(segment_stats([w0[n] for n in names], [wt[n] for n in names]))[0].tolist()
        moved[part] = float(np.degrees(angle_from(dot, sq0, sqt)))
    return moved
