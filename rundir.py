"""
BOILERPLATE: a run directory: what a stage wrote into it, its lock, and what --force may remove.

Nothing here is part of the method. Every file a stage writes into its run directory is recorded in the directory's
manifest.json BEFORE it is written (a crash leaves at most a name without its file, never a file of ours that --force
would not recognise). --force removes exactly those files, one by one, and refuses a directory that holds anything
else: a user's file, a symlink, a folder; never '.', the repository or a parent of it, a home directory or a git work
tree, whatever they hold. Paths are resolved (symlinks, '..') before any check. search.py's files can sit anywhere,
so they carry their own mark instead (is_search_output); claim_output decides where search.py may write.

Every run that writes holds its directory's lock (run.lock, an flock released by the kernel however the process
ends) from before it reads or removes anything there; search.py holds an flock on the folder it writes into.
"""

from __future__ import annotations

import json
import os

try:
    import fcntl
except ImportError:  # not on Windows: runs are then not locked
    fcntl = None

import cli
import files
from cli import UsageError

LOCK, MANIFEST = "run.lock", "manifest.json"
CHECKPOINT = {"train": "supernet.pt", "retrain": "retrain.pt"}  # the stage's checkpoint, also its resume marker
STAGE_OF = {marker: stage for stage, marker in CHECKPOINT.items()}
ROOT = os.path.dirname(os.path.abspath(__file__))  # this repository: never a run directory
W0_FILE = "supernet_init.pt"


def read_manifest(out: str) -> dict | None:
    """{"stage": ..., "files": [...]} of a run directory, or None where there is none (or it is not one of ours)."""
    path = os.path.join(out, MANIFEST)
    if not os.path.isfile(path) or os.path.islink(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    ok = isinstance(m, dict) and m.get("stage") in CHECKPOINT and isinstance(m.get("files"), list)
    return m if ok and all(isinstance(n, str) and n == os.path.basename(n) for n in m["files"]) else None


def record_files(out: str, stage: str, names: list[str]) -> None:
    """Add `names` to the manifest BEFORE they are written: a crash leaves at most a name without its file, never a
    file of ours that --force would not recognise."""
    m = read_manifest(out) or {"stage": stage, "files": [MANIFEST, LOCK]}
    new = [n for n in names if n not in m["files"]]
    if new or not os.path.isfile(os.path.join(out, MANIFEST)):
        files.atomic_write_json({"stage": m["stage"], "files": m["files"] + new}, os.path.join(out, MANIFEST))


def own_legacy_run(out: str, stage: str) -> None:
    """A run written before manifests existed, being resumed: its own files (those of its stage's names) recorded."""
    if read_manifest(out) is None:
        names = {"train": ("config.json", "log.jsonl", W0_FILE, "supernet.pt"), "retrain": ("config.json", "log.jsonl", "retrain.pt")}  # noqa: E501
        found = [n for n in os.listdir(out) if n in names[stage] or (stage == "train" and n.startswith("supernet_ep") and n.endswith(".pt"))]  # noqa: E501
        record_files(out, stage, sorted(found))


SEARCH_MARK = "search"  # the "stage" of every search.json; its PNG plots say "rlnas search.py" in their metadata


def is_search_output(path: str) -> bool:
    """Did search.py write this file? Recognised by what it wrote into it (never by its name): a JSON object with
    "stage": "search" (or, written before that mark, its settings, evaluated list and checkpoint fingerprint), or a
    PNG whose metadata names search.py. A symlink never counts."""
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if head.startswith(b"\x89PNG"):
                return b"rlnas search.py" in f.read(1 << 16)
            obj = json.loads((head + f.read()).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(obj, dict) and (obj.get("stage") == SEARCH_MARK or {"settings", "evaluated", "ckpt_fingerprint"} <= set(obj))  # noqa: E501


def _protected(out: str) -> str | None:
    """Why `out` must never be emptied whatever it holds, or None. `out` is a resolved path."""
    here = os.path.realpath(os.getcwd())
    inside = lambda a, b: a == b or a.startswith(b.rstrip(os.sep) + os.sep)  # noqa: E731
    if inside(here, out):
        return "it is the current directory or holds it"
    if inside(ROOT, out):
        return "it is this repository or a parent of it"
    if out in {os.path.realpath(os.path.expanduser("~")), os.path.realpath(os.sep)}:
        return "it is a home or root directory"
    if os.path.lexists(os.path.join(out, ".git")):
        return "it is a git repository"
    return None


def _foreign(out: str, stage: str) -> list[str]:
    """Entries of the run directory `out` that --force may not remove: anything but a regular file its manifest lists
    (or the temp file of one), or a file search.py wrote (its mark)."""
    m = read_manifest(out)
    own = set(m["files"]) if m and m["stage"] == stage else set()
    ours = lambda n: n.removesuffix(".tmp") in own or is_search_output(os.path.join(out, n))  # noqa: E731
    return sorted(n for n in os.listdir(out) if os.path.islink(os.path.join(out, n)) or not os.path.isfile(os.path.join(out, n)) or not ours(n))  # noqa: E501


def _contents(out: str) -> list[str]:
    """What a run directory holds besides its bookkeeping (lock, manifest) and the temp files of interrupted writes."""
    return [n for n in os.listdir(out) if n not in (LOCK, MANIFEST) and not n.endswith(".tmp")]


def lock_run_dir(out: str) -> None:
    """Take the run directory's lock (master only: the other ranks of a torchrun belong to the same run), or fail in
    one line if another run holds it. flock is released by the kernel when the process ends, however it ends
    (SIGKILL included), so a crashed run never leaves a stale lock behind. Every path of a run that writes takes it:
    new, --resume, --force, whatever the directory holds."""
    key = ("run", os.path.realpath(out))
    if fcntl is None or not cli.MASTER or key in cli.LOCKS:
        return
    path = os.path.join(out, LOCK)
    if os.path.lexists(path) and (os.path.islink(path) or not os.path.isfile(path)):
        raise UsageError(f"{path} is not the run's lock file (a link, a directory or a device stands there); remove it, or pass --out DIR")  # noqa: E501
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as err:
        raise files.write_error(err, path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(f"{out} is in use by another run (it holds the lock {path}); wait for that run to end, or pass --out DIR") from None  # noqa: E501
    except OSError:  # a file system without locks (some network mounts): run unlocked rather than not at all
        os.close(fd)
        return
    cli.LOCKS[key] = fd


def check_run_dir(out: str, resume: bool, force: bool, marker: str) -> None:
    """Fail early (before any data is read) if --out/--resume/--force do not fit what is on disk; lock an existing
    run directory before anything in it is read or removed. The path is resolved (symlinks, '..') first."""
    stage, real = STAGE_OF[marker], os.path.realpath(out)
    if os.path.exists(real) and not os.path.isdir(real):
        raise UsageError(f"--out {out} is a file, not a directory; pass --out DIR for the run directory")
    # a run directory (its manifest), or a run to resume (config.json: one written before manifests, or stopped early)
    is_run = os.path.isdir(real) and (read_manifest(real) is not None or (resume and os.path.isfile(os.path.join(real, "config.json"))))  # noqa: E501
    if is_run:
        files.check_writable(out, "--out", directory=True)
        lock_run_dir(out)  # before anything in it is read or removed: another run may be writing there
    if resume:
        if not os.path.isdir(real):
            raise UsageError(f"nothing to resume: {out} does not exist; drop --resume to start a new run")
        m = read_manifest(real)
        if m is not None and m["stage"] != stage:
            raise UsageError(f"nothing to resume: {out} is a {m['stage']}.py run, not a {stage}.py one; pass --out DIR")
        if not os.path.isfile(os.path.join(real, marker)) and not os.path.isfile(os.path.join(real, "config.json")):
            if not _contents(real):  # the run stopped before writing anything: a new run may start in it
                why = "holds only temp files" if os.listdir(real) else "is empty"
                raise UsageError(f"nothing to resume: {out} {why}; drop --resume to start the run anew in it")
            raise UsageError(f"nothing to resume: {out} holds neither {marker} nor config.json, so it is not a {stage}.py run; "  # noqa: E501
                             "pass --out DIR for a new run")  # fmt: skip
    elif os.path.isdir(real) and _contents(real):
        if not force:
            raise UsageError(f"run directory {out} already exists: pass --resume to continue it, --force to overwrite it, or --out DIR for a new run")  # noqa: E501
        why = _force_refused(real, stage)
        if why:
            raise UsageError(f"--force refused: {out} is not a {stage}.py run directory ({why}); pass --out DIR")
    files.check_writable(out, "--out", directory=True)  # a read-only place fails now, not after the data is read


def _force_refused(real: str, stage: str) -> str | None:
    """Why --force may not replace the run directory `real`, or None."""
    why = _protected(real)
    m = read_manifest(real)
    if why is None and (m is None or m["stage"] != stage):
        theirs = f"it is a {m['stage']}.py run" if m else "it has no manifest.json or config.json written by it"
        why = f"{theirs}; --force replaces only the files {stage}.py recorded as its own"
    foreign = _foreign(real, stage) if why is None else []
    if foreign:
        why = f"it holds {cli.shorten(foreign[0], 80)!r}, which {stage}.py did not write"
    return why


def make_run_dir(out: str, force: bool, stage: str) -> None:
    """Create a new run directory (master only), lock it, record it as the stage's; with --force the files the old
    run recorded go first, one by one, once the lock is held (check_run_dir has refused anything else; never
    shutil.rmtree, and never a folder: a race with a user's file appearing meanwhile cannot take it along)."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise files.write_error(err, out) from None
    real = os.path.realpath(out)
    lock_run_dir(out)
    if _contents(real) and not force:  # another run created it meanwhile and has finished (it held the lock)
        raise UsageError(f"run directory {out} was created meanwhile by another run; pass --out DIR for a new run")
    if force and _contents(real):
        why = _force_refused(real, stage)
        if why:
            raise UsageError(f"--force refused: {out} changed meanwhile ({why}); pass --out DIR")
        try:
            for name in os.listdir(real):
                if name != LOCK:
                    os.remove(os.path.join(real, name))
        except OSError as err:
            raise files.write_error(err, out) from None
    record_files(real, stage, [])


def claim_output(out: str, resume: bool, force: bool) -> None:
    """search.py: may it write `out`? A new file, or (--resume, --force) a file search.py wrote itself, nothing else,
    whatever --force says. Then the lock of its directory (an flock on the directory itself: no file is created, and
    a train.py run writing there is not disturbed): a second search writing there fails in one line."""
    real = os.path.realpath(out)
    if os.path.isdir(real):
        raise UsageError(f"--out {out} is a directory; pass a file name, e.g. {os.path.join(out, 'search.json')}")
    if os.path.lexists(out) and not (resume or force):
        raise UsageError(f"{out} already exists: pass --resume to continue that search, --force to overwrite it, or --out FILE")  # noqa: E501
    if os.path.lexists(out) and not is_search_output(out):
        raise UsageError(f"{out} was not written by search.py (it is not a search result); --force and --resume replace only "
                         "search.py's own files: pass another --out FILE")  # fmt: skip
    files.check_writable(out, "--out")
    folder = os.path.dirname(real)
    os.makedirs(folder, exist_ok=True)
    if fcntl is None or ("dir", folder) in cli.LOCKS:
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(f"another search.py is writing in {os.path.dirname(out) or '.'}; wait for it to end, or pass --out FILE elsewhere") from None  # noqa: E501
    except OSError:
        os.close(fd)
        return
    cli.LOCKS["dir", folder] = fd
