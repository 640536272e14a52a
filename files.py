"""
BOILERPLATE: the files a run writes and reads, written so that nothing is lost and read so that nothing runs.

Nothing here is part of the method. Every write goes to a temp file in the same directory, is flushed to the disk
and renamed over its target: a crash leaves the old file or the new one, never half of one, and a full disk or a
read-only place is one line naming it. Every read of a checkpoint is torch.load(weights_only=True) (tensors, plain
types and RNG states: never code), and what it returns is checked field by field (check_checkpoint) before a stage
uses it, so a truncated, damaged or hand-edited file is one line, never a KeyError deep inside a stage. The files a
stage reads are regular files: a FIFO, a device or a directory where a file is expected is one line, never a hang.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import math
import os
import pickle
import shutil
import stat

import torch

from cli import BIG, MAX_CHANNELS, MAX_CLASSES, MAX_IMAGE_SIZE, MAX_LAYERS, MAX_WIDTH, UsageError


def _reason(err: OSError) -> str:
    return (err.strerror or str(err) or type(err).__name__).lower()


def write_error(err: OSError, path: str) -> UsageError:
    """The one line for a write that failed: the cause in words (a full disk, a read-only place), then the way out."""
    folder = os.path.dirname(os.path.abspath(path))
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
        except OSError:
            free = "no space left"
        why = f"the disk is full ({free} in {folder}); free some space, or pass --out on another disk"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = f"{_reason(err)} in {folder}; pass --out somewhere you can write"
    elif err.errno in (errno.ENOTDIR, errno.EISDIR, errno.ENOENT):
        why = f"{_reason(err)} (a file or a directory stands where the other is needed); pass another --out"
    else:
        why = f"{_reason(err)}; check the disk, or pass --out elsewhere"
    return UsageError(f"cannot write {path}: {why}")


def _open_temp(tmp: str, mode: str = "wb"):
    """Open `tmp` as a NEW file: a stale one (an earlier crash) is removed first, and a symlink is never followed,
    so a link planted at the temp name cannot make a save overwrite the file it points to."""
    if os.path.islink(tmp) or os.path.isfile(tmp):
        os.remove(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    return os.fdopen(fd, mode)


class _Recorder:
    """The file object torch.save writes through. torch turns an OSError of write() into "enforce fail at
    inline_container.cc" without the cause; this keeps the OSError (ENOSPC: the disk is full) to report it."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self):
        self.f.flush()


def _atomic_write(path: str, write, mode: str) -> None:
    """write(f) into path + '.tmp', fsync, rename over `path`: a crash leaves the old file, a failure no temp file."""
    tmp = f"{path}.tmp"
    try:
        with _open_temp(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _remove_quietly(tmp)
        raise write_error(err, path) from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: str) -> None:
    try:
        if os.path.lexists(path) and not os.path.isdir(path):
            os.remove(path)
    except OSError:
        pass


def atomic_save(obj, path: str) -> None:
    """torch.save to a temp file in the same directory, fsync, then rename: a crash leaves the old file.

    A checkpoint holding a NaN or inf (a diverged run) is never written: the last good one stays on disk.
    """
    bad = nonfinite(obj)
    if bad is not None:
        raise UsageError(
            f"not writing {path}: {bad} holds NaN or inf (the run diverged); the file on disk, if any, is the last "
            "good one; start again with a lower --lr (or --momentum, --wd)"
        )

    def write(f):
        out = _Recorder(f)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is None:
                raise
            raise out.error from None  # the OSError torch hid, e.g. ENOSPC

    _atomic_write(path, write, "wb")


def atomic_write_text(text: str, path: str) -> None:
    """Replace a text file atomically (log.jsonl after a resume drops the lines of a lost epoch)."""
    _atomic_write(path, lambda f: f.write(text), "w")


def atomic_write_json(obj, path: str) -> None:
    atomic_write_text(json.dumps(obj, indent=1) + "\n", path)


def atomic_copy(src: str, dst: str) -> None:
    """Copy a file atomically (train.py --keep-every snapshots), with the same messages as atomic_save."""

    def write(f):
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, 2**20)

    _atomic_write(dst, write, "wb")


def append_jsonl(path: str, entry: dict) -> None:
    """Append one JSON line (log.jsonl); a full disk or a read-only directory is one line, not a traceback."""
    try:
        if os.path.islink(path):
            raise UsageError(f"{path} is a symbolic link; a run writes only its own files: remove the link")
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")
    except OSError as err:
        raise write_error(err, path) from None


def check_writable(path: str, flag: str = "--out", directory: bool = False) -> None:
    """Fail before any work if `path` (a file to write, or with `directory` a run directory) cannot be written:
    a directory where a file is meant, a file on the way, or a closest existing folder we may not write into."""
    full = os.path.abspath(path)
    if not directory and os.path.isdir(full):
        raise UsageError(f"{flag} {path} is a directory; pass a file name, e.g. {os.path.join(path, 'search.json')}")
    probe = full if directory else os.path.dirname(full)
    while not os.path.exists(probe):  # the closest existing ancestor is where the first file or folder goes
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UsageError(f"{flag} {path}: {probe} is a file, not a directory; pass another {flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot write in {probe} (permission denied or read-only); pass another {flag}")


def check_regular(path: str, what: str, inside: str = "pass the file itself", fix: str = "pass a file written by this project") -> None:  # noqa: E501
    """A file the program reads is a regular file (symlinks to one are fine): a missing one, a directory, a FIFO or
    a device (/dev/zero would be read forever, a FIFO waits for a writer) is one line naming what it is."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist; pass the path of an existing file") from None
    except OSError as err:
        raise UsageError(f"cannot read {what} {path}: {_reason(err)}") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"{what} {path} is a directory, not a file; {inside}")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise UsageError(f"{what} {path} is {kind}, not a regular file; {fix}")


def load_checkpoint(path: str, what: str = "checkpoint") -> dict:
    """torch.load with weights_only=True: tensors, plain types and RNG states only; never runs code.

    Whatever the bytes (a truncated file, a bit flip, /etc/passwd), the result is a dict or a one-line UsageError:
    the unpickler meets damaged input in any state (IndexError, KeyError, ... from inside torch), so every exception
    of torch.load is the file's fault here.
    """
    check_regular(path, what)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line]
        if not refused:  # not a pickle torch can read at all
            raise UsageError(
                f"{what} {path} is not a checkpoint file (unreadable pickle); "
                "use another checkpoint or rerun the stage that wrote it"
            ) from None
        raise UsageError(
            f"refused to load {path}: it holds objects other than tensors and plain types "
            f"({refused[0][:100]}); load only checkpoints written by this project"
        ) from None
    except PermissionError as err:
        raise UsageError(f"cannot read {what} {path}: {_reason(err)}") from None
    except Exception as err:  # see the docstring: damaged bytes raise anything
        raise UsageError(
            f"{what} {path} is truncated or corrupt ({type(err).__name__}); "
            "use another checkpoint or rerun the stage that wrote it"
        ) from None
    if not isinstance(obj, dict):
        raise UsageError(f"{what} {path} is not a checkpoint of this project (no dict inside)")
    return obj


def load_json(path: str, what: str) -> dict:
    """A JSON object from `path` (retrain.py --ckpt-search, search.py --resume), or a one-line UsageError."""
    check_regular(path, what, f"pass the JSON file inside it (e.g. {path}/search.json)")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        kind = "a binary file" if isinstance(err, UnicodeDecodeError) else f"not valid JSON ({type(err).__name__})"
        raise UsageError(f"{what} {path} is {kind}, not a JSON file written by this project") from None
    except OSError as err:
        raise UsageError(f"cannot read {what} {path}: {_reason(err)}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{what} {path} holds a JSON {type(obj).__name__}, not the object this project writes")
    return obj


def state_fingerprint(state: dict) -> str:
    """SHA-256 over a state_dict's names and tensor bytes: ties supernet.pt to its own W0 file."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# What a loaded file holds. load_checkpoint guarantees a dict; check_checkpoint says whether it is the dict a stage
# wrote, before a stage uses any field, so a damaged or hand-edited file is one line (never a KeyError in a stage).
def nonfinite(obj, name: str = "") -> str | None:
    """The name of the first float tensor (or float) of a nested checkpoint holding NaN or inf, else None.

    One device synchronisation per device, not one per tensor: it runs before every checkpoint write.
    """
    tensors = []

    def walk(o, where):
        if isinstance(o, torch.Tensor):
            if o.is_floating_point() or o.is_complex():
                tensors.append((where, o))
        elif isinstance(o, float) and not math.isfinite(o):
            tensors.append((where, torch.tensor(o)))
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{where}[{i}]")

    walk(obj, name)
    by_device = {}
    for where, t in tensors:
        by_device.setdefault(t.device, []).append(torch.isfinite(t).all())
    if all(bool(torch.stack(flags).all()) for flags in by_device.values()):
        return None
    return next(where for where, t in tensors if not bool(torch.isfinite(t).all()))


def _int(low: int = 0, high: int = 2**63 - 1):
    def check(v):
        if type(v) is not int:  # bool is an int subclass: True is not an epoch
            return f"is a {type(v).__name__}, not an integer"
        if not low <= v <= high:
            return f"is {v}, outside {low}..{high}"
        return None

    return check


def _plain(v, depth: int = 0) -> bool:
    """JSON-like: dicts with str keys, lists, tuples, str, int, float, bool, None (configs, label records)."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        return True
    if depth > 20:
        return False
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x, depth + 1) for k, x in v.items())
    return isinstance(v, (list, tuple)) and all(_plain(x, depth + 1) for x in v)


def _state(v):
    if not isinstance(v, dict) or not v:
        return f"is a {type(v).__name__ if not isinstance(v, dict) else 'empty dict'}, not a state_dict"
    for k, t in v.items():
        if not isinstance(k, str) or not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            return f"entry {str(k)[:60]!r} is a {type(t).__name__}, not a dense tensor"
    return None


def _optimizer(v):
    ok = isinstance(v, dict) and isinstance(v.get("state"), dict) and isinstance(v.get("param_groups"), list)
    if not ok:
        return "is not an optimizer state_dict (a dict with 'state' and 'param_groups')"
    for g in v["param_groups"]:
        if not (isinstance(g, dict) and isinstance(g.get("params"), list) and all(type(i) is int for i in g["params"])):
            return "has a param group that is not a dict with a list of parameter indices"
        if not all(_plain(x) for k, x in g.items() if k != "params"):
            return "has a param group with other than plain values"
    for s in v["state"].values():
        if not (isinstance(s, dict) and all(isinstance(x, (torch.Tensor, int, float)) or x is None for x in s.values())):
            return "has a parameter state that is not a dict of tensors"
    return None


# The ints of a supernet description, bounded as the flags that set them: a network is rebuilt from them (on the
# meta device first), and an edited 'layers': 10**9 would otherwise hang while it is built.
NET_INTS = {"channels": MAX_CHANNELS, "layers": MAX_LAYERS, "num_classes": MAX_CLASSES, "image_size": MAX_IMAGE_SIZE}


def _net_args(v):
    if not isinstance(v, dict) or not isinstance(v.get("space"), str):
        return "is not a supernet description (a dict with a 'space' name)"
    for k, x in v.items():
        if not isinstance(k, str) or not (isinstance(x, (str, int, float, bool)) or x is None):
            return f"field {str(k)[:40]!r} is a {type(x).__name__}, not a plain value"
        if k in NET_INTS and (type(x) is not int or not 1 <= x <= NET_INTS[k]):
            return f"field {k!r} is {x!r}, not an integer in 1..{NET_INTS[k]}"
        if k == "width" and (type(x) is not float or not 0 < x <= MAX_WIDTH):
            return f"field 'width' is {x!r}, not a number in (0, {MAX_WIDTH}]"
    return None


def _w0(v):
    if not isinstance(v, dict) or not isinstance(v.get("file"), str) or _hex(v.get("fingerprint")):
        return "is not a W0 reference (a dict with 'file' and a sha256 'fingerprint')"
    name = v["file"]
    if name in ("", ".", "..") or os.path.basename(name) != name or "\\" in name:
        return f"names {name[:60]!r}, not a file beside the checkpoint"  # the file never decides where we read
    return None


def _hex(v):
    ok = isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)
    return None if ok else "is not a sha256 hex digest"


def _totals(v):
    ok = v is None or (isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim == 2 and v.shape[1] == 3)
    return None if ok else "is not the (ranks, 3) running totals"


def _rng(v):
    ok = isinstance(v, dict) and isinstance(v.get("path"), torch.Tensor) and v["path"].dtype == torch.uint8
    return None if ok else "is not an RNG state (a dict with a 'path' byte tensor)"


def _is(test, why: str):
    return lambda v: None if test(v) else why


FIELDS = {
    "stage": _is(lambda v: isinstance(v, str), "is not a string"),
    "space": _is(lambda v: isinstance(v, str), "is not a string"),
    "arch": _is(lambda v: isinstance(v, str) and v.strip(), "is not an architecture string"),
    "epoch": _int(0, BIG),
    "batch": _int(0),
    "step": _int(0),
    "world_size": _int(1, 2**20),
    "totals": _totals,
    "model": _state,
    "optimizer": _optimizer,
    "supernet_args": _net_args,
    "config": _is(lambda v: isinstance(v, dict) and _plain(v), "is not a dict of flag values"),
    "labels": _is(lambda v: isinstance(v, dict) and _plain(v), "is not a label record (a dict)"),
    "rng": _rng,
    "grad_holders": _is(lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v), "is not a list of names"),
    "w0": _w0,
    "fingerprint": _hex,
    "ddp_ranks": _is(lambda v: v is None or (isinstance(v, list) and _plain(v)), "is not a list"),
    "test_top1": _is(lambda v: v is None or type(v) in (int, float), "is not a number"),
    "test_top5": _is(lambda v: v is None or type(v) in (int, float), "is not a number"),
}
# kind -> (its 'stage' field, what to call it, the fields it needs). Other fields are checked when present.
KINDS = {
    "supernet": ("train", "supernet checkpoint written by train.py", ("model", "supernet_args", "w0", "epoch")),
    "train": (
        "train",
        "complete train.py checkpoint",
        ("model", "optimizer", "supernet_args", "w0", "epoch", "step", "rng", "grad_holders", "config", "labels"),
    ),
    "init": ("init", "W0 file (initial weights) written by train.py", ("model",)),
    "retrain": ("retrain", "retrain.py checkpoint", ("model", "optimizer", "epoch", "arch", "config")),
}


def check_checkpoint(ckpt: dict, path: str, kind: str) -> dict:
    """Is `ckpt` (from load_checkpoint) a `kind` file ('supernet' for search.py, 'train' for train.py --resume, 'init'
    for a W0 file, 'retrain' for retrain.py --resume)? Returns it, or raises a one-line UsageError naming the field.

    It checks the structure every stage relies on (types, bounds, a W0 file name without a directory, parameters
    named in grad_holders that exist, finite weights), not that the file fits a given network: the stage does that.
    """
    stage, desc, needed = KINDS[kind]
    found = ckpt.get("stage", "init" if kind == "init" else None)  # W0 files of older runs have no stage field
    missing = [k for k in needed if k not in ckpt]
    if found != stage or missing:
        why = f"missing {', '.join(missing)}" if found == stage else f"its stage is {str(found)[:40]!r}"
        raise UsageError(f"{path} is not a {desc} ({why}); pass the file that stage wrote")
    for key, check in FIELDS.items():
        why = check(ckpt[key]) if key in ckpt else None
        if why:
            raise UsageError(f"{path} is damaged or was edited: its {key!r} {why}; use the file the stage wrote")
    unknown = [n for n in ckpt.get("grad_holders", []) if n not in ckpt["model"]]
    if unknown:
        raise UsageError(f"{path} is damaged or was edited: grad_holders names {unknown[0][:60]!r}, not in its model")
    if ckpt.get("batch", 0) and ckpt.get("totals") is None:
        raise UsageError(f"{path} is damaged or was edited: a mid-epoch checkpoint without its running totals")
    if ckpt.get("totals") is not None and len(ckpt["totals"]) != ckpt.get("world_size", 1):
        raise UsageError(f"{path} is damaged or was edited: its totals do not have one row per rank")
    bad = nonfinite(ckpt["model"], "model")
    if bad is not None:
        raise UsageError(
            f"{path} holds NaN or inf weights ({bad}): the run that wrote it diverged; train again with a lower --lr"
        )
    return ckpt


def check_config(config: dict, parser: argparse.ArgumentParser, path: str) -> dict:
    """A saved config (a checkpoint's 'config', config.json) checked against the stage's own flag definitions, so
    that a resumed run never takes a value its command line would refuse (a hand-edited "epochs": "abc" or nan)."""
    for action in parser._actions:
        if action.dest not in config or config[action.dest] is None or config[action.dest] == action.default:
            continue
        value, flag = config[action.dest], action.option_strings[0] if action.option_strings else action.dest
        why = None
        if action.choices is not None and value not in action.choices:
            why = f"is {value!r}, not one of {', '.join(map(str, action.choices))}"
        elif action.nargs == 0 and not isinstance(value, bool):  # store_true, --[no-]nesterov
            why = f"is {value!r}, not true or false"
        elif hasattr(action.type, "kind"):  # common.number
            kind = action.type.kind
            if type(value) is not kind and not (kind is float and type(value) is int):
                why = f"is {value!r}, not a {kind.__name__}"
            else:
                try:
                    action.type(repr(value))
                except argparse.ArgumentTypeError as err:
                    why = str(err)
        elif action.nargs != 0 and not isinstance(value, str):
            why = f"is {value!r}, not a string"
        if why:
            raise UsageError(f"{path} is damaged or was edited: its {flag} {why}; use the file the stage wrote")
    return config


