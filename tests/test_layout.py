"""The package graph, read from the source with `ast` (nothing is imported):

    nano_io  <-  tokenizer  <-  nano_core  <-  nano_torch, nano_mlx  <-  benchmarks

nano_io/ (atomic files and directories, text sources, the worker pool) is the bottom layer and imports no other
nano package; tokenizer/ imports only nano_io; nano_core/ is backend-free (neither torch nor mlx,
nor a backend package); the two backends never import each other; no package imports benchmarks/. Imports between
nano packages sit at module top, never inside a function, so the graph above is the whole truth (a lazy import
would hide a dependency or a cycle). Lazy imports of heavy optional third-party modules are fine. No module of
the packages or the benchmarks imports a private (`_name`) name from another module: what is shared is public.
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("nano_io", "tokenizer", "nano_core", "nano_torch", "nano_mlx")
NANO = PACKAGES + ("benchmarks",)
FORBIDDEN = {  # package -> top-level modules it must never import (at any level)
    "nano_io": {"tokenizer", "nano_core", "nano_torch", "nano_mlx", "benchmarks"},
    "tokenizer": {"nano_core", "nano_torch", "nano_mlx", "benchmarks"},
    "nano_core": {"torch", "mlx", "nano_torch", "nano_mlx", "benchmarks"},
    "nano_torch": {"nano_mlx", "benchmarks"},
    "nano_mlx": {"nano_torch", "benchmarks"},
}


class _Imports(ast.NodeVisitor):
    """(line, imported module, inside a function or class?) for every import statement and every
    importlib.import_module("...") / __import__("...") call with a literal name; `names`: (line, module, name) for
    every `from module import name`."""

    def __init__(self, package: str):
        self.package, self.depth, self.found, self.names = package, 0, [], []

    def _nested(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = _nested

    def visit_Import(self, node):
        for alias in node.names:
            self.found.append((node.lineno, alias.name, self.depth > 0))

    def visit_ImportFrom(self, node):
        module = self.package if node.level else ""  # a relative import stays inside the file's own package
        module = ".".join(p for p in (module, node.module or "") if p)
        self.found.append((node.lineno, module, self.depth > 0))
        self.names += [(node.lineno, module, alias.name) for alias in node.names]

    def visit_Call(self, node):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            self.found.append((node.lineno, node.args[0].value, self.depth > 0))
        self.generic_visit(node)


def _imports(packages=PACKAGES):
    """[(package, file relative to the repo, line, imported module, nested)] for every .py file of `packages`;
    each file's `from module import name` rows go to NAMES[package]."""
    rows = []
    for package in packages:
        files = sorted(p for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts)
        assert files, f"{package}/ has no Python files: the layout test would check nothing"
        NAMES[package] = []
        for path in files:
            text, rel = path.read_text(encoding="utf-8"), path.relative_to(REPO).as_posix()
            visitor = _Imports(package)
            visitor.visit(ast.parse(text, filename=str(path)))
            lines = text.splitlines()
            for line, module, nested in visitor.found:
                rows.append((package, rel, line, module, nested))
                SOURCE_LINES[rel, line] = lines[line - 1]
            NAMES[package] += [(rel, line, module, name) for line, module, name in visitor.names]
    return rows


SOURCE_LINES: dict = {}  # (file, line) -> the line's text
NAMES: dict = {}  # package -> [(file, line, module, name)] for every `from module import name` in it
IMPORTS = _imports()


def _top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_downwards(package):
    """(a) tokenizer imports no other nano package; (b) nano_core neither torch, mlx nor a backend;
    (c) the backends never import each other; none of them imports benchmarks."""
    bad = [f"{rel}:{line}: {package} must not import {module}" for pkg, rel, line, module, _ in IMPORTS
           if pkg == package and _top(module) in FORBIDDEN[package]]
    assert not bad, "\n".join(bad)


def test_no_function_level_imports_between_nano_packages():
    """(d) An import of another nano package sits at module top, where the graph can be read. Inside one package a
    lazy import is allowed only to break a real import cycle, and says so in a comment on its line ("cycle")."""
    bad = [f"{rel}:{line}: function-level import of {module} (move it to the top of the module)"
           for pkg, rel, line, module, nested in IMPORTS if nested and _top(module) in NANO and _top(module) != pkg]
    bad += [f"{rel}:{line}: function-level import of {module} inside {pkg}/ without a comment naming the cycle "
            "it breaks" for pkg, rel, line, module, nested in IMPORTS
            if nested and _top(module) == pkg and "cycle" not in SOURCE_LINES[rel, line].partition("#")[2]]
    assert not bad, "\n".join(bad)


def test_no_benchmark_module_shadows_a_nano_package():
    """(e) `python benchmarks/X.py` puts benchmarks/ first on sys.path: a benchmarks/tokenizer.py would be imported
    instead of the tokenizer package."""
    bad = [f"{p.relative_to(REPO).as_posix()}: named like the {p.stem} package; rename it"
           for p in sorted((REPO / "benchmarks").iterdir())
           if p.stem in NANO and (p.suffix == ".py" or p.is_dir())]
    assert not bad, "\n".join(bad)


def test_imports_of_nano_modules_name_modules_that_exist():
    """A moved module leaves no import of its old path behind (in the packages, the benchmarks or the tests)."""
    def exists(module: str) -> bool:
        path = REPO.joinpath(*module.split("."))
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()

    bad = [f"{rel}:{line}: imports {module}, which does not exist" for _, rel, line, module, _ in
           _imports(PACKAGES + ("benchmarks", "tests")) if _top(module) in PACKAGES and not exists(module)]
    assert not bad, "\n".join(bad)


def test_the_checks_see_imports():
    """Guard against a vacuous pass: the known edges of the graph are found."""
    edges = {(pkg, _top(module)) for pkg, _, _, module, _ in IMPORTS}
    assert {("nano_core", "tokenizer"), ("tokenizer", "tokenizer"), ("tokenizer", "nano_io"),
            ("nano_core", "nano_io"), ("nano_io", "nano_io")} <= edges
    assert any(name == "atomic_write" for _, _, _, name in NAMES["tokenizer"])


PRIVATE_IMPORTS_PENDING: set[tuple[str, str]] = set()  # (module, name) pairs allowed while a rename is pending


def test_no_private_name_is_imported_from_another_module():
    """(g) What a module shares has a public name: `from x import _name` would tie a module to another's
    internals (a rename there breaks it, and the reader of x cannot see that anyone depends on it). Dunder names
    (`__version__`) are public."""
    _imports(("benchmarks",))
    rows = [row for package in PACKAGES + ("benchmarks",) for row in NAMES[package]]
    bad = [f"{rel}:{line}: imports the private name {name} from {module}; give it a public name there"
           for rel, line, module, name in rows if _top(module) in NANO and name.startswith("_")
           and not name.startswith("__") and (module, name) not in PRIVATE_IMPORTS_PENDING]
    assert not bad, "\n".join(bad)


def test_no_test_module_imports_another():
    """(f) A test module reads on its own: what several share is a fixture in conftest.py or a helper in
    tests/helpers.py, never a name imported from another test module (which would also run that module's
    module-level code twice, under two names, when imported as both `test_x` and `tests.test_x`)."""
    def is_test_module(module: str) -> bool:
        last = module.split(".")[-1]
        return last.startswith("test_") or last == "conftest"

    rows = _imports(("tests",))
    bad = [f"{rel}:{line}: imports the test module {module}; move what it needs to tests/helpers.py or a fixture"
           for _, rel, line, module, _ in rows if is_test_module(module)]
    helpers = ast.parse((REPO / "tests" / "helpers.py").read_text(encoding="utf-8"))
    bad += [f"tests/helpers.py:{node.lineno}: defines {node.name}, which pytest would collect: tests go in test_*.py"
            for node in helpers.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
            and node.name.lower().startswith("test")]
    assert not bad, "\n".join(bad)
