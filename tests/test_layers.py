"""The package's import layers: folders are the pipeline and imports point one way.

Every import of the package's own modules (module level and inside functions) is read with ``ast``
and checked against the layers below; a new module lands in a layer by its folder, so a new
upward import fails here with the file and line that made it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "m2s2l_deploy"
NAME = "m2s2l_deploy"

# Lower numbers are lower layers: a unit may import only units of lower layers (and itself).
LAYERS = {
    "__init__": 0, "errors": 0,                                  # the version and the user-facing errors
    "files": 1, "contract": 1, "urls": 1,                        # atomic writes; how frames become input; URL credentials
    "ops": 2, "data": 2, "report": 2,                            # scan forms; datasets and video; metrics, plots
    "model": 3,                                                  # the PyTorch model, its score and checkpoints
    "export": 4,                                                 # model -> ONNX
    "engine": 5,                                                 # ONNX -> TensorRT plan
    "runners": 6,                                                # torch | onnxruntime | tensorrt
    "jobs": 7, "serving": 7,                                     # what users run; serving beside the jobs
    "cli": 8,                                                    # parses and prints
    "__main__": 9,                                               # python -m m2s2l_deploy
}
# Further rules the ranks alone would allow.
FORBIDDEN = {
    ("engine", "model"): "the engine builder works from ONNX files, never from the PyTorch model",
    ("engine", "runners"): "runners use engines, not the other way round",
}
ALLOWED_INTO = {("engine", "export"): {"export.scan_graph"}}   # the SelectiveScan node's torch-free ONNX definition


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"] if rel.parts[-1] == "__init__" and len(rel.parts) > 1 else rel.parts
    return ".".join(parts)


def _imports(path: Path):
    """(line, imported module relative to the package) for every import of our own modules."""
    mod = _module_name(path)
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == NAME or node.module.startswith(NAME + ".")):
                target = node.module[len(NAME) + 1:]
            else:
                continue
            names = [f"{target}.{a.name}" if target else a.name for a in node.names]
            for name in names:
                yield node.lineno, name if _exists(name) else target
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(NAME + "."):
                    yield node.lineno, a.name[len(NAME) + 1:]


def _exists(dotted: str) -> bool:
    p = PKG.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _unit(dotted: str) -> str:
    return dotted.split(".")[0] if dotted else "__init__"


def _edges():
    for path in sorted(PKG.rglob("*.py")):
        mod = _module_name(path)
        for line, target in _imports(path):
            yield path.relative_to(PKG.parent), line, mod, target


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in PKG.rglob("*.py")}
    assert units <= set(LAYERS), f"modules without a layer: {sorted(units - set(LAYERS))}"


def test_imports_point_down():
    wrong = []
    for where, line, mod, target in _edges():
        a, b = _unit(mod), _unit(target)
        if a == b:
            continue
        if (a, b) in ALLOWED_INTO and any(target == t or target.startswith(t + ".") for t in ALLOWED_INTO[(a, b)]):
            continue
        if (a, b) in FORBIDDEN:
            wrong.append(f"{where}:{line}: {mod} imports {target}: {FORBIDDEN[(a, b)]}")
        elif (a, b) in ALLOWED_INTO or LAYERS[b] >= LAYERS[a]:
            wrong.append(f"{where}:{line}: {mod} (layer {a}) imports {target} (layer {b}), an equal or higher layer")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for _, _, mod, target in _edges():
        if target != mod:
            graph.setdefault(mod, set()).add(target)
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in graph.get(node, ()):
            visit(nxt)
        stack.pop()

    for node in list(graph):
        visit(node)
    # a package importing its own submodule (``__init__`` re-exports) is not a cycle of modules
    real = [c for c in cycles if not all(x == c[0] or x.startswith(c[0] + ".") or c[0].startswith(x + ".")
                                         for x in c)]
    assert not real, "import cycles: " + "; ".join(" -> ".join(c) for c in real)


def test_no_process_wide_mode_switches():
    """Modes are arguments: no ``global`` rebinding in the package except once-per-process registrations."""
    registrations = {"runners/scan_op.py"}          # the onnxruntime-extensions op is registered once per process
    found = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Global) and rel not in registrations:
                found.append(f"{rel}:{node.lineno}: global {', '.join(node.names)}")
    assert not found, found
