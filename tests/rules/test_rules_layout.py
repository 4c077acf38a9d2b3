"""How the rules package is put together: every trigger type has its runner, and no module of
gateway.rules imports itself back through others (imports inside functions and TYPE_CHECKING
blocks count too)."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

from gateway.rules.schema import Trigger
from gateway.rules.triggers.registry import RUNNERS

RULES_DIR = Path(__file__).resolve().parents[2] / "gateway" / "rules"


def test_every_trigger_type_has_the_runner_for_its_spec() -> None:
    union, _field = typing.get_args(Trigger)
    specs = {typing.get_args(cls.model_fields["type"].annotation)[0]: cls for cls in union.__args__}
    assert set(RUNNERS) == set(specs)
    for name, runner in RUNNERS.items():
        hints = typing.get_type_hints(runner.__init__)
        assert hints["spec"] is specs[name], name


def _module_name(path: Path) -> str:
    parts = ["gateway", "rules", *path.relative_to(RULES_DIR).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in RULES_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1
                    package = (
                        name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    )
                    package = package[: len(package) - node.level + 1]
                    base = ".".join([*package, base] if base else package)
                targets.add(base)
                targets.update(f"{base}.{a.name}" for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycle_in_the_rules_package() -> None:
    graph = _imports()
    assert "gateway.rules.schema" in graph["gateway.rules.conditions"]  # edges are seen
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
