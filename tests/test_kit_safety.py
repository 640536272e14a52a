"""The course kit never loses work: make_assignment.py --force and --grade (lost-work cases 2 and 12; the full tier).

Kit-only like test_assignments.py (make_assignment.KIT_ONLY): it needs the reference repository, so a student copy
does not hold it. Each case: the command, its exit status, one line on stderr, the folders before and after.
"""

import os
import random
import re
import shutil
import subprocess
import time

import pytest
from helpers import call
from test_lost_work import listing, one_line
from test_scripts import ROOT

import make_assignment
import rundir

pytestmark = pytest.mark.full


# ----------------------------------------------------------------------------------------------
# 2, 12: the course kit. make_assignment.py --force renews only a student copy it wrote, and there only the files it
# recorded (student_copy.json), unchanged since; --grade stops a student's endless loop at a time limit
KIT = make_assignment


def kit_copy(out, numbers=range(1, 7)):
    """A student copy written by the kit (it only reads the repository)."""
    call("make_assignment.py", "--out", out, "--exercises", ",".join(map(str, numbers)))
    return out


def kit_files(numbers) -> dict:
    """{path: bytes}: what the kit writes into a copy with these exercises removed."""
    return KIT.student_files(ROOT, set(numbers))[0]


def git(*args):
    subprocess.run(["git", "-c", "user.name=kit", "-c", "user.email=kit@example.com", *map(str, args)], check=True,
                   capture_output=True)  # fmt: skip


@pytest.fixture
def kit_repo(tmp_path, monkeypatch):
    """A temporary copy of the repository that the kit takes for its own: never the real one (a refusal that did not
    happen would delete this copy)."""
    repo = tmp_path / "repo"
    for rel in KIT.repository_files(ROOT):
        os.makedirs((repo / rel).parent, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), repo / rel)
    monkeypatch.setattr(KIT, "ROOT", os.path.realpath(repo))
    monkeypatch.setattr(rundir, "ROOT", os.path.realpath(repo))
    return repo


def test_kit_force_refuses_another_git_clone(tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    shutil.copy2(os.path.join(ROOT, "make_assignment.py"), origin)  # the one thing the kit used to look for
    (origin / "README.md").write_text("another project\n")
    git("init", "-q", origin)
    git("-C", origin, "add", ".")
    git("-C", origin, "commit", "-q", "-m", "first")
    git("clone", "-q", origin, tmp_path / "clone")
    (tmp_path / "clone" / "draft.txt").write_text("uncommitted work\n")
    kit_copy(tmp_path / "versioned")  # a student copy its student put under git: a work tree, whatever it holds
    git("init", "-q", tmp_path / "versioned")
    before = listing(tmp_path, folders=True)
    for name in ("clone", "versioned"):
        res = call("make_assignment.py", "--out", tmp_path / name, "--force", check=False)
        one_line(res, f"--out {tmp_path / name} already exists and is not a student copy", "git repository", "another --out")
        assert listing(tmp_path, folders=True) == before


def test_kit_force_refuses_the_repository_its_parents_and_protected_folders(kit_repo, tmp_path, monkeypatch):
    (tmp_path / "up").symlink_to(kit_repo.parent)  # a symlinked parent: up/repo is the repository
    home = kit_copy(tmp_path / "home")  # a home folder and a current folder that are genuine student copies
    here = kit_copy(tmp_path / "here")
    monkeypatch.setenv("HOME", str(home))
    cases = [
        (tmp_path / "up" / "repo", None, ["the repository itself", f"resolves to {os.path.realpath(kit_repo)}"]),
        (kit_repo / "tests" / "..", None, ["the repository itself"]),
        (kit_repo, None, ["the repository itself"]),
        (".", kit_repo, ["the repository itself"]),
        (".", kit_repo / "tests", ["inside the repository"]),
        (kit_repo / "student", None, ["inside the repository"]),
        (tmp_path, None, ["a parent of the repository"]),
        ("..", kit_repo, ["a parent of the repository"]),
        (os.sep, None, ["a parent of the repository"]),
        (".", here, ["the current directory"]),
        (home, None, ["a home or root directory"]),
    ]
    before = listing(tmp_path, folders=True)
    for out, cwd, words in cases:
        for force in (["--force"], []):
            res = call("make_assignment.py", "--out", out, *force, cwd=cwd, check=False)
            one_line(res, *words, "--out")
            assert listing(tmp_path, folders=True) == before, (out, force)


def test_kit_out_that_is_not_a_folder_is_one_line(tmp_path):
    copy = kit_copy(tmp_path / "copy")
    (tmp_path / "file.txt").write_text("a user's file\n")
    (tmp_path / "link").symlink_to(copy)  # a symlink to a genuine student copy
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "fifo")
    before = listing(tmp_path, folders=True)
    for out, words in [(tmp_path / "file.txt", ["is a file, not a folder"]), (tmp_path / "link", ["is a symbolic link"]),
                       (f"{tmp_path / 'link'}/", ["is a symbolic link"]), (tmp_path / "dangling", ["is a symbolic link"]),
                       (tmp_path / "fifo", ["is a FIFO, not a folder"])]:  # fmt: skip
        for force in (["--force"], []):
            t0 = time.time()
            one_line(call("make_assignment.py", "--out", out, *force, check=False), *words, "--out")
            assert time.time() - t0 < 30 and listing(tmp_path, folders=True) == before, out


def test_kit_force_renews_its_own_files_and_keeps_the_students(tmp_path):
    copy = kit_copy(tmp_path / "copy")
    mine = {"notes.txt": b"my notes\n", "mine/plan.md": b"a plan\n", "tests/test_mine.py": b"def test_mine():\n    pass\n",
            "docs/drafts/idea.md": b"an idea\n"}  # fmt: skip
    for rel, data in mine.items():
        os.makedirs((copy / rel).parent, exist_ok=True)
        (copy / rel).write_bytes(data)
    (copy / "empty").mkdir()
    call("make_assignment.py", "--out", copy, "--exercises", "2,5", "--force")
    after = listing(copy, folders=True)
    tool = kit_files({2, 5})
    folders = {folder: ("dir",) for rel in [*tool, *mine, "empty/x"] for folder in KIT.parents(rel)}
    assert after == {**tool, **mine, **folders, "empty": ("dir",), KIT.MANIFEST: after[KIT.MANIFEST]}  # nothing stray
    assert KIT.pending(copy) == {2, 5} and set(KIT.read_manifest(copy)["files"]) == set(tool)
    # a student's change to a file the kit wrote: refused, nothing touched, until it is the kit's again (--restore)
    with open(copy / "angle.py", "a") as f:
        f.write("# my solution of exercise 5\n")
    before = listing(tmp_path, folders=True)
    one_line(call("make_assignment.py", "--out", copy, "--force", check=False), "angle.py, changed since", "move that out")
    assert listing(tmp_path, folders=True) == before
    (copy / "angle.py").write_bytes(tool["angle.py"])
    call("make_assignment.py", "--restore", copy, "--exercises", 5)  # the reference put back by the kit: its file
    call("make_assignment.py", "--out", copy, "--force")
    assert KIT.pending(copy) == set(range(1, 7)) and all((copy / rel).read_bytes() == data for rel, data in mine.items())


def test_kit_force_removes_only_the_empty_folders_it_created(kit_repo, tmp_path):
    copy = kit_copy(tmp_path / "copy")  # from the temporary repository
    (copy / "benchmarks" / "mine.txt").write_text("a student's file in a folder the kit created\n")
    (copy / "results").mkdir()  # a student's empty folder
    before = listing(copy, folders=True)
    shutil.rmtree(kit_repo / "docs")  # the repository no longer has these two folders
    shutil.rmtree(kit_repo / "benchmarks")
    call("make_assignment.py", "--out", copy, "--force")
    gone = {rel for rel in before if rel == "docs" or rel.startswith(("docs/", "benchmarks/"))} - {"benchmarks/mine.txt"}
    kept = {rel: data for rel, data in before.items() if rel not in gone and rel != KIT.MANIFEST}
    assert {rel: data for rel, data in listing(copy, folders=True).items() if rel != KIT.MANIFEST} == kept
    assert kept["benchmarks"] == kept["results"] == ("dir",) and "docs/method.md" in gone


def test_kit_force_property_foreign_files_survive(tmp_path):
    """Student copies mixed with foreign files, symlinks (to files, to folders, dangling), FIFOs and nested folders,
    in random combinations, sometimes with a file or folder of the kit's changed: --force either refuses in one line
    with everything as it was, or renews exactly the kit's files; every foreign entry is byte-identical afterwards,
    and nothing outside the copy changes."""
    rng = random.Random(0)
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "precious.txt").write_text("keep me\n")
    (outside / "dir" / "deep.txt").write_text("deep\n")

    def folder(p):
        (p / "sub").mkdir(parents=True)
        (p / "sub" / "inner.txt").write_text("inner\n")

    foreigners = {
        "notes.txt": lambda p: p.write_text("a user's notes\n"),
        "mine": folder,
        "tests/test_mine.py": lambda p: p.write_text("def test_mine():\n    pass\n"),
        "docs/drafts": folder,
        "tests/__pycache__": lambda p: (p.mkdir(), (p / "x.pyc").write_bytes(b"\0pyc")),
        "link_to_file": lambda p: p.symlink_to(outside / "precious.txt"),
        "tests/link_to_dir": lambda p: p.symlink_to(outside / "dir"),
        "dangling": lambda p: p.symlink_to(tmp_path / "nowhere"),
        "empty": lambda p: p.mkdir(),
        "fifo": lambda p: os.mkfifo(p),
        "student_copy.json.tmp": lambda p: p.write_text("a user's file of an unlucky name\n"),
    }

    def replace(rel, make):
        def change(copy):
            os.rename(copy / rel, copy / f"{rel}.moved")  # the original stays, as a foreign entry
            make(copy / rel)

        return change

    conflicts = {  # each makes --force refuse: it would have to remove or write over what is not the kit's
        "a file edited": lambda copy: open(copy / "angle.py", "a").write("# mine\n"),
        "a file replaced by a link": replace("README.md", lambda p: p.symlink_to(outside / "precious.txt")),
        "a folder replaced by a link": replace("docs", lambda p: p.symlink_to(outside / "dir")),
        "a file replaced by a folder": replace("cli.py", folder),
        "a file replaced by a FIFO": replace("ASSIGNMENTS.md", os.mkfifo),
        "the record edited": lambda copy: (copy / KIT.MANIFEST).write_text('{"stage": "mine"}'),
    }
    outcomes = set()
    for trial in range(10):
        copy = tmp_path / f"copy{trial}"
        old = sorted(rng.sample(range(1, 7), rng.randint(1, 6)))
        new = sorted(rng.sample(range(1, 7), rng.randint(1, 6)))
        kit_copy(copy, old)
        for rel in rng.sample(sorted(foreigners), rng.randint(0, len(foreigners))):
            foreigners[rel](copy / rel)
        conflict = rng.choice([None, None, *sorted(conflicts)])
        if conflict:
            conflicts[conflict](copy)
        before, before_outside = listing(copy, folders=True), listing(outside, folders=True)
        res = call("make_assignment.py", "--out", copy, "--exercises", ",".join(map(str, new)), "--force", check=False)
        after = listing(copy, folders=True)
        if conflict:
            one_line(res, f"--out {copy}", "another --out")
            assert after == before, conflict
        else:
            assert res.returncode == 0, res.stderr
            assert {rel: data for rel, data in after.items() if rel in kit_files(old)} == kit_files(new)
        foreign = {rel: data for rel, data in before.items() if rel not in kit_files(old) and rel != KIT.MANIFEST}
        assert {rel: after.get(rel) for rel in foreign} == foreign  # every foreign entry as it was
        assert set(after) == set(foreign) | set(kit_files(old)) | {KIT.MANIFEST}  # and nothing stray
        assert listing(outside, folders=True) == before_outside
        outcomes.add(conflict)
    assert None in outcomes and len(outcomes) >= 4  # both renewals and refusals were seen


def processes(folder, token) -> list[str]:
    """The live processes working in `folder`, or with `token` on their command line (zombies have neither)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:  # gone meanwhile, or not ours to look at
            continue
        if token in cmdline or KIT.inside(cwd, os.path.realpath(folder)):
            found.append(f"{pid}: {cmdline}")
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the processes left through /proc")
def test_kit_grade_stops_an_endless_loop_at_the_time_limit(tmp_path, monkeypatch):
    copy = kit_copy(tmp_path / "copy", [1])
    started = tmp_path / "started"  # outside the copy: the copy's listing must not change
    loop = ["import subprocess, sys",
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', {str(started)!r}])",
            f"open({str(started)!r}, 'w').close()", "while True:", "    pass"]  # fmt: skip
    text = (copy / "random_labels.py").read_text()
    stub = re.search(r'^( *)raise NotImplementedError\("Exercise 1: .*$', text, re.M)
    (copy / "random_labels.py").write_text(text.replace(stub[0], "\n".join(stub[1] + line for line in loop)))
    monkeypatch.setattr(KIT, "ROOT", os.path.realpath(copy))  # grading in the copy, as its student does
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # the copy's listing stays as it was: no __pycache__ ...
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:benchmark")  # ... and no .benchmarks, if pytest-benchmark is installed
    before = listing(copy, folders=True)
    t0 = time.time()
    res = call("make_assignment.py", "--grade", 1, "--time-limit", 5, check=False)
    one_line(res, "grading exercise 1 stopped at its time limit of 5 s", "--time-limit SECONDS", status=124)
    assert time.time() - t0 < 40 and started.exists()  # the loop ran (and started a process of its own)
    t0 = time.time()
    while processes(copy, str(started)) and time.time() - t0 < 10:  # SIGKILL is prompt, not instantaneous
        time.sleep(0.1)
    assert processes(copy, str(started)) == []  # the whole process group went: pytest and what the loop started
    assert listing(copy, folders=True) == before
    for bad in ("0", "-5", "nan", "inf", "soon"):
        one_line(call("make_assignment.py", "--grade", 1, "--time-limit", bad, check=False), "--time-limit")
    one_line(call("make_assignment.py", "--list", "--time-limit", 5, check=False), "--time-limit applies to --grade only")
