"""
The MobileNet-like search space of RLNAS (paper Table 5): the ProxylessNAS-GPU-like supernet, the model_id notation,
sampling, the stand-alone network, the FLOPs lookup table, and the weight vector with its reference angle and fast
scorer.

A fixed stem, 21 searchable MobileNetV2 blocks (kernel 3/5/7 x expansion 3/6, or identity where the shape allows
it) and a fixed head. An architecture is a "model_id": 21 ints, one per block, in {-1 (identity), 0..5}, e.g. the
paper's searched network (method.md §7.4): "2 0 -1 2 2 0 2 4 0 4 4 2 4 2 4 2 0 0 0 2 2". Everything is built at a
width multiplier (1.0 = the paper's channels; tests use ~0.125).

A student can read this file on its own, or skip it: nothing of the NB201 path depends on it. It implements, in
order, method.md §2.4 (the supernet, its init and sampling), §6 (the retrained network), §5 (the FLOPs lookup
table and the 475M limit) and §4.4/§4.5 (the weight vector); the sizes of paper Table 5 are method.md §7.3.

Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021, arXiv:2101.11834, the
MobileNet-space experiments (paper Sec. 4, Table 5), in the space of ProxylessNAS (Cai et al., ICLR 2019) as SPOS
(Guo et al., ECCV 2020) searches it; the weight vector follows ABS's "Algorithm 1: block-like weight vector
construction" (Hu et al., ECCV 2020), as the official test_server.py.

    python train.py --space mobilenet --width 0.125 --dataset fake --image-size 32 --epochs 1   # a smoke run
    python search.py --ckpt runs/<mobilenet run>/supernet.pt --max-flops 475
    python -c "import mobilenet as M; print(M.mb_flops(M.MB_OFFICIAL) / 1e6)"                   # 471.5M
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from angle import angle_from, segment_stats, to_host
from supernet import linear_madds

# ----------------------------------------------------------------------------------------------
# The search space (method.md §2.4)
MB_STAGES = ((32, 4, 2), (56, 4, 2), (112, 4, 2), (128, 4, 1), (256, 4, 2), (432, 1, 1))  # (out_ch, repeats, stride)
MB_OPS = ((3, 3), (3, 6), (5, 3), (5, 6), (7, 3), (7, 6))  # choice index 0..5 = (kernel, expansion)
MB_OP_NAMES = tuple(f"k{k}e{e}" for k, e in MB_OPS)  # 'k3e3' ... 'k7e6'
MB_IDENTITY = -1  # the skip choice
MB_STEM, MB_FIRST, MB_LAST = 40, 24, 1728  # stem conv out, fixed expansion-1 block out, final 1x1 conv out
MB_NUM_BLOCKS = sum(n for _, n, _ in MB_STAGES)  # 21
MB_OFFICIAL = (2, 0, -1, 2, 2, 0, 2, 4, 0, 4, 4, 2, 4, 2, 4, 2, 0, 0, 0, 2, 2)  # method.md §7.4; Table 5: 5.3M params, 473M


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


# method.md §2.4: identity only where a residual would be legal AND the block is not a stage's first: blocks
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
    """ValueError (one line) unless arch is 21 allowed choices: 0..5 everywhere, -1 only where method.md §2.4 allows it."""
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


# ----------------------------------------------------------------------------------------------
# RLNAS: single-path sampling
def mb_sample(gen: torch.Generator) -> tuple[int, ...]:
    """RLNAS/SPOS: every block draws uniformly from its own choice list (method.md §2.4 'Sampling').

    Only `gen` is used: seeded identically on every DDP rank, all ranks train the same path (method.md pitfall 4).
    """
    draw = torch.rand(MB_NUM_BLOCKS, generator=gen)  # (21,) in [0, 1)
    return tuple(MB_CHOICES[b][int(u * len(MB_CHOICES[b]))] for b, u in enumerate(draw.tolist()))


# ----------------------------------------------------------------------------------------------
# The networks: one searchable block, the supernet and the stand-alone network (method.md §2.4 'Macro', §6)
class MBConv(nn.Module):
    """MobileNetV2 inverted residual (method.md §2.4): pw expand + BN + ReLU6 -> dw kxk/s + BN + ReLU6 -> pw linear + BN.

    expansion 1 (the fixed block after the stem) has no expand conv. The residual is added when
    stride == 1 and inp == oup. Names (expand_conv, bn1, dw_conv, bn2, project_conv, bn3) are what
    the weight vector walks; they match the official conv[0], conv[1], conv[3], conv[4], conv[6], conv[7].
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
    """method.md §2.4 init: conv N(0, sqrt(2 / (k*k*out))), BN gamma 1 / beta 0, Linear left at PyTorch's default.

    Part of the metric (method.md pitfall 2): the angle is measured from these W0.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels  # depthwise: out_channels = hidden, as officially
            nn.init.normal_(m.weight, 0.0, (2.0 / n) ** 0.5)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _MobileNetBase(nn.Module):
    """The fixed parts (method.md §2.4 'Macro'): stem, the expansion-1 block, final 1x1 conv, pooling, classifier."""

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
    dropout 0.2 before the classifier (method.md §6 'MobileNet')."""

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
            # Dropout(0.2) before the classifier (method.md §6). Its mask comes from drop_generator when one is set, not
            # from the global RNG, so a resumed run draws exactly the masks the interrupted one would have.
            keep = 1.0 - self.dropout
            mask = torch.rand(x.shape, generator=self.drop_generator, device=x.device) < keep
            x = x * mask / keep
        return self.classifier(x)  # (B, K)

    def extra_repr(self):
        return f"model_id='{mb_format(self.arch)}'"


# ----------------------------------------------------------------------------------------------
# RLNAS: the FLOPs lookup table of the MobileNet search (method.md §5, "MobileNet FLOPs lookup table").
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
            total += linear_madds(m.in_features, m.out_features)  # the paper's units: (2 * in - 1) * out
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
# RLNAS: building from net_args (the dict checkpoints store; spaces.py wires these up)
def mb_net_args(args, num_classes: int) -> dict:
    """net_args of the supernet: {"space", "num_classes", "width", "image_size"}. The FLOPs table is measured at its
    image size (224 px reproduces the paper's 475M limit)."""
    width = getattr(args, "width", None) or 1.0
    image_size = getattr(args, "image_size", None) or 224
    return dict(space="mobilenet", num_classes=int(num_classes), width=float(width), image_size=int(image_size))


def mb_retrain_args(args, num_classes: int) -> dict:
    """net_args of the stand-alone network: width, the image side its FLOPs are counted at, the classifier's dropout."""
    return dict(
        space="mobilenet",
        num_classes=int(num_classes),
        width=float(getattr(args, "width", None) or 1.0),
        image_size=int(getattr(args, "image_size", None) or 224),
        dropout=float(0.2 if getattr(args, "dropout", None) is None else args.dropout),
    )


def mb_supernet(net_args: dict) -> nn.Module:
    model = MobileNetSupernet(net_args["num_classes"], net_args.get("width", 1.0))
    model.args = dict(net_args)
    return model


def mb_network(arch: Sequence[int], net_args: dict, **opts) -> nn.Module:
    # method.md §6: Dropout(0.2) before the classifier; identity blocks removed. (`aux` is DARTS's: ignored here.)
    return MobileNetSubnet(arch, net_args["num_classes"], net_args.get("width", 1.0), net_args.get("dropout", 0.2))


def mb_min_flops(net_args: dict) -> int:
    """Multiply-adds of the cheapest architecture (the cheapest choice in every block): search.py's early check."""
    a = net_args
    fixed, rows = mb_cost_table(a.get("image_size", 224), a.get("width", 1.0), a["num_classes"])["madds"]
    return fixed + sum(min(row.values()) for row in rows)


# ----------------------------------------------------------------------------------------------
# RLNAS: the MobileNet weight vector (method.md §4.4, §4.5). V(a, W) for a model_id a, as the official
# test_server.py builds it:
#   fixed part first: stem conv, the expansion-1 block's dw and pw convs, the final 1x1 conv, the
#     classifier weight; NO BatchNorm parameters and NO classifier bias here (method.md §4.5);
#   then for block 0..20: a chosen MBConv contributes expand conv, BN1 gamma, beta, dw conv, BN2 gamma, beta,
#     project conv (the projection BN3 is left out); identity contributes the constant eye(oup, inp), flattened.
# Every block lies on the single input-to-output path, so (ABS Algorithm 1) each appears exactly once.
MB_FIXED = ("stem.0.weight", "first.dw_conv.weight", "first.project_conv.weight", "head.0.weight", "classifier.weight")
MB_OP_PARTS = "expand_conv.weight bn1.weight bn1.bias dw_conv.weight bn2.weight bn2.bias project_conv.weight".split()


def _mb_op_names(block: int, choice: int) -> list[str]:
    # the candidate's parameters in the official order (conv[0], conv[1] w/b, conv[3], conv[4] w/b, conv[6])
    return [f"blocks.{block}.ops.{choice}.{part}" for part in MB_OP_PARTS]


def _flat(state: dict, names) -> torch.Tensor:
    return torch.cat([state[n].detach().double().flatten() for n in names])  # (P_s,)


def mb_weight_vector(state: dict, arch, args: dict) -> torch.Tensor:
    """Reference: V(arch, W) as a float64 vector (P,), a literal transcription of the official loop (method.md §4.4)."""
    parts = [state[name] for name in MB_FIXED]
    device = parts[0].device  # the constants are made beside the weights (torch.cat needs one device)
    for b, ((inp, oup, _), c) in enumerate(zip(mb_blocks(args.get("width", 1.0)), arch)):
        if c == MB_IDENTITY:
            parts.append(torch.eye(oup, inp, dtype=torch.float64, device=device))  # ABS: identity as a constant matrix
        else:
            parts += [state[name] for name in _mb_op_names(b, c)]
    return torch.cat([p.detach().double().flatten() for p in parts])  # (P,)


def mb_angle_reference(w0: dict, wt: dict, arch, args: dict) -> float:
    v0, vt = mb_weight_vector(w0, arch, args), mb_weight_vector(wt, arch, args)
    dot, sq0, sqt = segment_stats([v0], [vt]).tolist()  # <V0, Vt>, |V0|^2, |Vt|^2
    return float(angle_from(dot, sq0, sqt))


class MBAngleScorer:
    """Angles of MobileNet model_ids from two supernet state_dicts, the fast way.

    As for NB201: V is a concatenation of segments, so <V0,Vt>, |V0|^2 and |Vt|^2 are sums of per-segment
    numbers. table[b, c+1] holds (dot, |w0|^2, |wt|^2) of block b's choice c (column 0 = identity: eye(C)
    gives dot = n0 = nt = min(oup, inp)); an angle is the fixed part plus 21 table rows. Float64 throughout.

    scorer = MBAngleScorer(w0_state, wt_state, supernet_args)
    scorer.angles(archs)  # (M, 21) ints in -1..5 -> (M,) float64 radians
    """

    def __init__(self, w0: dict, wt: dict, args: dict, vector: str = "official"):
        if vector != "official":  # the vector ablations (angle.VECTORS) are defined for NB201 only
            raise ValueError(f"weight vector {vector!r} is an NB201 ablation; this space has the official one only")
        fixed = segment_stats([_flat(w0, MB_FIXED)], [_flat(wt, MB_FIXED)])  # (3,) = dot, |w0|^2, |wt|^2
        blocks = mb_blocks(args.get("width", 1.0))
        table = torch.zeros((len(blocks), len(MB_OPS) + 1, 3), dtype=torch.float64, device=fixed.device)  # (21, 7, 3)
        for b, (inp, oup, _) in enumerate(blocks):  # column c+1 = choice c
            table[b, 0] = min(inp, oup)  # eye(oup, inp): min(oup, inp) ones, identical in W0 and Wt
            for c in range(len(MB_OPS)):
                names = _mb_op_names(b, c)
                table[b, c + 1] = segment_stats([_flat(w0, names)], [_flat(wt, names)])  # the candidate as one segment
        self.fixed, self.table = to_host(fixed, table)  # one wait on the device

    def angles(self, archs) -> np.ndarray:
        a = np.asarray(archs, dtype=np.int64).reshape(-1, self.table.shape[0])  # (M, 21)
        total = self.fixed + self.table[np.arange(a.shape[1]), a + 1].sum(axis=1)  # (M, 21, 3) -> (M, 3)
        return angle_from(total[:, 0], total[:, 1], total[:, 2])  # (M,)

    def angle(self, arch) -> float:
        return float(self.angles([arch])[0])
