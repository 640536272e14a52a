"""train.py's SPOS step (train_step) in-process, on a toy two-block supernet: no data, no NB201, under a second."""

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from train import train_step


class ToySupernet(nn.Module):
    """Two choice blocks of three Linear candidates and a head: model(x, path) runs candidate path[b] of block b."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.ModuleList(nn.Linear(6, 6) for _ in range(3)) for _ in range(2))
        self.head = nn.Linear(6, 4)

    def forward(self, x, path):
        for block, k in zip(self.blocks, path):
            x = torch.relu(block[k](x))  # (B, 6)
        return self.head(x)  # (B, 4)


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)  # method.md §3 style


def batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(8, 6, generator=gen), torch.randint(0, 4, (8,), generator=gen)


def moved(before, after):
    """Names of the parameters whose values differ between two models."""
    b = dict(before.named_parameters())
    return {n for n, q in after.named_parameters() if not torch.equal(q, b[n])}


def test_train_step_is_one_sgd_step_on_the_sampled_path():
    model = ToySupernet()
    manual = copy.deepcopy(model)
    x, y = batch()
    for unsampled in ("decay", "frozen"):
        start = copy.deepcopy(model)
        loss, logits = train_step(model, opt := sgd(model), x, y, (0, 2), unsampled)
        # what it returns: the cross-entropy of the sampled path's logits, before the update
        expected = manual(x, (0, 2))
        torch.testing.assert_close(logits, expected, rtol=0, atol=0)
        torch.testing.assert_close(loss, F.cross_entropy(expected, y), rtol=0, atol=0)
        # what it does: one SGD step on that loss, nothing else
        manual_opt = sgd(manual)
        manual_opt.zero_grad()
        F.cross_entropy(expected, y).backward()
        manual_opt.step()
        for (name, q), r in zip(model.named_parameters(), manual.parameters()):
            assert torch.equal(q, r), (unsampled, name)
        # only the ops on the path (and the head) moved; the other candidates were never sampled
        assert moved(start, model) == {f"blocks.0.0.{w}" for w in ("weight", "bias")} | {
            f"blocks.1.2.{w}" for w in ("weight", "bias")
        } | {"head.weight", "head.bias"}
        assert opt.state  # momentum buffers exist: it was a real optimizer step
        manual, model = copy.deepcopy(model), model


def test_unsampled_ops_keep_decaying_only_in_decay_mode():
    # method.md pitfall 10 / details.md detail 5: an op sampled once keeps a zero gradient tensor with "decay", so SGD still
    # applies weight decay and momentum when it is not on the path; with "frozen" it stays exactly where it was.
    x, y = batch()
    for unsampled, should_move in (("decay", True), ("frozen", False)):
        model = ToySupernet()
        opt = sgd(model)
        train_step(model, opt, x, y, (0, 0), unsampled)  # block candidates 0 are trained once
        before = copy.deepcopy(model)
        train_step(model, opt, x, y, (1, 1), unsampled)  # now candidates 1: candidates 0 are off the path
        off_path = {n for n in moved(before, model) if n.startswith("blocks.") and n.split(".")[2] == "0"}
        assert bool(off_path) == should_move, (unsampled, off_path)
        grad = model.blocks[0][0].weight.grad
        assert (grad is None) == (unsampled == "frozen")
        if grad is not None:
            assert not grad.any()  # a zero gradient: it moves by decay and momentum only
        assert model.blocks[0][2].weight.grad is None  # never sampled: never touched, in both modes
        assert not any(n.startswith("blocks.") and n.split(".")[2] == "2" for n in moved(before, model))


def test_grad_clip_bounds_the_gradient_norm():
    x, y = batch(1)
    norms = {}
    for clip in (0.0, 1e-3):
        model = ToySupernet()
        train_step(model, sgd(model), x, y, (2, 1), grad_clip=clip)
        norms[clip] = torch.linalg.vector_norm(torch.stack([q.grad.norm() for q in model.parameters() if q.grad is not None]))
    assert norms[0.0] > 1e-2  # unclipped: far above the bound, so the check below has teeth
    assert norms[1e-3] <= 1e-3 * (1 + 1e-5)
