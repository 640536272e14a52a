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
    python make_assignment.py --grade 3                              # run the tests that grade exercise 3
    python make_assignment.py --restore ../rlnas-student --exercises 2   # put the reference back (stuck student)

ASSIGNMENTS.md is the students' handout: reading, files, grading command, expected result, a question.
"""

from __future__ import annotations

import os
import re
import shutil
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
    "tests/test_pinned.py",
    "tests/test_safety.py",
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
)
KIT_ONLY = ("tests/test_assignments.py",)  # the kit's own test needs the reference: not in the student copy

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
    return sorted(f for f in set(files) if os.path.isfile(os.path.join(root, f)) and f not in KIT_ONLY)


def make_copy(out: str, numbers: set[int], root: str = ROOT, force: bool = False) -> list[str]:
    """Write the student copy into `out`; returns the files whose blocks were emptied."""
    out = os.path.abspath(out)
    if out == root or out.startswith(root + os.sep):
        raise UsageError(f"{out} is inside the repository; write the student copy somewhere else")
    if os.path.exists(out):
        if not force:
            raise UsageError(f"{out} already exists; choose another --out or add --force to replace it")
        if os.listdir(out) and not os.path.exists(os.path.join(out, os.path.basename(__file__))):
            raise UsageError(f"{out} is not a student copy (no {os.path.basename(__file__)}); --force only replaces those")
        shutil.rmtree(out)
    sources, changed = set(source_files(root)), []
    for rel in repository_files(root):
        dst = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if rel in sources:
            with open(os.path.join(root, rel)) as f:
                text = f.read()
            new = strip(text, numbers, rel)
            with open(dst, "w") as f:
                f.write(new)
            shutil.copymode(os.path.join(root, rel), dst)
            if new != text:
                changed.append(rel)
        else:
            shutil.copy2(os.path.join(root, rel), dst)
    return changed


def restore(target: str, numbers: set[int], root: str = ROOT, force: bool = False) -> list[str]:
    """Put the reference code of the chosen exercises back into a student copy; returns the files rewritten."""
    if pending(root) & numbers:
        raise UsageError("this checkout has no reference code for those exercises; run --restore from the reference one")
    rewritten = []
    for name in source_files(root):
        path = os.path.join(target, name)
        with open(os.path.join(root, name)) as f:
            reference = f.read()
        if not parse(reference, name) or not os.path.exists(path):
            continue
        with open(path) as f:
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
            with open(path, "w") as f:
                f.write(new)
            rewritten.append(path)
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


def grade(n: int, root: str = ROOT) -> int:
    """Run the tests that grade exercise n in `root`: one line per test that does not pass, then one summary line.

    The tracebacks (hundreds of lines with tensor dumps) stay out; the summary names the pytest command that shows
    the first one. Returns pytest's exit status (0 when every graded test passes).
    """
    tests = GRADED[n]
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.xml")
        cmd = [sys.executable, "-m", "pytest", "-q", "--tb=no", "-p", "no:cacheprovider", f"--junitxml={report}", *tests]
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        if not os.path.exists(report):  # pytest could not even start: show the end of what it said
            print((done.stdout + done.stderr).strip()[-2000:])
            return done.returncode or 1
        results = test_results(report)
    bad = [(node, outcome, why) for node, outcome, why in results if outcome != "passed"]
    for node, outcome, why in bad:
        print(f"{outcome.upper()} {node}: {why}")
    if bad:
        rerun = f"python -m pytest -q {bad[0][0]}"
        print(f"exercise {n}: {len(bad)} of {len(results)} graded test cases do not pass (traceback: {rerun})")
    else:
        print(f"exercise {n}: all {len(results)} graded test cases pass")
    return done.returncode if bad else 0


p = cli.Parser(prog="make_assignment.py", description="Write a student copy without the chosen exercises (ASSIGNMENTS.md).")
p.add_argument("--out", default=None, help="directory of the student copy (must not exist, unless --force)")
p.add_argument("--exercises", default=None, help="comma-separated exercise numbers, e.g. 1,3 (default: all)")
p.add_argument("--force", action="store_true", help="replace an existing --out; with --restore, overwrite a student's code")
p.add_argument("--list", action="store_true", help="print the exercises, where they are and the tests that grade them")
p.add_argument("--grade", type=cli.number(int), default=None, help="run the tests that grade exercise N (here)")
p.add_argument("--restore", default=None, metavar="DIR", help="put the reference code of --exercises back into a student copy")


def main(argv=None):
    args = p.parse_args(argv)
    try:
        known = exercises(ROOT)
    except ValueError as err:
        raise UsageError(f"malformed exercise markers: {err}") from None
    if sum(x is not None and x is not False for x in (args.out, args.grade, args.restore, args.list or None)) != 1:
        raise UsageError("give exactly one of --out DIR, --list, --grade N, --restore DIR")
    if args.list:
        for n, blocks in known.items():
            print(f"Exercise {n}:")
            print("".join(f"    {name}:{b.function}: {b.task}\n" for name, b in blocks), end="")
            print(f"    graded by {len(GRADED[n])} tests (python make_assignment.py --grade {n}):")
            print("".join(f"      {t}\n" for t in GRADED[n]), end="")
        return
    if args.grade is not None:
        chosen(str(args.grade), known)
        sys.exit(grade(args.grade, ROOT))
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
