"""The package's shape: its public API imports, no import cycle, and the layering the README states."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import stream_denoise

PACKAGE = Path(stream_denoise.__file__).parent


@pytest.mark.parametrize("name", stream_denoise.__all__)
def test_every_public_name_imports(name):
    assert getattr(stream_denoise, name) is not None
    assert name in dir(stream_denoise) or name in stream_denoise.__all__


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        stream_denoise.nope  # noqa: B018


def test_the_public_api_leaves_heavy_packages_unimported():
    code = ("import sys, stream_denoise as s; s.Frame, s.ConfigError, s.Capabilities, s.ModelConfig; "
            "heavy = [m for m in ('torch', 'tensorrt', 'onnxruntime', 'av', 'zmq', 'cv2') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(name: str, path: Path, modules: dict[str, Path], lazy: bool) -> set[str]:
    """The package modules ``name`` imports: at module level (run at import), or also inside
    functions (``lazy``); never those under ``if TYPE_CHECKING``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and (top or lazy):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base] + [f"{base}.{a.name}" for a in child.names]
                found.update(t for t in targets if t in modules)
            elif isinstance(child, ast.Import) and (top or lazy):
                found.update(a.name for a in child.names if a.name in modules)
            visit(child, inner)

    visit(ast.parse(path.read_text()), True)
    found.discard(name)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_no_import_cycle_at_import_time():
    """Module-level imports (what runs on ``import``) form no cycle anywhere in the package (the root
    package, which every module sits under, is left out: importing it first is how Python starts)."""
    modules = _modules()
    graph = {m: _imports(m, p, modules, lazy=False) - {"stream_denoise"} for m, p in modules.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_every_module_imports_on_its_own():
    for name in _modules():
        if name.endswith("__main__") or name == "stream_denoise.rtsp_out.gst_server":  # scripts (gst_server: system Python with gi)
            continue
        importlib.import_module(name)


def test_backends_never_import_export():
    """The layering: export/ (ONNX export, quantisation, engine building) may run a backend to check
    what it made; backends/ reach exported files only through model_files, even lazily."""
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("stream_denoise.backends"):
            bad = {m for m in _imports(name, path, modules, lazy=True) if m.startswith("stream_denoise.export")}
            assert not bad, f"{name} imports {bad}"


def test_no_private_name_is_imported_across_packages():
    """``from X import _name`` only within one sub-package (its private helpers stay its own)."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2 or (
                    isinstance(node, ast.ImportFrom) and node.level == 1 and path.parent == PACKAGE and node.module):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.relative_to(PACKAGE)} imports {private} from {node.module}"
