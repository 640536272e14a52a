"""
Random labels: the one change RLNAS makes to supernet training.

Every training image gets one label drawn from the discrete uniform distribution over K
classes, once, before training, from a generator seeded by --label-seed alone. The labels then
stay fixed for the whole run. They carry no information about the images, yet the paper shows
that the angle computed from a supernet trained on them ranks architectures about as well as
one trained on the real labels (its Table 1; method.md §7.1).

Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021,
arXiv:2101.11834, the random-label supernet training of the method. Official mechanism:
method.md §1 and pitfall 3 (§8).

Used by train.py:

    python train.py --space nb201                      # uniform random labels, K = 10, seed 0
    python train.py --space nb201 --label-seed 3       # another draw of the labels
    python train.py --space nb201 --labels true        # the real labels (SPOS baseline, Table 1 A/B)
    python train.py --label-mode shuffle               # ablations: permuted true labels, or new labels every epoch
    python train.py --label-classes 100                # ablation: K = 100 random classes on CIFAR-10
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


# RLNAS: the label draw. y_n ~ Uniform{0, ..., K-1}, i.i.d. for every training image n.
def random_labels(num_examples: int, num_classes: int, seed: int) -> torch.Tensor:
    """(N,) int64 labels, uniform over num_classes, a pure function of (N, K, seed).

    The generator is local: never the global RNG, never offset by the DDP rank or a worker id,
    so every rank draws the identical vector and nothing else (model init, path sampling,
    augmentation) can shift it. The official code re-seeded NumPy's global RNG instead, which
    also re-seeded its path sampler (method.md pitfall 9). The labels are drawn for the full training set
    before any split or subset is taken, so an image's label never depends on the subset.
    It is not a permutation of the true labels: class counts are only about balanced.
    """
    if num_examples < 0 or num_classes < 1:
        raise ValueError(f"need num_examples >= 0 and num_classes >= 1, got {num_examples}, {num_classes}")
    # EXERCISE 1 BEGIN: draw N labels i.i.d. uniform over 0..K-1 from a local generator seeded by `seed` alone
    #   read: paper, method step 1 (random labels); method.md §1 and pitfall 3; details.md detail 1
    #   graded: python make_assignment.py --grade 1   (tests/test_random_labels.py)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, (num_examples,), generator=gen, dtype=torch.int64)  # (N,)
    # EXERCISE 1 END


# ==============================================================================================
# Machinery below: not needed to follow the method. The label ablations (train.py --label-mode) and the record
# that proves a resumed run trains on the same labels.
# ==============================================================================================

MODES = ("uniform", "shuffle", "redraw")


def draw_labels(mode: str, num_examples: int, num_classes: int, seed: int, true_labels=None, epoch: int = 0) -> torch.Tensor:
    """The label ablations (method.md §1): which random labels epoch `epoch` trains on, (N,) int64.

    uniform: the paper's labels, i.i.d. uniform, drawn once (the same for every epoch).
    shuffle: a random permutation of the true labels: classes exactly as balanced as the real ones, no information.
    redraw:  new uniform labels every epoch. This breaks the fixed-label assumption: nothing can be memorised,
             so it shows why the labels must stay fixed.
    """
    if mode == "uniform":
        return random_labels(num_examples, num_classes, seed)
    if mode == "shuffle":
        perm = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))  # (N,)
        return torch.as_tensor(true_labels, dtype=torch.int64)[perm]
    if mode == "redraw":
        # one independent stream per (seed, epoch); epoch 0 of redraw is not the uniform draw of the same seed
        return random_labels(
            num_examples, num_classes, int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch]).generate_state(1)[0])
        )
    raise ValueError(f"unknown label mode {mode!r}; choose one of {', '.join(MODES)}")


def checksum(labels: torch.Tensor) -> str:
    """SHA-256 of the label vector as little-endian int64: proves two runs use the same labels."""
    return hashlib.sha256(labels.to(torch.int64).contiguous().numpy().astype("<i8").tobytes()).hexdigest()


def label_record(labels: torch.Tensor, kind: str, seed: int | None, num_classes: int) -> dict:
    """What a checkpoint stores about its labels: enough to prove a resumed run uses the same ones."""
    return {"kind": kind, "seed": seed, "num_classes": num_classes, "count": int(labels.numel()), "sha256": checksum(labels)}


def check_same_labels(saved: dict, current: dict) -> None:
    """Raise ValueError (one line) if a resumed run would train on other labels than the saved run."""
    for key in ("kind", "seed", "num_classes", "count", "sha256"):
        if saved.get(key) != current.get(key):
            raise ValueError(
                f"the checkpoint was trained on other labels ({key}: saved {saved.get(key)!r}, now {current.get(key)!r}); "
                "resume with the same --labels/--label-seed/--label-classes and dataset, or start a new run with --out"
            )
