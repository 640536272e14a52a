"""Nothing already on disk is lost, and no file decides what the program runs or where it writes.

--force replaces only a run directory of the same stage; the ImageNet16 pickles cannot run code; an unreadable image,
a full disk, a read-only place or a file in the way is one line (exit 2) and leaves no temp file; NaN weights are
never written over a good checkpoint. In the full tier.
"""

import errno
import io
import math
import os
import pickle
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from test_errors import assert_user_error
from test_scripts import TINY, run

import cli
import files
import rundir
from data import DataError, Relabeled, load_dataset
from loaders import make_loader

pytestmark = pytest.mark.full

RETRAIN = "--arch |nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|none~1|skip_connect~2| --channels 4 --layers 1".split()
RETRAIN += "--dataset fake --fake-images 32 --image-size 8 --batch-size 16 --workers 0 --epochs 1".split()


def listing(root) -> dict:
    """Every file under root with its bytes: compared before and after a refused command."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            files[os.path.relpath(path, root)] = open(path, "rb").read()
    return files


def test_force_refuses_current_directory_and_repository(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "notes.txt").write_text("a user's work\n")
    before = listing(tmp_path)
    res = run("train.py", *TINY, "--epochs", 1, "--out", ".", "--force", check=False, cwd=tmp_path)
    assert_user_error(res, "--force refused", "current directory")
    res = run("train.py", *TINY, "--epochs", 1, "--out", tmp_path, "--force", check=False)
    assert_user_error(res, "--force refused", "git repository")
    res = run("retrain.py", *RETRAIN, "--out", tmp_path, "--force", check=False)
    assert_user_error(res, "--force refused")
    assert listing(tmp_path) == before


def test_force_refuses_foreign_files_and_other_stage(tmp_path):
    train_dir = tmp_path / "sn"
    run("train.py", *TINY, "--epochs", 1, "--out", train_dir)
    (train_dir / "thesis.tex").write_text("do not delete\n")
    before = listing(tmp_path)
    res = run("train.py", *TINY, "--epochs", 1, "--out", train_dir, "--force", check=False)
    assert_user_error(res, "--force refused", "thesis.tex")
    os.remove(train_dir / "thesis.tex")
    before = listing(tmp_path)
    # a train.py directory is not retrain.py's to replace, nor a folder of user data without config.json
    assert_user_error(run("retrain.py", *RETRAIN, "--out", train_dir, "--force", check=False), "--force refused")
    data = tmp_path / "data"
    data.mkdir()
    (data / "log.jsonl").write_text("{}\n")
    assert_user_error(run("train.py", *TINY, "--epochs", 1, "--out", data, "--force", check=False), "config.json")
    assert listing(tmp_path) == {**before, "data/log.jsonl": b"{}\n"}
    # an --out that is a file
    assert_user_error(run("train.py", *TINY, "--epochs", 1, "--out", data / "log.jsonl", check=False), "is a file")


def test_force_replaces_a_run_of_the_same_stage(tmp_path):
    out = tmp_path / "sn"
    run("train.py", *TINY, "--epochs", 1, "--keep-every", 1, "--out", out)
    assert (out / "supernet_ep1.pt").exists()
    run("train.py", *TINY, "--epochs", 1, "--out", out, "--force")
    assert not (out / "supernet_ep1.pt").exists() and (out / "supernet.pt").exists()
    rt = tmp_path / "rt"
    run("retrain.py", *RETRAIN, "--out", rt)
    run("retrain.py", *RETRAIN, "--out", rt, "--force")
    assert (rt / "retrain.pt").exists()


# ----------------------------------------------------------------------------------------------
# A file never decides what the program runs: the ImageNet16-120 batches are read with a restricted unpickler.
class Payload:
    """Pickles to a call of os.system: plain pickle.load would run `touch <marker>`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_imagenet16(folder, first_batch=None):
    """The 10 train batches + val_data in the NB201 format; train_data_batch_1 replaced by `first_batch` if given."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]:
        entry = {"data": rng.integers(0, 256, (4, 768), dtype=np.uint8), "labels": [1, 2, 120, 5]}
        with open(folder / name, "wb") as f:
            pickle.dump(first_batch if first_batch is not None and name == "train_data_batch_1" else entry, f)


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "in the labels"])
def test_imagenet16_pickle_cannot_run_code(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = {
        "os.system": Payload(marker),
        "builtins.exec": Exec(f"open({str(marker)!r}, 'w').close()"),
        "in the labels": {"data": np.zeros((2, 768), np.uint8), "labels": [1, Payload(marker)]},
    }[payload]
    write_imagenet16(tmp_path / "d", evil)
    before = listing(tmp_path)
    with pytest.raises(DataError) as e:
        load_dataset("imagenet16-120", str(tmp_path / "d"), "train", augment=False)
    assert "refused" in str(e.value) and "train_data_batch_1" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()
    # the same through train.py: one line, exit 2, nothing written, nothing run
    res = run("train.py", "--dataset", "imagenet16-120", "--data", tmp_path / "d", "--out", tmp_path / "run", check=False)
    assert_user_error(res, "refused", "train_data_batch_1")
    assert not marker.exists() and listing(tmp_path) == before


class Exec:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def test_imagenet16_reads_the_official_format_and_refuses_damaged_batches(tmp_path):
    # numpy arrays and numpy-integer labels, in protocol 2 (Python 2 era, bytes through _codecs.encode) and the default
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 256, (3, 768), dtype=np.uint8)
    for protocol in (2, pickle.DEFAULT_PROTOCOL):
        write_imagenet16(tmp_path / "ok")
        with open(tmp_path / "ok" / "val_data", "wb") as f:
            pickle.dump({"data": rows, "labels": [np.int64(7), 1, 120]}, f, protocol=protocol)
        ds = load_dataset("imagenet16-120", str(tmp_path / "ok"), "test", augment=False)
        assert torch.equal(ds.images, torch.from_numpy(rows).view(3, 3, 16, 16)) and ds.targets.tolist() == [6, 0, 119]
    good = (tmp_path / "ok" / "val_data").read_bytes()
    damaged = {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "text": b"hello\n",
        "a list": pickle.dumps([1, 2, 3]),
        "float rows": pickle.dumps({"data": np.zeros((2, 768)), "labels": [1, 2]}),
        "labels short": pickle.dumps({"data": np.zeros((2, 768), np.uint8), "labels": [1]}),
        "labels text": pickle.dumps({"data": np.zeros((2, 768), np.uint8), "labels": ["a", "b"]}),
    }
    for name, raw in damaged.items():
        (tmp_path / "ok" / "val_data").write_bytes(raw)
        with pytest.raises(DataError) as e:
            load_dataset("imagenet16-120", str(tmp_path / "ok"), "test", augment=False)
        assert "val_data" in str(e.value) and "\n" not in str(e.value), (name, str(e.value))


# ----------------------------------------------------------------------------------------------
# Unreadable images: the run stops with one line naming the file (it does not skip it: see data.FileImages).
def write_folder(root, bad: dict, size=8):
    """An ImageFolder tree with 2 classes x 3 PNGs in train/ and test/; `bad` maps relative paths to raw bytes."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for k in range(3):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / split / c / f"{k}.png")
    for rel, raw in bad.items():
        (root / rel).write_bytes(raw)


def jpeg_bytes(size=16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 90, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


BAD_IMAGES = {"truncated JPEG": jpeg_bytes()[:200], "empty file": b"", "text named .jpg": b"this is not an image\n"}


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_names_the_file(tmp_path, kind, workers):
    write_folder(tmp_path, {"train/b/bad.jpg": BAD_IMAGES[kind]})
    ds = load_dataset("folder", str(tmp_path), "train", augment=True)
    view = Relabeled(ds, torch.arange(len(ds)), ds.targets)
    batches = iter(make_loader(view, 4, train=True, seed=0, epoch=0, num_workers=workers))
    try:
        with pytest.raises(DataError) as e:  # through a DataLoader, its worker processes included
            for _ in batches:
                pass
    finally:
        stop_workers(batches)
    msg = str(e.value)
    assert "\n" not in msg and "bad.jpg" in msg and msg.startswith("cannot read image"), msg


def stop_workers(batches) -> None:
    """Stop a DataLoader iterator's worker processes now. Left to the garbage collector (the exception's traceback
    holds it in a reference cycle), it is shut down in some later test of this long-lived process, and a shutdown run
    by the collector waits 5 s per worker; a script's process simply exits."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multi-process iterator; none with 0 workers
    if shutdown is not None:
        shutdown()


def test_unreadable_images_in_train_search_and_retrain(tmp_path):
    data = tmp_path / "data"
    write_folder(data, {})
    flags = ["--dataset", "folder", "--data", data, "--image-size", 8, "--channels", 4, "--layers", 1, "--epochs", 1]
    flags += ["--batch-size", 4, "--workers", 0]
    run("train.py", *flags, "--out", tmp_path / "sn")
    (data / "train" / "a" / "1.png").write_bytes(BAD_IMAGES["truncated JPEG"])  # the copy is damaged afterwards
    before = listing(tmp_path)
    res = run("train.py", *flags, "--out", tmp_path / "sn2", check=False)
    assert_user_error(res, "cannot read image", "1.png")
    # search.py --fitness accuracy decodes the calibration images before scoring anything
    evolution = "--generations 1 --population 2 --topk 1 --mutations 0 --crossovers 0".split()
    res = run("search.py", "--ckpt", tmp_path / "sn" / "supernet.pt", "--fitness", "accuracy", *evolution,
              "--data", data, "--out", tmp_path / "s.json", check=False)  # fmt: skip
    assert_user_error(res, "cannot read image", "1.png")
    assert not (tmp_path / "s.json").exists()
    # retrain.py: a bad test image, met in the evaluation after the first epoch (here with 2 worker processes; in a
    # process of its own, which ends them as a user's run does: in-process, the failed iterator would wait for the
    # garbage collector, see stop_workers)
    (data / "train" / "a" / "1.png").write_bytes((data / "train" / "a" / "0.png").read_bytes())
    (data / "test" / "b" / "2.png").write_bytes(BAD_IMAGES["empty file"])
    res = run("retrain.py", "--arch", RETRAIN[1], *flags[:-2], "--workers", 2, "--out", tmp_path / "rt", check=False,
              process=True)  # fmt: skip
    assert_user_error(res, "cannot read image", "2.png")
    after = listing(tmp_path)
    for name in set(before) | set(after):  # nothing of the user's changed; only the new runs' own files appeared
        if not name.startswith(("sn2/", "rt/")) and not name.startswith("data/"):
            assert before.get(name) == after.get(name), name
    assert not [n for n in after if n.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------
# Writes that fail (a full disk, a read-only place, a file in the way) are one line, and leave no temp file.
class FillingDisk:
    """A real file that accepts `room` bytes, then fails every write with ENOSPC, as a file system that fills up."""

    def __init__(self, path, room):
        self.f, self.room = open(path, "wb"), room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("room", [0, 100, 50_000])
def test_full_disk_names_the_disk_and_keeps_the_old_file(tmp_path, monkeypatch, room):
    path = tmp_path / "supernet.pt"
    files.atomic_save({"model": {"w": torch.zeros(3)}}, str(path))
    before = listing(tmp_path)
    monkeypatch.setattr(files, "_open_temp", lambda tmp, mode="wb": FillingDisk(tmp, room))
    with pytest.raises(cli.UsageError) as e:
        files.atomic_save({"model": {"w": torch.ones(100_000)}}, str(path))  # 400 kB: more than the room left
    msg = str(e.value)
    assert "disk is full" in msg and str(path) in msg and "inline_container" not in msg and "\n" not in msg, msg
    with pytest.raises(cli.UsageError, match="disk is full"):
        files.atomic_write_json({"x": "y" * 100_000}, str(tmp_path / "search.json"))
    assert listing(tmp_path) == before  # the old checkpoint intact, no .tmp left


def test_read_only_directory_and_files_in_the_way(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    before = listing(tmp_path)
    # an --out under a file, or a directory where search.py writes a file
    with pytest.raises(cli.UsageError, match="is a file, not a directory"):
        files.check_writable(str(tmp_path / "a_file" / "run"), "--out", directory=True)
    with pytest.raises(cli.UsageError, match="is a directory"):
        files.check_writable(str(tmp_path), "--out")
    res = run("retrain.py", *RETRAIN, "--out", tmp_path / "a_file", check=False)
    assert_user_error(res, "is a file")
    # a read-only place (as root, chmod does not stop a write: the refusals are simulated where they happen)
    monkeypatch.setattr(files.os, "access", lambda path, mode: False)
    with pytest.raises(cli.UsageError, match="cannot write in"):
        rundir.check_run_dir(str(tmp_path / "new"), resume=False, force=False, marker="supernet.pt")

    def read_only(tmp, mode="wb"):
        open(tmp, mode).close()  # created, then the write fails: the temp file must still go
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files, "_open_temp", read_only)
    with pytest.raises(cli.UsageError, match="read-only file system") as e:
        files.atomic_save({"model": {"w": torch.zeros(2)}}, str(tmp_path / "x.pt"))
    assert "\n" not in str(e.value)
    assert listing(tmp_path) == before


def test_planted_symlink_at_the_temp_name_is_not_followed(tmp_path):
    victim = tmp_path / "thesis.tex"
    victim.write_text("years of work\n")
    os.symlink(victim, tmp_path / "supernet.pt.tmp")  # what a crafted run directory could hold
    files.atomic_save({"model": {"w": torch.zeros(2)}}, str(tmp_path / "supernet.pt"))
    assert victim.read_text() == "years of work\n"
    assert not os.path.islink(tmp_path / "supernet.pt") and not os.path.lexists(tmp_path / "supernet.pt.tmp")
    assert torch.load(tmp_path / "supernet.pt", weights_only=True)["model"]["w"].shape == (2,)


def test_non_finite_weights_are_never_written(tmp_path):
    path = tmp_path / "supernet.pt"
    files.atomic_save({"model": {"w": torch.zeros(3)}, "epoch": 1}, str(path))
    before = listing(tmp_path)
    for bad in (float("nan"), float("inf")):
        w = torch.zeros(3)
        w[1] = bad
        with pytest.raises(cli.UsageError, match="model.w holds NaN or inf") as e:
            files.atomic_save({"model": {"w": w}, "epoch": 2}, str(path))
        assert "last good one" in str(e.value)
    with pytest.raises(cli.UsageError, match=r"optimizer.state.0.momentum_buffer"):
        files.atomic_save(
            {"model": {}, "optimizer": {"state": {0: {"momentum_buffer": torch.tensor([-math.inf])}}}}, str(path)
        )
    assert listing(tmp_path) == before
