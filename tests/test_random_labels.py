"""random_labels.py: uniform, fixed, seed-determined, rank- and RNG-independent labels."""

import pytest
import torch

import random_labels as R


def test_deterministic_and_seed_dependent():
    a, b, c = R.random_labels(5000, 10, 0), R.random_labels(5000, 10, 0), R.random_labels(5000, 10, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.int64 and a.shape == (5000,)


def test_independent_of_global_rng_and_leaves_it_untouched():
    # two "ranks" with different global seeds (as nanoGPT's seed_offset would give) draw identical labels
    torch.manual_seed(1)
    rank0 = R.random_labels(1000, 10, 7)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    rank1 = R.random_labels(1000, 10, 7)
    assert torch.equal(rank0, rank1)
    assert torch.equal(state, torch.get_rng_state())  # the draw does not consume the global stream


def test_uniform_over_k_and_covers_all_classes():
    labels = R.random_labels(100_000, 10, 0)
    counts = torch.bincount(labels, minlength=10).double()
    assert labels.min() == 0 and labels.max() == 9
    chi2 = (((counts - 10_000) ** 2) / 10_000).sum().item()
    assert chi2 < 30  # 9 d.o.f.: p < 0.001 above ~27.9
    assert counts.max() != counts.min()  # i.i.d. draws, not a balanced permutation (method.md §1)
    assert R.random_labels(50, 120, 0).max() < 120


def test_prefix_stable_labels_do_not_depend_on_subset():
    # the label of image n is the n-th draw of the full vector: a subset takes labels[indices]
    full = R.random_labels(1000, 10, 3)
    idx = torch.tensor([5, 17, 999])
    assert torch.equal(full[idx], R.random_labels(1000, 10, 3)[idx])


def test_checksum_and_record_check():
    labels = R.random_labels(100, 10, 0)
    rec = R.label_record(labels, "random", 0, 10)
    assert rec["count"] == 100 and len(rec["sha256"]) == 64
    R.check_same_labels(rec, dict(rec))
    other = R.label_record(R.random_labels(100, 10, 1), "random", 1, 10)
    with pytest.raises(ValueError, match="other labels"):
        R.check_same_labels(rec, other)
    assert R.checksum(labels) != R.checksum(labels.flip(0))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        R.random_labels(10, 0, 0)


def test_label_modes():
    true = torch.arange(1000) % 10  # balanced true labels
    uniform = R.draw_labels("uniform", 1000, 10, 0, true)
    assert torch.equal(uniform, R.random_labels(1000, 10, 0))
    shuffled = R.draw_labels("shuffle", 1000, 10, 0, true)
    assert torch.equal(torch.bincount(shuffled), torch.bincount(true))  # exactly as balanced as the real labels
    assert not torch.equal(shuffled, true) and torch.equal(shuffled, R.draw_labels("shuffle", 1000, 10, 0, true))
    e0, e1 = (R.draw_labels("redraw", 1000, 10, 0, epoch=e) for e in (0, 1))
    assert not torch.equal(e0, e1) and torch.equal(e1, R.draw_labels("redraw", 1000, 10, 0, epoch=1))
    assert (e0 == e1).float().mean() < 0.2  # independent draws agree on about 1/K of the images
    with pytest.raises(ValueError):
        R.draw_labels("sorted", 10, 10, 0)
