"""edge-qc: the appliance's command line.

    edge-qc --version
    edge-qc check FILE.dcm|DIR [...] [--json] [--overlay OUT.png] [--config site.toml]
    edge-qc serve --config site.toml
    edge-qc engine list|activate VERSION|rollback [--root ENGINES_DIR]
    edge-qc engine validate MODEL_DIR [--precision fp32|fp16] [--write]
    edge-qc engine build MODEL_DIR [--out DIR] [--precision fp16|fp32] [--workspace-mib N]
    edge-qc config-check [--config] SITE.toml [--inventory ansible/inventory/NAME] [--json]
    edge-qc probe --config SITE.toml IMAGE.dcm --expect pass|fail|indeterminate|rejected [--expect-item ITEM ...]
    edge-qc report [--from DATE] [--to DATE] [--room ROOM] [--view V] [--format csv|html]
                   [--history PATH | --config FILE] [--out FILE]

Exit status: 0 every image passed, 1 at least one failed, was indeterminate or was rejected,
2 the command itself could not run (bad configuration, missing model, unreadable file).
Errors are said in edge-qc's words; a library's own message goes to the log at most.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Final

from edge.config import ConfigError, load_config
from edge.engines.manifest import ManifestError, ModelManifest
from edge.inference.backend import BackendUnavailableError
from edge.probe import add_arguments as add_probe_arguments
from edge.report import add_arguments as add_report_arguments

if TYPE_CHECKING:
    from edge.service import Service


def _overlay_path(base: Path, source: Path, count: int, used: set[Path]) -> Path:
    """One overlay per input: the given name for a single file, NAME-<input stem>.png for several
    (NAME-<input stem>-2.png where two inputs in different folders share a stem)."""
    if count == 1:
        return base
    suffix = base.suffix or ".png"
    path, n = base.with_name(f"{base.stem}-{source.stem}{suffix}"), 1
    while path in used:
        n += 1
        path = base.with_name(f"{base.stem}-{source.stem}-{n}{suffix}")
    used.add(path)
    return path


def inputs(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The files to judge, in order: a file as given; a directory's files, recursively, sorted by path,
    without hidden files and DICOMDIR indexes. And the paths that give none, with why (our words)."""
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.name.upper() != "DICOMDIR"
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            files.extend(found)
            if not found:
                problems.append((path, "no files in this directory"))
        elif path.is_file():
            files.append(path)
        elif path.exists():
            problems.append((path, "not a file or directory"))
        else:
            problems.append((path, "no such file or directory"))
    return files, problems


def _os_error(exc: OSError) -> str:
    """An operating-system error in a few words (its strerror, lower case), without the library's
    traceback-style text."""
    words = exc.strerror or type(exc).__name__
    return f"cannot read: {words[:1].lower()}{words[1:]}"


def check(args: argparse.Namespace) -> int:
    """Judge files and directories; with --json one JSON document per input file, one per line (JSON
    Lines), printed as each file is judged: {"file", "verdict"} or {"file", "error"}."""
    import warnings

    from edge.pipeline import Pipeline

    # pydicom warns on stderr about what it reads ("Expected explicit VR, but found implicit VR..."): its
    # words, not ours; a verdict already says what matters about a file
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    files, problems = inputs(args.files)
    worst = 2 if problems else 0
    for path, problem in problems:
        print(f"edge-qc: {path}: {problem}", file=sys.stderr)
        if args.json:
            _json_line({"file": str(path), "error": problem})
    if not files:
        return 2
    try:
        config = load_config(args.config)
        pipeline = Pipeline(config)
    except (ConfigError, ManifestError, BackendUnavailableError) as exc:
        print(f"edge-qc: {exc}", file=sys.stderr)
        return 2
    used: set[Path] = set()
    try:
        for path in files:
            try:
                result = pipeline.process(path)
            except OSError as exc:
                print(f"edge-qc: {path}: {_os_error(exc)}", file=sys.stderr)
                if args.json:
                    _json_line({"file": str(path), "error": _os_error(exc)})
                worst = 2
                continue
            verdict = result.verdict
            if verdict.verdict != "pass":
                worst = max(worst, 1)
            if args.json:
                _json_line({"file": str(path), "verdict": verdict.as_dict()})
            else:
                print(f"{path}: {verdict.summary()}")
                if args.timings:
                    stages = ", ".join(f"{k} {v:.0f} ms" for k, v in verdict.timings_ms.items())
                    print(f"  timings: {stages}")
            if args.overlay is not None:
                from edge.qc.overlay import draw_overlay

                if result.radiograph is None:
                    print(f"edge-qc: {path}: no overlay for an image that was not read", file=sys.stderr)
                    continue
                out = _overlay_path(args.overlay, path, len(files), used)
                try:
                    draw_overlay(result.radiograph, result.segmentation, verdict).save(out)
                except OSError as exc:
                    print(f"edge-qc: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
                    return 2
                if not args.json:
                    print(f"  overlay: {out}")
    finally:
        pipeline.close()
    return worst


def _json_line(document: dict[str, object]) -> None:
    print(json.dumps(document, allow_nan=False, separators=(",", ":")), flush=True)


def validate_engine(args: argparse.Namespace, manifest: ModelManifest) -> int:
    """The model's validation set through the engine that will run against ONNX Runtime FP32: the
    TensorRT plan itself with --engine (through TensorRTBackend, as the daemon loads it), else ONNX
    Runtime at the chosen precision (the conversion the plan is built from)."""
    import json
    import tempfile

    from edge.engines.validate import validate
    from edge.inference.backend import Backend, BackendUnavailableError
    from edge.inference.onnxruntime import OnnxRuntimeBackend
    from edge.qc.standard import load_standard

    reference = OnnxRuntimeBackend(manifest.model_path)
    with tempfile.TemporaryDirectory() as tmp:
        engine: Backend
        if args.engine is not None:
            from edge.inference.tensorrt import TensorRTBackend

            try:
                engine = TensorRTBackend(args.engine)
            except BackendUnavailableError as exc:
                print(f"edge-qc: cannot validate {args.engine} here: {exc}", file=sys.stderr)
                return 2
        else:
            engine_path = manifest.model_path
            if args.precision == "fp16":
                from edge.engines.precision import write_mixed_precision

                engine_path = Path(tmp) / "model-fp16.onnx"
                write_mixed_precision(manifest.model_path, engine_path)
            engine = OnnxRuntimeBackend(engine_path)
            engine.name = f"onnxruntime-{args.precision}"
        try:
            report = validate(manifest, engine, reference, load_standard())
        except FileNotFoundError as exc:
            print(f"edge-qc: {exc}", file=sys.stderr)
            return 2
        finally:
            engine.close()
    worst = min(report.dice_agreement.values()) if report.dice_agreement else float("nan")
    print(
        f"{manifest.label} on {report.engine} vs {report.reference} FP32, {report.images} validation images: "
        f"{'PASSED' if report.passed else 'FAILED'}; lowest per-structure Dice agreement {worst:.4f}, "
        f"view agreement {report.view_agreement:.3f}, QC outcome agreement {report.verdict_agreement:.3f}"
    )
    for problem in report.problems:
        print(f"  {problem}")
    if args.write:
        path = manifest.folder / "manifest.json"
        data = json.loads(path.read_text())
        data.setdefault("engine_validation", {})[report.engine] = report.as_dict()
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(data, indent=1) + "\n")
        temporary.replace(path)
        print(f"  recorded in {path}")
    return 0 if report.passed else 1


def build_engine(args: argparse.Namespace, manifest: ModelManifest) -> int:
    """Build on this device, in this process, at low priority: a running daemon keeps its CPU share."""
    import os

    from edge.engines.build import BuildError, build_engine
    from edge.inference.device import read_fingerprint

    os.nice(10)
    out = args.out or manifest.folder / "engines"
    try:
        plan = build_engine(manifest, out, read_fingerprint(), args.precision, args.workspace_mib)
    except BuildError as exc:
        print(f"edge-qc: {exc}", file=sys.stderr)
        return 2
    print(f"built {plan} (manifest {plan.with_suffix('.json').name}); validate it before activating")
    return 0


def find_engine(args: argparse.Namespace) -> int:
    """The engine in a folder that was built for this device (its path on stdout), or exit 1 with each
    plan's mismatch on stderr: what the rollout asks before it reuses a plan or builds one."""
    from edge.inference.device import fitting_plan, read_fingerprint

    if args.version is None or not Path(args.version).is_dir():
        print(f"edge-qc: engine find needs a folder of engines, got {args.version}", file=sys.stderr)
        return 2
    plan, refused = fitting_plan(Path(args.version), read_fingerprint())
    for name, problems in refused.items():
        print(f"{name}: not for this device: {'; '.join(problems)}", file=sys.stderr)
    if plan is None:
        print(f"edge-qc: no engine in {args.version} was built for this device", file=sys.stderr)
        return 1
    print(plan)
    return 0


def engine(args: argparse.Namespace) -> int:
    from edge.engines.store import EngineStore, StoreError

    if args.action == "find":
        return find_engine(args)
    if args.action in ("build", "validate"):
        from edge.engines.manifest import load_manifest

        if args.version is None:
            print(f"edge-qc: engine {args.action} needs MODEL_DIR", file=sys.stderr)
            return 2
        try:
            manifest = load_manifest(Path(args.version))
        except ManifestError as exc:
            print(f"edge-qc: {exc}", file=sys.stderr)
            return 2
        return build_engine(args, manifest) if args.action == "build" else validate_engine(args, manifest)

    store = EngineStore(args.root)
    try:
        if args.action == "list":
            for entry in store.entries():
                mark = "*" if entry.current else "-" if entry.previous else " "
                label = entry.manifest.label if entry.manifest else f"unusable: {entry.problem}"
                print(f"{mark} {entry.name:12s} {label}")
            print("(* current, - previous)")
        elif args.action == "activate":
            manifest = store.activate(args.version)
            print(f"{store.root}: current -> {args.version} ({manifest.label}); previous -> {store.previous}")
        else:
            manifest = store.rollback()
            print(f"{store.root}: rolled back, current -> {store.current} ({manifest.label})")
    except StoreError as exc:
        print(f"edge-qc: {exc}", file=sys.stderr)
        return 2
    return 0


def serve(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM or SIGINT, then drain: nothing received is dropped."""
    import signal

    from edge.logs import configure, fields
    from edge.service import Service

    configure()  # first: every line from here on is JSON (under systemd, with its journal priority)
    log = logging.getLogger("edge.serve")
    try:
        service = Service(load_config(args.config))
    except (ConfigError, ManifestError, BackendUnavailableError, OSError) as exc:
        log.error("not started: %s", exc, extra=fields(event="start_failed", error=str(exc)))
        return 2
    stop, hangup = threading.Event(), threading.Event()
    received: list[str] = []  # the signal that ended serving, for the drain line

    def on_stop(number: int, _: object) -> None:
        received.append(signal.Signals(number).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_stop)

    def on_hangup(*_: object) -> None:
        hangup.set()
        stop.set()

    signal.signal(signal.SIGHUP, on_hangup)
    service.start()
    metrics = f", metrics on port {service.http.port}" if service.http is not None else ""
    log.info(
        "serving: DICOM %s on port %d, MQTT %s%s",
        service.config.dicom.ae_title,
        service.scp.port,
        service.topic,
        metrics,
        extra=fields(event="serving", dicom_port=service.scp.port, versions=service.pipeline.versions),
    )
    while True:
        wait_for_signal(stop)
        if not hangup.is_set():
            break
        stop.clear()
        hangup.clear()
        reload(service, args.config, log)
    log.info("%s received: stopping", received[-1] if received else "stop", extra=fields(event="stopping"))
    service.stop()
    return 0


# CPython runs a signal's Python handler in the main thread only, when that thread runs Python code.
# The kernel hands a signal sent to the process (systemctl reload/stop) to any thread that does not
# block it; when that is another thread, a main thread blocked in Event.wait() without a timeout is not
# woken, and the SIGHUP or SIGTERM waits until something else wakes it: seen as a reload 30 s late and
# a stop that never came. Waking this often bounds the delay.
SIGNAL_POLL_S: Final = 0.25


def wait_for_signal(event: threading.Event) -> None:
    """Wait for `event` (set by a signal handler), waking every SIGNAL_POLL_S so that a signal the
    kernel gave another thread has its handler run."""
    while not event.wait(SIGNAL_POLL_S):
        pass


def reload(service: Service, path: Path, log: logging.Logger) -> None:
    """SIGHUP: a new configuration applied, or refused with the key named and the running one kept;
    either way one line and the reload gauges (edgeqc_config_last_reload_*)."""
    from edge.logs import fields

    try:
        outcome = service.reload(load_config(path))
    except (ConfigError, ManifestError, BackendUnavailableError, OSError) as exc:
        service.metrics.reload_result(False)
        log.error(
            "configuration reload refused, still running the previous one: %s",
            exc,
            extra=fields(event="reload", ok=False, error=str(exc)),
        )
        return
    service.metrics.reload_result(True)
    if outcome.applied:
        done = "applied " + ", ".join(outcome.applied)
    else:
        done = "nothing to apply while running" if outcome.restart else "no change"
    log.info(
        "configuration reloaded from %s: %s",
        path,
        done,
        extra=fields(event="reload", ok=True, applied=list(outcome.applied), restart=list(outcome.restart)),
    )
    for name in outcome.restart:
        log.warning("'%s' changed: takes effect after a restart", name, extra=fields(event="reload_needs_restart"))


def config_check(args: argparse.Namespace) -> int:
    """Every error and warning of a configuration, without using it (Ansible's `validate:` before a file is
    put in place): one `error: ...` or `warning: ...` line each on stderr, a summary on stdout; exit 2 only
    for errors, 0 with warnings."""
    from edge.config_check import as_dict, check_file

    report = check_file(args.config_file, args.inventory)
    if args.json:
        _json_line(dict(as_dict(report)))
    else:
        for severity, lines in (("error", report.errors), ("warning", report.warnings)):
            for line in lines:
                print(f"{severity}: {line}", file=sys.stderr)
        counts = f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
        verdict = "configuration refused" if report.errors else "configuration valid"
        print(f"{report.file}: {verdict} ({counts})")
    return report.exit_code


def version_text() -> str:
    """edge-qc's version (the installed package's), with the model and QC standard it ships (each
    "unknown" where it cannot be read: --version never fails)."""
    from importlib.metadata import PackageNotFoundError, version

    from edge.config import DEFAULT_MODEL
    from edge.engines.manifest import load_manifest
    from edge.qc.standard import load_standard

    try:
        package = version("edge-qc")
    except PackageNotFoundError:
        package = "unknown (not installed)"
    try:
        model = load_manifest(DEFAULT_MODEL).label
    except (ManifestError, OSError):
        model = "unknown"
    try:
        standard = load_standard()
        rules = f"{standard.name} {standard.version}"
    except (ConfigError, OSError, ValueError):
        rules = "unknown"
    return f"edge-qc {package} (model {model}, standard {rules})"


class _Version(argparse.Action):
    """--version: computed when asked (it reads the model's manifest), then exit 0."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(version_text())
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-qc", description="Lumbar-spine radiograph quality control.")
    parser.add_argument("--version", action=_Version, help="edge-qc's version, the shipped model's and the standard's")
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="judge DICOM files offline (the daemon's pipeline, on files)")
    p_check.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="FILE.dcm|DIR",
        help="DICOM files; a directory: every file in it and its subdirectories, sorted by path"
        " (hidden files and DICOMDIR skipped)",
    )
    p_check.add_argument(
        "--json",
        action="store_true",
        help="JSON Lines: one JSON document per input file, one per line, also for a single file:"
        ' {"file": PATH, "verdict": {...}} (verdict.schema.json), or {"file": PATH, "error": WHY} for a file'
        " that could not be read",
    )
    p_check.add_argument(
        "--overlay",
        type=Path,
        metavar="OUT.png",
        help="draw structures and failed items (several inputs: OUT-<input stem>.png each)",
    )
    p_check.add_argument("--config", type=Path, help="site configuration (TOML); default: built-in defaults")
    p_check.add_argument("--timings", action="store_true", help="print the time of every pipeline stage")
    p_serve = sub.add_parser("serve", help="the daemon: DICOM C-STORE in, verdicts out over MQTT")
    p_serve.add_argument("--config", type=Path, required=True, help="site configuration (TOML)")
    p_engine = sub.add_parser("engine", help="engines: build, validate, list, activate, roll back")
    p_engine.add_argument("action", choices=["list", "activate", "rollback", "validate", "build", "find"])
    p_engine.add_argument(
        "version",
        nargs="?",
        help="activate: a version folder under --root; validate, build: a model folder;"
        " find: a folder of engines (prints the one built for this device; exit 1 when none is)",
    )
    p_engine.add_argument("--precision", choices=["fp32", "fp16"], default="fp16", help="validate, build: precision")
    p_engine.add_argument("--write", action="store_true", help="validate: record the result in the manifest")
    p_engine.add_argument(
        "--engine", type=Path, help="validate: the TensorRT plan to validate (default: ONNX Runtime at --precision)"
    )
    p_engine.add_argument("--out", type=Path, help="build: where the engine goes (default MODEL_DIR/engines)")
    p_engine.add_argument("--workspace-mib", type=int, default=1024, help="build: TensorRT workspace limit")
    p_engine.add_argument(
        "--root", type=Path, default=Path("engines/lumbar-resunet"), help="engines directory (default: %(default)s)"
    )
    p_config_check = sub.add_parser(
        "config-check",
        help="every error (exit 2) and warning (exit 0: defaults a site must change) of a site configuration",
    )
    p_config_check.add_argument("file", type=Path, nargs="?", metavar="SITE.toml")
    p_config_check.add_argument("--config", type=Path, metavar="SITE.toml", help="the same as SITE.toml")
    p_config_check.add_argument(
        "--inventory",
        type=Path,
        metavar="INVENTORY",
        help="an Ansible inventory (YAML, e.g. ansible/inventory/example): warn when another device has this"
        " device's dicom.ae_title",
    )
    p_config_check.add_argument("--json", action="store_true", help="one JSON object: file, valid, errors, warnings")
    p_probe = sub.add_parser("probe", help="health gate: a known image through the running daemon, verdict checked")
    add_probe_arguments(p_probe)
    p_report = sub.add_parser("report", help="reject and exposure report (CSV or HTML) from the verdict history")
    add_report_arguments(p_report)
    p_doctor = sub.add_parser("doctor", help="is this device ready? each check pass/fail/skip with the fix")
    p_doctor.add_argument("--config", type=Path, help="site configuration (default: /etc/edge-qc/site.toml if present)")
    p_doctor.add_argument("--json", action="store_true", help="one JSON object: checks (name, status, detail, fix)")
    p_doctor.add_argument("--root", type=Path, default=Path("/"), help="read /proc, /sys, /dev, /etc under this folder")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args)
    if args.command == "serve":
        return serve(args)
    if args.command == "config-check":
        if (args.file is None) == (args.config is None):
            parser.error("config-check needs one configuration: SITE.toml or --config SITE.toml")
        args.config_file = args.file or args.config
        return config_check(args)
    if args.command == "probe":
        from edge.probe import main as probe

        return probe(args)
    if args.command == "report":
        from edge.report import main as report

        return report(args)
    if args.command == "doctor":
        from edge.doctor import main as doctor

        return doctor(args)
    if args.command == "engine":
        if args.action == "activate" and not args.version:
            parser.error("engine activate needs a VERSION")
        return engine(args)
    return 2  # pragma: no cover - argparse enforces the subcommand


if __name__ == "__main__":
    sys.exit(main())
