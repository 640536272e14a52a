"""The repository's layout: no import circle among the top-level modules, the line budgets, no private citations.

The layout is flat: one file per stage or method part at the top level. Each file imports only what sits below it
(supernet.py <- angle.py <- darts.py, mobilenet.py <- spaces.py <- the stage scripts), so a reader can take them in
that order, and no module needs a lazy import to break a circle.
"""

import ast
import glob
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(f[:-3] for f in os.listdir(ROOT) if f.endswith(".py"))


def imports_of(path: str) -> set[str]:
    """The top-level modules a file imports anywhere in it: at the top, inside functions, under `if`."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(MODULES)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return stack[stack.index(dep) :] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_sees_direct_and_indirect_circles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert imports_of(__file__) == set()  # this test imports no project module


def test_no_import_circle_among_top_level_modules():
    graph = {m: imports_of(os.path.join(ROOT, m + ".py")) - {m} for m in MODULES}
    assert {"angle", "supernet"} <= graph["darts"] and "angle" in graph["mobilenet"]  # the parser sees imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # the method modules never call back into the table of spaces (the metric does not look itself up)
    for method in ("supernet", "angle", "darts", "mobilenet"):
        assert "spaces" not in graph[method], method


def test_line_budgets():
    for name, budget in (("supernet.py", 450), ("angle.py", 300)):
        with open(os.path.join(ROOT, name)) as f:
            lines = len(f.read().splitlines())
        assert lines <= budget, f"{name}: {lines} lines, budget {budget}"


def repository_files() -> list[str]:
    """git's tracked and not-ignored files, or (no git) the tree without run outputs and caches."""
    try:
        cmd = ["git", "-C", ROOT, "ls-files", "--cached", "--others", "--exclude-standard", "-z"]
        out = subprocess.run(cmd, capture_output=True, check=True)
        files = [f for f in out.stdout.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", "runs", "data", "__pycache__", ".pytest_cache"}
        files = []
        for here, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in skip]
            files += [os.path.relpath(os.path.join(here, n), ROOT) for n in names]
    return sorted(f for f in files if os.path.isfile(os.path.join(ROOT, f)))


def test_no_file_cites_the_private_specification():
    # The maintainers' specification is not part of a clone; citations point at docs/method.md or the paper.
    word = re.compile(r"\b" + "SP" + r"EC\b")  # spelled in two halves so that this file passes its own check
    hits = []
    for rel in repository_files():
        with open(os.path.join(ROOT, rel), "rb") as f:
            text = f.read().decode("utf-8", errors="ignore")
        hits += [f"{rel}:{i + 1}" for i, line in enumerate(text.splitlines()) if word.search(line)]
    assert not hits, f"{len(hits)} lines cite it, e.g. {', '.join(hits[:8])}"


def defined_names(path: str) -> set[str]:
    """Top-level functions, classes and assignments of a module, and Class.method for its classes' methods."""
    names = set()
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{m.name}" for m in node.body if isinstance(m, ast.FunctionDef)}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def test_every_code_reference_in_the_docs_exists():
    """`file.py:name` in README.md, ASSIGNMENTS.md and docs/*.md names a function, class or constant that exists."""
    docs = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "ASSIGNMENTS.md")]
    docs += sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    stale = []
    for doc in docs:
        for file, name in re.findall(r"\b([a-z_]+\.py):([A-Za-z_][\w.]*\w)", open(doc).read()):
            path = os.path.join(ROOT, file)
            if file == "file.py":  # the notation itself, explained in method.md
                continue
            if not os.path.isfile(path) or name not in defined_names(path):
                stale.append(f"{os.path.relpath(doc, ROOT)}: {file}:{name}")
    assert not stale, stale


@pytest.mark.full  # a fresh interpreter: import-time behaviour
def test_torchvision_is_imported_only_where_images_are_decoded():
    """Importing torchvision costs about 1.5 s of every start (it loads torch._dynamo): the stage scripts, a search
    and the batched tensor path on in-memory data never import it; the per-image pipeline does, on first use."""
    import sys

    code = (
        "import sys, torch, train, search, retrain\n"
        "from data import Relabeled, load_dataset\nfrom loaders import epoch_loader\n"
        "ds = load_dataset('fake', '', 'train', augment=True, fake_images=8)\n"
        "view = Relabeled(ds, torch.arange(8), ds.targets)\n"
        "batches = list(epoch_loader(view, 4, True, 0, 0, torch.device('cpu'), fast=True))\n"
        "print('torchvision' in sys.modules, len(batches))\n"
        "ds[0]\n"
        "print('torchvision' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "2", "True"], out.stderr[-2000:]


# ----------------------------------------------------------------------------------------------
# The reading path (README, "Reading the NB201 method in one sitting"): each file from its top down to its divider
# ("# Machinery below: ..."), in this order. `python tests/test_layout.py` prints the measure.
READING_PATH = ("random_labels.py", "supernet.py", "train.py", "angle.py", "evolution.py", "search.py")
DIVIDER = "# Machinery below"
# A line inside a function or class (its signature, docstring, comments and code) is method, unless it calls into
# the machinery (these names); a line of a module-level argparse call or an upper-case table is flags and config;
# the module docstring, the imports and the banner comments are headers.
PLUMBING = re.compile(r"\b(run|cli|checkpoint|distributed|files|record)\.|\bprint0?\(|\bUsageError\b|\bSearchRecord\b")


def reading_part(path: str) -> list[str]:
    lines = open(path).read().split("\n")
    cut = next((i for i, line in enumerate(lines) if line.startswith(DIVIDER)), len(lines))
    while cut > 0 and lines[cut - 1].startswith("# ="):  # the divider's own banner
        cut -= 1
    return lines[:cut]


def classify(path: str) -> dict[str, int]:
    """Non-blank lines of the file's reading part by kind: method, plumbing, flags, headers (rule above)."""
    lines = reading_part(path)
    text = "\n".join(lines)
    tree = ast.parse(text + "\n")
    kind = ["headers"] * (len(lines) + 1)  # 1-based; the default: module docstring, imports, module-level comments
    for node in tree.body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        span = range(first, node.end_lineno + 1)
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            # the comment block right above a def belongs to it
            while first > 1 and lines[first - 2].strip().startswith("#") and not lines[first - 2].startswith("# -"):
                first -= 1
            for i in range(first, node.end_lineno + 1):
                kind[i] = "plumbing" if PLUMBING.search(lines[i - 1].split("#")[0]) else "method"
        elif isinstance(node, (ast.Import, ast.ImportFrom)) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):  # noqa: E501
            continue  # headers
        else:
            source = ast.get_source_segment(text, node) or ""
            is_flag = re.match(r"\s*(p|g)\b", source) or "add_argument" in source or "Parser(" in source
            is_table = isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets)
            for i in span:
                kind[i] = "flags" if is_flag or is_table else ("plumbing" if PLUMBING.search(lines[i - 1]) else "method")
    counts = {"method": 0, "plumbing": 0, "flags": 0, "headers": 0}
    for i, line in enumerate(lines, 1):
        if line.strip():
            counts[kind[i]] += 1
    return counts


def reading_path_measure() -> dict[str, dict[str, int]]:
    return {name: classify(os.path.join(ROOT, name)) for name in READING_PATH}


def test_reading_path_budget():
    """About 1,000 non-blank lines in the six parts, at least 55 % of them method, every part ends at a divider
    (but random_labels.py, read in full) and the README names the parts in this order."""
    measure = reading_path_measure()
    total = sum(sum(c.values()) for c in measure.values())
    method = sum(c["method"] for c in measure.values())
    assert total <= 1050, (total, measure)
    assert method / total >= 0.55, (method / total, measure)
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme[readme.index("Reading the NB201 method") :]
    places = [section.index(f"`{name}`") for name in READING_PATH]
    assert places == sorted(places), "the README's reading path names the files in another order"


def function_lines(path: str, name: str) -> int:
    """Lines of a function or method ('Class.method') from its def to its end, docstring and comments included."""
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and "." in name and node.name == name.split(".")[0]:
            tree, name = node, name.split(".")[1]
            break
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)
    return node.end_lineno - node.lineno + 1


def test_stage_loops_and_mains_fit_one_sitting():
    """main() of train.py about 60 lines, its loop body about 20 (with the step it calls, at least 12 of them the
    method), search.py's main
    about 50, evolution's generator about 90; no module but the two other spaces above about 600 lines; no stage
    script imports another; the run object has at most five public methods."""
    assert function_lines(os.path.join(ROOT, "train.py"), "main") <= 62
    assert function_lines(os.path.join(ROOT, "search.py"), "main") <= 52
    assert function_lines(os.path.join(ROOT, "evolution.py"), "generations") <= 92
    tree = ast.parse(open(os.path.join(ROOT, "train.py")).read())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    loop = next(n for n in ast.walk(main) if isinstance(n, ast.For) and "run.epoch" in ast.unparse(n.iter))
    body = open(os.path.join(ROOT, "train.py")).read().split("\n")[loop.lineno : loop.end_lineno]
    body = [line for line in body if line.strip()]
    method = [line for line in body if not PLUMBING.search(line.split("#")[0])]
    # the SPOS step the loop calls (forward, loss, zero_grad, backward, clip, step) is train_step, just above main
    step = function_lines(os.path.join(ROOT, "train.py"), "train_step")
    assert len(body) <= 20 and len(method) >= 6 and len(method) + step >= 12, (len(body), len(method), step)
    for name in MODULES:
        with open(os.path.join(ROOT, name + ".py")) as f:
            lines = len(f.read().splitlines())
        assert lines <= 620 or name in ("darts", "mobilenet"), (name, lines)
    stages = {"train", "search", "retrain"}
    for stage in stages:
        assert not imports_of(os.path.join(ROOT, stage + ".py")) & stages, stage
    tree = ast.parse(open(os.path.join(ROOT, "checkpoint.py")).read())
    run = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Run")
    public = [n.name for n in run.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
    assert len(public) <= 5, public


if __name__ == "__main__":  # the reading path, measured: python tests/test_layout.py
    measure = reading_path_measure()
    total = {k: sum(c[k] for c in measure.values()) for k in ("method", "plumbing", "flags", "headers")}
    for name, c in list(measure.items()) + [("total", total)]:
        n = sum(c.values())
        print(f"{name:18s} {n:5d} non-blank lines | method {c['method']:4d} ({100 * c['method'] / n:.0f} %) | plumbing "
              f"{c['plumbing']:3d} | flags and config {c['flags']:3d} | headers {c['headers']:3d}")
