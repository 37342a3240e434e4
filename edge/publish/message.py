"""The verdict message: the one MQTT payload per image, its id and its privacy rule.

A consumer (the room display, the RIS bridge, Grafana's ingest) reads this document only; its schema
name changes when its shape does. SOP Instance UIDs are hashed unless the site asks for them
(`mqtt.send_uids`): a UID is not a name, but it links to one in the PACS.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from edge.config import MqttConfig

PAYLOAD_SCHEMA: Final = "edge-qc/verdict-message/1"


def hashed_uid(uid: str) -> str:
    """A stable stand-in for a UID: a consumer can match two messages of one image, not find the image."""
    return "sha256:" + hashlib.sha256(uid.encode()).hexdigest()[:32] if uid else ""


def message_id(device: str, spool_name: str) -> str:
    """Unique per image and device, and the same when a spooled image is judged again after a restart
    (so the outbox and consumers drop the duplicate)."""
    return f"{device}-{spool_name}"


def verdict_message(
    *,
    verdict: Mapping[str, Any],
    mqtt: MqttConfig,
    message_id: str,
    received_unix: float,
    stage_seconds: Mapping[str, float],
    probe: bool,
) -> bytes:
    """The payload: the verdict, where it comes from (the site's topic-level names, never a patient's),
    when its first byte arrived and how long receiving, spooling and waiting took (the verdict's own
    timings cover decode to judge). `verdict` is `Verdict.as_dict()`, a fresh copy; it is copied again
    here, so the caller's document and the Verdict stay as they are."""
    document = dict(verdict)
    image = dict(document.get("image") or {})
    if not mqtt.send_uids:
        image["sop_instance_uid"] = hashed_uid(str(image.get("sop_instance_uid", "")))
    document["image"] = image
    payload = {
        "schema": PAYLOAD_SCHEMA,
        "message_id": message_id,
        "site": mqtt.site,
        "room": mqtt.room,
        "device": mqtt.device,
        "received_unix": received_unix,
        "timings_ms": {stage: round(seconds * 1000, 1) for stage, seconds in stage_seconds.items()},
        "probe": probe,  # a health probe's image (edge-qc probe), not a patient's: displays ignore it
        "verdict": document,
    }
    return json.dumps(payload, allow_nan=False).encode()


def verdict_log(
    *, verdict: Mapping[str, Any], message_id: str, stage_seconds: Mapping[str, float], probe: bool
) -> tuple[str, dict[str, Any]]:
    """The one log line of a verdict, for the engineer reading the journal: its message and its JSON
    fields. Only what the payload may carry, with the UID always hashed (a log is read by more people
    than the site's MQTT consumers) and none of the image's texts: item ids, codes and numbers."""
    view = verdict.get("view") or {}
    judged = view.get("judged") if isinstance(view, Mapping) else None
    failed = [str(item.get("item")) for item in verdict.get("failed") or () if isinstance(item, Mapping)]
    found = verdict.get("exposure")
    exposure: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    ei, di = exposure.get("exposure_index"), exposure.get("deviation_index")
    versions = verdict.get("versions") or {}
    timings = {stage: round(seconds * 1000, 1) for stage, seconds in stage_seconds.items()}
    timings.update({stage: round(float(ms), 1) for stage, ms in (verdict.get("timings_ms") or {}).items()})
    uid = hashed_uid(str((verdict.get("image") or {}).get("sop_instance_uid", "")))
    outcome = str(verdict.get("verdict"))
    words = [f"verdict {outcome}", f"view {judged or 'unknown'}"]
    if failed:
        words.append("failed " + ",".join(failed))
    if verdict.get("reason_code"):
        words.append(f"reason {verdict['reason_code']}")
    if ei is not None:
        words.append(f"EI {ei:g}" + (f" DI {di:+.2f}" if di is not None else ""))
    if "total" in timings:  # the pipeline's, decode to judge; the transport stages are in the fields
        words.append(f"judged in {timings['total']:.0f} ms")
    words.append(f"model {versions.get('model', 'unknown')}")
    if probe:
        words.append("probe")
    fields = {
        "event": "verdict",
        "message_id": message_id,
        "verdict": outcome,
        "view": judged,
        "reason_code": verdict.get("reason_code") or "",
        "failed": failed,
        "exposure_index": ei,
        "target_exposure_index": exposure.get("target_exposure_index"),
        "deviation_index": di,
        "timings_ms": timings,
        "model": versions.get("model"),
        "engine": versions.get("engine"),
        "backend": versions.get("backend"),
        "degraded": bool(verdict.get("degraded")),
        "sop_instance_uid": uid,
        "probe": probe,
    }
    return "; ".join(words), fields
