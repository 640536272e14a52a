"""Shared test set-up: the repository root on sys.path, tiny supernet shapes, and a fast torch."""

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(1)  # CI has 2 cores; tiny models gain nothing from more threads

TINY = dict(channels=4, layers=1, num_classes=5)  # a supernet small enough for hundreds of reference angles


def pytest_collection_modifyitems(config, items):
    """Course kit (ASSIGNMENTS.md): in a student copy, the end-to-end tests wait until every exercise is done.

    They run train.py and search.py, which need every exercise, so while one still raises NotImplementedError they
    are skipped with a message naming the open ones, and an unfinished copy fails exactly its graded unit tests. In
    the reference repository no exercise is open and nothing is skipped (tests/test_assignments.py checks both).
    """
    import make_assignment

    open_exercises = sorted(make_assignment.pending(ROOT))
    if not open_exercises:
        return
    reason = f"end-to-end: runs the scripts, which need every exercise; still open: {open_exercises} (ASSIGNMENTS.md)"
    for item in items:
        path = os.path.relpath(str(item.path), ROOT).replace(os.sep, "/")
        if path in make_assignment.END_TO_END or f"{path}::{item.originalname}" in make_assignment.END_TO_END_TESTS:
            item.add_marker(pytest.mark.skip(reason=reason))
