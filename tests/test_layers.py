"""The package's layers import downward only, and no two folders import each other (read from the source).

Every ``import pemma.x`` / ``from pemma.x import ...`` counts, also the ones inside functions, so a cycle cannot
be hidden by a function-local import. The layers are those of ``shared/docs/architecture.md``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pemma

SRC = Path(pemma.__file__).parent

#: bottom to top; a unit (a top-level module or a folder of ``pemma``) may import from its own layer or below
LAYERS: tuple[tuple[str, ...], ...] = (
    ("vocab", "errors", "io_utils", "config_fields", "run_guards"),
    ("runs", "run_folder", "runtime", "config", "modalities"),
    ("data",),
    ("adapters",),
    ("models",),
    ("inference", "evaluation"),
    ("training",),
    ("methods",),
    ("survival",),
    ("protocol",),
    ("api", "__init__"),
    ("cli", "__main__"),
)
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """``pemma.models.loaded`` -> ``models``; ``pemma`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def pemma_imports(path: Path, module: str | None = None) -> list[tuple[str, int]]:
    """``[(imported pemma module, line), ...]`` of a source file, function-local imports included.

    ``module`` is the file's dotted name (default: from its place under ``src/pemma``).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "pemma"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name.split(".")[0] != "pemma":
                continue
            if name == "pemma":  # ``from pemma import x``: x may be a submodule
                for alias in node.names:
                    sub = f"pemma.{alias.name}"
                    known = (SRC / alias.name).is_dir() or (SRC / f"{alias.name}.py").is_file()
                    out.append((sub if known else "pemma", node.lineno))
            else:
                out.append((name, node.lineno))
    return out


def all_edges() -> list[tuple[str, str, str]]:
    """``[(importer unit, imported unit, "file:line"), ...]`` between different units."""
    edges = []
    for path in sorted(SRC.rglob("*.py")):
        importer = unit_of(module_name(path))
        for target, line in pemma_imports(path):
            imported = unit_of(target)
            if imported != importer:
                edges.append((importer, imported, f"{path.relative_to(SRC)}:{line}"))
    return edges


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(module_name(p)) for p in SRC.rglob("*.py")}
    assert units <= set(LAYER_OF), f"give these a layer in LAYERS: {sorted(units - set(LAYER_OF))}"


def test_imports_run_downward_only() -> None:
    upward = [f"{where}: {a} (layer {LAYER_OF[a]}) imports {b} (layer {LAYER_OF[b]})"
              for a, b, where in all_edges() if LAYER_OF[b] > LAYER_OF[a]]
    assert not upward, "\n".join(upward)


def test_no_cycles_between_folders() -> None:
    graph: dict[str, set[str]] = {}
    for a, b, _ in all_edges():
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*stack, node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, " -> ".join(cycle)


def test_checker_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    """The import reader itself: function-local, relative and ``from pemma import submodule`` imports are found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from pemma.cli.main import main\n    from ..protocol import runner\n"
                     "    from pemma import methods\n    import pemma.vocab\n")
    found = [name for name, _ in pemma_imports(probe, module="pemma.models.probe")]
    assert found == ["pemma.cli.main", "pemma.protocol", "pemma.methods", "pemma.vocab"]
    assert {unit_of(n) for n in found} == {"cli", "protocol", "methods", "vocab"}


def test_vocabulary_imports_nothing_from_pemma() -> None:
    assert pemma_imports(SRC / "vocab.py") == []
