"""python -m tools.health_images [--out engines/health] [--search N]: the fleet health gate's images.

A roll-out proves an engine on the device by sending known images through the running daemon and
comparing the verdicts with `expected.json` (`edge-qc probe`). The images are phantom radiographs
(1024 px, RLE, about 1-2 MB each) at recorded seeds: the same seed gives the same bytes. `--search N`
tries N seeds per case and keeps the first whose phantom truth is clear of every threshold
(no borderline item) and that every shipped model version judges exactly as expected; the seeds
below were chosen that way and are what the default run writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from edge.config import Config, ModelConfig
from edge.pipeline import Pipeline
from tools.phantom.acquisition import sample_acquisition
from tools.phantom.dataset import PhantomImage, SetOptions, generate_image, image_dataset, image_rng
from tools.phantom.dicom_io import write_dicom

SIZE_PX: Final = 1024
MODELS: Final = Path(__file__).resolve().parent.parent / "engines" / "lumbar-resunet"


@dataclass(frozen=True)
class HealthCase:
    name: str
    view: str
    fault: str  # "" for a faultless acquisition
    seed: int
    expect: str  # the verdict
    failed_items: tuple[str, ...]


CASES: Final = (
    HealthCase("ap-good", "ap", "", 7001, "pass", ()),
    HealthCase("oblique-under-rotated", "oblique", "under_rotated", 7101, "fail", ("facet_joints", "obliquity")),
)


def render(case: HealthCase, seed: int) -> PhantomImage:
    """The case's acquisition at `seed`: faultless (at the target exposure) or with exactly its fault."""
    faults = (case.fault,) if case.fault else ()
    acq = sample_acquisition(image_rng(seed, 0), case.view, 0.0, force_faults=faults)  # type: ignore[arg-type]
    if not faults:
        acq = replace(acq, deviation_index=0.0)
    return generate_image(SetOptions(seed=seed, size_px=SIZE_PX, fault_rate=0.0), 0, acquisition=acq)


def truth_is_clear(image: PhantomImage, case: HealthCase) -> bool:
    """The phantom's exact truth gives the case's verdict, with no item near its threshold. Its failed
    items may be fewer than the case's: edge judges the oblique's facet joints from the measured
    obliquity against population facet orientations, the truth from this phantom's own joints."""
    qc = image.entry["qc"]
    return bool(
        qc["verdict"] == case.expect and set(qc["failed_items"]) <= set(case.failed_items) and not qc["borderline"]
    )


def judged_as_expected(pipelines: dict[str, Pipeline], path: Path, case: HealthCase) -> list[str]:
    """Model versions whose verdict on `path` differs from the case's (empty: all agree)."""
    wrong = []
    for version, pipeline in pipelines.items():
        verdict = pipeline.process(path).verdict
        items = tuple(sorted(f["item"] for f in verdict.as_dict().get("failed", [])))
        if verdict.verdict != case.expect or items != tuple(sorted(case.failed_items)):
            wrong.append(f"{version}: {verdict.verdict} {list(items)}")
    return wrong


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.health_images", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("engines/health"))
    parser.add_argument("--search", type=int, default=0, help="try up to N seeds per case from the recorded one")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pipelines = {
        p.name: Pipeline(Config(model=ModelConfig(path=p, threads=1)))
        for p in sorted(MODELS.iterdir())
        if (p / "manifest.json").exists()
    }
    expected: dict[str, object] = {}
    for case in CASES:
        for seed in range(case.seed, case.seed + max(args.search, 1)):
            image = render(case, seed)
            path = args.out / f"{case.name}.dcm"
            write_dicom(image_dataset(image, seed), path, "rle")
            problems = [] if truth_is_clear(image, case) else ["phantom truth borderline or different"]
            problems += judged_as_expected(pipelines, path, case)
            if not problems:
                break
            print(f"{case.name} seed {seed}: {'; '.join(problems)}", file=sys.stderr)
        else:
            print(f"{case.name}: no seed in {case.seed}..{seed} is judged as expected by every model", file=sys.stderr)
            return 1
        expected[path.name] = {
            "verdict": case.expect,
            "failed_items": list(case.failed_items),
            "view": case.view,
            "fault": case.fault or None,
            "seed": seed,
            "size_px": SIZE_PX,
            "compression": "rle",
            "checked_with": sorted(pipelines),
        }
        print(f"{path}: seed {seed}, {case.expect} {list(case.failed_items)}, {path.stat().st_size} bytes")
    (args.out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    for pipeline in pipelines.values():
        pipeline.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
