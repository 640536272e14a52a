"""Tests for data.py: every dataset kind on tiny data built here (no download, no ../shared), the NB201
augmentation semantics, the seeded split/subset, Relabeled and the (seed, epoch, rank)-deterministic loader."""

import os
import pickle
import socket
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset

# The repo root holds data.py; plain `pytest` (unlike `python -m pytest`) does not put it on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from torchvision.transforms.v2 import functional as TF  # noqa: E402

import data  # noqa: E402
from data import DataError, Relabeled, load_dataset, split_indices, subset_indices  # noqa: E402
from loaders import TensorBatches, augment_batch, epoch_loader, epoch_seed, make_loader  # noqa: E402


def normalized(u8: torch.Tensor, name: str) -> torch.Tensor:
    """Reference: (uint8 / 255 - mean) / std with the official stats of `name`."""
    mean, std = data.MEAN_STD[name]
    return (u8.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def assert_one_line_error(excinfo, *needles: str):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip(), repr(msg)
    for needle in needles:
        assert needle in msg, (needle, msg)


# ------------------------------------------------------------------------------------------------------------------
# fake


def test_fake_shapes_dtype_targets():
    ds = load_dataset("fake", "", "train", augment=True, fake_images=40, fake_classes=7)
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and type(x) is torch.Tensor
    assert type(y) is int and y == int(ds.targets[3])
    assert len(ds) == 40 and ds.num_classes == 7
    assert ds.targets.dtype == torch.long and ds.targets.shape == (40,)
    assert 0 <= ds.targets.min() and ds.targets.max() < 7 and len(ds.targets.unique()) > 1
    assert len(load_dataset("fake", "", "test", augment=False, fake_images=40)) == 10
    assert len(load_dataset("fake", "", "test", augment=False, fake_images=3)) == 1
    assert load_dataset("fake", "", "train", augment=True, image_size=16, fake_images=4)[0][0].shape == (3, 16, 16)


def test_fake_deterministic_and_split_dependent():
    a = load_dataset("fake", "", "train", augment=False, fake_images=16, fake_seed=3)
    b = load_dataset("fake", "", "train", augment=False, fake_images=16, fake_seed=3)
    c = load_dataset("fake", "", "train", augment=False, fake_images=16, fake_seed=4)
    t = load_dataset("fake", "", "test", augment=False, fake_images=16, fake_seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.images[:4], t.images)
    assert torch.equal(a[5][0], b[5][0])


def test_fake_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_dataset("fake", "", "train", augment=False, fake_images=8)
    assert torch.equal(torch.rand(3), expected)


def test_normalization_exact_without_augmentation():
    ds = load_dataset("fake", "", "train", augment=False, fake_images=5)
    for i in range(5):
        assert torch.equal(ds[i][0], normalized(ds.images[i], "cifar10"))
    # The test split is never augmented, even when augment=True is passed.
    ts = load_dataset("fake", "", "test", augment=True, fake_images=8)
    assert all(torch.equal(ts[0][0], normalized(ts.images[0], "cifar10")) for _ in range(20))


@pytest.mark.parametrize("size", [32, 16])
def test_augmentation_is_flip_then_padded_shift(size):
    pad = size // 8
    ds = load_dataset("fake", "", "train", augment=True, image_size=size, fake_images=1)
    u8 = ds.images[0]  # (3, S, S) uint8
    # Every allowed outcome: optional flip, zero-pad by `pad`, crop an S x S window at offset (dy, dx).
    cands, meta = [], []
    for flip in (False, True):
        padded = torch.nn.functional.pad(u8.flip(-1) if flip else u8, (pad, pad, pad, pad))  # zeros around
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                cands.append(normalized(padded[:, dy : dy + size, dx : dx + size], "cifar10"))
                meta.append((flip, dy - pad, dx - pad))
    cands = torch.stack(cands)  # (2 (2p+1)^2, 3, S, S)
    torch.manual_seed(0)
    seen = []
    for _ in range(400):
        x = ds[0][0]
        match = (cands == x).flatten(1).all(1).nonzero().flatten().tolist()
        assert len(match) == 1, "augmented image is not a flipped, zero-padded shift of the original"
        seen.append(meta[match[0]])
    flips = sum(f for f, _, _ in seen) / len(seen)
    assert 0.4 < flips < 0.6, flips
    assert {dy for _, dy, _ in seen} == set(range(-pad, pad + 1))
    assert {dx for _, _, dx in seen} == set(range(-pad, pad + 1))


def test_unknown_dataset_and_bad_split():
    with pytest.raises(DataError) as e:
        load_dataset("mnist", "", "train", augment=False)
    assert_one_line_error(e, "fake")
    with pytest.raises(ValueError):
        load_dataset("fake", "", "valid", augment=False)


# ------------------------------------------------------------------------------------------------------------------
# imagenet16-120: tiny pickles in the official format


def write_imagenet16(folder, n_per_batch=6, seed=0):
    """10 train batches + val_data, labels spanning 1..200. Returns {file: (data (n, 768) uint8, labels)}."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name in [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]:
        data_ = rng.integers(0, 256, (n_per_batch, 3 * 16 * 16), dtype=np.uint8)
        labels = [1, 120, 121, 200] + rng.integers(1, 201, n_per_batch - 4).tolist()
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": data_, "labels": labels}, f)
        written[name] = (data_, labels)
    return written


@pytest.mark.parametrize("sub", ["", "ImageNet16"])
def test_imagenet16_filter_shift_and_layouts(tmp_path, sub):
    written = write_imagenet16(os.path.join(tmp_path, sub) if sub else tmp_path)
    for split, names in (("train", [f"train_data_batch_{i}" for i in range(1, 11)]), ("test", ["val_data"])):
        raw = np.concatenate([written[n][0] for n in names])
        labels = np.concatenate([written[n][1] for n in names])
        keep = (labels >= 1) & (labels <= 120)
        ds = load_dataset("imagenet16-120", str(tmp_path), split, augment=False)
        assert ds.num_classes == 120 and len(ds) == keep.sum() < len(labels)
        assert torch.equal(ds.targets, torch.from_numpy(labels[keep] - 1))
        assert ds.targets.min() >= 0 and ds.targets.max() <= 119 and {0, 119} <= set(ds.targets.tolist())
        expected = torch.from_numpy(raw[keep]).view(-1, 3, 16, 16)  # channel-major rows
        assert torch.equal(ds.images, expected)
        x, y = ds[0]
        assert x.shape == (3, 16, 16) and torch.equal(x, normalized(expected[0], "imagenet16-120"))
        assert y == labels[keep][0] - 1
    assert load_dataset("imagenet16-120", str(tmp_path), "train", augment=True)[0][0].shape == (3, 16, 16)


def test_imagenet16_missing_files(tmp_path):
    write_imagenet16(tmp_path)
    os.remove(os.path.join(tmp_path, "train_data_batch_7"))
    with pytest.raises(DataError) as e:
        load_dataset("imagenet16-120", str(tmp_path), "train", augment=True)
    assert_one_line_error(e, "train_data_batch_7", str(tmp_path), "--dataset fake")
    with pytest.raises(DataError) as e:
        load_dataset("imagenet16-120", str(tmp_path / "nowhere"), "test", augment=False)
    assert_one_line_error(e, "val_data")
    with pytest.raises(DataError) as e:
        load_dataset("imagenet16-120", str(tmp_path), "test", augment=False, image_size=32)
    assert_one_line_error(e, "16")
    # The 32x32 downsampled ImageNet has 3072-value rows: refuse it instead of reading garbage.
    with open(os.path.join(tmp_path, "val_data"), "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]}, f)
    with pytest.raises(DataError) as e:
        load_dataset("imagenet16-120", str(tmp_path), "test", augment=False)
    assert_one_line_error(e, "768", "val_data")


# ------------------------------------------------------------------------------------------------------------------
# folder: a tiny ImageFolder tree

CLASSES = ["dog", "ant", "cat"]  # sorted -> ant 0, cat 1, dog 2


def write_folder(root, eval_name="test", size=(32, 32), ext="png", per_class=2, classes=CLASSES):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), (eval_name, 1)):
        for c in classes:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for k in range(n):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(root, split, c, f"{k}.{ext}"))


@pytest.mark.parametrize("eval_name", ["test", "val"])
def test_folder_targets_and_exact_pixels(tmp_path, eval_name):
    write_folder(tmp_path, eval_name)
    ds = load_dataset("folder", str(tmp_path), "train", augment=False)
    assert ds.num_classes == 3 and ds.targets.tolist() == [0, 0, 1, 1, 2, 2]
    path, target = ds.samples[4]
    assert os.sep + "dog" + os.sep in path and target == 2
    u8 = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)  # PNG is lossless
    x, y = ds[4]
    assert y == 2 and torch.equal(x, normalized(u8, "folder"))
    te = load_dataset("folder", str(tmp_path), "test", augment=True)
    assert len(te) == 3 and te.targets.tolist() == [0, 1, 2] and te[0][0].shape == (3, 32, 32)
    assert load_dataset("folder", str(tmp_path), "train", augment=True)[0][0].shape == (3, 32, 32)


def test_folder_resizes_other_sizes_and_jpeg(tmp_path):
    write_folder(tmp_path, size=(48, 40), ext="jpg")
    for split in ("train", "test"):
        for augment in (False, True):
            assert load_dataset("folder", str(tmp_path), split, augment)[0][0].shape == (3, 32, 32)
    assert load_dataset("folder", str(tmp_path), "train", True, image_size=16)[1][0].shape == (3, 16, 16)


def test_imagenet_pipelines_lighting_and_normalize(tmp_path):
    # method.md §3/§6: eval = resize to S*256/224 then centre-crop S; 'lighting' leaves pixels in [0, 1] (no
    # mean/std; the lighting noise is train-only), 'normalize' (MobileNet retraining) uses torchvision's ImageNet
    # mean/std
    write_folder(tmp_path, "val", size=(40, 40))
    ref = TF.center_crop(TF.resize(TF.pil_to_tensor(Image.open(load_dataset("imagenet", str(tmp_path), "test",
                                                                                augment=False).samples[0][0]).convert("RGB")),
                                   [36], antialias=True), [32])  # fmt: skip
    plain = load_dataset("imagenet", str(tmp_path), "test", augment=False, image_size=32)[0][0]
    assert torch.allclose(plain, ref.float() / 255, atol=1e-6)
    norm = load_dataset("imagenet", str(tmp_path), "test", augment=False, image_size=32, imagenet_style="normalize")[0][0]
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in data.IMAGENET_MEAN_STD)
    assert torch.allclose(norm, (ref.float() / 255 - mean) / std, atol=1e-5)
    torch.manual_seed(0)
    lit = load_dataset("imagenet", str(tmp_path), "train", augment=True, image_size=32)[0][0]
    torch.manual_seed(0)
    nrm = load_dataset("imagenet", str(tmp_path), "train", augment=True, image_size=32, imagenet_style="normalize")[0][0]
    assert lit.shape == nrm.shape == (3, 32, 32) and not torch.allclose((nrm * std + mean), lit, atol=1e-3)
    with pytest.raises(ValueError, match="imagenet style"):
        load_dataset("imagenet", str(tmp_path), "train", augment=True, imagenet_style="bogus")


def _no_root(root):
    return os.path.join(root, "missing")


def _no_train(root):
    write_folder(root)
    os.rename(os.path.join(root, "train"), os.path.join(root, "training"))
    return root


def _no_eval(root):
    write_folder(root)
    os.rename(os.path.join(root, "test"), os.path.join(root, "testing"))
    return root


def _no_class_folders(root):
    write_folder(root)
    train = os.path.join(root, "train")
    for c in CLASSES:
        for f in os.listdir(os.path.join(train, c)):
            os.rename(os.path.join(train, c, f), os.path.join(train, f"{c}_{f}"))
        os.rmdir(os.path.join(train, c))
    return root


def _empty_class(root):
    write_folder(root)
    os.makedirs(os.path.join(root, "train", "bee"))
    os.makedirs(os.path.join(root, "test", "bee"))
    return root


def _other_classes(root):
    write_folder(root)
    os.rename(os.path.join(root, "test", "cat"), os.path.join(root, "test", "cow"))
    return root


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("broken", [_no_root, _no_train, _no_eval, _no_class_folders, _empty_class, _other_classes])
def test_folder_wrong_layouts(tmp_path, broken, split):
    root = broken(str(tmp_path))
    with pytest.raises(DataError) as e:
        load_dataset("folder", root, split, augment=False)
    assert_one_line_error(e, "DIR/train/<class>", "DIR/val/", str(tmp_path))


# ------------------------------------------------------------------------------------------------------------------
# cifar10/100: never touch the network


@pytest.fixture
def offline(monkeypatch):
    """No network: urlopen and torchvision's download helper raise; returns the socket timeouts seen by the download."""
    timeouts = []

    def refuse(*args, **kwargs):
        timeouts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", refuse)
    return timeouts


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_offline_gives_one_line_error(tmp_path, offline, name):
    timeout = socket.getdefaulttimeout()
    with pytest.raises(DataError) as e:
        load_dataset(name, str(tmp_path), "train", augment=True)
    assert_one_line_error(e, "--data", "--dataset folder", "--dataset fake", "download failed")
    assert e.value.__suppress_context__  # no urllib traceback chained below it
    assert offline == [20]  # one download try, with a short socket timeout, restored afterwards
    assert socket.getdefaulttimeout() == timeout


def test_cifar_corrupt_files_give_one_line_error(tmp_path, offline):
    os.makedirs(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", str(tmp_path), "test", augment=False)
    assert_one_line_error(e, "corrupt", "--data", "--dataset folder", "--dataset fake")
    assert offline == []  # files present: no download attempted


def test_cifar_reads_official_format(tmp_path, offline, monkeypatch):
    # Tiny batches in the official python format; md5 checks are bypassed since the files are ours.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    folder = tmp_path / "cifar-10-batches-py"
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = (rng.integers(0, 256, (4, 3072), dtype=np.uint8), rng.integers(0, 10, 4).tolist())
        with open(folder / name, "wb") as f:
            pickle.dump({"data": batches[name][0], "labels": batches[name][1]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    ds = load_dataset("cifar10", str(tmp_path), "train", augment=False)
    raw = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert len(ds) == 20 and ds.num_classes == 10 and ds.targets.tolist() == labels
    assert torch.equal(ds.images, torch.from_numpy(raw).view(-1, 3, 32, 32))
    assert torch.equal(ds[7][0], normalized(ds.images[7], "cifar10")) and ds[7][1] == labels[7]
    te = load_dataset("cifar10", str(tmp_path), "test", augment=True)
    assert te.targets.tolist() == batches["test_batch"][1]


# ------------------------------------------------------------------------------------------------------------------
# split_indices, subset_indices, Relabeled


@pytest.mark.parametrize("n", [50_000, 11, 1])
def test_split_indices(n):
    a, b = split_indices(n, seed=0)
    assert len(a) == n // 2 and len(b) == n - n // 2
    assert torch.equal(torch.cat([a, b]).sort().values, torch.arange(n))
    assert torch.equal(a, a.sort().values) and torch.equal(b, b.sort().values)
    a2, b2 = split_indices(n, seed=0)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    if n > 10:
        assert not torch.equal(a, split_indices(n, seed=1)[0])
        assert a.max() > n // 2  # a shuffled half, not the first half


def test_subset_indices():
    idx = split_indices(1000, seed=0)[0]  # 500 sorted indices
    s = subset_indices(idx, 100, seed=0)
    assert len(s) == 100 and len(s.unique()) == 100 and torch.equal(s, s.sort().values)
    assert set(s.tolist()) <= set(idx.tolist())
    assert torch.equal(s, subset_indices(idx, 100, seed=0))
    assert not torch.equal(s, subset_indices(idx, 100, seed=1))
    assert set(s.tolist()) <= set(subset_indices(idx, 200, seed=0).tolist())  # nested for one seed
    for everything in (0, -1, 500, 10_000):
        assert torch.equal(subset_indices(idx, everything, seed=3), idx)
    assert torch.equal(subset_indices(idx.flip(0), 0), idx)


def test_relabeled_follows_full_dataset_position():
    base = load_dataset("fake", "", "train", augment=False, fake_images=20)
    labels = (torch.arange(20) * 7) % 10  # one label per image of the FULL dataset
    r1 = Relabeled(base, torch.tensor([5, 2, 17]), labels)
    r2 = Relabeled(base, torch.tensor([17, 0]), labels)
    assert len(r1) == 3 and r1.labels_used.tolist() == [5, 4, 9] and r1.labels_used.dtype == torch.long
    x, y = r1[2]
    assert y == 9 == r2[0][1] and type(y) is int  # image 17 keeps its label whatever the subset
    assert torch.equal(x, base[17][0])
    assert r1[0][1] == 5 and torch.equal(r1[0][0], base[5][0])
    with pytest.raises(AssertionError):
        Relabeled(base, torch.tensor([0, 1]), labels[:2])  # labels of the subset only: wrong


# ------------------------------------------------------------------------------------------------------------------
# make_loader


class Indices(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor(i), i


def order(loader):
    return torch.cat([x for x, _ in loader]).tolist()


def test_loader_order_depends_only_on_seed_and_epoch():
    ds = Indices(50)
    torch.manual_seed(1)
    o1 = order(make_loader(ds, 8, train=True, seed=0, epoch=3))
    torch.manual_seed(2)  # the global RNG does not move the order
    o2 = order(make_loader(ds, 8, train=True, seed=0, epoch=3))
    assert o1 == o2 and sorted(o1) == list(range(50)) and o1 != list(range(50))
    assert o1 != order(make_loader(ds, 8, train=True, seed=0, epoch=4))
    assert o1 != order(make_loader(ds, 8, train=True, seed=1, epoch=3))
    assert order(make_loader(ds, 8, train=False, seed=0, epoch=3)) == list(range(50))
    assert len(list(make_loader(ds, 8, train=True, seed=0, epoch=0))) == 7  # drop_last=False


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def same(b1, b2):
    return len(b1) == len(b2) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(b1, b2, strict=False)
    )


def test_loader_replays_augmentations_when_global_rng_reseeded():
    base = load_dataset("fake", "", "train", augment=True, fake_images=24)
    ds = Relabeled(base, torch.arange(0, 24, 2), torch.arange(24) % 10)
    runs = []
    for epoch in (5, 5, 6):
        torch.manual_seed(epoch_seed(0, epoch, 0))  # what train.py does at the start of each epoch
        runs.append(batches(make_loader(ds, 5, train=True, seed=0, epoch=epoch)))
    assert same(runs[0], runs[1]) and not same(runs[0], runs[2])
    # Same order and labels but a different global RNG state: different augmentations.
    torch.manual_seed(999)
    other = batches(make_loader(ds, 5, train=True, seed=0, epoch=5))
    assert [y.tolist() for _, y in other] == [y.tolist() for _, y in runs[0]] and not same(other, runs[0])


def test_loader_with_workers_is_deterministic():
    base = load_dataset("fake", "", "train", augment=True, fake_images=16)
    ds = Relabeled(base, torch.arange(16), torch.arange(16) % 10)
    runs = []
    for g in (1, 2):
        torch.manual_seed(g)  # workers are seeded from the loader's generator, not the global RNG
        runs.append(batches(make_loader(ds, 4, train=True, seed=0, epoch=1, num_workers=2)))
    assert same(runs[0], runs[1])


def test_loader_ranks_get_disjoint_shards_of_one_permutation():
    ds = Indices(40)
    shards = [order(make_loader(ds, 6, train=True, seed=0, epoch=2, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 20 and not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(40))
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0 + 2)).tolist()  # DistributedSampler's
    assert shards[0] == perm[0::2] and shards[1] == perm[1::2]
    assert shards[0] != order(make_loader(ds, 6, train=True, seed=0, epoch=3, rank=0, world_size=2))
    evals = [order(make_loader(ds, 6, train=False, seed=0, epoch=2, rank=r, world_size=2)) for r in (0, 1)]
    assert evals == [list(range(0, 40, 2)), list(range(1, 40, 2))]


def test_test_split_under_ddp_covers_every_image_once():
    # 41 images over 2 ranks: no padding, so a summed accuracy counts each test image exactly once
    ds = Indices(41)
    evals = [order(make_loader(ds, 6, train=False, seed=0, epoch=0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(evals[0]) == 21 and len(evals[1]) == 20 and sorted(evals[0] + evals[1]) == list(range(41))


# ----------------------------------------------------------------------------------------------------------------------
# The fast path: batched on-device augmentation (TensorBatches), against the per-image torchvision pipeline.


def test_augment_batch_equals_torchvision_flip_then_padded_crop():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8)
    flips = torch.rand(16, generator=g) < 0.5
    offsets = torch.randint(0, 9, (16, 2), generator=g)
    out = augment_batch(images, flips, offsets, 4)
    for b in range(16):
        x = TF.horizontal_flip(images[b]) if flips[b] else images[b]
        x = TF.crop(TF.pad(x, [4]), int(offsets[b, 0]), int(offsets[b, 1]), 32, 32)  # RandomCrop's (top, left)
        assert torch.equal(out[b], x)


def test_tensor_batches_draw_offsets_and_flips_like_random_crop():
    base = load_dataset("fake", "", "train", augment=True, fake_images=4000, image_size=16)
    ds = Relabeled(base, torch.arange(4000), base.targets)
    tb = TensorBatches(ds, 256, True, seed=0, epoch=0, device=torch.device("cpu"))
    assert tb.pad == 2 and tb.augment
    assert 0.45 < tb.flips.float().mean() < 0.55
    for axis in (0, 1):
        counts = torch.bincount(tb.offsets[:, axis], minlength=5)
        assert len(counts) == 5 and counts.min() > 4000 / 5 * 0.85  # uniform over 0..2*pad
    assert sorted(tb.order.tolist()) == list(range(4000))


def test_tensor_batches_without_augmentation_equal_the_dataset_exactly():
    for split in ("train", "test"):
        base = load_dataset("fake", "", split, augment=False, fake_images=40)
        ds = Relabeled(base, torch.arange(len(base)), base.targets)
        fast = list(TensorBatches(ds, 7, False, seed=0, epoch=0, device=torch.device("cpu")))
        xs, ys = torch.cat([x for x, _ in fast]), torch.cat([y for _, y in fast])
        assert torch.equal(xs, torch.stack([base[i][0] for i in range(len(base))]))  # bit-identical normalization
        assert torch.equal(ys, base.targets)


def test_tensor_batches_are_deterministic_and_sharded():
    base = load_dataset("fake", "", "train", augment=True, fake_images=50)
    ds = Relabeled(base, torch.arange(50), base.targets)
    cpu = torch.device("cpu")
    a = [x for x, _ in TensorBatches(ds, 8, True, seed=1, epoch=2, device=cpu)]
    b = [x for x, _ in TensorBatches(ds, 8, True, seed=1, epoch=2, device=cpu)]
    c = [x for x, _ in TensorBatches(ds, 8, True, seed=1, epoch=3, device=cpu)]
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not all(torch.equal(u, v) for u, v in zip(a, c))
    shards = [TensorBatches(ds, 8, True, seed=1, epoch=2, device=cpu, rank=r, world_size=2).order for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 25 and sorted(torch.cat(shards).tolist()) == list(range(50))
    test = [TensorBatches(ds, 8, False, seed=1, epoch=2, device=cpu, rank=r, world_size=3).order for r in (0, 1, 2)]
    assert sorted(torch.cat(test).tolist()) == list(range(50))  # test split: every image once, no padding


def test_epoch_loader_picks_the_path():
    base = load_dataset("fake", "", "train", augment=True, fake_images=20)
    ds = Relabeled(base, torch.arange(20), base.targets)
    cpu = torch.device("cpu")
    assert isinstance(epoch_loader(ds, 4, True, 0, 0, cpu, fast=True), TensorBatches)
    assert isinstance(epoch_loader(ds, 4, True, 0, 0, cpu, fast=False), torch.utils.data.DataLoader)


def reference_tensor_batches(dataset, batch_size, train, seed, epoch, rank=0, world_size=1):
    """TensorBatches' batches as they were made before the epoch's indices, flips and offsets moved to the device
    once per epoch: everything drawn and kept on the CPU, sliced and copied (`.to`) batch by batch."""
    base = dataset.base
    norm = next(t for t in base.transform.transforms if isinstance(t, data._Normalize))  # from the built pipeline
    images, labels = base.images[dataset.indices], dataset.labels_used
    pad, n = images.shape[-1] // 8, len(labels)
    augment = train and any(isinstance(t, torchvision.transforms.v2.RandomCrop) for t in base.transform.transforms)
    if train:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
        if world_size > 1:
            order = torch.cat([order, order[: (-n) % world_size]])
        order = order[rank::world_size]
        g = torch.Generator().manual_seed(epoch_seed(seed, epoch, rank))
        flips = torch.rand(len(order), generator=g) < 0.5
        offsets = torch.randint(0, 2 * pad + 1, (len(order), 2), generator=g)
    else:
        order = torch.arange(rank, n, world_size)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        x = images[idx]
        if augment:
            sl = slice(start, start + len(idx))
            x = augment_batch(x, flips[sl], offsets[sl], pad)
        yield (x.to(torch.float32) / 255 - norm.mean) / norm.std, labels[idx]


@pytest.mark.parametrize("size", [16, 32])
def test_tensor_batches_equal_the_per_batch_copy_path_bit_for_bit(size):
    # the device copy of the whole epoch's indices must not change a single batch: every (rank, world size, split)
    # and a batch size that leaves a short last batch
    base = load_dataset("fake", "", "train", augment=True, fake_images=45, image_size=size)
    ds = Relabeled(base, torch.arange(3, 45), torch.randint(0, 10, (45,), generator=torch.Generator().manual_seed(0)))
    cpu = torch.device("cpu")
    for train in (True, False):
        for world_size in (1, 2, 3):
            for rank in range(world_size):
                new = list(TensorBatches(ds, 8, train, 5, 2, cpu, rank, world_size))
                old = list(reference_tensor_batches(ds, 8, train, 5, 2, rank, world_size))
                assert len(new) == len(old) > 1
                for (x, y), (x_old, y_old) in zip(new, old):
                    assert torch.equal(x, x_old) and torch.equal(y, y_old), (train, rank, world_size)


def test_tensor_batches_copy_nothing_to_the_device_per_batch(monkeypatch):
    # Built on the meta device (a stand-in for a GPU here): every tensor a batch is cut from lives there, and
    # iterating calls .to(device) not once (the only .to left is the uint8 -> float32 cast)
    base = load_dataset("fake", "", "train", augment=True, fake_images=40, image_size=16)
    ds = Relabeled(base, torch.arange(40), base.targets)
    meta = torch.device("meta")
    tb = TensorBatches(ds, 8, True, 0, 0, meta)
    held = [tb.images, tb.labels, tb.order, tb.flips, tb.offsets, tb.mean, tb.std]
    assert all(t.device == meta for t in held)
    assert TensorBatches(ds, 8, False, 0, 0, meta).order.device == meta
    moves, to = [], torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        if "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args):
            moves.append((args, kwargs))
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    batches = list(tb)
    assert moves == [] and len(batches) == 5
    assert all(x.device == meta and y.device == meta and x.shape == (8, 3, 16, 16) for x, y in batches)
