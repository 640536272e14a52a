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


def test_torchvision_is_imported_only_where_images_are_decoded():
    """Importing torchvision costs about 1.5 s of every start (it loads torch._dynamo): the stage scripts, a search
    and the batched tensor path on in-memory data never import it; the per-image pipeline does, on first use."""
    import sys

    code = (
        "import sys, torch, train, search, retrain\n"
        "from data import Relabeled, epoch_loader, load_dataset\n"
        "ds = load_dataset('fake', '', 'train', augment=True, fake_images=8)\n"
        "view = Relabeled(ds, torch.arange(8), ds.targets)\n"
        "batches = list(epoch_loader(view, 4, True, 0, 0, torch.device('cpu'), fast=True))\n"
        "print('torchvision' in sys.modules, len(batches))\n"
        "ds[0]\n"
        "print('torchvision' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "2", "True"], out.stderr[-2000:]
