"""The architecture holds: stages import no stage, no import cycle, small modules, one table
registry that the docs equal, and no citation of files outside the repository."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs import stages
from jobs.core.tables import TABLES, render_markdown

from .conftest import REPO

PACKAGES = ("jobs", "udfs")
STAGE_MODULES = {f"jobs.{name}" for name in stages.NAMES}
#: The only modules allowed to reach a stage module, and only by name at run time.
DISPATCHERS = {"jobs.stages", "jobs.runner", "jobs.cli"}
MAX_LINES = 450
LAKE_METHODS = {
    "read",
    "exists",
    "overwrite",
    "append",
    "overwrite_partitions",
    "describe",
    "version",
    "location",
}


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


MODULES = dict(_modules())


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Project modules that ``path`` imports (``from a import b`` counts a.b when it is a
    module, else a); with ``top_level_only``, imports inside functions are left out."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                qualified = f"{node.module}.{alias.name}"
                found.add(qualified if qualified in MODULES else node.module)
    return {m for m in found if m in MODULES}


def test_no_module_imports_a_stage() -> None:
    offenders = {
        name: sorted(_imports(path, top_level_only=False) & STAGE_MODULES)
        for name, path in MODULES.items()
        if name not in DISPATCHERS
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    # The registry and the runner reach stages by name only (importlib), never by import.
    for name in DISPATCHERS:
        assert not _imports(MODULES[name], top_level_only=False) & STAGE_MODULES, name


def test_no_import_cycle() -> None:
    graph = {name: _imports(path, top_level_only=False) for name, path in MODULES.items()}
    # A package's __init__ is imported with each of its modules: not an edge of its own.
    graph = {k: {m for m in v if not k.startswith(m + ".")} for k, v in graph.items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        assert node not in visiting, "import cycle: " + " -> ".join([*visiting, node])
        visiting.append(node)
        for target in sorted(graph[node]):
            visit(target)
        visiting.pop()
        done.add(node)

    for module in sorted(graph):
        visit(module)


def test_every_registered_stage_has_a_module_with_run_and_main() -> None:
    for entry in stages.STAGES:
        module = entry.load()
        assert callable(module.run) and callable(module.main), entry.name
        for table in (*entry.reads, *entry.writes):
            assert table in TABLES, (entry.name, table)


def test_stage_writes_match_table_owners() -> None:
    for entry in stages.STAGES:
        for table in entry.writes:
            contract = TABLES[table]
            assert entry.name in (contract.owner, *contract.also_written_by), (entry.name, table)
    owners = {c.owner for c in TABLES.values()} | {
        s for c in TABLES.values() for s in c.also_written_by
    }
    assert owners <= set(stages.NAMES)
    written = {t for entry in stages.STAGES for t in entry.writes}
    assert written == set(TABLES), "every table is written by some registered stage"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines (split it along its concerns)"


def _table_literals(path: Path) -> list[str]:
    """Table names spelled as string literals: any table name, except ``events`` (also the
    name of a column of sessions and user_sequences), which counts only as a Lake call's
    table argument."""
    tree = ast.parse(path.read_text())
    hits: list[str] = []
    lake_args: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in LAKE_METHODS
            and node.args
        ):
            lake_args.add(id(node.args[0]))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value in TABLES
            and (node.value != "events" or id(node) in lake_args)
        ):
            hits.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    return hits


def test_table_names_are_spelled_only_in_the_registry() -> None:
    registry = REPO / "jobs" / "core" / "tables.py"
    hits = [h for path in MODULES.values() if path != registry for h in _table_literals(path)]
    assert hits == []


def test_table_schemas_are_spelled_only_in_the_registry() -> None:
    """No other module builds a StructType holding most of a table's columns."""
    registry = REPO / "jobs" / "core" / "tables.py"
    for path in MODULES.values():
        if path == registry:
            continue
        fields: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) == "StructField"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                fields.add(str(node.args[0].value))
        for contract in TABLES.values():
            columns = set(contract.column_names)
            overlap = len(columns & fields)
            assert overlap < max(3, 0.6 * len(columns)), (path.name, contract.name, overlap)


def test_docs_tables_md_equals_the_registry() -> None:
    docs = REPO / "docs" / "tables.md"
    assert docs.read_text() == render_markdown(), (
        "docs/tables.md is stale: regenerate it with `python -m jobs.core.tables > docs/tables.md`"
    )


def test_code_cites_no_file_outside_the_repository() -> None:
    pattern = re.compile(r"SPEC(\.md| section| sec\.| §)|\.\./shared")
    hits = [
        f"{path.relative_to(REPO)}:{number}"
        for path in MODULES.values()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert hits == []
