"""The import rules of docs/architecture.md: every import between rooms of edge/ is one the table
allows, so the packages form layers with no loop and no upward import; edge never imports tools."""

from __future__ import annotations

import ast
from pathlib import Path

import edge

EDGE = Path(edge.__file__).parent
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "logs": set(),
    "systemd": set(),
    "imaging": set(),
    "locale": set(),
    "inference": set(),
    "observability": set(),
    "room": set(),
    "dicom": {"config", "imaging"},
    "qc": {"config", "imaging"},
    "publish": {"config"},
    "engines": {"imaging", "inference", "qc"},
    "pipeline": {"config", "dicom", "engines", "imaging", "inference", "qc", "edge"},
    "probe": {"config", "publish"},
    "history": {"config"},
    "report": {"config", "history", "qc"},
    "doctor": {"config", "config_check", "engines", "inference", "publish"},
    "config_check": {"config", "qc"},
    "service": {"config", "dicom", "history", "observability", "pipeline", "publish", "qc", "room", "systemd"},
    "cli": {
        "config", "config_check", "doctor", "engines", "inference", "logs", "pipeline", "probe", "qc", "report",
        "service",
    },
    "__init__": set(),
}


def imports_between_rooms() -> set[tuple[str, str, str]]:
    """(room, imported room, file) for every import of an edge module from another room."""
    found = set()
    for path in EDGE.rglob("*.py"):
        parts = path.relative_to(EDGE).with_suffix("").parts
        room = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                top = name.split(".")
                if top[0] == "tools":
                    found.add((room, "tools", str(path)))
                if top[0] != "edge":
                    continue
                target = top[1] if len(top) > 1 else "edge"
                if target != room:
                    found.add((room, target, str(path)))
    return found


def test_every_import_between_rooms_is_allowed() -> None:
    found = imports_between_rooms()
    assert {room for room, _, _ in found} <= set(ALLOWED), "a new room: add it to docs/architecture.md and here"
    wrong = sorted((room, target, path) for room, target, path in found if target not in ALLOWED[room])
    assert not wrong, wrong


def test_the_allowed_imports_have_no_loop() -> None:
    """The table itself is layered: following allowed imports never leads back to where it started."""

    def reachable(start: str) -> set[str]:
        seen, todo = set(), list(ALLOWED[start])
        while todo:
            room = todo.pop()
            if room in seen or room == "edge":
                continue
            seen.add(room)
            todo.extend(ALLOWED.get(room, set()))
        return seen

    for room in ALLOWED:
        assert room not in reachable(room), room


def test_the_table_in_the_docs_names_every_room() -> None:
    text = (EDGE.parent / "docs" / "architecture.md").read_text()
    for room in ALLOWED:
        if room != "__init__":
            assert f"`{room}" in text, room
