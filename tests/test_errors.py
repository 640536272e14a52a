"""User mistakes: each is one line on stderr naming the problem and the fix, exit status 2, no traceback."""

import json
import os

import pytest
import torch
from test_scripts import TINY, run


def assert_user_error(res, *words):
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("err") / "run"
    run("train.py", *TINY, "--epochs", 1, "--out", out)
    return out


@pytest.mark.parametrize(
    "args, words",
    [
        (["--space", "foo"], ["invalid choice", "--space"]),
        (["--epochs", "-1"], ["--epochs", ">= 1"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--lr", "abc"], ["--lr"]),
        (["--dataset", "imagenet16-120", "--data", "/nonexistent/dir"], ["--data", "--dataset fake"]),
        (["--dataset", "folder", "--data", "/nonexistent/dir"], ["/nonexistent/dir"]),
        (["--resume", "--out", "/nonexistent/run"], ["nothing to resume"]),
        (["--labels", "true", "--label-classes", "5"], ["--label-classes"]),
        (["--labels", "true", "--label-mode", "redraw"], ["--label-mode"]),
        (["--label-mode", "shuffle", "--label-classes", "5"], ["shuffle", "--label-classes"]),
    ],
)
def test_train_bad_flags(args, words, tmp_path):
    assert_user_error(
        run("train.py", *args, "--out", tmp_path / "x", check=False)
        if "--out" not in args
        else run("train.py", *args, check=False),
        *words,
    )
    assert not (tmp_path / "x").exists() or not os.listdir(tmp_path / "x")  # nothing written


def test_train_missing_cifar_without_network(tmp_path):
    # no CIFAR-10 under --data and no network here: one line naming the three ways out
    res = run("train.py", "--data", tmp_path / "data", "--out", tmp_path / "x", check=False)
    assert_user_error(res, "--data", "--dataset folder", "--dataset fake")


def test_train_folder_with_wrong_layout(tmp_path):
    (tmp_path / "imgs" / "cat").mkdir(parents=True)  # no train/ and test/
    assert_user_error(
        run("train.py", "--dataset", "folder", "--data", tmp_path / "imgs", "--out", tmp_path / "x", check=False), "train"
    )


def test_existing_run_is_never_overwritten(run_dir):
    before = (run_dir / "supernet.pt").read_bytes()
    assert_user_error(run("train.py", *TINY, "--epochs", 1, "--out", run_dir, check=False), "--resume", "--force")
    assert (run_dir / "supernet.pt").read_bytes() == before


def test_resume_with_a_different_method_flag(run_dir):
    assert_user_error(run("train.py", "--resume", "--out", run_dir, "--lr", "0.5", check=False), "--lr", "differs")


def test_search_bad_inputs(run_dir, tmp_path):
    ckpt = run_dir / "supernet.pt"
    assert_user_error(run("search.py", "--ckpt", tmp_path / "missing.pt", check=False), "does not exist")
    # truncated checkpoint
    (tmp_path / "trunc.pt").write_bytes(ckpt.read_bytes()[:5000])
    assert_user_error(run("search.py", "--ckpt", tmp_path / "trunc.pt", check=False), "truncated or corrupt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    assert_user_error(run("search.py", "--ckpt", tmp_path / "junk.pt", check=False), "not a checkpoint file")
    # W0 passed where the trained checkpoint belongs
    assert_user_error(run("search.py", "--ckpt", run_dir / "supernet_init.pt", check=False), "not a supernet checkpoint")
    # a W0 from another run (other seed): the fingerprint does not match
    other = tmp_path / "other"
    run("train.py", *TINY, "--epochs", 1, "--seed", 1, "--out", other)
    assert_user_error(
        run("search.py", "--ckpt", ckpt, "--w0", other / "supernet_init.pt", "--out", tmp_path / "s.json", check=False),
        "not the W0",
    )
    # a checkpoint of another shape than it claims
    bad = torch.load(ckpt, weights_only=True)
    bad["supernet_args"] = dict(bad["supernet_args"], channels=8)
    torch.save(bad, tmp_path / "shape.pt")
    assert_user_error(run("search.py", "--ckpt", tmp_path / "shape.pt", check=False), "does not hold the weights")
    # a checkpoint of another search space
    bad["supernet_args"] = dict(bad["supernet_args"], channels=4, space="foo")
    torch.save(bad, tmp_path / "space.pt")
    assert_user_error(run("search.py", "--ckpt", tmp_path / "space.pt", check=False), "'foo' supernet")
    # resuming train.py from a checkpoint that is not a complete train.py checkpoint
    (tmp_path / "r").mkdir()
    torch.save({"stage": "train", "model": {}}, tmp_path / "r" / "supernet.pt")
    assert_user_error(run("train.py", "--resume", "--out", tmp_path / "r", check=False), "not a complete train.py checkpoint")
    # a pickle that tries to run code is refused by weights_only=True
    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    res = run("search.py", "--ckpt", tmp_path / "evil.pt", check=False)
    assert_user_error(res, "refused to load")
    assert not (tmp_path / "pwned").exists()


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.path.join(os.getcwd(), 'pwned')}",))


def test_search_bad_benchmark_and_resume_file(run_dir, tmp_path):
    ckpt = run_dir / "supernet.pt"
    (tmp_path / "b.csv").write_text("Foo,Bar\n1,2\n")
    assert_user_error(
        run("search.py", "--ckpt", ckpt, "--benchmark", tmp_path / "b.csv", "--out", tmp_path / "s.json", check=False),
        "ArchitectureString",
    )
    (tmp_path / "c.csv").write_text("CIFAR10TestAccuracy200Epochs,ArchitectureString\n90.0,|conv~0|+|x|\n")
    assert_user_error(
        run("search.py", "--ckpt", ckpt, "--benchmark", tmp_path / "c.csv", "--out", tmp_path / "s.json", check=False),
        "line 2",
    )
    # --resume of a search.json that belongs to another checkpoint
    json.dump({"ckpt_fingerprint": "0" * 64, "settings": {}, "evaluated": []}, open(tmp_path / "old.json", "w"))
    assert_user_error(
        run("search.py", "--ckpt", ckpt, "--out", tmp_path / "old.json", "--resume", check=False), "another checkpoint"
    )


def test_retrain_bad_inputs(tmp_path):
    assert_user_error(run("retrain.py", "--arch", "|nor_conv_3x3~0|+|none~0|", check=False), "malformed", "nodes")
    assert_user_error(
        run("retrain.py", "--arch", "|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|", check=False), "unknown op"
    )
    assert_user_error(run("retrain.py", check=False), "--arch", "--ckpt-search")
    assert_user_error(run("retrain.py", "--ckpt-search", tmp_path / "nope.json", check=False), "does not exist")
    (tmp_path / "s.json").write_text("{}")
    assert_user_error(run("retrain.py", "--ckpt-search", tmp_path / "s.json", check=False), "no winner")


def test_non_finite_loss_stops_the_run_before_a_checkpoint(tmp_path):
    res = run("train.py", *TINY, "--epochs", 2, "--lr", "1e30", "--out", tmp_path / "nan", check=False)
    assert res.returncode == 1 and "the loss is not finite" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "nan" / "supernet.pt").exists()  # no NaN weights were checkpointed


MOBILENET_ARCH = ["--space", "mobilenet", "--arch", "2 0 -1 2 2 0 2 4 0 4 4 2 4 2 4 2 0 0 0 2 2"]  # a Table 5 model_id
SEP3_POOL = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)


@pytest.mark.parametrize(
    "args, words",
    [
        # the DARTS auxiliary head needs an 8x8 map at cell 2L//3 (32 px on the cifar network)
        (["--genotype", SEP3_POOL, "--channels", "4", "--layers", "3", "--image-size", "16"], ["16", "auxiliary head"]),
        ([*MOBILENET_ARCH, "--width", "0.125", "--dropout", "1"], ["--dropout"]),
    ],
    ids=["darts-aux-head-too-small", "mobilenet-dropout-1"],
)
def test_retrain_other_spaces_bad_settings(tmp_path, args, words):
    flags = ["--dataset", "fake", "--fake-images", "32", "--workers", "0", "--epochs", "1", "--out", tmp_path / "rt"]
    assert_user_error(run("retrain.py", *args, *flags, check=False), *words)
    assert not (tmp_path / "rt").exists()  # nothing left behind
