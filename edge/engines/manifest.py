"""The model manifest that ships with every model version: what the runtime needs to trust and use it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edge.qc.confidence import Calibration
from edge.qc.structures import STRUCTURES, VIEW_CLASSES


class ManifestError(ValueError):
    """A model folder that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class ModelManifest:
    name: str
    version: str
    folder: Path
    file: str
    sha256: str
    input_size: int
    channels: tuple[str, ...]
    view_classes: tuple[str, ...]
    # the limits of the reading checks, fitted to this model
    reading_confidence: Calibration = field(default_factory=Calibration)

    @property
    def model_path(self) -> Path:
        return self.folder / self.file

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


def load_manifest(folder: Path) -> ModelManifest:
    """Read `folder/manifest.json` and check it matches what this runtime measures."""
    path = folder / "manifest.json"
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no model manifest (is model.path a model version folder?)") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable manifest: {exc}") from exc
    try:
        outputs = {o["name"]: o for o in data["outputs"]}
        channels = tuple(outputs["masks"]["channels"])
        classes = tuple(outputs["view"]["classes"])
        manifest = ModelManifest(
            name=str(data["name"]),
            version=str(data["version"]),
            folder=folder,
            file=str(data["file"]),
            sha256=str(data["sha256"]),
            input_size=int(data["input"]["shape"][-1]),
            channels=channels,
            view_classes=classes,
            reading_confidence=Calibration.from_mapping(data.get("reading_confidence", {})),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ManifestError(f"{path}: missing or malformed field {exc}") from exc
    if channels != STRUCTURES:
        raise ManifestError(f"{path}: mask channels {channels} differ from the structures this runtime measures")
    if classes != VIEW_CLASSES:
        raise ManifestError(f"{path}: view classes {classes} differ from {VIEW_CLASSES}")
    if not manifest.model_path.is_file():
        raise ManifestError(f"{path}: model file {manifest.file} is missing")
    return manifest
