"""
The three search spaces of RLNAS behind one small table: what train.py, search.py and retrain.py need from a space.

The stage scripts know no space. They look one up in SPACES by name (--space for train.py and retrain.py, the
checkpoint's supernet_args["space"] for search.py) and call only the fields of `Space` below. Each row wires up
the plain functions of one space file: supernet.py + angle.py (NAS-Bench-201, paper Table 1; method.md §2.1, §4.2),
darts.py (the DARTS-like space, paper Table 3; method.md §2.2-2.3, §4.3) and mobilenet.py (the MobileNet-like
space, paper Table 5; method.md §2.4, §4.4). Nothing here computes anything of the method.

Inside the code an architecture is a tuple of ints (one gene per decision); strings only cross boundaries (CLI,
logs, JSON), through parse() and format(). A space's supernet is described by `net_args`, a plain dict stored in
checkpoints as "supernet_args": always "space" and "num_classes", plus what the space needs (channels, layers,
variant, image_size, width). The fields, documented once:

    name                                  "nb201", "darts", "mobilenet"
    ckpt_keys                             the keys a valid net_args must have (search.py checks them)
    net_args(args, num_classes) -> dict   net_args of the supernet from train.py's flags; plain types only
    supernet(net_args) -> nn.Module       the weight-sharing supernet; model(x, path) runs only the sampled path;
                                          model.args == net_args
    sample_path(gen, net_args)            one training step's path, drawn ONLY from `gen` (same seed on every DDP
                                          rank -> same path, method.md pitfall 4). NB201 also takes shared=True
                                          (train.py --sampling shared, passed only when given)
    path(arch, net_args)                  the path that runs one architecture in the supernet (search.py's one-shot
                                          accuracy): NB201 repeats the cell in all 3N cells; elsewhere arch itself
    gene_choices(net_args)                allowed values per gene: list[list[int]] (evolution's initial population)
    mutation_choices(net_args)            values a mutation may draw per gene (method.md §5)
    repair(arch) -> arch                  identity where the space needs none; deterministic given the arch
    parse(text) -> arch                   ValueError with a one-line message naming what is wrong
    format(arch) -> str                   the string users see
    tie_key(arch)                         how search.py orders archs whose fitness ties (evolution.rank)
    crossover_first                       the official loop of the space breeds crossovers first (MobileNet)
    evolution(net_args)                   the evolution's keywords of the space, bundled (search.py)
    scorer(w0, wt, net_args, vector=)     the fast angle: an object with .angles(list of archs) -> 1-D array
    flops(arch, net_args) -> int          multiply-adds of the candidate at the input size; None: no FLOPs count
    min_flops(net_args) -> int            multiply-adds of the cheapest architecture (search.py refuses a lower
                                          --max-flops at once instead of drawing candidates in vain); None with flops
    params(arch, net_args) -> int         parameters of the stand-alone network (search.py --fitness params)
    all_archs(net_args)                   every architecture (search.py --exhaustive), or None if too many
    network(arch, net_args, **opts)       the stand-alone network retrain.py trains; model(x) -> logits, or in
                                          training (logits, aux_logits) with aux=True (DARTS); opts it lacks: ignored
    retrain_args(args, num_classes)       net_args of that network from retrain.py's flags
    input_size(net_args) -> int           the image side the FLOPs are counted at

    python -c "from spaces import SPACES; print(list(SPACES), SPACES['darts'].ckpt_keys)"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

import angle
import darts
import mobilenet
import supernet
from cli import UsageError


@dataclass(frozen=True)
class Space:
    """One search space: a name, its checkpoint keys and plain functions (the fields of the module docstring)."""

    name: str
    ckpt_keys: tuple[str, ...]
    net_args: Callable
    supernet: Callable
    sample_path: Callable
    path: Callable
    gene_choices: Callable
    mutation_choices: Callable
    repair: Callable
    parse: Callable
    format: Callable
    tie_key: Callable
    scorer: Callable
    flops: Callable | None
    min_flops: Callable | None
    params: Callable
    all_archs: Callable
    network: Callable
    retrain_args: Callable
    input_size: Callable
    crossover_first: bool = False  # the official MobileNet loop breeds its crossovers before its mutants (method.md §5)

    def evolution(self, net_args: dict) -> dict:
        """The keywords of evolution.generations() that differ per space: what a mutation may draw, the order of the
        offspring, the repair of a raw draw and the tie rule."""
        return dict(mutation_choices=self.mutation_choices(net_args), crossover_first=self.crossover_first,
                    repair=self.repair, tie_key=self.tie_key)  # fmt: skip


def nb201_args(args, num_classes: int) -> dict:
    """net_args of an NB201 supernet or stand-alone network: C, N cells per stage, K classes."""
    return dict(space="nb201", channels=args.channels, layers=args.layers, num_classes=num_classes)


NB201 = Space(
    name="nb201",
    ckpt_keys=("space", "channels", "layers", "num_classes"),
    net_args=nb201_args,
    supernet=lambda a: supernet.Supernet(a["channels"], a["layers"], a["num_classes"]),
    sample_path=lambda gen, a, shared=False: supernet.sample_path(gen, 3 * a["layers"], share=shared),  # 3N cells
    path=lambda arch, a: supernet.shared_path(arch, 3 * a["layers"]),
    gene_choices=lambda a: [list(range(len(supernet.OPS)))] * len(supernet.EDGES),
    mutation_choices=lambda a: [list(range(1, len(supernet.OPS)))] * len(supernet.EDGES),  # never into 'none'
    repair=tuple,
    parse=supernet.str_to_arch,
    format=supernet.arch_to_str,
    tie_key=supernet.tie_key,
    scorer=angle.AngleScorer,
    flops=None,  # no FLOPs count: search.py --max-flops refuses this space with one line
    min_flops=None,
    params=lambda arch, a: supernet.count_params(arch, a["channels"], a["layers"], a["num_classes"]),
    all_archs=lambda a: supernet.all_archs(),
    network=lambda arch, a, **opts: supernet.Subnet(arch, a["channels"], a["layers"], a["num_classes"]),
    retrain_args=nb201_args,
    input_size=lambda a: a.get("image_size", 32),
)

DARTS = Space(
    name="darts",
    ckpt_keys=("space", "channels", "layers", "num_classes", "variant", "image_size"),
    net_args=darts.darts_net_args,
    supernet=darts.darts_supernet,
    sample_path=lambda gen, a, shared=False: darts.darts_sample(gen),  # one normal + one reduction genotype
    path=lambda arch, a: tuple(arch),
    gene_choices=lambda a: [list(range(len(darts.DARTS_OPS)))] * (2 * darts.NUM_DARTS_EDGES),
    mutation_choices=darts.darts_mutation_choices,
    repair=darts.darts_repaired,
    parse=darts.genotype_to_darts,
    format=darts.darts_to_genotype,
    tie_key=tuple,
    scorer=darts.DartsAngleScorer,
    flops=darts.darts_flops,
    min_flops=darts.darts_min_flops,
    params=darts.darts_params,
    all_archs=lambda a: None,  # 8^28 genotypes: no exhaustive search
    network=darts.darts_network,
    retrain_args=darts.darts_net_args,  # the stand-alone network is described by the same fields
    input_size=lambda a: a["image_size"],
)

MOBILENET = Space(
    name="mobilenet",
    ckpt_keys=("space", "num_classes", "width", "image_size"),
    net_args=mobilenet.mb_net_args,
    supernet=mobilenet.mb_supernet,
    sample_path=lambda gen, a, shared=False: mobilenet.mb_sample(gen),  # one choice per block; no repeated cells
    path=lambda arch, a: tuple(arch),
    gene_choices=lambda a: [list(c) for c in mobilenet.MB_CHOICES],  # 6 or 7 values per block
    mutation_choices=lambda a: [list(c) for c in mobilenet.MB_CHOICES],  # the block's own list (method.md §5)
    repair=tuple,  # every draw from MB_CHOICES is valid
    parse=mobilenet.mb_parse,
    format=mobilenet.mb_format,
    tie_key=tuple,  # equal float64 angles are unlikely here; the tuple keeps any tie deterministic
    scorer=mobilenet.MBAngleScorer,
    flops=lambda arch, a: mobilenet.mb_flops(arch, a.get("image_size", 224), a.get("width", 1.0), a["num_classes"]),
    min_flops=mobilenet.mb_min_flops,
    params=lambda arch, a: mobilenet.mb_params(arch, a.get("width", 1.0), a["num_classes"]),
    all_archs=lambda a: None,  # 6^6 * 7^15 = 2.2e17 architectures: no exhaustive search
    network=mobilenet.mb_network,
    retrain_args=mobilenet.mb_retrain_args,
    input_size=lambda a: a.get("image_size", 224),
    crossover_first=True,
)

SPACES = {space.name: space for space in (NB201, DARTS, MOBILENET)}


def check_image_size(model, size: int, *args, what: str = "network") -> None:
    """Forward a (2, 3, size, size) batch through `model`, built on the meta device (shapes only: no memory, no
    time), with `args` (e.g. a sampled path); if the downsampling leaves no pixels to pool, a one-line UsageError
    names the smallest larger side that fits, instead of a RuntimeError in the first training step."""
    if next(model.parameters()).device.type != "meta":
        raise ValueError("check_image_size needs a model built under `with torch.device('meta')`")

    def fits(s: int) -> bool:
        try:
            with torch.no_grad():
                model(torch.zeros(2, 3, s, s, device="meta"), *args)
            return True
        except (RuntimeError, ValueError, IndexError):
            return False

    if fits(size):
        return
    larger = next((s for s in range(size + 1, 4 * size + 65) if fits(s)), None)
    hint = f"the smallest larger one that fits is {larger}" if larger else "use a larger one"
    raise UsageError(f"--image-size {size} is too small for the {what} (its downsampling leaves no pixels); {hint}")
