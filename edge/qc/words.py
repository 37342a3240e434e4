"""What the radiographer reads, in the site's language: one gettext catalogue per language.

Every sentence a verdict shows (the standard's titles and messages, the corrections, the headline, the
reasons for not judging) is an English msgid; the catalogue of the configured language translates it,
and a site catalogue (a compiled .mo) may override any entry, which is how a site rewords a correction.
A msgid missing from a catalogue falls back to English (gettext does); `python -m tools.i18n check`
reports it. Corrections are `Phrase`s (a msgid template with named placeholders and their values), so
the numbers are filled in after translation and a translation may move them.
"""

from __future__ import annotations

import gettext
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Final

from edge.config import LANGUAGES, ConfigError, QcConfig
from edge.qc.structures import STRUCTURE_NAMES

DOMAIN: Final = "edge-qc"


def N_(msgid: str) -> str:  # noqa: N802 (gettext's name for it)
    """Marks a msgid for extraction where it is defined; translated where it is shown."""
    return msgid


@dataclass(frozen=True)
class Phrase:
    """An English msgid with `{name}` placeholders (format specs allowed: `{cm:.0f}`) and their values.
    A value that is itself a Phrase is translated too; strings are shown as they are (level names)."""

    msgid: str
    values: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))


def phrase(msgid: str, **values: object) -> Phrase:
    return Phrase(msgid, values)


def structures_phrase(names: Iterable[object]) -> Phrase:
    """Structures by the names a radiographer reads ("T12, sacrum"), each translated."""
    listed = [Phrase(STRUCTURE_NAMES.get(str(n), str(n))) for n in names]
    return Phrase(", ".join(f"{{s{i}}}" for i in range(len(listed))), {f"s{i}": p for i, p in enumerate(listed)})


class CatalogueError(ValueError):
    """A site catalogue that cannot be read."""


# The decimal separator a language writes numbers with ("1,5" in German).
DECIMAL_COMMA: Final = frozenset({"de"})


def shipped_catalogue(language: str, locale_dir: Path | None = None) -> gettext.NullTranslations:
    """The catalogue shipped for a language (English: none, the msgids are English); `locale_dir`
    stands in for the package's edge/locale (tests, the catalogue tool)."""
    if language == "en":
        return gettext.NullTranslations()
    root = resources.files("edge.locale") if locale_dir is None else locale_dir
    mo = root.joinpath(language).joinpath("LC_MESSAGES").joinpath(f"{DOMAIN}.mo")  # one part a call: Python 3.10
    try:
        with mo.open("rb") as fp:
            return gettext.GNUTranslations(fp)
    except FileNotFoundError:  # a language without its catalogue speaks English, and the check says so
        return gettext.NullTranslations()


def site_catalogue(path: Path) -> gettext.GNUTranslations:
    try:
        with path.open("rb") as fp:
            return gettext.GNUTranslations(fp)
    except OSError as exc:
        raise CatalogueError(f"{path}: cannot read the catalogue: {exc.strerror}") from exc
    except Exception as exc:  # gettext raises OSError, struct.error or UnicodeDecodeError on a bad file
        raise CatalogueError(f"{path}: not a compiled gettext catalogue (.mo): {exc}") from exc


class Words:
    """Translates and fills in what a verdict says, in one language."""

    def __init__(self, language: str = "en", catalogue: Path | None = None, locale_dir: Path | None = None) -> None:
        if language not in LANGUAGES:
            raise ValueError(f"unknown language {language!r} (known: {', '.join(LANGUAGES)})")
        self.language = language
        self._formatter = _Formatter("," if language in DECIMAL_COMMA else ".")
        shipped = shipped_catalogue(language, locale_dir)
        if catalogue is None:
            self._t: gettext.NullTranslations = shipped
        else:
            self._t = site_catalogue(catalogue)
            self._t.add_fallback(shipped)

    def __repr__(self) -> str:
        return f"Words({self.language!r})"

    def text(self, msgid: str) -> str:
        """The translation of a msgid ("" stays "")."""
        return self._t.gettext(msgid) if msgid else ""

    def plural(self, singular: str, plural: str, n: int, **values: object) -> str:
        """The right form for n, filled in with n and the values."""
        template = self._t.ngettext(singular, plural, n)
        english = singular if n == 1 else plural
        return self._fill(template, english, {"n": n, **values})

    def say(self, said: Phrase | str) -> str:
        """A phrase translated, then filled in (a translation with a broken placeholder falls back to the
        English template rather than failing the verdict)."""
        if isinstance(said, str):
            return self.text(said)
        values = {k: self.say(v) if isinstance(v, Phrase) else v for k, v in said.values.items()}
        return self._fill(self.text(said.msgid), said.msgid, values)

    def fill(self, msgid: str, values: Mapping[str, object]) -> str:
        """A template with placeholders (the standard's messages): unknown placeholders leave it unfilled."""
        translated = self.text(msgid)
        for template in (translated, msgid):
            try:
                return self._formatter.format(template, **values)
            except (KeyError, IndexError, ValueError, TypeError):
                continue
        return translated

    def _fill(self, template: str, english: str, values: Mapping[str, object]) -> str:
        try:
            return self._formatter.format(template, **values)
        except (KeyError, IndexError, ValueError, TypeError):
            return self._formatter.format(english, **values)


class _Formatter(string.Formatter):
    """str.format with the language's decimal separator for numbers."""

    def __init__(self, decimal: str) -> None:
        self.decimal = decimal

    def format_field(self, value: object, format_spec: str) -> str:
        text: str = super().format_field(value, format_spec)
        if self.decimal != "." and isinstance(value, float | int) and not isinstance(value, bool):
            return text.replace(".", self.decimal)
        return text


def site_words(qc: QcConfig, source: str) -> Words:
    """The words a site's verdicts are written in; errors are ConfigErrors naming the key."""
    try:
        return Words(qc.language, qc.catalogue)
    except CatalogueError as exc:
        raise ConfigError(f"{source}: qc.catalogue: {exc}") from exc


ENGLISH: Final = Words("en")
