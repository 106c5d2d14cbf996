"""The protocol core is sans-I/O: importing it pulls in no socket, clock, event loop or GUI.

Checked two ways: in a fresh interpreter, importing every m6t.protocol module must not load
those modules; and, for modules the interpreter loads by itself at start-up (so the first check
cannot see them), no m6t/protocol/*.py file may import them.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import m6t.protocol

FORBIDDEN = ("socket", "time", "asyncio", "pytun", "pyroute2", "select", "PySide6")
PROTOCOL_DIR = Path(m6t.protocol.__file__).parent
PROTOCOL_FILES = sorted(PROTOCOL_DIR.glob("*.py"))
PROTOCOL_MODULES = sorted(
    "m6t.protocol" if path.stem == "__init__" else f"m6t.protocol.{path.stem}"
    for path in PROTOCOL_FILES)

LIST_MODULES = "import json, sys; print(json.dumps(sorted(sys.modules)))"
IMPORT_CORE_THEN_LIST_MODULES = (
    "import importlib, json, sys\n"
    "for name in sys.argv[1:]:\n"
    "    importlib.import_module(name)\n"
    "print(json.dumps(sorted(sys.modules)))\n"
)


def modules_after(code: str, *args: str) -> set[str]:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                            timeout=60, check=True)
    return set(json.loads(result.stdout))


def loaded(modules: set[str], name: str) -> bool:
    return any(module == name or module.startswith(name + ".") for module in modules)


@pytest.fixture(scope="module")
def bare_interpreter_modules() -> set[str]:
    return modules_after(LIST_MODULES)


@pytest.fixture(scope="module")
def modules_after_importing_the_core() -> set[str]:
    return modules_after(IMPORT_CORE_THEN_LIST_MODULES, *PROTOCOL_MODULES)


def test_the_core_is_what_we_think_it_is() -> None:
    # Guards the checks below against passing vacuously on an empty package.
    assert {"m6t.protocol.gateway", "m6t.protocol.packets", "m6t.protocol.addressing",
            "m6t.protocol.ratelimit", "m6t.protocol.constants", "m6t.protocol.limits",
            "m6t.protocol.drops"} <= set(PROTOCOL_MODULES)


def test_importing_the_core_loads_no_io_module(
        bare_interpreter_modules: set[str], modules_after_importing_the_core: set[str]) -> None:
    after = modules_after_importing_the_core
    assert set(PROTOCOL_MODULES) <= after
    checkable = [name for name in FORBIDDEN if not loaded(bare_interpreter_modules, name)]
    assert checkable, "the interpreter preloads every forbidden module: nothing to check here"
    assert [name for name in checkable if loaded(after, name)] == []


def test_importing_the_core_loads_no_other_m6t_layer(
        modules_after_importing_the_core: set[str]) -> None:
    after = modules_after_importing_the_core
    others = {name for name in after if name.startswith("m6t.")} - set(PROTOCOL_MODULES)
    assert others == set()


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def imported_names(path: Path) -> set[str]:
    """Top-level names of every module a file imports, wherever the import statement is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and _called_name(node.func) in ("__import__", "import_module")):
            names.add(node.args[0].value.split(".")[0])
    return names


def test_imported_names_sees_every_form_of_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import time\nimport os.path as p\nfrom socket import socket\n"
                      "def f():\n    import select\n    __import__('asyncio')\n"
                      "    importlib.import_module('pytun')\n"
                      "from . import sibling\n")
    assert imported_names(sample) == {"time", "os", "socket", "select", "asyncio", "pytun"}


@pytest.mark.parametrize("path", PROTOCOL_FILES, ids=lambda path: path.name)
def test_no_core_file_imports_an_io_module(path: Path) -> None:
    # Covers all of FORBIDDEN, in particular what a bare interpreter already has loaded
    # (`time`: CPython's zipimport loads it at start-up), which the subprocess test cannot see.
    assert sorted(imported_names(path) & set(FORBIDDEN)) == []
