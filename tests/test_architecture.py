"""The house's import rules, read from the source with ast (function-level imports included).

Rules, by package (not by today's file names):
  - no circle between modules of rltui/, trainer/, evaluator/;
  - the core (rltui/ except the front ends rltui/cli, rltui/tui and the rltui/sync_to_s3 entry
    point) imports neither a front end nor textual/torch/transformers/peft/boto3 when it is
    imported (following its module-level imports through other modules);
  - boto3 (botocore, s3transfer) only inside functions of rltui/archive;
  - the manager never runs torch: no rltui module imports torch/transformers/peft or
    trainer/evaluator, at any level (those run in child processes);
  - trainer/ and evaluator/ reach into rltui only for the on-disk contract: modules of
    rltui/runs/ that, with everything they import, use the standard library (and PyYAML) alone.

Imports under `if TYPE_CHECKING:` are annotations, never run, and are not counted.
`importlib.import_module("a.b")` with a literal name counts as an import, and so does each name in
a `NAME_MODULES = ["a.b", ...]` registry (rltui.cli.main's COMMAND_MODULES).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("rltui", "trainer", "evaluator")
FRONT_ENDS = ("rltui.cli", "rltui.tui", "rltui.sync_to_s3")
CONTRACT_PACKAGE = "rltui.runs"
UI_AND_ML = ("textual", "torch", "transformers", "peft", "boto3", "botocore", "s3transfer")
ML = ("torch", "transformers", "peft")
S3 = ("boto3", "botocore", "s3transfer")
CONTRACT_EXTERNALS = set(sys.stdlib_module_names) | {"yaml"}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # an internal module, or the top-level name of an external one
    line: int
    at_import_time: bool  # False: inside a function (runs only when called)
    internal: bool

    def where(self) -> str:
        return f"{self.source}:{self.line} -> {self.target}" + ("" if self.at_import_time else " (in a function)")


class Graph:
    """Every module of `packages` under `root` and the imports each makes."""

    def __init__(self, root: Path, packages: tuple[str, ...] = PACKAGES) -> None:
        self.files: dict[str, Path] = {}
        for pkg in packages:
            for path in sorted((root / pkg).rglob("*.py")):
                parts = list(path.relative_to(root).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts.pop()
                self.files[".".join(parts)] = path
        self.packages = packages
        self.imports: dict[str, list[Import]] = {m: self._read(m, p) for m, p in self.files.items()}

    # ------------------------------------------------------------ reading

    def _read(self, module: str, path: Path) -> list[Import]:
        found: list[Import] = []
        is_package = path.name == "__init__.py"

        def add(name: str, line: int, at_import_time: bool, alias: str | None = None) -> None:
            if alias is not None and self.known(f"{name}.{alias}"):
                name = f"{name}.{alias}"  # `from pkg import module`
            top = name.split(".")[0]
            if top in self.packages:
                target = self.known(name)
                if target is not None and target != module:
                    found.append(Import(module, target, line, at_import_time, True))
            else:
                found.append(Import(module, top, line, at_import_time, False))

        def visit(node: ast.AST, in_function: bool) -> None:
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                for child in node.orelse:
                    visit(child, in_function)
                return
            if isinstance(node, ast.Import):
                for a in node.names:
                    add(a.name, node.lineno, not in_function)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, is_package, node.module, node.level)
                for a in node.names:
                    add(base, node.lineno, not in_function, alias=a.name)
            elif isinstance(node, ast.Call) and _is_import_module(node):
                add(node.args[0].value, node.lineno, not in_function)  # type: ignore[attr-defined]
            elif isinstance(node, ast.Assign) and _is_module_list(node):
                for item in node.value.elts:  # type: ignore[attr-defined]
                    add(item.value, item.lineno, False)  # imported by name later (COMMAND_MODULES)
            inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for child in ast.iter_child_nodes(node):
                visit(child, inner)

        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
        return found

    def known(self, name: str) -> str | None:
        """The module `name` is, or lies in (`a.b.func` -> `a.b`)."""
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if candidate in self.files:
                return candidate
        return None

    # ------------------------------------------------------------ questions

    def internal(self, module: str, *, import_time_only: bool = False) -> list[Import]:
        return [i for i in self.imports[module] if i.internal and (i.at_import_time or not import_time_only)]

    def loaded_with(self, module: str, *, import_time_only: bool) -> dict[str, list[Import]]:
        """Every module that importing `module` (and, unless import_time_only, calling into it)
        loads, with the chain of imports that gets there; parent packages included."""
        chains: dict[str, list[Import]] = {module: []}
        todo = [module]
        while todo:
            current = todo.pop()
            steps = [Import(current, p, 0, True, True) for p in _parents(current) if p in self.files]
            steps += self.internal(current, import_time_only=import_time_only)
            for imp in steps:
                if imp.target not in chains:
                    chains[imp.target] = chains[current] + [imp]
                    todo.append(imp.target)
        return chains

    def circles(self) -> list[list[str]]:
        """Strongly connected groups of more than one module (Tarjan, iterative)."""
        edges = {m: sorted({i.target for i in self.internal(m)}) for m in self.files}
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        groups: list[list[str]] = []
        for start in sorted(edges):
            if start in index:
                continue
            work = [(start, iter(edges[start]))]
            index[start] = low[start] = len(index)
            stack.append(start)
            on_stack.add(start)
            while work:
                node, children = work[-1]
                child = next(children, None)
                if child is not None:
                    if child not in index:
                        index[child] = low[child] = len(index)
                        stack.append(child)
                        on_stack.add(child)
                        work.append((child, iter(edges[child])))
                    elif child in on_stack:
                        low[node] = min(low[node], index[child])
                    continue
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        group.append(m)
                        if m == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
        return groups

    def circle_imports(self, group: list[str]) -> list[str]:
        members = set(group)
        return list(dict.fromkeys(i.where() for m in group for i in self.internal(m) if i.target in members))


def _absolute(module: str, is_package: bool, name: str | None, level: int) -> str:
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _is_import_module(call: ast.Call) -> bool:
    f = call.func
    named = (isinstance(f, ast.Attribute) and f.attr == "import_module") or (
        isinstance(f, ast.Name) and f.id == "import_module")
    return named and bool(call.args) and isinstance(call.args[0], ast.Constant) and isinstance(
        call.args[0].value, str)


def _is_module_list(assign: ast.Assign) -> bool:
    """`NAME_MODULES = ["pkg.mod", ...]`: a registry of modules imported by name."""
    names = [t.id for t in assign.targets if isinstance(t, ast.Name)]
    items = getattr(assign.value, "elts", None)
    return bool(names) and names[0].endswith("_MODULES") and bool(items) and all(
        isinstance(i, ast.Constant) and isinstance(i.value, str) for i in items)


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


def _in(module: str, packages: tuple[str, ...] | str) -> bool:
    packages = (packages,) if isinstance(packages, str) else packages
    return any(module == p or module.startswith(p + ".") for p in packages)


def is_core(module: str) -> bool:
    return _in(module, "rltui") and not _in(module, FRONT_ENDS)


def _chain(chain: list[Import]) -> str:
    return " => ".join(i.where() for i in chain if i.line) or "(itself)"


# ---------------------------------------------------------------- the checks


def problems(graph: Graph) -> list[str]:
    """Every broken rule, one line each."""
    out: list[str] = []
    for group in graph.circles():
        out.append(f"import circle {group}: " + "; ".join(graph.circle_imports(group)))

    for module in graph.files:
        if is_core(module):
            for imp in graph.internal(module):
                if _in(imp.target, FRONT_ENDS):
                    out.append(f"core imports a front end: {imp.where()}")
            for loaded, chain in graph.loaded_with(module, import_time_only=True).items():
                for imp in graph.imports[loaded]:
                    if not imp.internal and imp.at_import_time and imp.target in UI_AND_ML:
                        out.append(f"importing {module} imports {imp.target}: "
                                   f"{_chain(chain + [imp])}")
        if _in(module, "rltui"):
            for imp in graph.imports[module]:
                if imp.target in S3 and not (_in(module, "rltui.archive") and not imp.at_import_time):
                    out.append(f"{imp.target} outside a function of rltui/archive: {imp.where()}")
                if imp.target in ML or (imp.internal and _in(imp.target, ("trainer", "evaluator"))):
                    out.append(f"the manager imports {imp.target} (run it in a child process): "
                               f"{imp.where()}")
        if _in(module, ("trainer", "evaluator")):
            for imp in graph.internal(module):
                if _in(imp.target, "rltui"):
                    out += _contract_problems(graph, imp)
    return sorted(set(out))


def _contract_problems(graph: Graph, imp: Import) -> list[str]:
    if not (_in(imp.target, CONTRACT_PACKAGE) or imp.target in _parents(CONTRACT_PACKAGE)):
        return [f"{imp.source} reaches into rltui beyond the on-disk contract "
                f"({CONTRACT_PACKAGE}): {imp.where()}"]
    out = []
    for loaded, chain in graph.loaded_with(imp.target, import_time_only=False).items():
        if not (_in(loaded, CONTRACT_PACKAGE) or loaded in _parents(CONTRACT_PACKAGE)):
            out.append(f"{imp.source} uses {imp.target}, which is not contract alone: "
                       f"{_chain([imp] + chain)}")
        for ext in graph.imports[loaded]:
            if not ext.internal and ext.target not in CONTRACT_EXTERNALS:
                out.append(f"{imp.source} uses {imp.target}, which needs {ext.target}: "
                           f"{_chain([imp] + chain + [ext])}")
    return out


@pytest.fixture(scope="module")
def graph() -> Graph:
    return Graph(REPO)


def test_the_house_keeps_its_import_rules(graph: Graph) -> None:
    found = problems(graph)
    assert not found, "\n".join(found)


def test_the_reader_sees_function_level_and_dynamic_imports(graph: Graph) -> None:
    # The rules above mean something only if the reader finds imports where they hide.
    main = {(i.target, i.at_import_time) for i in graph.internal("rltui.cli.main")}
    assert ("rltui.tui.app", False) in main  # inside main(): the TUI, only when opened
    assert ("rltui.cli.parser", True) in main
    assert ("rltui.cli.launch", False) in main  # COMMAND_MODULES, imported by name
    keeper = graph.loaded_with("rltui.jobs.keeper", import_time_only=True)
    assert "rltui.runs.localfs" in keeper and "rltui" in keeper  # parents count
    archive = [i for m in graph.files if _in(m, "rltui.archive") for i in graph.imports[m] if i.target == "boto3"]
    assert archive and not any(i.at_import_time for i in archive)
    trainer = {i.target for m in graph.files if _in(m, "trainer") for i in graph.internal(m)}
    assert "rltui.runs.localfs" in trainer and "rltui.runs.checkpoints" in trainer


def _tree(tmp_path: Path, files: dict[str, str]) -> Graph:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return Graph(tmp_path)


def test_each_rule_catches_what_it_forbids(tmp_path: Path) -> None:
    graph = _tree(tmp_path, {
        # a circle closed only by an import inside a function, and one through a relative import
        "rltui/jobs/__init__.py": "",
        "rltui/jobs/a.py": "from rltui.jobs import b\n",
        "rltui/jobs/b.py": "def f():\n    from rltui.cli import cmd\n",
        "rltui/cli/__init__.py": "",
        "rltui/cli/cmd.py": "import importlib\nimportlib.import_module('rltui.jobs.a')\n",
        "rltui/cli/main.py": "COMMAND_MODULES = ['rltui.cli.reg']\n",  # a registry closes a circle too
        "rltui/cli/reg.py": "def f():\n    from rltui.cli.main import COMMAND_MODULES\n",
        "rltui/runs/__init__.py": "",
        "rltui/runs/heavy.py": "from . import light\nimport textual\n",
        "rltui/runs/light.py": "import json\n",
        "rltui/runs/netty.py": "import requests\n",
        "rltui/archive/__init__.py": "",
        "rltui/archive/s3.py": "import boto3\n\ndef client():\n    import botocore\n",
        "rltui/gpu.py": "def f():\n    import torch\n",
        "rltui/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import textual\n",
        "trainer/x.py": "from rltui.runs import light, netty\nfrom rltui.jobs import a\n",
    })
    found = "\n".join(problems(graph))
    assert "import circle ['rltui.cli.cmd', 'rltui.jobs.a', 'rltui.jobs.b']" in found
    assert "import circle ['rltui.cli.main', 'rltui.cli.reg']" in found
    assert "core imports a front end: rltui.jobs.b:2 -> rltui.cli.cmd (in a function)" in found
    assert "importing rltui.runs.heavy imports textual" in found
    assert "boto3 outside a function of rltui/archive: rltui.archive.s3:1" in found
    assert "rltui.archive.s3:4 -> botocore" not in found
    assert "the manager imports torch (run it in a child process): rltui.gpu:2" in found
    assert "rltui.typed" not in found
    assert "trainer.x uses rltui.runs.netty, which needs requests" in found
    assert "trainer.x reaches into rltui beyond the on-disk contract (rltui.runs): trainer.x:2 -> rltui.jobs.a" in found
    assert "rltui.runs.light," not in found
