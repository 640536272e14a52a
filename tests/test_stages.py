"""The stage scripts' interface: --help reads the method first and shows the recipes; retrain.py's defaults follow
the space (the MobileNet and DARTS-ImageNet networks at 224 px) and the search run (its dataset, never its paths).
In the full tier."""

import json
import re

import numpy as np
import pytest
from test_scripts import run

import cli

pytestmark = pytest.mark.full

NB201_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
TABLE5_ARCH = "2 0 -1 2 2 0 2 4 0 4 4 2 4 2 4 2 0 0 0 2 2"  # RLNAS's MobileNet model_id (paper Table 5)
GROUPS = ["method: ", "data", "run and resume", "speed", "distributed"]


@pytest.mark.parametrize("script", ["train", "retrain"])
def test_help_reads_the_method_first_and_shows_each_recipe(script, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag: the recipe list is not wrapped
    module = __import__(script)
    text = module.p.format_help()
    titles = [line[:-1] for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    titles = [t for t in titles if t not in ("options", "usage")]
    order = [next(i for i, g in enumerate(GROUPS) if t.startswith(g)) for t in titles]
    assert order == sorted(order) and set(order) == set(range(len(GROUPS))), titles
    assert titles[0].startswith("method: ")
    helps = {a.dest: a.help for a in module.p._actions}
    expected = {"train": "nb201 0.025, darts-cifar 0.025, darts-imagenet 0.1, mobilenet 0.25",
                "retrain": "nb201 0.1, darts-cifar 0.025, darts-imagenet 0.5, mobilenet 0.5"}[script]  # fmt: skip
    assert helps["lr"].endswith(f"(recipe: {expected})") and f"(recipe: {expected})" in text.replace("\n", " ")
    assert "(recipe: nb201 on, darts-cifar off" in helps["nesterov"]
    for key in {key for recipe in module.RECIPES.values() for key in recipe}:  # every flag a recipe fills says so
        assert "(recipe: " in helps[key], key


def test_show_recipes_names_a_space_with_one_variant_by_the_space_alone():
    p = cli.Parser()
    p.add_argument("--lr", default=None, help="lr")
    p.add_argument("--seed", default=0, help="seed")
    p.show_recipes({("a", "cifar"): {"lr": 0.1}, ("b", "cifar"): {"lr": 1e-4}, ("b", "imagenet"): {"lr": 0.5}})
    helps = {a.dest: a.help for a in p._actions}
    assert helps["lr"] == "lr (recipe: a 0.1, b-cifar 0.0001, b-imagenet 0.5)" and helps["seed"] == "seed"


def counts(stdout: str) -> tuple[int, float, int]:
    """(parameters, M multiply-adds, image side) from a --count-only line."""
    m = re.search(r": ([\d,]+) parameters .*\| ([\d.]+)M multiply-adds at (\d+)x\d+", stdout)
    return int(m[1].replace(",", "")), float(m[2]), int(m[3])


def test_mobilenet_retrain_defaults_to_the_imagenet_network():
    res = run("retrain.py", "--space", "mobilenet", "--arch", TABLE5_ARCH, "--count-only")
    params, madds, size = counts(res.stdout)
    assert "mobilenet imagenet network" in res.stdout and "'num_classes': 1000" in res.stdout
    assert round(params / 1e6, 1) == 5.3 and abs(madds / 473 - 1) < 0.002 and size == 224  # paper Table 5: 5.3M, 473M
    assert "auxiliary" not in res.stdout
    # without --space, the space is the one whose notation reads the string (a model_id is 21 integers)
    assert counts(run("retrain.py", "--arch", TABLE5_ARCH, "--count-only").stdout) == (params, madds, size)
    res = run("retrain.py", "--arch", "1 2 3", "--count-only", check=False)  # no notation reads it: one line
    assert res.returncode == 2 and "--space" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_darts_imagenet_variant_defaults_to_imagenet():
    from test_darts import IMAGENET_600M

    res = run("retrain.py", "--space", "darts", "--variant", "imagenet", "--genotype", IMAGENET_600M, "--count-only")
    assert "darts imagenet network" in res.stdout and "'num_classes': 1000" in res.stdout
    assert counts(res.stdout)[2] == 224 and "without the auxiliary head" in res.stdout  # DARTS has one
    res = run("retrain.py", "--genotype", IMAGENET_600M, "--count-only")  # no variant: the CIFAR network
    assert "darts cifar network" in res.stdout and counts(res.stdout)[2] == 32


def test_nb201_retrain_never_mentions_an_auxiliary_head(tmp_path):
    res = run("retrain.py", "--arch", NB201_ARCH, "--count-only")
    assert "parameters" in res.stdout and "auxiliary" not in res.stdout
    flags = "--dataset fake --fake-images 32 --image-size 8 --channels 4 --layers 1 --batch-size 16 --workers 0".split()
    res = run("retrain.py", "--arch", NB201_ARCH, *flags, "--epochs", 1, "--out", tmp_path / "rt")
    assert "parameters" in res.stdout and "auxiliary" not in res.stdout


def search_run(tmp_path, dataset: str, data: str):
    """A supernet run directory (config.json only: retrain.py reads nothing else of it) and its search.json."""
    sn = tmp_path / "sn"
    sn.mkdir()
    (sn / "config.json").write_text(json.dumps({"dataset": dataset, "data": data, "space": "nb201"}))
    found = {"ckpt": str(sn / "supernet.pt"), "supernet_args": {"space": "nb201"}, "winner": {"arch": NB201_ARCH}}
    (sn / "search.json").write_text(json.dumps(found))
    return sn / "search.json"


def test_ckpt_search_takes_the_dataset_of_the_run_and_says_so(tmp_path):
    found = search_run(tmp_path, "cifar100", str(tmp_path / "from-file"))
    res = run("retrain.py", "--ckpt-search", found, "--count-only")
    assert "--dataset cifar100" in res.stdout and "'num_classes': 100" in res.stdout
    res = run("retrain.py", "--ckpt-search", found, "--dataset", "cifar10", "--count-only")  # a flag overrides it
    assert "--dataset cifar100" not in res.stdout and "'num_classes': 10}" in res.stdout
    # a search.json whose supernet run has no config.json: the space's default, said in one line
    (tmp_path / "sn" / "config.json").unlink()
    res = run("retrain.py", "--ckpt-search", found, "--count-only")
    assert "no config.json" in res.stdout and "'num_classes': 10}" in res.stdout
    assert not (tmp_path / "from-file").exists()


def test_ckpt_search_reads_the_runs_data_but_never_downloads_there(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / split / c / f"{i}.png"
                )
    flags = "--image-size 8 --channels 4 --layers 1 --batch-size 8 --workers 0 --epochs 1".split()
    # without --data: the images are read where the supernet run read them, and the line says so
    found = search_run(tmp_path, "folder", str(tmp_path / "imgs"))
    res = run("retrain.py", "--ckpt-search", found, *flags, "--out", tmp_path / "rt")
    assert "--dataset folder" in res.stdout and f"read from {tmp_path / 'imgs'}" in res.stdout
    assert "8 train / 8 test images" in res.stdout and "top-1" in res.stdout
    assert json.load(open(tmp_path / "rt" / "config.json"))["data"] == str(tmp_path / "imgs")
    # a resumed run reads where it read before, without --data
    (tmp_path / "imgs").rename(tmp_path / "moved")  # proves it is read: a resume without --data now fails
    res = run("retrain.py", "--resume", "--out", tmp_path / "rt", check=False)
    assert res.returncode == 2 and f"{tmp_path / 'imgs'}" in res.stderr and "--data" in res.stderr
    # a CIFAR run whose data is gone: one line asking for --data; nothing is downloaded into the run's path
    (tmp_path / "c").mkdir()
    found, elsewhere = search_run(tmp_path / "c", "cifar10", str(tmp_path / "elsewhere")), tmp_path / "elsewhere"
    res = run("retrain.py", "--ckpt-search", found, *flags[2:], "--out", tmp_path / "rt3", check=False)
    assert res.returncode == 2 and "pass --data DIR" in res.stderr and str(elsewhere) in res.stderr
    assert not elsewhere.exists() and not (tmp_path / "rt3").exists()
