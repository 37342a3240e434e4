"""python -m tools.i18n extract|compile|check: the catalogues of what a verdict says (edge.qc.words).

extract   every msgid into edge/locale/edge-qc.pot: the shipped standard's titles and messages, and from
          edge/qc the strings marked N_(...), phrase(...)/Phrase(...), words.text(...), words.plural(...),
          measurements' reason="...", the names tables (structures, views, reading checks) and the
          literal reasons Spine.implausible/misread/unanchored give; then merges it into each language's .po
          (new msgids arrive untranslated, so `check` lists them until someone translates them)
compile   every edge/locale/<lang>/LC_MESSAGES/edge-qc.po into its .mo; or `compile SITE.po [OUT.mo]`,
          a site's own catalogue (qc.catalogue)
check     fails (exit 1) listing every msgid missing, untranslated or fuzzy in a language, every
          translation whose {placeholders} differ from its msgid's, every .mo out of date with its .po,
          and a .pot out of date with the sources; CI runs it (tests/qc/test_words.py)

polib is a workstation dependency; the appliance reads the compiled .mo with the standard library.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import polib

from edge.config import LANGUAGES
from edge.qc.standard import DEFAULT_STANDARD, standard_data
from edge.qc.structures import VIEWS
from edge.qc.words import DOMAIN

ROOT: Final = Path(__file__).resolve().parent.parent
LOCALE: Final = ROOT / "edge" / "locale"
SOURCES: Final = (ROOT / "edge" / "qc", ROOT / "edge" / "room")  # where msgids are marked
POT: Final = LOCALE / f"{DOMAIN}.pot"
# calls whose first argument is a msgid (words.plural: the first two, singular and plural)
MARKERS: Final = frozenset({"N_", "phrase", "Phrase"})
# dictionaries of msgids by key, and methods whose literal return values are msgids
NAME_TABLES: Final = frozenset({"STRUCTURE_NAMES", "VIEW_NAMES", "CHECK_NAMES"})
REASON_METHODS: Final = frozenset({"implausible", "misread", "unanchored"})
PLACEHOLDER: Final = re.compile(r"(?<!\{)\{(\w+)")


@dataclass(frozen=True)
class Msg:
    msgid: str
    plural: str  # "" for a message without plural forms
    where: str  # file:line of its first occurrence


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else ""


def _marks(func: ast.expr) -> bool:
    """N_, phrase, Phrase, or a Words' text (`words.text(...)`, `self.words.text(...)`)."""
    if isinstance(func, ast.Attribute) and func.attr == "text":
        return "words" in _name(func.value)
    return _name(func) in MARKERS


def _literal(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value else None


def _from_source(path: Path) -> Iterable[Msg]:
    where = _shown(path)
    tree = ast.parse(path.read_text("utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _name(node.func)
            if name == "plural" and len(node.args) >= 2:
                one, many = _literal(node.args[0]), _literal(node.args[1])
                if one and many:
                    yield Msg(one, many, f"{where}:{node.lineno}")
            elif _marks(node.func) and node.args and (msgid := _literal(node.args[0])):
                yield Msg(msgid, "", f"{where}:{node.lineno}")
            for keyword in node.keywords:
                if keyword.arg == "reason" and (msgid := _literal(keyword.value)):
                    yield Msg(msgid, "", f"{where}:{node.lineno}")
        elif isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(node.value, ast.Dict):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(_name(t) in NAME_TABLES for t in targets):
                for value in node.value.values:
                    if (msgid := _literal(value)) is not None:
                        yield Msg(msgid, "", f"{where}:{value.lineno}")
        elif isinstance(node, ast.FunctionDef) and node.name in REASON_METHODS:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Return) and inner.value is not None and (msgid := _literal(inner.value)):
                    yield Msg(msgid, "", f"{where}:{inner.lineno}")


def _from_standard() -> Iterable[Msg]:
    data = standard_data()
    for view in VIEWS:
        for item, table in data[view].items():
            for key in ("title", "message"):
                yield Msg(str(table[key]), "", f"edge/qc/standards/{DEFAULT_STANDARD}:{view}.{item}.{key}")


def extracted() -> dict[str, Msg]:
    """Every msgid, once (its first occurrence), in a stable order."""
    found: dict[str, Msg] = {}
    for msg in _from_standard():
        found.setdefault(msg.msgid, msg)
    for path in sorted(p for folder in SOURCES for p in folder.rglob("*.py")):
        for msg in _from_source(path):
            found.setdefault(msg.msgid, msg)
    return found


def template(msgs: dict[str, Msg]) -> polib.POFile:
    pot = polib.POFile(wrapwidth=0)
    pot.metadata = {
        "Project-Id-Version": "edge-qc",
        "MIME-Version": "1.0",
        "Content-Type": "text/plain; charset=UTF-8",
        "Content-Transfer-Encoding": "8bit",
    }
    for msg in msgs.values():
        file, _, line = msg.where.partition(":")
        entry = polib.POEntry(msgid=msg.msgid, occurrences=[(file, line)])
        if msg.plural:
            entry.msgid_plural = msg.plural
            entry.msgstr_plural = {0: "", 1: ""}
        if "{" in msg.msgid:
            entry.flags = ["python-brace-format"]
        pot.append(entry)
    return pot


def _shown(path: Path) -> str:
    """A path as the checkout names it (absolute when outside: tests' copies)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def po_path(language: str) -> Path:
    return LOCALE / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def translated() -> list[str]:
    """The languages with a catalogue of their own (English is the msgids)."""
    return [lang for lang in LANGUAGES if lang != "en"]


def extract() -> list[str]:
    """Write the .pot and merge it into every language's .po; returns what it did."""
    pot = template(extracted())
    pot.save(str(POT))
    done = [f"{_shown(POT)}: {len(pot)} msgids"]
    for language in translated():
        path = po_path(language)
        if not path.exists():
            continue
        po = polib.pofile(str(path), wrapwidth=0)
        po.merge(pot)
        po.save(str(path))
        done.append(f"{_shown(path)}: merged ({len(po.untranslated_entries())} untranslated)")
    return done


def compile_po(po: Path, mo: Path | None = None) -> Path:
    out = mo or po.with_suffix(".mo")
    polib.pofile(str(po)).save_as_mofile(str(out))
    return out


def _forms(entry: polib.POEntry | polib.MOEntry) -> tuple[str, ...]:
    if entry.msgid_plural:
        return tuple(entry.msgstr_plural[k] for k in sorted(entry.msgstr_plural))
    return (entry.msgstr,)


def _placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def problems() -> list[str]:
    """Everything `check` fails on, one line each (empty: the catalogues are complete and current)."""
    msgs = extracted()
    out: list[str] = []
    if not POT.exists() or {e.msgid for e in polib.pofile(str(POT))} != set(msgs):
        out.append(f"{_shown(POT)}: out of date with the sources (run python -m tools.i18n extract)")
    for language in translated():
        path = po_path(language)
        if not path.exists():
            out.append(f"{language}: no catalogue {_shown(path)}")
            continue
        po = polib.pofile(str(path))
        entries = {e.msgid: e for e in po if not e.obsolete}
        for msgid, msg in msgs.items():
            entry = entries.get(msgid)
            if entry is None:
                out.append(f"{language}: missing {msgid!r} ({msg.where})")
            elif entry.fuzzy:
                out.append(f"{language}: fuzzy {msgid!r} ({msg.where})")
            elif not all(_forms(entry)):
                out.append(f"{language}: untranslated {msgid!r} ({msg.where})")
            else:
                expected = _placeholders(msgid) | _placeholders(entry.msgid_plural or "")
                for form in _forms(entry):
                    names = _placeholders(form)
                    if names - expected or (not entry.msgid_plural and names != expected):
                        out.append(f"{language}: placeholders of {msgid!r} differ in {form!r}")
        mo = path.with_suffix(".mo")
        compiled = {(e.msgid, _forms(e)) for e in po.translated_entries()}
        if not mo.exists() or {(e.msgid, _forms(e)) for e in polib.mofile(str(mo)) if e.msgid} != compiled:
            out.append(f"{language}: {_shown(mo)} out of date with its .po (run python -m tools.i18n compile)")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else ""
    if command == "extract":
        print("\n".join(extract()))
        return 0
    if command == "compile" and len(args) in (2, 3):
        print(compile_po(Path(args[1]), Path(args[2]) if len(args) == 3 else None))
        return 0
    if command == "compile":
        for language in translated():
            print(_shown(compile_po(po_path(language))))
        return 0
    if command == "check":
        found = problems()
        print("\n".join(found) if found else f"catalogues complete: {', '.join(LANGUAGES)}")
        return 1 if found else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
