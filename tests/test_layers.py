"""The package's structure: its modules import one another without a circle (module-level imports; an import
inside a function runs when called and is not counted), and a concept's literals live in its one home."""

from __future__ import annotations

import ast
import pathlib

import onnxflip

PACKAGE = pathlib.Path(onnxflip.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _top_level_imports(tree: ast.Module):
    """Import statements run when the module loads: its body, and the bodies of top-level if/try blocks (not an
    ``if TYPE_CHECKING:`` block)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                stack += node.body + node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]


def _package_of(name: str, path: pathlib.Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules its loading imports (a submodule's parent packages too, except its own)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)} | {name}
        for node in _top_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    package = _package_of(name, path).split(".")
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    module = ".".join(parts[:i])
                    if module in modules and module not in ancestors:
                        graph[name].add(module)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module, or a module importing itself (Tarjan's algorithm)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph[v]:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_of_the_package_imports_itself_back():
    graph = import_graph()
    assert len(graph) > 40 and "onnxflip.data.sources" in graph["onnxflip.campaign.experiment"]
    assert _circles(graph) == []


def test_the_check_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _constants(value: str) -> list[str]:
    """The modules holding the string ``value`` as a literal of its own (not inside a longer docstring)."""
    return sorted(name for name, path in _modules().items()
                  if any(isinstance(node, ast.Constant) and node.value == value
                         for node in ast.walk(ast.parse(path.read_text(), str(path)))))


def test_the_injection_record_has_one_home():
    assert _constants("onnxflip.injection") == ["onnxflip.graph.record"]
    importers = sorted(name for name, path in _modules().items()
                       for node in _top_level_imports(ast.parse(path.read_text(), str(path)))
                       if isinstance(node, ast.ImportFrom) and any(a.name == "METADATA_KEY" for a in node.names)
                       and node.module == "onnxflip.graph.record")
    assert importers == ["onnxflip.graph"]  # the package's re-export; readers call InjectionRecord.read


def test_the_operator_is_named_by_the_contract_only():
    assert _constants("FlipBits") == []


def test_evaluate_enters_no_module_twice(tmp_path, capsys):
    """From the command line to results.json, no call goes back into a module it came from: at every call of
    onnxflip's code, the chain of onnxflip modules on the stack (consecutive frames of one module counted once)
    names each module once."""
    import sys

    import numpy as np

    from onnxflip.cli import main

    def chain(frame) -> list[str]:
        names = []
        while frame is not None:
            name = frame.f_globals.get("__name__", "")
            if name.startswith("onnxflip") and (not names or names[-1] != name):
                names.append(name)
            frame = frame.f_back
        return names[::-1]

    bounced: set[str] = set()

    def profile(frame, event, arg):
        if event == "call" and frame.f_globals.get("__name__", "").startswith("onnxflip"):
            names = chain(frame)
            if len(set(names)) != len(names):
                bounced.add(" -> ".join(names))

    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(data, input=rng.random((20, 3, 32, 32), dtype=np.float32), labels=rng.integers(0, 10, 20))
    model = PACKAGE.parent / "models" / "vgg11.onnx"
    sys.setprofile(profile)
    try:
        code = main(["evaluate", str(model), "--data", str(data), "--p", "0,1e-4", "--trials", "1", "--out",
                     str(tmp_path / "r")])
    finally:
        sys.setprofile(None)
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "r" / "results.json").is_file()
    assert not bounced, sorted(bounced)[:3]
