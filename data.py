"""Datasets and loaders shared by train.py (supernet on random labels) and retrain.py (true labels).

Every dataset here yields `(image, target)` with `image` a normalized FloatTensor (3, H, W) and `target` the TRUE
label as an int, and exposes `.targets` (LongTensor (N,), 0-based, read without decoding any image) and
`.num_classes`. RLNAS never trains on these targets: train.py draws random labels once for the whole training set
and wraps the dataset in `Relabeled`, which swaps the label and keeps the image untouched.

Paper: "Neural Architecture Search with Random Labels", Zhang et al., CVPR 2021, arXiv:2101.11834 -- the random-label
supernet training of the method (method.md §1). What this file reproduces from the official NAS-Bench-201 code
(method.md §1 and §3, method.md pitfall 3):
  - the CIFAR-10 supernet sees only one half (25k/25k) of the training set (`split_indices`);
  - ImageNet16-120 keeps the raw labels 1..120 and shifts them to 0..119 (the "ImageNet16 quirk");
  - the augmentation: flip + RandomCrop(S, padding=S//8) + normalize for training, normalize only for testing.

Datasets (`DATASETS`): cifar10, cifar100 (torchvision, under --data), imagenet16-120 (the NB201 pickles),
imagenet (an ImageFolder tree with train/ and val/, the DARTS-space ImageNet pipeline of method.md §3/§6), folder
(any ImageFolder tree with train/ and test/ or val/) and fake (synthetic, for smoke runs and tests).

This module is imported, never run. Usage, from a stage script:
    ds = load_dataset('cifar10', './data', 'train', augment=True)
    train_idx, _ = split_indices(len(ds), seed=0)                       # the 25k half (NB201 CIFAR-10 only)
    labels = random_labels(len(ds), ds.num_classes, seed)               # random_labels.py: one label per image
    loader = loaders.epoch_loader(Relabeled(ds, train_idx, labels), 64, True, seed, epoch, device)  # loaders.py
"""

import codecs
import functools
import os
import pickle
import socket

import numpy as np
import torch
from torch.utils.data import Dataset

from cli import UsageError
from distributed import physical_memory
from files import check_regular

# torchvision is imported where it is used, never at the top: importing it takes about 1.5 s of every start on a
# CPU (it loads torch._dynamo), which search.py, the batched tensor path and every one-line error never need.

DATASETS = ("cifar10", "cifar100", "imagenet16-120", "imagenet", "folder", "fake")

# Normalization stats of the official NB201 code (xautodl get_dataset_with_transform.py), in [0, 1] units.
# 'folder' and 'fake' reuse CIFAR-10's: the main use of 'folder' is the CIFAR-10 JPEG copy in ImageFolder layout,
# and fake images only need some fixed normalization.
MEAN_STD = {
    "cifar10": ([x / 255 for x in (125.3, 123.0, 113.9)], [x / 255 for x in (63.0, 62.1, 66.7)]),
    "cifar100": ([x / 255 for x in (129.3, 124.1, 112.4)], [x / 255 for x in (68.2, 65.4, 70.4)]),
    "imagenet16-120": ([x / 255 for x in (122.68, 116.66, 104.01)], [x / 255 for x in (63.22, 61.26, 65.09)]),
}
MEAN_STD["folder"] = MEAN_STD["fake"] = MEAN_STD["cifar10"]

# What to tell a user whose cifar/imagenet16 data cannot be read: those DataErrors end with these ways out.
_WAYS_OUT = (
    "use --data DIR to point at the data, or --dataset folder --data DIR (an ImageFolder with train/ and "
    "test/ or val/), or --dataset fake for a synthetic smoke run"
)


class DataError(UsageError):
    """A dataset that cannot be loaded (a UsageError: one line, exit status 2): what is wrong and how to fix it."""

    def __str__(self) -> str:
        text = super().__str__()
        # Raised in a DataLoader worker, it comes back as "Caught DataError in DataLoader worker process 0.\nOriginal
        # Traceback ...\ndata.DataError: <message>": keep the message, the user's one line.
        if text.startswith("Caught DataError") and "\n" in text:
            return text.rstrip().splitlines()[-1].split("DataError: ", 1)[-1]
        return text


# ------------------------------------------------------------------------------------------------------------------
# BOILERPLATE: transforms. torchvision.transforms.v2 treats PIL images (folder) and uint8 tensors (cifar, imagenet16,
# fake) alike, so every dataset goes through the same pipeline.


class Pipeline:
    """A dataset's per-image transform, built on its first image: `build()` -> the v2.Compose. What the batched
    tensor path needs is readable without building it: `normalize` (the _Normalize step, or None) and `augment`
    (flip + crop on). `build` is a functools.partial of a module function, so DataLoader workers can pickle it."""

    def __init__(self, build, normalize: "_Normalize | None", augment: bool):
        self.build, self.normalize, self.augment, self._compose = build, normalize, augment, None

    def built(self):
        if self._compose is None:
            self._compose = self.build()
        return self._compose

    @property
    def transforms(self) -> list:
        return self.built().transforms

    def __call__(self, image):
        return self.built()(image)


class _Normalize:
    """uint8 (3, H, W) -> float (3, H, W): x = (u8 / 255 - mean) / std.

    Written out instead of v2.ToDtype(scale=True) + v2.Normalize because ToDtype multiplies by 1/255, which is one
    ulp away from the official code's ToTensor (a division by 255) for half of the 256 values.
    """

    def __init__(self, mean: list[float], std: list[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)  # (3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)  # (3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return (image.to(torch.float32) / 255 - self.mean) / self.std

    def __repr__(self) -> str:
        return f"_Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def build_transform(size: int, mean: list[float], std: list[float], augment: bool, resize: bool = False):
    """The official NB201 pipeline for S x S images (method.md §3): train = flip + RandomCrop(S, pad S//8) + normalize.
    Returns a torchvision v2.Compose."""
    from torchvision.transforms import v2

    steps = [v2.ToImage()]  # PIL or uint8 tensor -> uint8 tv_tensors.Image (3, H, W)
    if resize:
        # Folder images of another size: short side to S, then the central S x S. Resize returns an S-sized image
        # unchanged, so CIFAR-sized folders are not touched.
        steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]  # (3, S, S)
    if augment:
        # Flip first, then crop, as the official code. Padded pixels are 0 (black) before normalization.
        steps += [v2.RandomHorizontalFlip(), v2.RandomCrop(size, padding=size // 8)]  # (3, S, S)
    steps += [v2.ToPureTensor(), _Normalize(mean, std)]
    return v2.Compose(steps)


class _Lighting:
    """AlexNet-style PCA lighting noise (std 0.1) on a float image in [0, 1]: add eigvec @ (alpha * eigval) to every
    pixel, alpha ~ N(0, std) per image, with the ImageNet RGB eigen-decomposition (method.md §3: DARTS/MobileNet
    ImageNet)."""

    EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
    EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])

    def __init__(self, std: float = 0.1):
        self.std = std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.std  # (3,) from torch's RNG, like the other per-image augmentations
        rgb = self.EIGVEC @ (alpha * self.EIGVAL)  # (3,)
        return image + rgb.view(3, 1, 1)


IMAGENET_MEAN_STD = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
IMAGENET_STYLES = ("lighting", "normalize")


def build_imagenet_transform(size: int, augment: bool, style: str = "lighting"):
    """The two ImageNet pipelines of the official code; both: train = RandomResizedCrop(S, scale 0.08-1) + flip,
    eval = resize the short side to S*256/224 + CenterCrop(S).
    style 'lighting' (method.md §3 supernets of both spaces, method.md §6 DARTS retraining): [0, 1] floats + PCA
    lighting 0.1 on train, NO mean/std normalization. style 'normalize' (method.md §6 MobileNet retraining):
    torchvision's ImageNet mean/std, no lighting."""
    if style not in IMAGENET_STYLES:
        raise ValueError(f"imagenet style must be one of {IMAGENET_STYLES}, got {style!r}")
    from torchvision.transforms import v2

    steps = [v2.ToImage()]
    if augment:
        steps += [v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps += [v2.Resize(size * 256 // 224, antialias=True), v2.CenterCrop(size)]
    if style == "normalize":
        return v2.Compose(steps + [v2.ToPureTensor(), _Normalize(*IMAGENET_MEAN_STD)])
    steps += [v2.ToPureTensor(), _Normalize([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])]  # u8 / 255 only
    if augment:
        steps.append(_Lighting(0.1))
    return v2.Compose(steps)


# ------------------------------------------------------------------------------------------------------------------
# BOILERPLATE: the two dataset classes. Both keep the true labels as a LongTensor so that `.targets` never decodes.


class TensorImages(Dataset):
    """Images held in memory as one uint8 tensor (N, 3, H, W): cifar10/100, imagenet16-120 and fake."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, num_classes: int, transform=None):
        assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3, images.shape
        assert len(images) == len(targets), (len(images), len(targets))
        self.images, self.targets, self.num_classes, self.transform = images, targets.long(), num_classes, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.targets[i])


class FileImages(Dataset):
    """Images decoded from files on each access (the folder dataset): `samples` is ImageFolder's (path, class) list."""

    def __init__(self, samples: list[tuple[str, int]], num_classes: int, transform=None):
        self.samples, self.num_classes, self.transform = samples, num_classes, transform
        self.targets = torch.tensor([c for _, c in samples], dtype=torch.long)  # (N,)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.samples[i][0]
        _check_data_file(path)  # a FIFO would block the open below forever, a device read without end
        try:
            from torchvision.datasets.folder import default_loader  # a lookup once torchvision is imported

            image = default_loader(path)  # PIL RGB
        except Exception as e:  # a truncated JPEG, an empty file, text named .jpg: PIL raises OSError, ValueError, ...
            # Stop and name the file rather than skip it: a skipped image would silently change the training set
            # (and the recorded indices); one bad file usually means a damaged copy, with more to find.
            raise DataError(
                f"cannot read image {path!r} ({_one_line(e)}); replace or delete that file, then run the command again"
            ) from None
        return self.transform(image), int(self.targets[i])


def _check_data_file(path: str, what: str = "image") -> None:
    """A data file is read only if it is a regular file (files.check_regular): a FIFO blocks the open forever, a
    device reads without end. Raised as a DataError, which keeps its one line when it comes from a loader worker."""
    fix = "replace it with the data file or remove it from the dataset folder"
    try:
        check_regular(path, what, inside=fix, fix=fix)
    except UsageError as e:
        raise DataError(str(e)) from None


# ------------------------------------------------------------------------------------------------------------------
# BOILERPLATE: one loader per dataset kind.


def _load_cifar(name: str, root: str, train: bool, download: bool = True) -> TensorImages:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    folder = os.path.join(root, cls.base_folder)
    for file_name, _ in cls.train_list + cls.test_list:  # torchvision reads them to check their md5
        if os.path.lexists(os.path.join(folder, file_name)):
            _check_data_file(os.path.join(folder, file_name), f"{name} file")
    try:
        ds = cls(root, train=train, download=False)
    except Exception as e:  # torchvision says RuntimeError('Dataset not found or corrupted') for both cases
        if os.path.exists(folder):
            raise DataError(
                f"{name}: the files in {folder!r} are corrupt or incomplete ({_one_line(e)}); delete that "
                f"folder to download them again, or {_WAYS_OUT}"
            ) from None
        if not download:  # the path came from a file (a checkpoint's config): read there, never download there
            raise DataError(
                f"{name}: not found under {root!r}, the directory the run recorded; pass --data DIR "
                "(nothing is downloaded into a path read from a file)"
            )
        # Absent: try torchvision's download once, with a socket timeout so an offline machine fails in seconds.
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            ds = cls(root, train=train, download=True)
        except Exception as e:  # URLError, timeouts, bad archives: all end the same way for the user
            raise DataError(
                f"{name}: not found under {root!r} and the download failed ({_one_line(e)}); {_WAYS_OUT}"
            ) from None
        finally:
            socket.setdefaulttimeout(old_timeout)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return TensorImages(images, torch.tensor(ds.targets), len(ds.classes))


# The only globals an ImageNet16 batch may name: numpy's array and scalar rebuilders (both module paths, numpy 1 and 2)
# and _codecs.encode, which protocol-2 pickles use for bytes. Anything else (os.system, builtins.eval, ...) is refused.
_NUMPY_GLOBALS = {
    "_reconstruct": np.zeros(1).__reduce__()[0],
    "scalar": np.int64(0).__reduce__()[0],
}
_PICKLE_GLOBALS = {
    **{(m, k): v for m in ("numpy.core.multiarray", "numpy._core.multiarray") for k, v in _NUMPY_GLOBALS.items()},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """pickle.Unpickler for the ImageNet16 batches: numpy arrays and plain types only, so a crafted file under --data
    cannot run anything (plain pickle.load calls whatever callable the file names)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a NAS-Bench-201 batch never holds")
        return _PICKLE_GLOBALS[module, name]


def _read_imagenet16_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One NB201 ImageNet16 pickle -> (rows uint8 (n, 768), raw labels int64 (n,)), checked, without running code."""
    _check_data_file(path, "imagenet16-120 file")
    try:
        with open(path, "rb") as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()  # {'data': uint8 (n, 768), 'labels': ints 1..1000}
    except pickle.UnpicklingError as e:
        raise DataError(f"imagenet16-120: refused to read {path!r}: {_one_line(e)}; {_WAYS_OUT}") from None
    except Exception as e:  # truncated or damaged bytes reach the unpickler in any state: EOFError, KeyError, ...
        raise DataError(f"imagenet16-120: {path!r} is not a readable pickle ({_one_line(e)}); {_WAYS_OUT}") from None
    rows = entry.get("data") if isinstance(entry, dict) else None
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3 * 16 * 16:
        what = f"rows of {rows.shape[1:]} {rows.dtype} values" if isinstance(rows, np.ndarray) else "no 'data' array"
        raise DataError(
            f"imagenet16-120: {path!r} holds {what}, not 768 = 3x16x16 uint8: not the NAS-Bench-201 ImageNet16 "
            f"pickles; {_WAYS_OUT}"
        )
    try:
        labels = np.asarray(entry.get("labels"))
        ok = labels.ndim == 1 and len(labels) == len(rows) and np.issubdtype(labels.dtype, np.integer)
    except Exception:  # ragged or odd objects
        ok = False
    if not ok:
        raise DataError(f"imagenet16-120: {path!r} does not hold one integer label per image; {_WAYS_OUT}")
    return rows, labels.astype(np.int64)


def _load_imagenet16(root: str, train: bool) -> TensorImages:
    names = [f"train_data_batch_{i}" for i in range(1, 11)] if train else ["val_data"]
    # The NB201 download unpacks into ImageNet16/, so accept --data pointing at it or at its parent.
    folder = next((d for d in (root, os.path.join(root, "ImageNet16")) if os.path.isfile(os.path.join(d, names[0]))), root)
    missing = [n for n in names if not os.path.exists(os.path.join(folder, n))]
    if missing:
        raise DataError(
            f"imagenet16-120: missing {', '.join(missing)} in {folder!r} (expected the NAS-Bench-201 "
            f"pickles train_data_batch_1..10 and val_data in DIR or DIR/ImageNet16); {_WAYS_OUT}"
        )
    data, labels = [], []
    for n in names:
        rows, raw = _read_imagenet16_batch(os.path.join(folder, n))
        data.append(rows)
        labels.append(raw)
    data, labels = np.concatenate(data), np.concatenate(labels)  # (N, 768), (N,)
    # RLNAS: ImageNet16 quirk (method.md §1). Raw labels are 1-indexed; ImageNet16-120 keeps classes 1..120 and the
    # official loader subtracts 1 in __getitem__. We shift once here, so targets (and random labels) are 0..119.
    keep = (labels >= 1) & (labels <= 120)
    images = torch.from_numpy(data[keep]).view(-1, 3, 16, 16)  # channel-major rows -> (N, 3, 16, 16)
    return TensorImages(images, torch.from_numpy(labels[keep] - 1), 120)


def _folder_error(problem: str, path: str, name: str = "folder") -> DataError:
    if name == "imagenet":
        return DataError(
            f"--dataset imagenet: {problem}: {path!r}; expected DIR/train/<class>/<images> and DIR/val/<class>/<images> "
            "(ImageFolder layout, the same class folders); or --dataset fake for a synthetic smoke run"
        )
    return DataError(
        f"--dataset folder: {problem}: {path!r}; expected DIR/train/<class>/<images> and "
        f"DIR/test/<class>/<images> (or DIR/val/<class>/<images>) with the same class folders"
    )


def _load_folder(root: str, train: bool, name: str = "folder") -> FileImages:
    import torchvision

    if not os.path.isdir(root):
        raise _folder_error("no such directory", root, name)
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise _folder_error("no train/ folder in", root, name)
    # test/ wins when both exist: for the CIFAR-10 copy it is the official test set. ImageNet: val/ only.
    evals = ("val",) if name == "imagenet" else ("test", "val")
    eval_dir = next((d for d in (os.path.join(root, e) for e in evals) if os.path.isdir(d)), None)
    if eval_dir is None:
        raise _folder_error(f"no {' nor '.join(e + '/' for e in evals)} folder in", root, name)
    # Class folder names only (no image scan) for both splits, so a mismatch is caught whichever split is asked for.
    classes = {}
    for d in (train_dir, eval_dir):
        try:
            classes[d] = torchvision.datasets.folder.find_classes(d)[0]
        except FileNotFoundError:
            raise _folder_error("no class folders in", d, name) from None
    if classes[train_dir] != classes[eval_dir]:
        only_one = sorted(set(classes[train_dir]) ^ set(classes[eval_dir]))
        raise _folder_error(
            f"train/ and {os.path.basename(eval_dir)}/ have different class folders "
            f"({', '.join(only_one[:5])} in only one of them) in",
            root,
            name,
        )
    split_dir = train_dir if train else eval_dir
    try:
        # ImageFolder lists the files (sorted, class index = position of the sorted folder name) without decoding.
        samples = torchvision.datasets.ImageFolder(split_dir).samples
    except FileNotFoundError as e:  # a class folder with no image file
        raise _folder_error(f"{_one_line(e)} in", split_dir, name) from None
    return FileImages(samples, len(classes[train_dir]))


def _load_fake(train: bool, size: int, num_images: int, num_classes: int, seed: int) -> TensorImages:
    # Seeds 2*seed (train) and 2*seed+1 (test): a distinct stream for every (seed, split) and no global RNG touched.
    g = torch.Generator().manual_seed(2 * seed + (0 if train else 1))
    n = num_images if train else max(1, num_images // 4)
    need, have = n * 3 * size * size, physical_memory()  # uint8 bytes, before any copy to a device
    if need > have // 2:
        raise DataError(
            f"--dataset fake: {n:,} images of {size}x{size} need {need / 2**30:,.1f} GiB of memory, more than half of "
            f"this machine's {have / 2**30:,.1f} GiB; lower --fake-images or --image-size"
        )
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)  # (N, 3, S, S)
    targets = torch.randint(0, num_classes, (n,), generator=g)  # (N,)
    return TensorImages(images, targets, num_classes)


def load_dataset(
    name: str,
    root: str,
    split: str,
    augment: bool,
    image_size: int | None = None,
    fake_images: int = 1024,
    fake_classes: int = 10,
    fake_seed: int = 0,
    imagenet_style: str = "lighting",
    download: bool = True,
) -> Dataset:
    """Load `split` ('train' or 'test') of dataset `name`; the training pipeline augments only if `augment`.
    `imagenet_style` picks one of the two ImageNet pipelines (build_imagenet_transform); other datasets ignore it.
    `download=False` when `root` was read from a file: CIFAR is then read there if present, never downloaded there.

    Returns a dataset of (FloatTensor (3, S, S) normalized, int true label) with `.targets` (LongTensor (N,), 0-based)
    and `.num_classes`. `image_size` (default 32) sets S for 'folder' and 'fake'; cifar (32) and imagenet16-120 (16)
    have a fixed size and accept only None or that size. Raises DataError (one line) when the data cannot be read.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    train = split == "train"
    native = {"cifar10": 32, "cifar100": 32, "imagenet16-120": 16}.get(name)
    if native is not None and image_size not in (None, native):
        raise DataError(f"{name} images are {native}x{native}; drop --image-size or set it to {native}")
    size = native or image_size or (224 if name == "imagenet" else 32)
    if name in ("cifar10", "cifar100"):
        ds = _load_cifar(name, root, train, download)
    elif name == "imagenet16-120":
        ds = _load_imagenet16(root, train)
    elif name in ("folder", "imagenet"):
        ds = _load_folder(root, train, name)
    else:
        ds = _load_fake(train, size, fake_images, fake_classes, fake_seed)
    if len(ds) == 0:  # an empty split would train nothing, or test on nothing and report NaN as "diverged"
        raise DataError(f"{name}: the {split} split in {root!r} holds no images; check --data (or the files in it)")
    # The test split is never augmented, whatever the caller asks (method.md §3: test = normalize only).
    aug = augment and train
    if name == "imagenet":
        if imagenet_style not in IMAGENET_STYLES:
            raise ValueError(f"imagenet style must be one of {IMAGENET_STYLES}, got {imagenet_style!r}")
        build = functools.partial(build_imagenet_transform, size, augment=aug, style=imagenet_style)
        ds.transform = Pipeline(build, None, aug)  # never on the batched tensor path: ImageNet is not in memory
    else:
        build = functools.partial(build_transform, size, *MEAN_STD[name], augment=aug, resize=name == "folder")
        ds.transform = Pipeline(build, _Normalize(*MEAN_STD[name]), aug)
    return ds


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# ------------------------------------------------------------------------------------------------------------------
# RLNAS: which images the supernet sees, and with which labels (method.md §1, method.md pitfall 3).


def split_indices(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded half split of range(n): (train_idx (n//2,), valid_idx (n - n//2,)), disjoint, each sorted.

    The NB201 CIFAR-10 supernet trains on the 25k "train" half of the 50k training images; the official code reads
    that half from configs/nas-benchmark/cifar-split.txt, which we cannot ship, so we draw it with a local generator.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)  # (n,)
    return perm[: n // 2].sort().values, perm[n // 2 :].sort().values


def subset_indices(indices: torch.Tensor, subset: int, seed: int = 0) -> torch.Tensor:
    """A seeded random subset of `subset` elements of `indices`, sorted; subset <= 0 or >= len(indices) keeps all.

    For a fixed seed a smaller subset is contained in a larger one (both are prefixes of one permutation).
    """
    if subset <= 0 or subset >= len(indices):
        return indices.sort().values
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(indices), generator=g)[:subset]  # (subset,)
    return indices[pick].sort().values


class Relabeled(Dataset):
    """base restricted to `indices`, with item i = (image of base[indices[i]], labels[indices[i]]).

    RLNAS: `labels` covers the FULL base dataset (one random label per training image, drawn once before training,
    as the official code does), and only then is the subset taken, so an image's label does not depend on the subset.
    """

    def __init__(self, base: Dataset, indices: torch.Tensor, labels: torch.Tensor):
        assert len(labels) == len(base), f"labels must cover the full dataset: {len(labels)} labels, {len(base)} images"
        self.base, self.indices, self.labels = base, indices.long(), labels.long()
        self.labels_used = self.labels[self.indices]  # (len(indices),)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        return self.base[j][0], int(self.labels[j])
