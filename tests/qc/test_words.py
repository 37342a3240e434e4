"""What the radiographer reads: one gettext catalogue per language, complete and current; a missing
string falls back to English and the check reports it; no sentence twice in one verdict; collimation
and centring in whole centimetres at the detector; a pass says so, with EI and DI; never an item id."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import polib
import pydicom
import pytest
from pydicom.dataset import Dataset

from edge.config import Config, ConfigError, MqttConfig, QcConfig, load_config
from edge.dicom.decode import to_detector
from edge.imaging.radiograph import ExposureTags
from edge.pipeline import Pipeline
from edge.publish.message import verdict_message
from edge.qc.item import Setting
from edge.qc.items.exposure import exposure_of
from edge.qc.judge import ItemResult, judge_item
from edge.qc.measure import Measurement
from edge.qc.standard import load_standard
from edge.qc.verdict import Verdict, ViewInfo, schema
from edge.qc.words import DOMAIN, ENGLISH, Words, phrase, site_words
from tests.qc.conftest import fault_case, write_case
from tools import i18n
from tools.demo import verdict_lines
from tools.phantom.dataset import SetOptions, generate_image, image_dataset
from tools.phantom.dicom_io import write_dicom

STANDARD = load_standard()
ITEM_ID = re.compile(r"[a-z]+_[a-z_]+")
VIEW = ViewInfo("oblique", "oblique", "oblique_left", 0.99, True, "left")


def german_po() -> polib.POFile:
    return polib.pofile(str(i18n.po_path("de")))


def copy_locale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped catalogues copied, and the catalogue tool pointed at the copy."""
    locale = tmp_path / "locale"
    shutil.copytree(i18n.LOCALE, locale, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setattr(i18n, "LOCALE", locale)
    monkeypatch.setattr(i18n, "POT", locale / f"{DOMAIN}.pot")
    return locale


def test_the_catalogues_are_complete_and_current() -> None:
    """CI's catalogue check: every msgid translated in every language, no fuzzy entry, .mo and .pot current."""
    assert i18n.problems() == []
    assert i18n.main(["check"]) == 0
    msgids = i18n.extracted()
    # what the check covers: the standard's titles, corrections, headlines, reasons, structure names
    for msgid in ("Collimation", "collimate to about {width} x {height} cm at the detector", "Not judged", "sacrum"):
        assert msgid in msgids
    assert "the spine could not be read reliably: check the image yourself" in msgids
    assert msgids["Repeat advised: {n} check failed"].plural == "Repeat advised: {n} checks failed"


def test_a_string_missing_from_german_falls_back_to_english_and_the_check_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locale = copy_locale(tmp_path, monkeypatch)
    po_file = locale / "de" / "LC_MESSAGES" / f"{DOMAIN}.po"
    po = polib.pofile(str(po_file))
    po.remove(po.find("Collimation"))
    po.save(str(po_file))
    po.save_as_mofile(str(po_file.with_suffix(".mo")))
    found = i18n.problems()
    assert len(found) == 1 and found[0].startswith("de: missing 'Collimation'"), found
    words = Words("de", locale_dir=locale)
    assert words.text("Collimation") == "Collimation"  # English, not an empty banner
    assert words.text("Centring") == "Zentrierung"  # the rest still German


def test_a_stale_mo_a_fuzzy_entry_and_a_lost_placeholder_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locale = copy_locale(tmp_path, monkeypatch)
    po_file = locale / "de" / "LC_MESSAGES" / f"{DOMAIN}.po"
    po = polib.pofile(str(po_file))
    po.find("Centring").flags.append("fuzzy")
    po.find("see {title}").msgstr = "siehe oben"
    po.save(str(po_file))  # the .mo not compiled again
    found = "\n".join(i18n.problems())
    assert "de: fuzzy 'Centring'" in found
    assert "placeholders of 'see {title}' differ" in found
    assert "edge-qc.mo out of date with its .po" in found
    assert i18n.main(["check"]) == 1


def test_a_site_catalogue_rewords_a_correction(tmp_path: Path) -> None:
    """A site's own .po, compiled by the tool, overrides the shipped wording; the rest stays shipped."""
    site = polib.POFile()
    site.metadata = {"Content-Type": "text/plain; charset=UTF-8"}
    site.append(polib.POEntry(msgid="collimate tighter", msgstr="Feld bitte kleiner einblenden"))
    site.save(str(tmp_path / "site.po"))
    assert i18n.main(["compile", str(tmp_path / "site.po"), str(tmp_path / "site.mo")]) == 0
    words = Words("de", tmp_path / "site.mo")
    assert words.say(phrase("collimate tighter")) == "Feld bitte kleiner einblenden"
    assert words.text("Collimation") == "Einblendung"
    (tmp_path / "site.toml").write_text('[qc]\nlanguage = "de"\ncatalogue = "site.mo"\n')
    config = load_config(tmp_path / "site.toml")
    assert config.qc.language == "de" and config.qc.catalogue == tmp_path / "site.mo"


def test_an_unreadable_site_catalogue_is_a_configuration_error_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "broken.mo").write_bytes(b"not a catalogue")
    for path in (tmp_path / "missing.mo", tmp_path / "broken.mo"):
        with pytest.raises(ConfigError, match=r"site.toml: qc.catalogue: .*\.mo"):
            site_words(QcConfig(language="de", catalogue=path), "site.toml")


def test_german_numbers_have_a_decimal_comma() -> None:
    over = judge_item(Measurement("exposure_index", 3.5, "DI"), STANDARD.rule("ap", "exposure_index"), Setting("ap"))
    assert over.correction == "over-exposed by about 2.2x the target dose: reduce the mAs for the next patient"
    german = judge_item(
        Measurement("exposure_index", 3.5, "DI"), STANDARD.rule("ap", "exposure_index"), Setting("ap"), Words("de")
    )
    assert german.title == "Belichtung"
    assert german.correction == "überbelichtet, etwa 2,2-fache Zieldosis: mAs beim nächsten Patienten reduzieren"


def oblique_under_rotated(words: Words = ENGLISH) -> dict[str, ItemResult]:
    """An under-rotated oblique: obliquity and the facet joints fail with one and the same sentence."""
    setting = Setting("oblique", 1.2)
    obliquity = Measurement("obliquity", 22.0, "deg")
    facets = Measurement("facet_joints", 1.0, "levels", {"obliquity_deg": 22.0})
    exposure = Measurement("exposure_index", 0.2, "DI")
    return {
        m.item: judge_item(m, STANDARD.rule("oblique", m.item), setting, words) for m in (obliquity, facets, exposure)
    }


def test_one_sentence_once_with_every_title_it_fixes() -> None:
    verdict = Verdict.judged(items=oblique_under_rotated(), view=VIEW, image={"sop_instance_uid": "1.2"}, versions={})
    sentence = "obliquity about 22 degrees: turn the patient further, by about 23 degrees"
    assert [c.as_dict() for c in verdict.corrections] == [
        {"text": sentence, "items": ["Obliquity", "Facet joints shown"], "outcome": "fail"}
    ]
    assert verdict.items["obliquity"].correction == sentence
    assert verdict.items["facet_joints"].correction == "see Obliquity"
    document = verdict.as_dict()
    # once in corrections, and under the first item only (its finding in failed[] and its entry in items{})
    assert json.dumps(document).count(sentence) == 3
    assert sentence not in json.dumps(document["items"]["facet_joints"])
    texts = [f["correction"] for f in document["failed"]]
    assert len(texts) == len(set(texts)) == 2
    assert verdict.headline == "Repeat advised: 2 checks failed"


def test_headlines() -> None:
    words = Words("de")
    passed = {
        name: judge_item(Measurement(name, 0.0, ""), STANDARD.rule("ap", name), Setting("ap"))
        for name in ("exposure_index", "axis_tilt")
    }
    good = Verdict.judged(items=passed, view=VIEW, image={"sop_instance_uid": ""}, versions={})
    assert good.verdict == "pass" and good.headline == "Good image: all 2 checks met" and not good.corrections
    warned = dict(passed, exposure_index=replace(passed["exposure_index"], outcome="warn", correction="x"))
    assert Verdict.judged(items=warned, view=VIEW, image={}, versions={}).headline == "Good image: 1 of 2 checks met"
    german = Verdict.judged(items=oblique_under_rotated(words), view=VIEW, image={}, versions={}, words=words)
    assert german.headline == "Wiederholung empfohlen: 2 Prüfungen nicht bestanden" and german.language == "de"
    assert german.items["facet_joints"].correction == "siehe Schrägstellung"
    unsure = Verdict.indeterminate(reason="r", code="view_unknown", view=None, image={}, versions={}, words=words)
    assert unsure.headline == "Bild bitte selbst prüfen"
    assert Verdict.rejected(reason="r", code="not_dicom", versions={}).headline == "Not judged"


def test_exposure_is_judged_by_one_rule() -> None:
    tags = ExposureTags(exposure_index=400.0, target_exposure_index=200.0, deviation_index=1.0)
    site, source = exposure_of(tags, 400.0)
    assert (site.deviation_index, source) == (0.0, "site target")
    tag, source = exposure_of(tags, None)
    assert (tag.deviation_index, tag.target_exposure_index, source) == (1.0, 200.0, "DeviationIndex tag")
    ratio, _ = exposure_of(replace(tags, deviation_index=None), None)
    assert ratio.deviation_index == pytest.approx(10 * np.log10(2.0))
    none, _ = exposure_of(ExposureTags(None, None, None), None)
    assert none.as_dict() == {"exposure_index": None, "target_exposure_index": None, "deviation_index": None}


def test_the_detector_scale_comes_from_the_spacing_tags() -> None:
    ds = Dataset()
    ds.ImagerPixelSpacing = [0.15, 0.15]
    assert to_detector(ds, "ImagerPixelSpacing") == 1.0
    ds.EstimatedRadiographicMagnificationFactor = 1.1
    assert to_detector(ds, "ImagerPixelSpacing/magnification") == 1.1
    ds.PixelSpacing = [0.125, 0.125]
    assert to_detector(ds, "PixelSpacing") == pytest.approx(1.2)
    assert to_detector(Dataset(), "unknown") is None


def radiographer_texts(verdict: Verdict) -> list[str]:
    """Every text of a verdict meant for the radiographer, as published and as printed."""
    d = verdict.as_dict()
    texts = [d["headline"], d["reason"], *d["notes"], verdict.summary(), *verdict_lines(d)]
    for c in d["corrections"]:
        texts += [c["text"], *c["items"]]
    for finding in (*d["failed"], *d["warnings"]):
        texts += [finding["title"], finding["message"], finding["correction"]]
    for item in d["items"].values():
        texts += [item["title"], item.get("message", ""), item.get("correction", "")]
    return texts


@pytest.fixture(scope="module")
def german(pipeline: Pipeline) -> Pipeline:
    """The session's model, with the words in German (a second model load is not needed)."""
    return Pipeline(replace(Config(), qc=QcConfig(language="de")), backend=pipeline.backend)


@pytest.mark.slow
@pytest.mark.parametrize("language", ["en", "de"])
def test_no_item_id_in_what_the_radiographer_reads(
    pipeline: Pipeline, german: Pipeline, tmp_path: Path, language: str
) -> None:
    """Pass, fail per view and indeterminate: headline, reason, titles, corrections, messages, notes, the
    summary and the demo's lines carry no snake_case id."""
    judge = pipeline if language == "en" else german
    verdicts = []
    for view, fault in (("ap", "rotation"), ("lateral", "tilt"), ("oblique", "under_rotated")):
        verdicts.append(judge.process(write_case(fault_case(view, fault, 61, size_px=512), tmp_path)).verdict)
        clean = generate_image(SetOptions(seed=700, size_px=512, fault_rate=0.0, views=(view,)), 0)  # type: ignore[arg-type]
        verdicts.append(judge.process(write_case(clean, tmp_path)).verdict)
    chest = image_dataset(fault_case("ap", "tilt", 61, size_px=512), 3)
    chest.BodyPartExamined = "CHEST"
    write_dicom(chest, tmp_path / "chest.dcm", "none")
    verdicts.append(judge.process(tmp_path / "chest.dcm").verdict)
    assert {v.verdict for v in verdicts} >= {"pass", "fail", "indeterminate"}, [v.summary() for v in verdicts]
    for verdict in verdicts:
        jsonschema.validate(verdict.as_dict(), schema())
        assert verdict.language == language and verdict.headline
        assert verdict.exposure is not None
        for text in radiographer_texts(verdict):
            assert not ITEM_ID.search(text), (text, verdict.summary())
    passed = next(v for v in verdicts if v.verdict == "pass")
    assert passed.exposure is not None and passed.exposure.deviation_index is not None
    assert re.search(r"EI \d+.*DI [+-]\d", passed.summary()), passed.summary()


@pytest.mark.slow
def test_the_published_verdict_is_in_german(german: Pipeline, tmp_path: Path) -> None:
    """qc.language = "de": the MQTT payload carries German titles and corrections, each sentence once."""
    image = fault_case("oblique", "under_rotated", 61, size_px=512)
    verdict = german.process(write_case(image, tmp_path)).verdict
    payload = json.loads(
        verdict_message(
            verdict=verdict.as_dict(),
            mqtt=MqttConfig(),
            message_id="m",
            received_unix=0.0,
            stage_seconds={},
            probe=False,
        )
    )["verdict"]
    po = german_po()
    assert payload["language"] == "de" and payload["verdict"] == "fail", verdict.summary()
    assert payload["headline"].startswith("Wiederholung empfohlen")
    titles = {f["item"]: f["title"] for f in payload["failed"]}
    assert titles["obliquity"] == po.find("Obliquity").msgstr == "Schrägstellung"
    obliquity = next(c for c in payload["corrections"] if "Schrägstellung" in c["items"])
    assert obliquity["text"].startswith("Schrägstellung etwa") and "Patient weiter drehen" in obliquity["text"]
    if "facet_joints" in titles:  # one sentence fixes both: said once, under both titles
        assert titles["facet_joints"] in obliquity["items"] and len(obliquity["items"]) == 2
    sentences = [c["text"] for c in payload["corrections"]]
    assert len(sentences) == len(set(sentences))
    per_item = [f["correction"] for f in (*payload["failed"], *payload["warnings"])]
    assert len(per_item) == len(set(per_item))


def test_spacing_of_a_phantom_gives_its_magnification(tmp_path: Path) -> None:
    """The phantom writes calibrated Pixel Spacing with the detector's Imager Pixel Spacing: their
    ratio is the magnification the centimetres at the detector use."""
    ds = pydicom.dcmread(write_case(fault_case("ap", "over_collimation", 61, size_px=256), tmp_path))
    expected = float(ds.ImagerPixelSpacing[0]) / float(ds.PixelSpacing[0])
    assert 1.0 < expected < 1.5
    assert to_detector(ds, "PixelSpacing") == pytest.approx(expected)
