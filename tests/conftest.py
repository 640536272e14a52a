"""Shared test set-up: the repository root on sys.path, tiny supernet shapes, and a fast torch."""

import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(1)  # CI has 2 cores; tiny models gain nothing from more threads

TINY = dict(channels=4, layers=1, num_classes=5)  # a supernet small enough for hundreds of reference angles
