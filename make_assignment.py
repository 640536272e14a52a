"""
The course kit: write a student copy of this repository with the method's core removed.

The core of RLNAS is marked in the method modules and train.py as exercise blocks, each wrapping the body
of one function (or a few lines of it), so that everything else keeps working:

    def random_labels(num_examples, num_classes, seed):
        ...
        # EXERCISE 1 BEGIN: <what to implement, one line>
        #   read: <paper part; method.md section; details.md item>     (header: lines starting with "#   ")
        #   graded: python make_assignment.py --grade 1
        <the reference code>
        # EXERCISE 1 END

In the student copy the reference code becomes `raise NotImplementedError("Exercise 1: <what to implement> ...")`;
the header and the END line stay, so a student sees where to write and the reference can be put back.
GRADED below lists, per exercise, the tests that fail while its blocks are empty; every other unit test
passes (tests/test_assignments.py checks both). The end-to-end tests (END_TO_END: they run the scripts,
which need every exercise) are skipped in a copy whose exercises are not all done yet (tests/conftest.py).

    python make_assignment.py --list                                 # the exercises and their tests
    python make_assignment.py --out ../rlnas-student                 # all exercises removed
    python make_assignment.py --out ../rlnas-student --exercises 1,3 # only these
    python make_assignment.py --out ../rlnas-student --force         # renew a copy this tool wrote (see below)
    python make_assignment.py --grade 3                              # run the tests that grade exercise 3
    python make_assignment.py --grade 3 --time-limit 600             # ... stopped after 600 s (default 300)
    python make_assignment.py --restore ../rlnas-student --exercises 2   # put the reference back (stuck student)

A student copy holds student_copy.json: every file and folder this tool wrote there, with each file's sha256.
--force renews only such a copy, and only what that record lists: a file changed since it was written (a student's
work) makes it refuse, a student's own files and folders stay. '.', the repository or a parent of it, a home
directory and any git work tree are refused whatever they hold; a file or a symlink as --out is refused too.

ASSIGNMENTS.md is the students' handout: reading, files, grading command, expected result, a question.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import cli
from cli import UsageError

ROOT = os.path.dirname(os.path.abspath(__file__))

# The tests that grade each exercise: exactly those that fail while the exercise's blocks are empty.
GRADED = {
    1: [
        "tests/test_random_labels.py::test_deterministic_and_seed_dependent",
        "tests/test_random_labels.py::test_independent_of_global_rng_and_leaves_it_untouched",
        "tests/test_random_labels.py::test_uniform_over_k_and_covers_all_classes",
        "tests/test_random_labels.py::test_prefix_stable_labels_do_not_depend_on_subset",
        "tests/test_random_labels.py::test_checksum_and_record_check",
        "tests/test_random_labels.py::test_label_modes",
    ],
    2: [
        "tests/test_supernet.py::test_sampling_redraws_dead_nodes_and_matches_official_marginals",
        "tests/test_supernet.py::test_sample_path_seeded_per_cell_and_shared",
        "tests/test_supernet.py::test_macro_shapes_and_parameter_counts",  # forwards a sampled path: also exercise 3
    ],
    3: [
        "tests/test_supernet.py::test_macro_shapes_and_parameter_counts",
        "tests/test_supernet.py::test_only_sampled_ops_receive_gradients",
        "tests/test_supernet.py::test_supernet_path_equals_standalone_subnet",
    ],
    4: [
        "tests/test_train.py::test_train_step_is_one_sgd_step_on_the_sampled_path",
        "tests/test_train.py::test_unsampled_ops_keep_decaying_only_in_decay_mode",
        "tests/test_train.py::test_grad_clip_bounds_the_gradient_norm",
    ],
    5: [
        "tests/test_angle.py::test_vector_lengths_match_spec_table",
        "tests/test_angle.py::test_all_none_has_no_vector_and_angle_zero",
        "tests/test_angle.py::test_fast_scorer_equals_reference_full_size",
        "tests/test_angle.py::test_fast_scorer_equals_reference_on_many_archs",
        "tests/test_angle.py::test_float64_precision_matters",
    ],
    6: [
        "tests/test_evolution.py::test_finds_the_unique_optimum",
        "tests/test_evolution.py::test_no_arch_is_scored_twice_and_evaluated_lists_them_in_order",
        "tests/test_evolution.py::test_archive_is_elitist_top_k_of_everything_scored",
        "tests/test_evolution.py::test_constraint_is_checked_before_scoring",
        "tests/test_evolution.py::test_repair_is_applied_to_every_candidate",
        "tests/test_evolution.py::test_mutation_helper_only_writes_mutation_choices",
        "tests/test_evolution.py::test_mutants_never_introduce_excluded_values",
        "tests/test_evolution.py::test_same_seed_same_result_different_seed_different_trajectory",
        "tests/test_evolution.py::test_resume_by_replay_scores_only_what_is_missing",
        "tests/test_evolution.py::test_memo_entries_off_the_trajectory_are_not_reported",
        "tests/test_evolution.py::test_nb201_defaults_score_exactly_2000",
        "tests/test_evolution.py::test_exhausted_space_stops_early_and_visits_everything",
    ],
}
# Test files that run the real scripts (train.py needs exercises 1-4, search.py's evolution 6): skipped in a copy
# until every exercise is done, so that an unfinished copy fails exactly the graded tests.
END_TO_END = (
    "tests/test_scripts.py",
    "tests/test_reliability.py",
    "tests/test_errors.py",
    "tests/test_search.py",
    "tests/test_interrupts.py",
    "tests/test_fuzz.py",
    "tests/test_stages.py",
    "tests/test_lost_work.py",
    "tests/test_safety.py",
    "tests/test_pinned.py",
)
# ... and the script tests of the DARTS and MobileNet spaces (their unit tests need no exercise and always run)
END_TO_END_TESTS = (
    "tests/test_darts.py::test_cifar_train_search_retrain",
    "tests/test_darts.py::test_imagenet_train_search_retrain",
    "tests/test_darts.py::test_darts_user_errors",
    "tests/test_darts.py::test_imagenet_variant_resume_is_exact",
    "tests/test_mobilenet.py::test_train_search_retrain_scripts",
    "tests/test_mobilenet.py::test_script_errors_are_one_line",
    "tests/test_mobilenet.py::test_train_resume_is_exact",
    "tests/test_device.py::test_deterministic_flag_is_recorded_kept_on_resume_and_changes_nothing_on_cpu",
)
KIT_ONLY = ("tests/test_assignments.py", "tests/test_kit_safety.py")  # need the reference: not in a student copy
MANIFEST, MARK = "student_copy.json", "make_assignment.py student copy"  # what --force may renew (make_copy)
TIME_LIMIT = 300.0  # seconds for grading one exercise (--time-limit): an endless loop in a student's code stops

BEGIN = re.compile(r"^( *)# EXERCISE (\d+) BEGIN: (.+)$")
END = re.compile(r"^( *)# EXERCISE (\d+) END$")
STUB = 'raise NotImplementedError("Exercise {n}: {task} (see ASSIGNMENTS.md)")'


@dataclass
class Block:
    number: int
    task: str  # the one-line statement of the BEGIN line
    indent: str
    head: int  # line index of the BEGIN line
    body: int  # first body line (after the header's "#   " continuation lines)
    end: int  # line index of the END line
    function: str  # "Class.method" or "function" the block sits in


def parse(text: str, path: str = "<text>") -> list[Block]:
    """All exercise blocks of a source file, in order; ValueError (one line, with path:line) if malformed."""
    lines = text.split("\n")
    blocks, open_block = [], None
    for i, line in enumerate(lines):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if open_block is not None:
                raise ValueError(f"{path}:{i + 1}: EXERCISE {begin[2]} BEGIN inside exercise {open_block.number}")
            task = begin[3].strip()
            if '"' in task or "\\" in task:
                raise ValueError(f"{path}:{i + 1}: the exercise statement may not contain '\"' or '\\'")
            body = i + 1
            while body < len(lines) and lines[body].startswith(begin[1] + "#   "):
                body += 1  # header continuation lines ("read:", "graded:") stay in the student copy
            open_block = Block(int(begin[2]), task, begin[1], i, body, -1, enclosing_function(lines, i))
        elif end:
            if open_block is None or int(end[2]) != open_block.number or end[1] != open_block.indent:
                raise ValueError(f"{path}:{i + 1}: EXERCISE {end[2]} END without a matching BEGIN at the same indent")
            open_block.end = i
            blocks.append(open_block)
            open_block = None
    if open_block is not None:
        raise ValueError(f"{path}:{open_block.head + 1}: EXERCISE {open_block.number} BEGIN has no END")
    return blocks


def enclosing_function(lines: list[str], i: int) -> str:
    name, indent = "", len(lines[i]) - len(lines[i].lstrip())
    for line in reversed(lines[:i]):
        m = re.match(r"^( *)(def|class) (\w+)", line)
        if m and len(m[1]) < indent:
            name, indent = (m[3] if not name else f"{m[3]}.{name}"), len(m[1])
            if not indent:
                break
    return name


def source_files(root: str) -> list[str]:
    """The files that may hold exercise blocks: the top-level modules and scripts (the layout is flat)."""
    return sorted(f for f in os.listdir(root) if f.endswith(".py") and f != os.path.basename(__file__))


def exercises(root: str = ROOT) -> dict[int, list[tuple[str, Block]]]:
    """number -> [(file, block), ...] over the repository, checked: numbered 1..n without gaps."""
    found: dict[int, list[tuple[str, Block]]] = {}
    for name in source_files(root):
        with open(os.path.join(root, name)) as f:
            for block in parse(f.read(), name):
                found.setdefault(block.number, []).append((name, block))
    if sorted(found) != list(range(1, len(found) + 1)):
        raise ValueError(f"exercise numbers must run 1..n without gaps, found {sorted(found)}")
    return dict(sorted(found.items()))


def stub_line(block: Block) -> str:
    return block.indent + STUB.format(n=block.number, task=block.task)


def strip(text: str, numbers: set[int], path: str = "<text>") -> str:
    """The student version of a source file: the bodies of the chosen blocks become a NotImplementedError."""
    lines = text.split("\n")
    for block in reversed(parse(text, path)):  # from the bottom, so earlier line indices stay valid
        if block.number in numbers:
            lines[block.body : block.end] = [stub_line(block)]
    return "\n".join(lines)


def fill(student: str, reference: str, numbers: set[int], path: str = "<text>") -> str:
    """Put the reference bodies of the chosen blocks back into a student file (the inverse of strip)."""
    have, ref = parse(student, path), parse(reference, path)
    if [b.number for b in have] != [b.number for b in ref]:
        raise ValueError(f"{path}: its exercise blocks {[b.number for b in have]} differ from the reference's")
    lines, ref_lines = student.split("\n"), reference.split("\n")
    for block, source in reversed(list(zip(have, ref))):
        if block.number in numbers:
            lines[block.body : block.end] = ref_lines[source.body : source.end]
    return "\n".join(lines)


def pending(root: str) -> set[int]:
    """Exercises whose stub is still in place somewhere (an empty set in the reference repository)."""
    out = set()
    for name in source_files(root):
        with open(os.path.join(root, name)) as f:
            out |= pending_in(f.read())
    return out


def pending_in(text: str) -> set[int]:
    return {int(n) for n in re.findall(r'raise NotImplementedError\("Exercise (\d+): ', text)}


def repository_files(root: str) -> list[str]:
    """What a student copy holds: git's tracked and non-ignored files, or (no git) the tree without run outputs."""
    try:
        out = subprocess.run(
            ["git", "-C", root, "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            capture_output=True,
            check=True,
        )
        files = [f for f in out.stdout.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", "runs", "data", "__pycache__", ".pytest_cache"}
        files = []
        for here, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if d not in skip]
            files += [os.path.relpath(os.path.join(here, n), root) for n in names if not n.endswith((".pyc", ".tmp"))]
    return sorted(f for f in set(files) if os.path.isfile(os.path.join(root, f)) and f not in KIT_ONLY and f != MANIFEST)


def make_copy(out: str, numbers: set[int], root: str = ROOT, force: bool = False) -> list[str]:
    """Write the student copy into `out`; returns the files whose blocks were emptied.

    Everything is checked before anything is touched (claim); an existing copy is then renewed in place (renew).
    """
    from files import write_error  # a full disk, a read-only place: one line (files.py imports torch: only --out does)

    out = os.fspath(out)
    files, changed = student_files(root, numbers)
    real, old = claim(out, files, root, force)
    try:
        renew(real, files, root, old)
    except OSError as err:
        raise write_error(err, err.filename or out) from None
    return changed


def student_files(root: str, numbers: set[int]) -> tuple[dict[str, bytes], list[str]]:
    """{path: bytes} of the student copy (the chosen exercise blocks emptied), and the files whose blocks were."""
    sources, files, changed = set(source_files(root)), {}, []
    for rel in repository_files(root):
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        if rel in sources:
            new = strip(data.decode("utf-8"), numbers, rel).encode("utf-8")
            if new != data:
                data = new
                changed.append(rel)
        files[rel] = data
    return files, changed


def claim(out: str, files: dict[str, bytes], root: str, force: bool) -> tuple[str, dict | None]:
    """May the student copy `files` be written into `out`? Its resolved path and the record of the copy already
    there (None: a new or empty folder). Otherwise one line: `out` is a file or a symlink, the repository, inside it
    or a parent of it; or it exists and is not a copy this tool wrote, or renewing it would lose a student's work."""
    from rundir import _protected  # '.', a home or root directory, a git work tree

    if os.path.islink(out.rstrip(os.sep)):
        raise UsageError(f"--out {out} is a symbolic link (to {os.readlink(out.rstrip(os.sep))}); pass the folder itself")
    real, root = os.path.realpath(out), os.path.realpath(root)  # symlinks and '..' resolved before any check
    if os.path.exists(real) and not os.path.isdir(real):
        raise UsageError(f"--out {out} is {kind(real)}, not a folder; pass --out DIR for the student copy")
    if inside(real, root) or inside(root, real):
        where = "inside the repository" if inside(real, root) else "a parent of the repository"
        where = "the repository itself" if real == root else where
        via = f" (it resolves to {real})" if real != os.path.abspath(out) else ""
        raise UsageError(f"--out {out} is {where}{via}; write the student copy somewhere else, e.g. --out ../student")
    if not os.path.isdir(real):
        return real, None
    old = read_manifest(real)
    why = _protected(real)
    if why is None and old is None and os.listdir(real):
        why = f"it holds no {MANIFEST} written by make_assignment.py"
    if why:
        raise UsageError(f"--out {out} already exists and is not a student copy make_assignment.py may renew ({why}); "
                         "pass another --out DIR")  # fmt: skip
    lost = lost_work(real, old, files)
    if lost:
        raise UsageError(f"--out {out} is a student copy, but renewing it would lose {lost}; move that out of the copy "
                         "or delete the copy yourself, or pass another --out DIR")  # fmt: skip
    if old is not None and not force:
        raise UsageError(f"--out {out} already exists (a student copy); add --force to renew it, or pass another --out DIR")
    return real, old


def lost_work(real: str, old: dict | None, files: dict[str, bytes]) -> str | None:
    """What renewing the copy at `real` would lose, or None: a file this tool wrote, changed since (a student's
    work); something else where the new copy puts a file; a link or a file where the new copy needs a folder."""
    recorded = old["files"] if old else {}
    for folder in sorted({folder for rel in [*recorded, *files] for folder in parents(rel)}):
        path = os.path.join(real, folder)
        if os.path.lexists(path) and (os.path.islink(path) or not os.path.isdir(path)):
            return f"{folder}, {kind(path)} where the copy has a folder"
    for rel, digest in sorted(recorded.items()):
        path = os.path.join(real, rel)
        if os.path.lexists(path) and (os.path.islink(path) or not os.path.isfile(path)):
            return f"{rel}, now {kind(path)}"
        if os.path.lexists(path) and sha256(path) != digest:
            return f"{rel}, changed since make_assignment.py wrote it (a student's work?)"
    for rel in sorted(files):
        if os.path.lexists(os.path.join(real, rel)) and rel not in recorded:
            return f"{rel}, which make_assignment.py did not write (the new copy has a file of that name)"
    return None


def renew(real: str, files: dict[str, bytes], root: str, old: dict | None) -> None:
    """Write the copy into `real` (claim has checked it): the files the old record lists go, the record of the new
    copy is written before its files, and no file is written over anything (mode "x"). Folders this tool created
    and the new copy no longer has go only when empty: a student's files and folders stay wherever they are."""
    recorded, created = (old["files"], old["folders"]) if old else ({}, [])
    for rel in recorded:
        if os.path.lexists(os.path.join(real, rel)):
            os.remove(os.path.join(real, rel))
    needed = {folder for rel in files for folder in parents(rel)}
    there = {folder for folder in needed | set(created) if is_folder(os.path.join(real, folder))}
    created = sorted((set(created) & there) | (needed - there))  # those it made before, and those it makes now
    os.makedirs(real, exist_ok=True)
    write_manifest(real, {"stage": MARK, "files": {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()},
                          "folders": created})  # fmt: skip
    for rel, data in sorted(files.items()):
        dst = os.path.join(real, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "xb") as f:
            f.write(data)
        shutil.copymode(os.path.join(root, rel), dst)
    for folder in sorted(set(created) - needed, reverse=True):  # the deepest first
        try:
            if is_folder(os.path.join(real, folder)):
                os.rmdir(os.path.join(real, folder))  # only an empty one
        except OSError:
            pass


def read_manifest(out: str) -> dict | None:
    """{"stage": MARK, "files": {path: sha256}, "folders": [path, ...]} of a student copy, or None (none, not ours).
    Every path is relative and plain (no '..'): --force never reaches outside the copy."""
    path = os.path.join(out, MANIFEST)
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(m, dict) or m.get("stage") != MARK:
        return None
    files, folders = m.get("files"), m.get("folders")
    if not isinstance(files, dict) or not isinstance(folders, list) or not all(map(plain, [*files, *folders])):
        return None
    return m if all(isinstance(digest, str) for digest in files.values()) else None


def plain(rel) -> bool:
    """A path inside the copy, written plainly: relative, normalised, no '..'."""
    ok = isinstance(rel, str) and not os.path.isabs(rel) and os.path.normpath(rel) == rel
    return ok and rel not in (".", MANIFEST) and ".." not in rel.split(os.sep)


def write_manifest(out: str, record: dict) -> None:
    """Replace the copy's record atomically, through a temp file of a new name (no student's file is touched)."""
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".student_copy.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, os.path.join(out, MANIFEST))
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def parents(rel: str) -> list[str]:
    """The folders a file of the copy sits in: "a/b/c.py" -> ["a", "a/b"]."""
    parts = rel.split(os.sep)[:-1]
    return [os.sep.join(parts[: i + 1]) for i in range(len(parts))]


def is_folder(path: str) -> bool:
    """A folder reached without a symlink (`path` is under a resolved one): never one outside the copy."""
    return os.path.isdir(path) and os.path.realpath(path) == path


def inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def kind(path: str) -> str:
    """What stands at `path`, in words, for a one-line error."""
    if os.path.islink(path):
        return "a symbolic link"
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a file"
    return "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"


def restore(target: str, numbers: set[int], root: str = ROOT, force: bool = False) -> list[str]:
    """Put the reference code of the chosen exercises back into a student copy; returns the files rewritten."""
    if pending(root) & numbers:
        raise UsageError("this checkout has no reference code for those exercises; run --restore from the reference one")
    rewritten, renewed = [], {}
    for name in source_files(root):
        path = os.path.join(target, name)
        with open(os.path.join(root, name), encoding="utf-8", newline="") as f:
            reference = f.read()
        if not parse(reference, name) or not os.path.exists(path):
            continue
        with open(path, encoding="utf-8", newline="") as f:
            student = f.read()
        try:
            new = fill(student, reference, numbers, path)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if not force:  # refuse to overwrite a student's own work: only a stub (or the reference itself) is replaced
            ref_blocks = parse(reference, name)
            for block, ref in zip(parse(student, path), ref_blocks):
                body = student.split("\n")[block.body : block.end]
                if block.number in numbers and body not in ([stub_line(block)], reference.split("\n")[ref.body : ref.end]):
                    raise UsageError(f"{path}: exercise {block.number} holds the student's code; add --force to replace it")
        if new != student:
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(new)
            rewritten.append(path)
            if new == strip(reference, pending_in(new), name):  # all of it is the tool's: --force may renew it
                renewed[name] = hashlib.sha256(new.encode("utf-8")).hexdigest()
    record = read_manifest(target)
    if record is not None and renewed.keys() & record["files"].keys():
        record["files"].update({name: digest for name, digest in renewed.items() if name in record["files"]})
        write_manifest(target, record)
    return rewritten


def chosen(text: str | None, known: dict) -> set[int]:
    if text is None:
        return set(known)
    try:
        numbers = {int(n) for n in text.split(",") if n.strip()}
    except ValueError:
        raise UsageError(f"--exercises takes numbers separated by commas, like 1,3; got {text!r}") from None
    bad = sorted(numbers - set(known))
    if bad or not numbers:
        raise UsageError(f"no exercise {bad or text!r}; the exercises are {min(known)}-{max(known)} (see --list)")
    return numbers


def first_line(case: ET.Element) -> str:
    """The first line of why a junit test case did not pass: its exception message, e.g. the exercise's stub."""
    bad = next((case.find(tag) for tag in ("failure", "error", "skipped") if case.find(tag) is not None), None)
    if bad is None:
        return ""
    message = (bad.get("message") or "").strip()
    if message in ("", "collection failure"):  # a module that does not import: its last "E   ..." line says why
        errors = [line[1:].strip() for line in (bad.text or "").splitlines() if line.startswith("E ")]
        message = errors[-1] if errors else message or bad.tag
    return message.splitlines()[0]


def test_results(report: str) -> list[tuple[str, str, str]]:
    """(test id, outcome, first line of the failure) for every case of a pytest --junitxml report."""
    out = []
    for case in ET.parse(report).iter("testcase"):
        module, name = case.get("classname") or "", case.get("name")
        node = f"{module.replace('.', '/')}.py::{name}" if module else f"{name.replace('.', '/')}.py"
        outcome = next((tag for tag in ("failure", "error", "skipped") if case.find(tag) is not None), "passed")
        out.append((node, {"failure": "failed", "error": "error"}.get(outcome, outcome), first_line(case)))
    return out


def grade(n: int, root: str = ROOT, time_limit: float = TIME_LIMIT) -> int:
    """Run the tests that grade exercise n in `root`: one line per test that does not pass, then one summary line.

    The tracebacks (hundreds of lines with tensor dumps) stay out; the summary names the pytest command that shows
    the first one. Returns pytest's exit status (0 when every graded test passes), or 124 (as timeout(1) does) when
    the tests run past `time_limit` seconds: an endless loop in a student's code. pytest runs in a process group of
    its own, killed as a whole then (and on Ctrl-C), so that no process of the student's code is left running.
    """
    tests = GRADED[n]
    with tempfile.TemporaryDirectory() as tmp:
        report, log = os.path.join(tmp, "report.xml"), os.path.join(tmp, "pytest.log")
        cmd = [sys.executable, "-m", "pytest", "-q", "--tb=no", "-p", "no:cacheprovider", f"--junitxml={report}", *tests]
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                returncode = proc.wait(timeout=time_limit)
            except subprocess.TimeoutExpired:
                returncode = None
            finally:
                if proc.returncode is None:  # past the time limit, or interrupted here: the whole group goes
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait()
        if returncode is None:
            files = " ".join(sorted({test.split("::")[0] for test in tests}))
            print(f"make_assignment.py: error: grading exercise {n} stopped at its time limit of {time_limit:g} s (an endless "
                  f"loop?); see which test hangs with: python -m pytest -v {files}, or raise the limit with --time-limit "
                  "SECONDS", file=sys.stderr)  # fmt: skip
            return 124
        if not os.path.exists(report):  # pytest could not even start: show the end of what it said
            with open(log) as f:
                print(f.read().strip()[-2000:])
            return returncode or 1
        results = test_results(report)
    bad = [(node, outcome, why) for node, outcome, why in results if outcome != "passed"]
    for node, outcome, why in bad:
        print(f"{outcome.upper()} {node}: {why}")
    if bad:
        rerun = f"python -m pytest -q {bad[0][0]}"
        print(f"exercise {n}: {len(bad)} of {len(results)} graded test cases do not pass (traceback: {rerun})")
    else:
        print(f"exercise {n}: all {len(results)} graded test cases pass")
    return returncode if bad else 0


p = cli.Parser(prog="make_assignment.py", description="Write a student copy without the chosen exercises (ASSIGNMENTS.md).")
p.add_argument("--out", default=None, help="directory of the student copy (new or empty, unless --force)")
p.add_argument("--exercises", default=None, help="comma-separated exercise numbers, e.g. 1,3 (default: all)")
p.add_argument("--force", action="store_true", help="renew a copy this tool wrote; with --restore, overwrite a student's code")
p.add_argument("--list", action="store_true", help="print the exercises, where they are and the tests that grade them")
p.add_argument("--grade", type=cli.number(int), default=None, help="run the tests that grade exercise N (here)")
p.add_argument("--time-limit", type=cli.number(float, 1, 86400), metavar="SECONDS", help="--grade's time limit (300)")
p.add_argument("--restore", default=None, metavar="DIR", help="put the reference code of --exercises back into a student copy")


def main(argv=None):
    args = p.parse_args(argv)
    try:
        known = exercises(ROOT)
    except ValueError as err:
        raise UsageError(f"malformed exercise markers: {err}") from None
    if sum(x is not None and x is not False for x in (args.out, args.grade, args.restore, args.list or None)) != 1:
        raise UsageError("give exactly one of --out DIR, --list, --grade N, --restore DIR")
    if args.time_limit is not None and args.grade is None:
        raise UsageError("--time-limit applies to --grade only; drop it, or add --grade N")
    if args.list:
        for n, blocks in known.items():
            print(f"Exercise {n}:")
            print("".join(f"    {name}:{b.function}: {b.task}\n" for name, b in blocks), end="")
            print(f"    graded by {len(GRADED[n])} tests (python make_assignment.py --grade {n}):")
            print("".join(f"      {t}\n" for t in GRADED[n]), end="")
        return
    if args.grade is not None:
        chosen(str(args.grade), known)
        sys.exit(grade(args.grade, ROOT, TIME_LIMIT if args.time_limit is None else args.time_limit))
    numbers = chosen(args.exercises, known)
    if args.restore:
        if not os.path.isdir(args.restore):
            raise UsageError(f"{args.restore} is not a directory; give the student copy to restore into")
        files = restore(args.restore, numbers, ROOT, args.force)
        print(f"restored exercises {sorted(numbers)} in {len(files)} files of {args.restore}")
        return
    changed = make_copy(args.out, numbers, ROOT, args.force)
    print(f"wrote {args.out}: exercises {sorted(numbers)} removed from {', '.join(changed)}")
    print(f"a student grades exercise N with: cd {args.out} && python make_assignment.py --grade N")


if __name__ == "__main__":
    cli.run(main)
