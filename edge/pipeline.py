"""One image from bytes to verdict: read -> decode -> preprocess -> infer -> assess (measure, judge).

`edge-qc check` and the daemon both call `Pipeline.process`; there is no second path that could
drift. Every stage is timed, and every way an image can go wrong ends in a verdict (rejected or
indeterminate with a reason), never in an exception the caller has to interpret.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

import edge
from edge.config import Config
from edge.dicom.decode import Rejection, decode, part10_meta, read_dataset, read_header
from edge.dicom.sandbox import DecodeSandbox, SandboxLimits, needs_sandbox
from edge.engines.manifest import ModelManifest, load_manifest
from edge.imaging.preprocess import preprocess
from edge.imaging.radiograph import AcquisitionTags, Radiograph
from edge.inference.backend import Backend, ModelOutputs, open_with_fallback
from edge.qc.assess import assess
from edge.qc.items.exposure import Exposure, exposure_of
from edge.qc.measure import Measurement
from edge.qc.segmentation import Segmentation
from edge.qc.standard import Standard, site_standard
from edge.qc.verdict import Verdict
from edge.qc.words import Words, site_words

log = logging.getLogger("edge.pipeline")
# How often the activation watcher looks at the engines directory's `current` pointer.
ACTIVATION_POLL_S: Final = 0.5


def header_facts(
    source: bytes | Path | str | Dataset, targets: Mapping[str, float]
) -> tuple[AcquisitionTags | None, Exposure | None]:
    """What a verdict on an image that was not judged (rejected, quarantined) can still say, from its
    header without the pixels: acquisition date/time, station, kVp, mAs, and EI/EI_T/DI by the one
    rule (`exposure_of`, with the site's target for the view the tags name); (None, None) when the
    header cannot be read."""
    header = read_header(source)
    if header is None:
        return None, None
    exposure, _ = exposure_of(header.exposure, targets.get(header.view) if header.view else None)
    return header.acquisition, exposure


@dataclass(frozen=True)
class Result:
    """A verdict and what made it (for overlays and evaluation; the daemon publishes the verdict only)."""

    verdict: Verdict
    radiograph: Radiograph | None = None
    segmentation: Segmentation | None = None
    measurements: Mapping[str, Measurement] | None = None


class Pipeline:
    def __init__(self, config: Config, backend: Backend | None = None) -> None:
        self.config = config
        self.standard: Standard = site_standard(config.qc, config.source)
        self.words: Words = site_words(config.qc, config.source)
        self.manifest: ModelManifest = load_manifest(config.model.path)
        self.degraded = ""
        if backend is None:
            opened = open_with_fallback(
                config.model.backend,
                config.model.engine or self.manifest.model_path,
                self.manifest.model_path,
                config.model.threads,
                config.model.fallback,
            )
            backend, self.degraded = opened.backend, opened.degraded
        self.backend = backend
        self.backend.warm_up()
        self.sandbox = DecodeSandbox(
            SandboxLimits(
                memory_bytes=config.service.decode_memory_bytes,
                timeout_s=config.service.decode_timeout_s,
                max_dataset_bytes=config.dicom.max_dataset_bytes,
            )
        )
        described = self.backend.describe()
        self.versions = {
            "edge_qc": edge.__version__,
            "model": self.manifest.label,
            "engine": f"{described['name']} {described['precision']} on {described['device']}"
            f" ({self.manifest.file} sha256:{self.manifest.sha256[:16]})",
            "backend": str(described["name"]),
            "precision": str(described["precision"]),
            "standard": f"{self.standard.name} {self.standard.version}",
        }

    def close(self) -> None:
        self.backend.close()
        self.sandbox.close()

    def _notes(self) -> list[str]:
        return [f"degraded: {self.degraded}; judged with ONNX Runtime on the CPU"] if self.degraded else []

    def _rejected(self, exc: Rejection, timings: dict[str, float], source: bytes | Path | str | Dataset) -> Result:
        acquisition, exposure = header_facts(source, self.config.qc.target_exposure_index)
        verdict = Verdict.rejected(
            reason=exc.message,
            code=exc.reason,
            versions=self.versions,
            notes=self._notes(),
            timings_ms=timings,
            degraded=bool(self.degraded),
            sop_instance_uid=exc.sop_instance_uid,
            words=self.words,
            exposure=exposure,
            acquisition=acquisition,
        )
        return Result(verdict)

    def read(self, source: bytes | Path | str) -> Radiograph:
        """Read and decode. A compressed or deflated dataset is decompressed in the sandbox
        (edge.dicom.sandbox) and read here uncompressed; an uncompressed one never leaves this process.
        A `Rejection` carries the SOP Instance UID the file's meta names."""
        syntax, uid = part10_meta(source)
        try:
            if not needs_sandbox(syntax):
                return decode(read_dataset(source))
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
            radiograph = decode(read_dataset(self.sandbox.transcode(data)))
            return dataclasses.replace(radiograph, transfer_syntax=str(getattr(UID(syntax), "name", syntax)))
        except Rejection as exc:
            exc.sop_instance_uid = uid
            if exc.detail:  # the library's own words: for the operator's log, never the verdict
                log.info("rejected (%s): %s", exc.reason, exc.detail)
            raise
        except OSError:
            raise  # the file itself is gone or unreadable: the caller's to report, not the image's fault
        except Exception as exc:  # a dataset this code did not foresee: a verdict that says so, never a crash
            log.exception("decoding failed unexpectedly")
            message = "the image could not be decoded: an error in edge-qc (see the log)"
            raise Rejection("internal_error", message, uid, detail=f"{type(exc).__name__}: {exc}") from exc

    def process(self, source: bytes | Path | str | Dataset) -> Result:
        timings: dict[str, float] = {}
        start = t = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal t
            now = time.perf_counter()
            timings[stage] = (now - t) * 1000
            t = now

        try:
            radiograph = decode(source) if isinstance(source, Dataset) else self.read(source)
        except Rejection as exc:
            lap("decode")
            timings["total"] = (time.perf_counter() - start) * 1000
            return self._rejected(exc, timings, source)
        lap("decode")
        net_input, transform = preprocess(radiograph.pixels, self.manifest.input_size)
        mirrored = radiograph.faces_left
        if mirrored:
            net_input = np.ascontiguousarray(net_input[..., ::-1])
        lap("preprocess")
        outputs = self.backend.infer(net_input)
        if mirrored:
            outputs = ModelOutputs(np.ascontiguousarray(outputs.masks[..., ::-1]), outputs.view)
        lap("infer")
        assessment = assess(
            radiograph,
            outputs.masks,
            outputs.view,
            transform,
            self.standard,
            target_exposure_index=self.config.qc.target_exposure_index,
            versions=self.versions,
            notes=self._notes(),
            degraded=bool(self.degraded),
            calibration=self.manifest.reading_confidence,
            words=self.words,
        )
        timings.update(assessment.timings_ms)
        timings["total"] = (time.perf_counter() - start) * 1000
        verdict = assessment.verdict.with_timings(timings)
        return Result(verdict, radiograph, assessment.segmentation, assessment.measurements)


class ReloadingPipeline:
    """The one owner of engine activation: a pipeline that follows the engines directory's `current`
    pointer (and SIGHUP's new configurations) without ever making an image wait for a load.

    When an activation (or rollback) moves the pointer, the new version is loaded and warmed up beside
    the running one, off the inference thread once `start_watching` runs, and swapped in by the
    inference thread between two images (`swap`). If it fails, the running version keeps serving, and
    every verdict says which activation failed and why, until the pointer moves again (as Triton's
    model control does). Without a watcher (tests, tools) `process` loads a moved pointer itself."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._pipeline = Pipeline(config)
        self._tried = self._resolved()
        self._pending: Pipeline | None = None  # loaded and warm, waiting for the inference thread
        self._lock = threading.Lock()  # guards _pending and problem
        self.problem = ""
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()

    def _resolved(self) -> Path:
        return self.config.model.path.resolve()

    @property
    def serving(self) -> str:
        return self._pipeline.manifest.label

    @property
    def versions(self) -> dict[str, str]:
        return self._pipeline.versions

    @property
    def words(self) -> Words:
        """The language the serving pipeline writes verdicts in (the site's qc.language)."""
        return self._pipeline.words

    @property
    def items_by_view(self) -> dict[str, tuple[str, ...]]:
        """The QC items the site's standard judges, per view (what the counters start from)."""
        return {view: tuple(rules) for view, rules in self._pipeline.standard.items.items()}

    @property
    def degraded(self) -> str:
        """Why the serving version judges with the fallback backend ("" when it does not)."""
        return self._pipeline.degraded

    def prestart(self) -> None:
        """Start the decode sandbox's child now, so the first compressed image does not wait for it."""
        self._pipeline.sandbox.start()

    def start_watching(self, interval_s: float = ACTIVATION_POLL_S) -> None:
        """Look for a moved pointer every `interval_s` in a thread of its own ("activation")."""
        self._watcher = threading.Thread(target=self._watch, args=(interval_s,), name="activation", daemon=True)
        self._watcher.start()

    def _watch(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.prepare()

    def prepare(self) -> None:
        """Load and warm up the version the pointer now names, beside the running one; a version that
        cannot load is reported, never served."""
        target = self._resolved()
        if target == self._tried:
            return
        self._tried = target
        try:
            candidate = Pipeline(self.config)
        except Exception as exc:  # whatever a broken version throws, the running one keeps serving
            with self._lock:
                self.problem = f"activation of {target.name} failed ({exc}); still serving {self.serving}"
            return
        with self._lock:
            superseded, self._pending, self.problem = self._pending, candidate, ""
        if superseded is not None:
            superseded.close()

    def swap(self) -> None:
        """On the inference thread, between two images: put a prepared version in service (and close the
        old one)."""
        with self._lock:
            candidate, self._pending = self._pending, None
        if candidate is None:
            return
        old, self._pipeline = self._pipeline, candidate
        try:
            old.close()
        except Exception:  # the new version serves either way; a backend that will not close is only logged
            log.exception("closing the previous version %s failed", old.manifest.label)

    def check_activation(self) -> None:
        """Follow the pointer now: swap in what the watcher prepared, or (with no watcher) load it here."""
        if self._watcher is None:
            self.prepare()
        self.swap()

    def process(self, source: bytes | Path | str | Dataset) -> Result:
        self.check_activation()
        result = self._pipeline.process(source)
        problem = self.problem
        if problem:
            return dataclasses.replace(result, verdict=result.verdict.with_note(problem))
        return result

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=120)  # a load under way finishes first
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            pending.close()
        self._pipeline.close()
