"""Fuzz tests, fast enough for CI (well under a minute in all):

- every numeric flag of train.py, search.py and retrain.py with NaN, inf, 0, negative, huge and malformed values:
  refused at parse time with one line and exit status 2, or accepted inside the flag's documented range;
- a few hundred truncated, bit-flipped and hand-edited supernet checkpoints through files.load_checkpoint and
  files.check_checkpoint in-process: each one is a one-line UsageError or a checkpoint that passes every check,
  never another exception; and a handful of them through search.py: exit 2, one line, nothing written.

In the full tier. The checkpoints are those of the session's tiny run (conftest.tiny_run), copied before any edit.
"""

import argparse
import io
import math
import os

import numpy as np
import pytest
import torch
from test_errors import assert_user_error
from test_scripts import run

import cli
import files
import retrain
import search
import train

pytestmark = pytest.mark.full

# the stage parsers, and what each needs besides the flag under test
PARSERS = {"train.py": (train.p, []), "search.py": (search.p, ["--ckpt", "x.pt"]), "retrain.py": (retrain.p, [])}
HUGE_INT, HUGE_FLOAT = str(10**30), "1e300"
VALUES = ["nan", "-nan", "inf", "-inf", "1e400", "0", "-1", "-0.5", HUGE_INT, HUGE_FLOAT, "abc", "", "1e3", "0x10"]


def numeric_flags(parser):
    return [a for a in parser._actions if hasattr(a.type, "kind")]


def parse(parser, extra, flag, text, capsys):
    """(accepted value or None, the stderr lines when refused)."""
    try:
        value = getattr(
            parser.parse_args([*extra, flag, text]), [a for a in parser._actions if flag in a.option_strings][0].dest
        )
        return value, []
    except SystemExit as exit:
        assert exit.code == 2, (flag, text, exit.code)
        return None, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def in_range(action, text):
    """What the flag's documented bounds say about `text` (kind, finite, minimum <= value <= maximum)."""
    try:
        value = action.type.kind(text)
    except (ValueError, OverflowError):
        return False
    finite = math.isfinite(value) if isinstance(value, float) else True
    return finite and action.type.minimum <= value and (action.type.maximum is None or value <= action.type.maximum)


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_every_numeric_flag(script, capsys):
    parser, extra = PARSERS[script]
    assert not [a.dest for a in parser._actions if a.type in (int, float)], "a numeric flag without cli.number"
    flags = numeric_flags(parser)
    assert len(flags) >= 12
    for action in flags:
        flag, kind = action.option_strings[0], action.type.kind
        assert kind is float or action.type.maximum is not None, f"{flag}: an int flag needs a ceiling"
        lo, hi = action.type.minimum, action.type.maximum
        boundary = [str(lo), str(hi)] if hi is not None else [str(lo)]
        beyond = [str(lo - 1) if kind is int else str(lo - 0.5)] + ([str(hi + 1)] if hi is not None else [])
        for text in VALUES + boundary + beyond:
            value, err = parse(parser, extra, flag, text, capsys)
            if value is not None:
                assert in_range(action, text) and type(value) is kind, (flag, text, value)
                assert not (isinstance(value, float) and not math.isfinite(value)), (flag, text)
                continue
            assert not in_range(action, text), (flag, text, err)  # refused only what the bounds exclude
            assert len(err) == 1 and flag in err[0] and "Traceback" not in err[0], (flag, text, err)
        for text in ("nan", "inf", "-inf", HUGE_INT if kind is int else "1e400"):  # always refused, whatever the flag
            assert parse(parser, extra, flag, text, capsys)[0] is None, (flag, text)
        for text in boundary:  # the documented bounds themselves are accepted
            assert parse(parser, extra, flag, text, capsys)[0] is not None, (flag, text)


def test_flags_named_in_the_reliability_issue(capsys):
    refused = {
        "train.py": [("--momentum", "nan"), ("--label-smoothing", "1.01"), ("--seed", "-1"), ("--subset", "0"),
                     ("--label-classes", "0"), ("--label-classes", "1"), ("--image-size", "0"), ("--lr", "inf")],
        "search.py": [("--mutation-prob", "1.5"), ("--seed", "-3"), ("--population", HUGE_INT)],
        "retrain.py": [("--drop-path", "inf"), ("--dropout", "nan"), ("--momentum", "1.5"), ("--subset", "0")],
    }  # fmt: skip
    accepted = {
        "train.py": [("--keep-every", "0"), ("--grad-clip", "0"), ("--label-classes", "2")],
        "search.py": [("--eval-images", "0"), ("--mutation-prob", "1")],
        "retrain.py": [("--cutout", "0"), ("--warmup-epochs", "0")],
    }
    for script, cases in refused.items():
        for flag, text in cases:
            assert parse(*PARSERS[script], flag, text, capsys)[0] is None, (script, flag, text)
    for script, cases in accepted.items():
        for flag, text in cases:
            assert parse(*PARSERS[script], flag, text, capsys)[0] is not None, (script, flag, text)
    ns = train.p.parse_args([])
    assert ns.subset == 0 and ns.label_classes == 0  # left out, they still mean all images and the dataset's classes


def test_numeric_flags_through_the_command_line(tmp_path):
    for script, args in (("train.py", ["--wd", "inf"]), ("retrain.py", ["--cutout", HUGE_INT])):
        assert_user_error(run(script, *args, "--out", tmp_path / "x", check=False), args[0])
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------
# Checkpoint bytes.
@pytest.fixture
def supernet_pt(tiny_run):
    return tiny_run[0] / "supernet.pt"


def mutations(raw: bytes, ckpt: dict):
    """(name, bytes) of ~300 damaged files: truncations, bit flips, byte smears, garbage, and edited fields."""
    rng = np.random.default_rng(0)
    n = len(raw)
    for cut in sorted(set(np.linspace(0, n - 1, 80).astype(int).tolist() + [n - 1, n - 22, n - 100, 1, 2])):
        yield f"truncated at {cut}", raw[:cut]
    for k in range(140):
        pos, bit = int(rng.integers(n)), int(rng.integers(8))
        b = bytearray(raw)
        b[pos] ^= 1 << bit
        yield f"bit {bit} of byte {pos} flipped", bytes(b)
    for k in range(30):
        b = bytearray(raw)
        start = int(rng.integers(n - 64))
        b[start : start + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        yield f"64 bytes at {start} smeared", bytes(b)
    yield "hello", b"hello"
    yield "0x80", b"\x80"
    yield "text", b"root:x:0:0:root:/root:/bin/bash\n" * 40
    yield "zeros", bytes(4096)
    yield "random", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    edits = {
        "supernet_args": ["nb201", [1], None, {"space": 1}, {**ckpt["supernet_args"], "layers": 10**9}],
        "model": [[1, 2], "w", {}, {"a": "b"}, {"x": torch.zeros(2).to_sparse()}, torch.zeros(3)],
        "w0": ["supernet_init.pt", None, {"file": "/etc/passwd", "fingerprint": ckpt["w0"]["fingerprint"]}, {"file": 1}],
        "epoch": [-1, "3", 2.5, True, None],
        "stage": [None, 1, "init", "retrain"],
        "rng": ["x", {"path": torch.zeros(3)}],
        "grad_holders": ["abc", [1], ["no.such.param"]],
        "optimizer": [[], {"state": 1}, {"state": {}, "param_groups": [{"params": ["a"]}]}],
        "config": [[], "x"],
        "totals": ["x", torch.zeros(3)],
        "batch": [-2, "1"],
    }
    for key, values in edits.items():
        for v in values:
            buf = io.BytesIO()
            torch.save({**ckpt, key: v}, buf)
            yield f"{key} = {str(v)[:40]}", buf.getvalue()
        buf = io.BytesIO()
        torch.save({k: x for k, x in ckpt.items() if k != key}, buf)
        yield f"{key} deleted", buf.getvalue()
    for obj in ([1, 2], "text", 3, {1: 2}):
        buf = io.BytesIO()
        torch.save(obj, buf)
        yield f"a {type(obj).__name__} saved", buf.getvalue()


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
def test_checkpoint_fuzz(supernet_pt, tmp_path):
    raw = supernet_pt.read_bytes()
    ckpt = files.check_checkpoint(files.load_checkpoint(str(supernet_pt)), str(supernet_pt), "train")
    outcomes, unreadable = {"refused": 0, "passed": 0}, {}
    path = str(tmp_path / "mutant.pt")
    for name, data in mutations(raw, ckpt):
        with open(path, "wb") as f:
            f.write(data)
        stage = "load"
        try:
            loaded = files.load_checkpoint(path)
            stage = "check"
            files.check_checkpoint(loaded, path, "train")
            outcomes["passed"] += 1  # e.g. a flipped bit inside a weight, an optional field deleted: still valid
            assert " = " not in name and not name.startswith(GARBAGE), name
        except cli.UsageError as err:
            msg = str(err)
            assert msg and "\n" not in msg and path in msg, (name, msg)
            outcomes["refused"] += 1
            if stage == "load":  # unreadable bytes: search.py refuses those at once today
                unreadable.setdefault(name.split()[0], data)
    assert sum(outcomes.values()) >= 300 and outcomes["refused"] >= 150, outcomes
    assert {"truncated", "bit", "64", "hello"} <= set(unreadable), sorted(unreadable)
    # a handful through search.py itself: exit 2, one line, nothing written beside them
    for kind in ("truncated", "bit", "64", "hello"):
        (tmp_path / f"{kind}.pt").write_bytes(unreadable[kind])
    before = sorted(os.listdir(tmp_path))
    for kind in ("truncated", "bit", "64", "hello"):
        assert_user_error(run("search.py", "--ckpt", tmp_path / f"{kind}.pt", check=False), f"{kind}.pt")
    assert sorted(os.listdir(tmp_path)) == before


GARBAGE = ("truncated", "hello", "0x80", "text", "zeros", "random", "a ")


def test_parse_helper_sees_the_parsed_value():
    # guard for the fuzz above: parse() returns the value argparse stored, so an accepted NaN would show as NaN
    p = cli.Parser(prog="t")
    p.add_argument("--x", type=cli.number(float, 0))
    assert p.parse_args(["--x", "2.5"]).x == 2.5
    with pytest.raises(argparse.ArgumentTypeError):
        cli.number(float, 0)("nan")


HAND_EDITS = {
    "supernet_args a string": ("supernet_args", "nb201"),
    "model a list": ("model", [1, 2]),
    "w0 a string": ("w0", "supernet_init.pt"),
    "w0 absolute": ("w0", {"file": "/etc/passwd", "fingerprint": "0" * 64}),
    "w0 with ..": ("w0", {"file": "../supernet_init.pt", "fingerprint": "0" * 64}),
    "huge layers": ("supernet_args", {"space": "nb201", "channels": 4, "layers": 10**9, "num_classes": 5}),
}


@pytest.mark.parametrize("edit", sorted(HAND_EDITS))
def test_hand_edited_checkpoints_through_search_and_train(supernet_pt, tmp_path, edit):
    """search.py --ckpt and train.py --resume on a hand-edited supernet.pt: exit 2, one line naming the field, no
    file read from the path the checkpoint names, nothing written or removed."""
    import shutil

    key, value = HAND_EDITS[edit]
    run_dir = tmp_path / "run"
    shutil.copytree(supernet_pt.parent, run_dir)
    ckpt = torch.load(supernet_pt, weights_only=True)
    torch.save({**ckpt, key: value}, run_dir / "supernet.pt")
    before = {p: (run_dir / p).read_bytes() for p in os.listdir(run_dir)}
    assert_user_error(run("search.py", "--ckpt", run_dir / "supernet.pt", check=False), "supernet.pt", repr(key))
    assert_user_error(run("train.py", "--resume", "--out", run_dir, check=False), "supernet.pt", repr(key))
    assert {p: (run_dir / p).read_bytes() for p in os.listdir(run_dir)} == before
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_accuracy_fitness_never_downloads_into_the_checkpoints_data_path(supernet_pt, tmp_path):
    """--fitness accuracy reads the images from --data, else from the path in the checkpoint's config; that path is
    only read from: nothing is created (or downloaded into) there."""
    import shutil

    run_dir, evil, mine = tmp_path / "run", tmp_path / "evil", tmp_path / "mine"
    shutil.copytree(supernet_pt.parent, run_dir)
    ckpt = torch.load(supernet_pt, weights_only=True)
    edited = {**ckpt["config"], "dataset": "cifar10", "image_size": None, "data": str(evil)}
    torch.save({**ckpt, "config": edited}, run_dir / "supernet.pt")
    res = run(
        "search.py", "--ckpt", run_dir / "supernet.pt", "--fitness", "accuracy", "--data", mine, "--population", 4,
        "--generations", 1, "--out", tmp_path / "s.json", check=False,
    )  # fmt: skip
    assert_user_error(res, str(mine))  # cifar10 is not under --data, and there is no network to download it
    assert not evil.exists() and not (tmp_path / "s.json").exists()
    flags = ["--fitness", "accuracy", "--population", 4, "--generations", 1, "--out", tmp_path / "s.json"]
    res = run("search.py", "--ckpt", run_dir / "supernet.pt", *flags, check=False)  # no --data: the run's path
    assert_user_error(res, str(evil), "pass --data DIR")  # read there, not found, no download tried
    assert not evil.exists() and not (tmp_path / "s.json").exists()
    # a config value its own flag would refuse is one line too
    torch.save({**ckpt, "config": {**ckpt["config"], "fake_images": 10**12}}, run_dir / "supernet.pt")
    flags = ["--fitness", "accuracy", "--out", tmp_path / "s.json"]
    res = run("search.py", "--ckpt", run_dir / "supernet.pt", *flags, check=False)
    assert_user_error(res, "--fake-images")
