"""The code's structure: no module of the project imports another that imports it back, and the
library's messages name its parameters as luigi.cfg sets them, from one table."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "tasks", "benchmarks", "webapp")


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path, modules):
    """The project modules ``path`` imports, at its top or inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
    return {m for m in found if m in modules and m != name}


def cycles(graph):
    """The strongly connected sets of more than one module (Tarjan)."""
    index, low, stack, on, result, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = set()
            while True:
                w = stack.pop()
                on.discard(w)
                part.add(w)
                if w == v:
                    break
            if len(part) > 1:
                result.append(sorted(part))

    for v in graph:
        if v not in index:
            visit(v)
    return result


def test_no_module_imports_one_that_imports_it_back():
    paths = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {module_name(p) for p in paths}
    # a package's __init__ gathers its modules; a module importing its own package is the cycle to find
    graph = {module_name(p): imports(p, modules) for p in paths}
    assert cycles(graph) == []


def message_texts(path):
    """The string constants of ``path`` that are not docstrings (messages, formats, names)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for statement in body:  # a module's, class's or function's, and attribute docstrings
                if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                    docstrings.add(id(statement.value))
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_the_library_names_its_parameters_as_luigi_cfg_sets_them_from_one_table(monkeypatch):
    from pipeline import errors
    from pipeline.errors import ConfigError
    from pipeline.neighbours import check_k
    from pipeline.settings import SECTIONS

    library = [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "webapp").rglob("*.py")]
    tables = (ROOT / "pipeline" / "errors.py", ROOT / "pipeline" / "settings.py")
    texts = [t for p in library if p not in tables for t in message_texts(p)]
    assert [m for t in texts for m in re.findall(SETTING, t)] == []  # only the tables name a section
    used = {name for p in library for name in re.findall(r"named\(['\"]([^'\"]+)['\"]\)", p.read_text())}
    assert used == set(errors.NAMES)  # each one named, none left over
    keys = {section.section: section.names() for section in SECTIONS}
    for parameter, name in errors.NAMES.items():  # a setting of luigi.cfg, or its flag on the command line
        setting = re.fullmatch(SETTING, name) or re.fullmatch(r"--([a-z]+)-([a-z-]+)", name)
        section, key = setting.groups() if name != "luigi.cfg" else ("paths", "content")
        assert key.replace("-", "_") in keys[section], (parameter, name)
    with pytest.raises(ConfigError, match=r"^\[neighbours\] k=9 must be between 1 and"):
        check_k(9, 5)
    monkeypatch.setattr(errors, "NAMES", {})  # without the table
    with pytest.raises(ConfigError, match=r"^k=9 must be between 1 and"):
        check_k(9, 5)


def test_importing_a_module_changes_no_other():
    """No import has side effects on the library: a fresh interpreter's table of names is the same
    before and after the tasks are imported."""
    import subprocess
    import sys

    code = "from pipeline import errors; before = dict(errors.NAMES); import tasks; print(before == errors.NAMES)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stderr[-2000:]


#: A setting as luigi.cfg's sections name it: [section] key.
SETTING = r"\[([a-z_]+)\] ([a-z_]+)"


def test_completeness_is_the_base_classes_own_but_for_external_inputs_and_database_loads():
    from benchmarks.codesize import overrides

    base = {"base.RunTask.complete", "base.Stage.complete"}  # Luigi's, holding the run; the stages'
    allowed = {"base.RunGuard.complete", "load.LoadSimilarities.complete", "load.LoadCopies.complete"}
    assert set(overrides(ROOT)) - base <= allowed, "a task works out its completeness itself: see tasks.base.Stage"
