"""What a biomedical engineer reads in the journal, from a real daemon: JSON lines with the journal's
`<N>` priorities, refusals naming the sender and the fix, one PHI-free line per verdict, broker down and
up, reload and stop; and `systemctl reload` (SIGHUP) letting a new modality's AE title in without a
restart."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import pydicom
import pytest

from edge.publish.message import hashed_uid
from tests.qc.conftest import fault_case, write_case
from tools.testbed import Broker, Daemon, VerdictSubscriber, site_config, store, storescu_binary, wait_for

LINE = re.compile(r"^<([0-7])>(\{.*\})$")
PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
WARNING = 4  # journalctl -p warning shows priorities 0..4
PRIVATE = {"PatientBirthDate": "19610704", "AccessionNumber": "ACC7734512"}  # the phantom leaves them empty


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two phantom studies (PHANTOM^... names) with a birth date and an accession number set."""
    try:
        storescu_binary()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    folder = tmp_path_factory.mktemp("log-studies")
    paths = {}
    for name, (view, fault, seed) in {"ap": ("ap", "cut_top", 61), "obl": ("oblique", "under_rotated", 61)}.items():
        path = write_case(fault_case(view, fault, seed, size_px=1024), folder)
        ds = pydicom.dcmread(path)
        for keyword, value in PRIVATE.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
        paths[name] = path
    return paths


def journal_entries(text: str) -> list[tuple[int, dict[str, Any]]]:
    """Every line as journald reads it: `<N>` and a JSON object, N the priority of the line's level."""
    entries = []
    for line in text.splitlines():
        found = LINE.match(line)
        assert found is not None, f"not <N>{{json}}: {line!r}"
        entry = json.loads(found.group(2))
        assert int(found.group(1)) == PRIORITY[entry["level"]], line
        entries.append((int(found.group(1)), entry))
    return entries


def test_the_journal_tells_refusals_verdicts_broker_reload_and_stop(
    studies: dict[str, Path], tmp_path: Path
) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    config, port = site_config(tmp_path, broker.port)
    subscriber = VerdictSubscriber(broker.port, "edgeqc/h1/xr2/jetson7/verdict")
    log = tmp_path / "daemon.log"
    daemon = Daemon.start(config, log=log, journal=True)
    try:
        with pytest.raises(RuntimeError, match="Calling AE Title Not Recognized"):
            store(port, studies["ap"], calling="WRONGAE")
        with pytest.raises(RuntimeError, match="Called AE Title Not Recognized"):
            store(port, studies["ap"], called="WRONGCALLED")
        store(port, studies["ap"])
        store(port, studies["obl"], calling="EDGEQC-PROBE")
        assert wait_for(lambda: len(subscriber.payloads("verdict")) == 2, timeout=90)
        broker.stop()
        assert wait_for(lambda: any('"broker_down"' in line for line in daemon.lines), timeout=30)
        broker.start()
        assert wait_for(lambda: sum('"broker_up"' in line for line in daemon.lines) == 2, timeout=60)
        daemon.signal(signal.SIGHUP)
        assert wait_for(lambda: any("configuration reloaded" in line for line in daemon.lines))
    finally:
        assert daemon.stop() == 0
        subscriber.close()
        broker.stop()
    text = log.read_text()
    entries = journal_entries(text)  # the first line too: nothing printed before logging is set up
    assert "serving" in [e.get("event") for _, e in entries]
    # what `journalctl -p warning` shows: the two refusals and the broker going away, nothing else
    shown = [e for priority, e in entries if priority <= WARNING]
    assert [e.get("event") for e in shown] == ["association_refused", "association_refused", "broker_down"], shown
    calling, called, down = shown
    assert calling["reason"] == "unknown_calling_aet" and calling["calling_aet"] == "WRONGAE"
    assert "WRONGAE" in calling["message"] and "127.0.0.1" in calling["message"]
    assert "add 'WRONGAE' to dicom.allowed_calling_aets" in calling["message"]
    assert called["reason"] == "wrong_called_aet" and called["called_aet"] == "WRONGCALLED"
    assert "127.0.0.1" in called["message"]
    assert "set the modality's destination AE title to 'EDGEQC'" in called["message"]
    assert f":{broker.port}" in down["message"] and "outbox" in down["message"]
    events = [e.get("event") for _, e in entries]
    assert events.count("association_accepted") == 2 and events.count("broker_up") == 2
    assert "connected again" in [e for _, e in entries if e.get("event") == "broker_up"][1]["message"]
    # one line per verdict, from edge.verdict, matching what MQTT got
    verdicts = [e for _, e in entries if e["logger"] == "edge.verdict"]
    assert len(verdicts) == 2 and all(e["level"] == "info" and e["event"] == "verdict" for e in verdicts)
    by_probe = {e["probe"]: e for e in verdicts}
    payloads = {m["probe"]: m for m in subscriber.payloads("verdict")}
    for probe, line in by_probe.items():
        sent = payloads[probe]
        assert line["message_id"] == sent["message_id"] and line["verdict"] == sent["verdict"]["verdict"]
        assert line["view"] == sent["verdict"]["view"]["judged"]
        assert line["sop_instance_uid"] == sent["verdict"]["image"]["sop_instance_uid"]  # hashed alike
        assert line["failed"] == [item["item"] for item in sent["verdict"]["failed"]]
        assert line["deviation_index"] == sent["verdict"]["exposure"]["deviation_index"]
        assert line["model"] == sent["verdict"]["versions"]["model"]
        assert {"receive", "spool", "queue", "total"} <= set(line["timings_ms"])
    assert (by_probe[False]["view"], by_probe[True]["view"]) == ("ap", "oblique")
    assert by_probe[False]["failed"] and by_probe[False]["message"].startswith("verdict fail; view ap; failed ")
    # no patient's name, ID, birth date or accession number (nor the raw UID) anywhere in the log
    for path in studies.values():
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName).startswith("PHANTOM^")
        for private in (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber, ds.SOPInstanceUID):
            assert private not in text, private
        assert hashed_uid(ds.SOPInstanceUID) in text
    assert "PHANTOM^" not in text and "Rejecting Association" not in text  # pynetdicom's bare line is gone
    reload = next(e for _, e in entries if e.get("event") == "reload")
    assert reload["ok"] is True and reload["message"].endswith(": no change")
    ending = [event for event in events[events.index("stopping") :] if event != "broker_down"]
    assert ending == ["stopping", "draining", "stopped"] and entries[-1][1]["message"] == "stopped: drained"
    assert entries[events.index("stopping")][1]["message"] == "SIGTERM received: stopping"


def test_sighup_lets_a_new_ae_title_in_without_a_restart_and_refuses_a_bad_file(
    broker: Broker, studies: dict[str, Path], tmp_path: Path
) -> None:
    config, port = site_config(tmp_path, broker.port, calling_aets=("MODALITY",))
    subscriber = VerdictSubscriber(broker.port, "edgeqc/h1/xr2/jetson7/verdict")
    daemon = Daemon.start(config)
    pid = daemon.pid
    lines = daemon.lines

    def logged(event: str) -> list[dict[str, Any]]:
        return [entry for entry in map(json.loads, list(lines)) if entry.get("event") == event]

    try:
        with pytest.raises(RuntimeError, match="Calling AE Title Not Recognized"):
            store(port, studies["ap"], calling="NEWAE")
        good = config.read_text().replace('["MODALITY"]', '["MODALITY", "NEWAE"]')
        assert good != config.read_text()
        config.write_text(good.replace("[dicom]\n", "[dicom]\nmax_associations = 3\n"))
        daemon.signal(signal.SIGHUP)
        assert wait_for(lambda: logged("reload"))
        reload = logged("reload")[0]
        assert reload["ok"] is True and reload["applied"] == ["dicom.allowed_calling_aets"]
        assert reload["restart"] == ["dicom.max_associations"]
        assert any("'dicom.max_associations' changed: takes effect after a restart" in e["message"]
                   for e in logged("reload_needs_restart"))  # fmt: skip
        assert "edgeqc_config_last_reload_success 1.0" in daemon.scrape()
        store(port, studies["ap"], calling="NEWAE")
        assert wait_for(lambda: len(subscriber.payloads("verdict")) == 1, timeout=90)
        assert subscriber.payloads("verdict")[0]["verdict"]["view"]["judged"] == "ap"
        assert daemon.pid == pid and daemon.process.poll() is None  # the same process: no restart
        config.write_text(good.replace("allowed_calling_aets", "allowed_calling_aet"))  # misspelt key
        daemon.signal(signal.SIGHUP)
        assert wait_for(lambda: len(logged("reload")) == 2)
        refused = logged("reload")[1]
        assert refused["ok"] is False and refused["level"] == "error"
        assert "dicom.allowed_calling_aet" in refused["message"] and "previous one" in refused["message"]
        assert "edgeqc_config_last_reload_success 0.0" in daemon.scrape()
        store(port, studies["obl"], calling="NEWAE")  # the running configuration still lets it in
        assert wait_for(lambda: len(subscriber.payloads("verdict")) == 2, timeout=90)
        assert daemon.pid == pid and daemon.process.poll() is None
    finally:
        assert daemon.stop() == 0
        subscriber.close()
