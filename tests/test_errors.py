"""User mistakes: each is one line on stderr naming the problem and the fix, exit status 2, no traceback (the full
tier). The scripts run in-process (helpers.call through test_scripts.run); the checks that read a trained run read
the session's tiny run (conftest.tiny_run), the ones that point a command at it get a copy (tiny_run_copy)."""

import json
import os

import pytest
import torch
from test_scripts import TINY, run

import cli
import files
import search
import spaces


def assert_user_error(res, *words):
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


pytestmark = pytest.mark.full


@pytest.fixture
def run_dir(tiny_run):
    return tiny_run[0]


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


def test_existing_run_is_never_overwritten(tiny_run_copy):
    run_dir = tiny_run_copy
    before = (run_dir / "supernet.pt").read_bytes()
    assert_user_error(run("train.py", *TINY, "--epochs", 1, "--out", run_dir, check=False), "--resume", "--force")
    assert (run_dir / "supernet.pt").read_bytes() == before


def test_resume_with_a_different_method_flag(tiny_run_copy):
    run_dir = tiny_run_copy
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
    assert_user_error(res, "the loss is not finite")
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


# ----------------------------------------------------------------------------------------------
# Numbers: NaN, inf and out-of-range values are refused when the flag is parsed (tests/test_fuzz.py has every flag).
@pytest.mark.parametrize(
    "script, args, words",
    [
        ("train.py", ["--momentum", "nan"], ["--momentum", "finite"]),
        ("train.py", ["--label-smoothing", "1.5"], ["--label-smoothing", "<= 1"]),
        ("train.py", ["--seed", "-1"], ["--seed", ">= 0"]),
        ("train.py", ["--subset", "0"], ["--subset", ">= 1"]),
        ("train.py", ["--label-classes", "1"], ["--label-classes", ">= 2"]),
        ("search.py", ["--ckpt", "x.pt", "--mutation-prob", "1.5"], ["--mutation-prob", "<= 1"]),
        ("retrain.py", ["--arch", ""], ["--arch", "empty"]),
    ],
)
def test_numbers_and_empty_strings_fail_at_parse_time(tmp_path, script, args, words):
    assert_user_error(run(script, *args, "--out", tmp_path / "x", check=False), *words)
    assert not (tmp_path / "x").exists()


def test_population_larger_than_the_space_and_image_too_small():
    import spaces as S

    nb201 = S.SPACES["nb201"]
    search.check_population(15625, nb201.gene_choices({}))  # the whole space: possible
    with pytest.raises(cli.UsageError, match="larger than the search space"):
        search.check_population(15626, nb201.gene_choices({}))
    net_args = dict(space="nb201", channels=4, layers=1, num_classes=10)
    with torch.device("meta"):
        net = nb201.supernet(net_args)
    path = nb201.sample_path(torch.Generator().manual_seed(0), net_args)
    spaces.check_image_size(net, 8, path)
    with pytest.raises(cli.UsageError) as e:
        spaces.check_image_size(net, 2, path, what="nb201 supernet")
    assert "--image-size 2 is too small for the nb201 supernet" in str(e.value) and "fits is 3" in str(e.value)


# ----------------------------------------------------------------------------------------------
# Damaged and hand-edited checkpoints: load_checkpoint + check_checkpoint give one line, whatever the file holds.
@pytest.mark.parametrize("raw", [b"hello", b"\x80", b"root:x:0:0:root:/root:/bin/bash\n" * 20, b""])
def test_garbage_checkpoints_are_one_line(tmp_path, raw):
    (tmp_path / "bad.pt").write_bytes(raw)
    before = os.listdir(tmp_path)
    res = run("search.py", "--ckpt", tmp_path / "bad.pt", check=False)
    assert_user_error(res, "bad.pt")
    assert os.listdir(tmp_path) == before  # no search.json written


def edited(ckpt: dict, key: str, value) -> dict:
    out = dict(ckpt)
    if value is DELETE:
        del out[key]
    else:
        out[key] = value
    return out


DELETE = object()


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("supernet_args", "nb201", ["supernet_args", "not a supernet description"]),
        ("model", [1, 2], ["'model'", "not a state_dict"]),
        ("w0", "supernet_init.pt", ["'w0'", "not a W0 reference"]),
        ("epoch", True, ["'epoch'", "not an integer"]),
        ("model", DELETE, ["missing model"]),
        ("stage", "init", ["not a supernet checkpoint", "'init'"]),
    ],
)
def test_edited_checkpoint_fields(run_dir, key, value, words):
    ckpt = files.load_checkpoint(str(run_dir / "supernet.pt"))
    assert files.check_checkpoint(ckpt, "supernet.pt", "train") is ckpt  # the real file passes
    with pytest.raises(cli.UsageError) as e:
        files.check_checkpoint(edited(ckpt, key, value), "supernet.pt", "supernet")
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_checkpoint_references_and_weights(run_dir):
    ckpt = files.load_checkpoint(str(run_dir / "supernet.pt"))
    fp = ckpt["w0"]["fingerprint"]
    for name in ("../../etc/passwd", "/etc/passwd", "", ".."):  # the file never decides where search.py reads
        with pytest.raises(cli.UsageError, match="not a file beside the checkpoint|not a W0 reference"):
            files.check_checkpoint(edited(ckpt, "w0", {"file": name, "fingerprint": fp}), "x.pt", "supernet")
    args = dict(ckpt["supernet_args"])
    for field, value in (("layers", 10**9), ("channels", "4"), ("num_classes", True), ("layers", 0)):
        with pytest.raises(cli.UsageError, match=f"field '{field}'"):
            files.check_checkpoint(edited(ckpt, "supernet_args", {**args, field: value}), "x.pt", "supernet")
    with pytest.raises(cli.UsageError, match="grad_holders names 'nope'"):
        files.check_checkpoint(edited(ckpt, "grad_holders", ["nope"]), "x.pt", "train")
    model = {k: v.clone() for k, v in ckpt["model"].items()}
    name = next(k for k, v in model.items() if v.is_floating_point())
    model[name] = torch.full_like(model[name], float("nan"))
    with pytest.raises(cli.UsageError, match="NaN or inf weights"):
        files.check_checkpoint(edited(ckpt, "model", model), "x.pt", "supernet")
    init = files.load_checkpoint(str(run_dir / "supernet_init.pt"))
    assert files.check_checkpoint(init, "init.pt", "init") is init
    with pytest.raises(cli.UsageError, match="not a W0 file"):
        files.check_checkpoint(ckpt, "supernet.pt", "init")


def test_saved_config_is_checked_against_the_flags(run_dir):
    import train

    config = files.load_checkpoint(str(run_dir / "supernet.pt"))["config"]
    assert files.check_config(config, train.p, "supernet.pt") is config
    for key, value, words in (
        ("epochs", "abc", ["--epochs", "'abc'"]),
        ("momentum", float("nan"), ["--momentum", "finite"]),
        ("space", "foo", ["--space", "'foo'"]),
        ("nesterov", "yes", ["--nesterov", "true or false"]),
        ("lr", -1.0, ["--lr", ">= 0"]),
    ):
        with pytest.raises(cli.UsageError) as e:
            files.check_config({**config, key: value}, train.p, "supernet.pt")
        assert all(w in str(e.value) for w in words), str(e.value)


# ----------------------------------------------------------------------------------------------
# retrain.py inputs: search.json files that are not JSON objects, genotype literals, empty strings.
def test_json_inputs(tmp_path, run_dir):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "bad.json").write_text("{not json")
    cases = {
        str(run_dir / "supernet.pt"): "binary file",
        str(tmp_path): "is a directory",
        str(tmp_path / "none.json"): "does not exist",
        str(tmp_path / "list.json"): "JSON list",
        str(tmp_path / "bad.json"): "not valid JSON",
    }
    for path, words in cases.items():
        with pytest.raises(cli.UsageError, match=words) as e:
            files.load_json(path, "--ckpt-search")
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "change, words",
    [
        (("('sep_conv_3x3', 0)", "({{1}}, 0)"), ["malformed DARTS genotype"]),  # an unhashable literal
        (("('sep_conv_3x3', 1)", "('sep_conv_3x3', True)"), ["True", "input must be 0..1"]),
        (("normal_concat=[2, 3, 4, 5]", "normal_concat=[2.0, 3, 4, 5]"), ["normal_concat"]),
    ],
    ids=["unhashable", "true-as-index", "float-concat"],
)
def test_genotype_literals(change, words, tmp_path):
    text = SEP3_POOL.replace(*change, 1)
    assert text != SEP3_POOL
    res = run("retrain.py", "--genotype", text, "--dataset", "fake", "--out", tmp_path / "rt", check=False)
    assert_user_error(res, *words)
    assert not (tmp_path / "rt").exists()
