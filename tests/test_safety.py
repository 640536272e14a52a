"""Nothing already on disk is lost: --force replaces only a run directory of the same stage (train.py, retrain.py)."""

import os
import subprocess

from test_errors import assert_user_error
from test_scripts import TINY, run

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
