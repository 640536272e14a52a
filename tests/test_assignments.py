"""The course kit (make_assignment.py, ASSIGNMENTS.md): markers, student copies, grading, restoring the reference.

A student copy is graded by running pytest inside it, in a subprocess, on the graded node ids only. In the full tier
(the copies run pytest in processes of their own).
"""

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_scripts import script_env

import make_assignment as K
from cli import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXERCISES = K.exercises(ROOT)
UNIT_FILES = sorted({node.split("::")[0] for nodes in K.GRADED.values() for node in nodes})
# the end-to-end file a student copy runs beside the unit files, as `python -m pytest tests` does (the default tier):
# the one whose train -> search -> retrain chain is in the default tier
E2E_FILE = "tests/test_scripts.py"

pytestmark = pytest.mark.full


def pytest_in(copy, *targets) -> dict[str, tuple[str, str]]:
    """Run pytest inside a student copy; {node id without parameters: (outcome, message)}, worst outcome kept.

    --tb=no, as make_assignment.py --grade: the report keeps each failure's message, and the tracebacks of the
    failing tests (tensor dumps included) are not formatted, which took half of each copy's time."""
    xml = os.path.join(copy, "report.xml")
    cmd = [sys.executable, "-m", "pytest", "-q", "--tb=no", "-p", "no:cacheprovider", f"--junitxml={xml}", *targets]
    subprocess.run(cmd, cwd=copy, env={**script_env(), "PYTHONPATH": str(copy)}, capture_output=True, timeout=300)
    results = {}
    for case in ET.parse(xml).iter("testcase"):
        node = case.get("classname").replace(".", "/") + ".py::" + re.sub(r"\[.*\]$", "", case.get("name"))
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        outcome = "failed" if bad is not None else "skipped" if skipped is not None else "passed"
        message = (bad if bad is not None else skipped if skipped is not None else case).get("message") or ""
        if results.get(node, ("passed",))[0] == "passed":  # a parametrized test counts as failed if any case fails
            results[node] = (outcome, message)
    return results


def test_markers_are_well_formed_and_graded_tests_exist():
    assert sorted(EXERCISES) == sorted(K.GRADED) == list(range(1, 7))
    for n, blocks in EXERCISES.items():
        first = blocks[0][1]
        with open(os.path.join(ROOT, blocks[0][0])) as f:
            header = f.read().split("\n")[first.head : first.body]
        assert any("read:" in line for line in header) and any(f"--grade {n}" in line for line in header), n
        for name, block in blocks:
            assert block.function and block.body < block.end, (n, name)  # a non-empty body inside a function
        for node in K.GRADED[n]:
            path, test = node.split("::")
            with open(os.path.join(ROOT, path)) as f:
                assert re.search(rf"^def {test}\(", f.read(), re.M), node
    for path in K.END_TO_END:
        assert os.path.exists(os.path.join(ROOT, path))
    assert E2E_FILE in K.END_TO_END
    # every test of the other spaces that runs a script (directly, or through the mb_run fixture) is listed in
    # END_TO_END_TESTS, and only those: a student copy must not fail a test that no exercise grades
    for path in ("tests/test_darts.py", "tests/test_mobilenet.py"):
        with open(os.path.join(ROOT, path)) as f:
            chunks = re.split(r"^(?=def |@|class |[A-Z_]+ = )", f.read(), flags=re.M)  # top-level statements
        tests = [c for c in chunks if c.startswith("def test_")]
        runs_scripts = {path + "::" + body[4 : body.index("(")] for body in tests if "run(" in body or "mb_run" in body}
        assert runs_scripts == {node for node in K.END_TO_END_TESTS if node.startswith(path)}, path
    assert K.pending(ROOT) == set()  # the reference has no open exercise: conftest skips nothing here


@pytest.mark.parametrize(
    "text, words",
    [
        ("    # EXERCISE 1 BEGIN: a\n    x = 1\n", "has no END"),
        ("    # EXERCISE 1 BEGIN: a\n    x = 1\n    # EXERCISE 2 END\n", "without a matching BEGIN"),
        ("    # EXERCISE 1 BEGIN: a\n    # EXERCISE 2 BEGIN: b\n", "inside exercise 1"),
        ("  # EXERCISE 1 BEGIN: a\n  x = 1\n    # EXERCISE 1 END\n", "same indent"),
        ('  # EXERCISE 1 BEGIN: say "hi"\n  x = 1\n  # EXERCISE 1 END\n', "may not contain"),
    ],
)
def test_malformed_markers_are_refused_with_their_line(text, words):
    with pytest.raises(ValueError, match=words) as err:
        K.parse(text, "f.py")
    assert "f.py:" in str(err.value)


def test_strip_keeps_the_header_and_fill_restores_every_file_byte_for_byte():
    for name in K.source_files(ROOT):
        with open(os.path.join(ROOT, name)) as f:
            text = f.read()
        student = K.strip(text, set(EXERCISES), name)
        assert K.fill(student, text, set(EXERCISES), name) == text  # restoring the blocks gives the reference back
        for block in K.parse(text, name):
            lines = student.split("\n")
            stub = f'{block.indent}raise NotImplementedError("Exercise {block.number}: {block.task} (see ASSIGNMENTS.md)")'
            assert stub in lines and text.split("\n")[block.head] in lines  # the statement stays, the code goes
        only = K.strip(text, {3}, name)  # one exercise: the other blocks keep their code
        assert K.pending_in(only) <= {3} and K.fill(only, text, {3}, name) == text


HALVES = ({1, 3, 5}, {2, 4, 6})


@pytest.fixture(scope="module")
def student_runs(tmp_path_factory):
    """Two student copies, each missing half of the exercises, graded by pytest in two subprocesses at once.

    Each runs every unit test file and one end-to-end file. Two copies say as much as six with one exercise
    missing each: a test that fails with "Exercise N" in a copy stops at N's stub before reaching any other
    one, so it fails the same way with N alone removed; a test that passes with half the exercises removed
    passes with any one of them removed. The union of the two failing sets is what an empty copy fails.
    """
    base = tmp_path_factory.mktemp("kit")
    copies = [base / f"student-{''.join(map(str, sorted(half)))}" for half in HALVES]
    changed = [K.make_copy(copy, half, ROOT) for copy, half in zip(copies, HALVES)]
    with ThreadPoolExecutor(max_workers=2) as pool:  # CI has 2 cores
        runs = list(pool.map(lambda copy: pytest_in(copy, *UNIT_FILES, E2E_FILE), copies))
    return copies, changed, runs


def test_student_copy_changes_only_the_blocks_and_imports(student_runs):
    copies, changed, _ = student_runs
    assert changed == [["angle.py", "random_labels.py", "supernet.py"], ["evolution.py", "supernet.py", "train.py"]]
    for copy, files, half in zip(copies, changed, HALVES):
        assert not (copy / "tests" / "test_assignments.py").exists() and (copy / "ASSIGNMENTS.md").exists()
        for rel in K.repository_files(ROOT):  # everything but the exercise blocks is unchanged
            if rel not in files:
                assert (copy / rel).read_bytes() == open(os.path.join(ROOT, rel), "rb").read(), rel
        assert K.pending(copy) == half
    imports = "import random_labels, supernet, angle, darts, mobilenet, spaces, evolution, train, search, retrain, bench"
    env = script_env(PYTHONPATH=str(copies[0]))
    subprocess.run([sys.executable, "-c", imports], cwd=copies[0], env=env, check=True, timeout=120)


@pytest.mark.parametrize("half", [0, 1])
def test_student_copy_fails_exactly_the_graded_tests(student_runs, half):
    results = student_runs[2][half]
    removed = HALVES[half]
    graders = {node: {n for n, nodes in K.GRADED.items() if node in nodes} for nodes in K.GRADED.values() for node in nodes}
    expected = {node for node, ns in graders.items() if ns & removed}
    failed = {node for node, (outcome, _) in results.items() if outcome == "failed"}
    assert failed == expected
    for node in failed:  # each fails with the message of a removed exercise that grades it
        found = re.search(r"NotImplementedError: Exercise (\d+): ", results[node][1])
        assert found and int(found[1]) in graders[node] & removed, (node, results[node][1][:200])
    for n in removed:  # every exercise removed is seen failing its own tests
        assert any(f"Exercise {n}: " in results[node][1] for node in K.GRADED[n]), n
    unit = {node for node in results if node.startswith(tuple(UNIT_FILES))}
    assert len(unit - failed) >= 20 and all(results[node][0] == "passed" for node in unit - failed)
    e2e = [outcome for node, (outcome, _) in results.items() if node.startswith(E2E_FILE)]
    assert e2e and set(e2e) == {"skipped"}  # the scripts wait until every exercise is done


def test_grade_prints_one_line_per_failing_test_and_a_summary(student_runs):
    """--grade: the failing tests with the first line of their failure (the exercise's message), no tracebacks."""
    copies, _, _ = student_runs

    def grade(copy, n):
        cmd = [sys.executable, "make_assignment.py", "--grade", str(n)]
        env = script_env(PYTHONPATH=str(copy))
        return subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=300)

    res = grade(copies[0], 3)  # exercise 3 removed from this copy
    lines = res.stdout.strip().splitlines()
    assert res.returncode == 1 and res.stderr == ""
    failed, summary = lines[:-1], lines[-1]
    assert {re.sub(r"\[.*\]$", "", line.split(": ")[0].removeprefix("FAILED ")) for line in failed} == set(K.GRADED[3])
    for line in failed:
        node, why = line.removeprefix("FAILED ").split(": ", 1)
        assert line.startswith("FAILED tests/test_supernet.py::") and why.startswith("NotImplementedError: Exercise 3: ")
    assert summary.startswith(f"exercise 3: {len(failed)} of {len(failed)} graded test cases do not pass")
    assert "python -m pytest -q tests/test_supernet.py::" in summary
    res = grade(copies[1], 1)  # exercise 1 is done in this copy
    assert res.returncode == 0 and res.stdout.strip() == f"exercise 1: all {len(K.GRADED[1])} graded test cases pass"


def test_restore_puts_the_reference_back_and_protects_student_work(tmp_path):
    copy = tmp_path / "student"
    K.make_copy(copy, set(EXERCISES), ROOT)
    K.restore(copy, {2}, ROOT)
    assert K.pending(copy) == set(EXERCISES) - {2}
    edited = (copy / "angle.py").read_text().replace('raise NotImplementedError("Exercise 5: ', "return None  # mine (", 1)
    (copy / "angle.py").write_text(edited)
    with pytest.raises(UsageError, match="student's code"):
        K.restore(copy, set(EXERCISES), ROOT)
    K.restore(copy, set(EXERCISES), ROOT, force=True)
    for rel in K.repository_files(ROOT):
        if os.path.exists(copy / rel):
            assert (copy / rel).read_bytes() == open(os.path.join(ROOT, rel), "rb").read(), rel
    with pytest.raises(UsageError, match="already exists"):
        K.make_copy(copy, {1}, ROOT)
    K.make_copy(copy, {1}, ROOT, force=True)  # a student copy may be replaced ...
    assert K.pending(copy) == {1}
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(UsageError, match="not a student copy"):  # ... any other directory is left alone
        K.make_copy(tmp_path / "mine", {1}, ROOT, force=True)
    with pytest.raises(UsageError, match="inside the repository"):
        K.make_copy(os.path.join(ROOT, "student"), {1}, ROOT)


def test_command_line_errors_are_one_line(tmp_path, monkeypatch):
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "make_assignment.py"), "--out", str(tmp_path / "s"), "--exercises", "1,9"],
        capture_output=True,
        text=True,
        env=script_env(),
    )
    assert res.returncode == 2 and "no exercise [9]" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()
    for argv, words in [(["--list", "--grade", "2"], "exactly one of"), (["--out", str(tmp_path), "--exercises", "x"], "1,3")]:
        monkeypatch.setattr(sys, "argv", ["make_assignment.py", *argv])
        with pytest.raises(UsageError, match=words):
            K.main()
