"""The verdict message: built from a copy, so the Verdict is the same after its payload is made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.config import MqttConfig
from edge.pipeline import Pipeline
from edge.publish.message import PAYLOAD_SCHEMA, hashed_uid, message_id, verdict_message
from tests.qc.conftest import fault_case, judge_case


def test_building_the_payload_leaves_the_verdict_unchanged(pipeline: Pipeline, tmp_path: Path) -> None:
    verdict = judge_case(pipeline, fault_case("ap", "cut_top", 61), tmp_path).verdict
    uid = str(verdict.image["sop_instance_uid"])
    before = verdict.as_dict()
    payload = verdict_message(
        verdict=verdict.as_dict(),
        mqtt=MqttConfig(site="h1", room="xr2", device="jetson7"),
        message_id=message_id("jetson7", "0001-000001"),
        received_unix=1_700_000_000.0,
        stage_seconds={"receive": 0.0291, "spool": 0.015},
        probe=False,
    )
    document = json.loads(payload)
    assert document["schema"] == PAYLOAD_SCHEMA and document["message_id"] == "jetson7-0001-000001"
    assert (document["site"], document["room"], document["device"]) == ("h1", "xr2", "jetson7")
    assert document["verdict"]["image"]["sop_instance_uid"] == hashed_uid(uid) != uid
    assert document["timings_ms"] == {"receive": 29.1, "spool": 15.0}
    assert uid.startswith("2.25.") and verdict.image["sop_instance_uid"] == uid
    assert verdict.as_dict() == before
    # a caller changing what as_dict gave it changes nothing either
    changed = verdict.as_dict()
    changed["image"]["sop_instance_uid"] = "x"
    changed["notes"].append("x")
    changed["items"][next(iter(changed["items"]))]["detail"]["x"] = 1
    assert verdict.as_dict() == before
    with pytest.raises(TypeError):
        verdict.image["sop_instance_uid"] = "x"  # type: ignore[index]


def test_uids_are_sent_only_when_the_site_asks() -> None:
    document = {"verdict": "pass", "image": {"sop_instance_uid": "1.2.3"}}
    sent = [
        json.loads(
            verdict_message(
                verdict=document,
                mqtt=MqttConfig(site="s", room="r", device="d", send_uids=send),
                message_id="d-1",
                received_unix=0.0,
                stage_seconds={},
                probe=False,
            )
        )["verdict"]["image"]["sop_instance_uid"]
        for send in (False, True)
    ]
    assert sent == [hashed_uid("1.2.3"), "1.2.3"] and document["image"] == {"sop_instance_uid": "1.2.3"}
    assert hashed_uid("") == "" and len(hashed_uid("1.2.3")) == len("sha256:") + 32
