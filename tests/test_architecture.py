"""The layout is the architecture: stage packages in one order, thin commands, no flags on import.

Walks the imports of every module of ``exif_keras`` with ``ast`` (module-level and lazy imports
inside functions alike: a lazy import is still an arrow) and fails on an import circle, on an
import from a lower stage to a higher one, and on a command importing another command. Then
imports every library module in a fresh process and checks that none defines an absl flag.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "exif_keras"
# Lower to higher: data flows from photos to records, batches, a model, training, serving, analysis.
STAGES = ("common", "records", "data", "modeling", "training", "serving", "analysis")
COMMANDS = ("make_records", "train", "export", "predict", "explain", "study", "benchmark",
            "serve")


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: pathlib.Path, modules) -> set[str]:
    """The exif_keras modules ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module_name(path).split(".")
                base = base[: len(base) - node.level + (path.name == "__init__.py")]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import module` imports the module; `from module import name`, the module
            names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "exif_keras" and name != module_name(path):
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def stage_of(module: str):
    """(rank, kind): stages by their order; commands above every stage; the package root lowest."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1, "root"
    if parts[1] in STAGES:
        return STAGES.index(parts[1]), parts[1]
    if parts[1] in COMMANDS and len(parts) == 2:
        return len(STAGES), "command"
    return None, parts[1]


def test_every_module_has_a_stage():
    homeless = [m for m in graph() if stage_of(m)[0] is None]
    assert not homeless, f"modules outside the stage packages and the commands: {homeless}"


def test_the_commands_are_where_python_m_finds_them():
    for command in COMMANDS:
        assert (PACKAGE / f"{command}.py").is_file(), command


def test_no_import_from_a_lower_stage_to_a_higher_one():
    arrows = []
    for module, targets in graph().items():
        rank, _ = stage_of(module)
        for target in targets:
            target_rank, kind = stage_of(target)
            if kind == "command" and module != target:
                arrows.append(f"{module} -> {target} (a command)")
            elif rank is not None and target_rank is not None and target_rank > rank:
                arrows.append(f"{module} -> {target}")
    assert not arrows, "imports that point up the stages:\n" + "\n".join(sorted(arrows))


def test_no_import_circle():
    edges = graph()
    circles, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    """The walker itself: an import inside a function counts, and so does a relative one."""
    source = tmp_path / "exif_keras" / "common" / "x.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from exif_keras.serving import exporter\n"
                      "from ..records import writer\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "exif_keras"
    try:
        found = imports_of(source, {"exif_keras.serving.exporter", "exif_keras.records.writer",
                                    "exif_keras.common.x", "exif_keras.serving"})
    finally:
        PACKAGE = saved
    assert found == {"exif_keras.serving.exporter", "exif_keras.records.writer"}


_FLAG_CHECK = r"""
import importlib, json, sys
from absl import app, flags, logging  # absl's own flags
import tensorflow, keras, numpy, PIL, matplotlib
try:
    import apache_beam
except ImportError:
    pass
before = set(flags.FLAGS)
defined = {}
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
    new = sorted(set(flags.FLAGS) - before)
    if new:
        defined[name] = new
        before |= set(new)
print(json.dumps(defined))
"""


def test_importing_a_library_module_defines_no_flag():
    library = sorted(m for m in graph() if stage_of(m)[1] != "command")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", _FLAG_CHECK, json.dumps(library)],
                         capture_output=True, text=True, env=env, timeout=300,
                         cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    defined = json.loads(out.stdout.strip().splitlines()[-1])
    assert defined == {}, f"library modules that define absl flags when imported: {defined}"


def test_each_module_has_one_name_wherever_it_is_imported():
    """`from exif_keras.modeling import model as model_lib` everywhere, never `as exif_model`
    in one file and `as model` in another: a reader learns each name once."""
    names: dict[str, set[str]] = {}
    modules = set(all_modules())
    files = list(PACKAGE.rglob("*.py")) + list((PACKAGE.parent / "tests").rglob("*.py"))
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("exif_keras"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in modules:  # a module, not a function or class
                        names.setdefault(full, set()).add(alias.asname or alias.name)
    several = {module: sorted(spellings) for module, spellings in names.items()
               if len(spellings) > 1}
    assert not several, f"modules imported under several names: {several}"
