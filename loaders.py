"""Batches of one epoch, as a function of (seed, epoch, rank): what train.py and retrain.py iterate over.

Two routes give the same batches in the same order for the same seed (docs/details.md, "the data path"):
  - `TensorBatches`, the fast path for datasets held in memory (cifar10/100, imagenet16-120, fake): the uint8
    images sit on the training device once and each batch is gathered, flipped, padded and cropped with tensor ops;
  - `make_loader`, a DataLoader for datasets read from files (imagenet, folder) or when --loader torch is asked.
`epoch_loader` picks one. A resumed run replays exactly the data of the epoch it restarts, because nothing here
depends on what came before: only on (seed, epoch, rank).

This module is imported, never run. Usage, from a stage script:
    batches = epoch_loader(Relabeled(ds, idx, labels), 64, train=True, seed=0, epoch=epoch, device=device)
    for x, y in batches: ...
"""

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from data import TensorImages

# ------------------------------------------------------------------------------------------------------------------
# BOILERPLATE: a loader whose order and augmentations are a function of (seed, epoch, rank), so a resumed run
# replays exactly the data of the epoch it restarts.


def epoch_seed(*values: int) -> int:
    """Mix non-negative ints, e.g. (seed, epoch) or (seed, epoch, rank), into one 32-bit seed, without collisions
    like seed + epoch has ((0, 1) and (1, 0) would share a stream)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader for one epoch. Train: shuffled by (seed, epoch) only; test: in order. Under DDP each rank gets
    its DistributedSampler shard (which pads with a few repeated indices when len % world_size != 0).

    Augmentations draw from torch's RNG in the process that runs the transforms:
      - num_workers > 0: each worker is seeded by the loader from `generator`, seeded here by (seed, epoch, rank);
      - num_workers == 0: the main process's global RNG. The caller (train.py) must reseed it at the start of each
        epoch, e.g. torch.manual_seed(epoch_seed(seed, epoch, rank)), for a resumed run to replay the augmentations.
    """
    if world_size > 1 and not train:
        # Test under DDP: rank r reads images r, r + W, r + 2W, ... with no padding, so the summed counts of all
        # ranks cover every test image exactly once (DistributedSampler would repeat a few to even out the shards).
        sampler = range(rank, len(dataset), world_size)
    elif world_size > 1:
        # Same permutation on every rank (seed + epoch inside the sampler), rank r takes every world_size-th index.
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
    elif train:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,
        generator=torch.Generator().manual_seed(epoch_seed(seed, epoch, rank)),
        persistent_workers=num_workers > 0,
    )


# ------------------------------------------------------------------------------------------------------------------
# BOILERPLATE: the fast path for datasets held in memory (cifar10/100, imagenet16-120, fake). The uint8 images sit on
# the training device once; each batch is gathered, flipped, padded and cropped with tensor ops for the whole batch,
# then normalized. No worker processes, no per-image PIL calls. Same augmentation semantics as build_transform.


def in_memory(dataset: Dataset) -> bool:
    """Can `dataset` (a Relabeled view) take the fast path? Only if its images are one uint8 tensor."""
    return isinstance(getattr(dataset, "base", None), TensorImages)


def augment_batch(images: torch.Tensor, flips: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """The official train augmentation for a whole batch: horizontal flip, then RandomCrop(S, padding=pad).

    images (B, 3, H, W) uint8, flips (B,) bool, offsets (B, 2) ints in [0, 2*pad] = the crop's top-left corner in the
    zero-padded image, as RandomCrop draws it. Returns (B, 3, H, W) uint8.
    """
    b, c, h, w = images.shape
    x = torch.where(flips.view(b, 1, 1, 1), images.flip(3), images)  # flip first, as the official pipeline
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (B, 3, H+2p, W+2p), padded pixels are 0 (black)
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (B, H): rows of each crop
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (B, W): columns of each crop
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return x[batch, chan, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]  # (B, 3, H, W)


def _index_key(indices: torch.Tensor) -> tuple:
    """A cheap identity for an index set (its length, first and last index, sum): the cache key of the images."""
    return (
        len(indices),
        int(indices[0]) if len(indices) else -1,
        int(indices[-1]) if len(indices) else -1,
        int(indices.sum()),
    )


class TensorBatches:
    """One epoch of batches from a Relabeled view of an in-memory dataset, made on `device` with tensor ops.

    Deterministic per (seed, epoch, rank) like make_loader: the order is a permutation drawn from (seed, epoch) and
    sharded rank::world_size (padded with its first indices to a multiple of world_size, as DistributedSampler does);
    the flips and crop offsets come from a generator seeded by (seed, epoch, rank), drawn on the CPU so they do not
    depend on the device. Test split (train=False): in order, sharded without padding, no augmentation.
    Yields (x (B, 3, H, W) float normalized, y (B,) long), both on `device`.
    """

    def __init__(
        self,
        dataset: Dataset,  # a data.Relabeled view
        batch_size: int,
        train: bool,
        seed: int,
        epoch: int,
        device,
        rank: int = 0,
        world_size: int = 1,
        cache: dict | None = None,
    ):
        assert in_memory(dataset), "TensorBatches needs a dataset whose images are one uint8 tensor"
        base = dataset.base
        norm = base.transform.normalize  # the dataset's mean and std
        key = (id(base), _index_key(dataset.indices), str(device))
        if cache is not None and key in cache:  # the device copy of the images is made once per run, not per epoch
            self.images = cache[key]
        else:
            self.images = base.images[dataset.indices].to(device)  # (N, 3, H, W) uint8
            if cache is not None:
                cache[key] = self.images
        self.labels = dataset.labels_used.to(device)  # (N,) labels may change per epoch (--label-mode redraw)
        self.mean, self.std = norm.mean.to(device), norm.std.to(device)  # (3, 1, 1) each
        self.batch_size, self.train, self.device = batch_size, train, device
        self.augment = train and base.transform.augment  # flip + RandomCrop, as build_transform
        self.pad = self.images.shape[-1] // 8  # RandomCrop(S, padding=S//8): 4 for 32x32, 2 for 16x16
        n = len(self.labels)
        if train:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))  # (N,)
            if world_size > 1:
                order = torch.cat([order, order[: (-n) % world_size]])  # pad to a multiple of world_size
            order = order[rank::world_size]
            g = torch.Generator().manual_seed(epoch_seed(seed, epoch, rank))
            flips = torch.rand(len(order), generator=g) < 0.5  # (N_r,) p = 0.5, as RandomHorizontalFlip
            offsets = torch.randint(0, 2 * self.pad + 1, (len(order), 2), generator=g)  # (N_r, 2)
            # The whole epoch's indices, flips and offsets go to the device here, once. Copied batch by batch, each
            # .to(device) of a CPU tensor would make Python wait for the GPU to finish the step before (a host-to-
            # device copy from pageable memory waits for the stream), so the next step could never be queued while
            # the GPU runs this one. The draws stay on the CPU generator: the batches do not depend on the device.
            self.order, self.flips, self.offsets = order.to(device), flips.to(device), offsets.to(device)
        else:
            self.order = torch.arange(rank, n, world_size, device=device)

    def __len__(self) -> int:
        return (len(self.order) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        # Only slices of device tensors and kernels from here on: no host-device copy and no wait per batch.
        for start in range(0, len(self.order), self.batch_size):
            sl = slice(start, start + self.batch_size)
            idx = self.order[sl]  # (B,) on the device
            x = self.images[idx]  # (B, 3, H, W) uint8
            if self.augment:
                x = augment_batch(x, self.flips[sl], self.offsets[sl], self.pad)
            x = (x.to(torch.float32) / 255 - self.mean) / self.std  # (B, 3, H, W), same formula as _Normalize
            yield x, self.labels[idx]


def epoch_loader(
    dataset,
    batch_size: int,
    train: bool,
    seed: int,
    epoch: int,
    device,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    fast: bool = True,
    cache: dict | None = None,
):
    """The batches of one epoch: TensorBatches when `fast` (the dataset must be in memory), else a DataLoader.

    Both are functions of (seed, epoch, rank). With the DataLoader and num_workers == 0 the caller reseeds torch's
    global RNG per (seed, epoch, rank) first, because the per-sample transforms draw from it.
    """
    if fast:
        return TensorBatches(dataset, batch_size, train, seed, epoch, device, rank, world_size, cache)
    return make_loader(
        dataset, batch_size, train, seed, epoch, rank, world_size, num_workers, pin_memory=device.type == "cuda"
    )
