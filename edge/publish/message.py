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
