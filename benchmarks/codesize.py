"""The code's size in the counts a reader feels: lines of code per package (no blank lines, comments
or docstrings), the task classes that override ``complete()`` or ``digest()``, module-level caches
(an empty dict, set or list, ``threading.local()`` or ``functools.cache`` at a module's top), and
the words of the README and ``docs/``.

``python -m benchmarks.codesize [ROOT]`` prints them as JSON (ROOT: another checkout to compare).
"""

import ast
import json
import pathlib
import re
import sys

PACKAGES = ("tasks", "pipeline", "webapp")


def code_lines(source):
    """The lines of ``source`` that hold code: not blank, not only a comment, not in a docstring."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for statement in body:
                if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                    if isinstance(statement.value.value, str):
                        docstrings.update(range(statement.lineno, statement.end_lineno + 1))
    return sum(
        1
        for number, line in enumerate(source.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#") and number not in docstrings
    )


def overrides(root):
    """``module.Class.method`` for each task class that defines ``complete`` or ``digest``."""
    found = []
    for path in sorted((root / "tasks").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name in ("complete", "digest"):
                        found.append(f"{path.stem}.{node.name}.{item.name}")
    return found


def _is_cache(value):
    if isinstance(value, (ast.Dict, ast.Set, ast.List)):
        return not getattr(value, "keys", None) and not getattr(value, "elts", None)
    if isinstance(value, ast.Call):
        name = ast.unparse(value.func)
        return name in ("set", "dict", "list", "collections.OrderedDict", "threading.local") and not value.args
    return False


def caches(root):
    """``module.NAME`` for each module-level cache of the project's packages."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and _is_cache(node.value):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    found += [f"{module}.{ast.unparse(t)}" for t in targets]
                elif isinstance(node, ast.FunctionDef):
                    decorators = [ast.unparse(d) for d in node.decorator_list]
                    if any(re.match(r"(functools\.)?(cache|lru_cache)", d) for d in decorators):
                        found.append(f"{module}.{node.name}()")
    return found


def words(path):
    return len(path.read_text().split())


def measure(root):
    root = pathlib.Path(root)
    lines = {
        package: sum(code_lines(p.read_text()) for p in (root / package).rglob("*.py"))
        for package in PACKAGES
        if (root / package).is_dir()
    }
    docs = {p.name: words(p) for p in sorted((root / "docs").glob("*.md"))}
    return {
        "lines_of_code": lines,
        "complete_or_digest_overrides": overrides(root),
        "module_level_caches": caches(root),
        "words": {"README.md": words(root / "README.md"), "docs": sum(docs.values()), "docs_pages": docs},
    }


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent
    figures = measure(root)
    figures["complete_or_digest_overrides_count"] = len(figures["complete_or_digest_overrides"])
    figures["module_level_caches_count"] = len(figures["module_level_caches"])
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
