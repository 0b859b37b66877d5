"""`vigil drift` on the real stack: windows of a camera, its model and a sensor, made by the drift service's own
processor and published to vigil.drift.windows (alerts to vigil.monitoring) as the service does; then
`reference set` from a time range of them (profile in S3, announcement on vigil.drift.references, followed by
the stack's drift service), `reference show`, and `status`."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cli.drift import iso
from libs.common.objectstore import get_verified, object_store_client
from libs.common.settings import ObjectStoreSettings
from libs.common.topics import DRIFT_REFERENCES
from protos import events_pb2
from services.drift.profiles import ReferenceProfile
from tests.drift_window_events import SyntheticSubjects
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import end_offsets, produce, read_range


def vigil_drift(stack, *args: str) -> subprocess.CompletedProcess:
    command = Path(sys.executable).parent / "vigil"
    return subprocess.run([str(command), "--state-dir", str(stack.paths.state), "drift", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def published(stack):
    """Nine windows ending before now: six normal ones of each subject, then three darkened ones of the camera
    (the third scored window raises an alert)."""
    camera, sensor = f"cli-{uuid.uuid4().hex[:6]}", f"t-{uuid.uuid4().hex[:6]}"
    t0 = math.floor(time.time() / 60) * 60 - 9 * 60
    subjects = SyntheticSubjects(camera, sensor)
    messages = subjects.windows(t0, 6) + subjects.windows(t0 + 6 * 60, 3, brightness=0.3)
    for topic in {m.topic for m in messages}:
        produce(stack.config.kafka_bootstrap, topic, [(m.key, m.value) for m in messages if m.topic == topic])
    return camera, sensor, t0


def announcements(stack, since: dict[int, int]) -> list[events_pb2.DriftReference]:
    bootstrap = stack.config.kafka_bootstrap
    return [events_pb2.DriftReference.FromString(m.value())
            for m in read_range(bootstrap, DRIFT_REFERENCES, since, end_offsets(bootstrap, DRIFT_REFERENCES))]


def test_reference_set_from_a_time_range_stores_announces_and_shows_it(stack, published):
    camera, sensor, t0 = published
    before = end_offsets(stack.config.kafka_bootstrap, DRIFT_REFERENCES)
    started = time.time()
    result = vigil_drift(stack, "reference", "set", camera, "--from", iso(t0 + 60), "--to", iso(t0 + 6 * 60),
                         "--by", "tester@example")
    assert result.returncode == 0, result.stderr
    subjects = {f"camera/{camera}", f"camera/{camera}|yolov3-tiny|1"}
    assert {line.split(":")[0] for line in result.stdout.splitlines()} == subjects
    # One announcement per subject, naming who set it, when and from which windows.
    announced = {a.subject: a for a in announcements(stack, before) if camera in a.subject}
    assert set(announced) == subjects
    client = object_store_client(ObjectStoreSettings(endpoint=f"127.0.0.1:{stack.config.ports.s3}",
                                                     access_key=stack.config.s3_access_key,
                                                     secret_key=stack.config.s3_secret_key))
    for subject, announcement in announced.items():
        assert (announcement.source, announcement.set_by, announcement.windows) == ("manual", "tester@example", 5)
        assert (announcement.range_start.seconds, announcement.range_end.seconds) == (t0 + 60, t0 + 6 * 60)
        assert started - 1 <= announcement.set_time.seconds <= time.time() + 1
        # The profile in the object store, checked against its digest.
        profile = ReferenceProfile.from_json_bytes(get_verified(client, announcement.profile))
        assert (profile.source, profile.set_by, profile.windows, profile.start, profile.end) == (
            "time_range", "tester@example", 5, t0 + 60, t0 + 6 * 60)
        assert profile.summary.frames == 5 * 120 and profile.thresholds
    # The stack's drift service follows the topic and takes them.
    def taken() -> set[str]:
        lines = [line for line in stack.supervisor.log_tail("drift", 400).splitlines() if "reference set" in line]
        return {s for s in subjects if any(f'{s}"' in line and "tester@example" in line for line in lines)}
    wait_for(lambda: taken() == subjects, 30, what="the drift service to log the references it took")

    shown = vigil_drift(stack, "reference", "show", camera, "--json")
    assert shown.returncode == 0, shown.stderr
    rows = {r["subject"]: r for r in map(json.loads, shown.stdout.splitlines())}
    assert set(rows) == subjects
    row = rows[f"camera/{camera}"]
    assert (row["source"], row["set_by"], row["range_start"], row["range_end"], row["windows"], row["events"]) == (
        "manual", "tester@example", iso(t0 + 60), iso(t0 + 6 * 60), 5, 600)
    assert "input.mean_luma" in row["features"] and row["thresholds"]["input.mean_luma"]["threshold"] > 0
    human = vigil_drift(stack, "reference", "show", f"camera/{camera}")
    assert human.returncode == 0 and "set by tester@example" in human.stdout and "input.mean_luma" in human.stdout


def test_a_sensor_reference_and_the_refusals_that_write_nothing(stack, published):
    camera, sensor, t0 = published
    before = end_offsets(stack.config.kafka_bootstrap, DRIFT_REFERENCES)
    bad = [
        (["reference", "set", camera, "--from", "2026-11-28T18:00:00", "--to", iso(t0)], "no time zone"),
        (["reference", "set", camera, "--from", iso(t0 + 60), "--to", iso(t0)], "must be after"),
        (["reference", "set", camera, "--from", iso(t0 - 3600), "--to", iso(t0 - 1800)], "no window of"),
        (["reference", "set", camera, "--from", iso(t0), "--to", iso(t0 + 120)], "fewer than 3"),
        (["reference", "set", camera, "--model", "other-model", "--from", iso(t0), "--to", iso(t0 + 360)],
         "no window of"),
        # Windows are found by when they were published: these were, minutes after the range ended (--late-s 0).
        (["reference", "set", camera, "--from", iso(t0), "--to", iso(t0 + 360), "--late-s", "0"],
         "no window of"),
    ]
    for args, message in bad:
        result = vigil_drift(stack, *args)
        assert (result.returncode, message in result.stderr) == (2, True), (args, result.stderr)
    # The stack's drift service announces the references it builds for the live demo camera on the same topic:
    # only this test's subjects count.
    def ours() -> list[events_pb2.DriftReference]:
        return [a for a in announcements(stack, before) if camera in a.subject or sensor in a.subject]

    assert ours() == [], "a refused reference writes nothing"
    result = vigil_drift(stack, "reference", "set", f"sensor/{sensor}", "--from", iso(t0), "--to", iso(t0 + 360))
    assert result.returncode == 0, result.stderr
    [announcement] = ours()
    assert (announcement.subject, announcement.sensor_id, announcement.windows) == (f"sensor/{sensor}", sensor, 6)


def test_status_shows_the_newest_window_drifting_features_and_alert_of_each_subject(stack, published):
    camera, sensor, t0 = published
    result = vigil_drift(stack, "status", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["subject"]: r for r in map(json.loads, result.stdout.splitlines())}
    lobby = rows[f"camera/{camera}"]
    assert (lobby["window_start"], lobby["window_end"], lobby["status"], lobby["count"], lobby["alert_state"]) == (
        iso(t0 + 8 * 60), iso(t0 + 9 * 60), "scored", 120, "alert")
    assert "input.mean_luma" in [d["feature"] for d in lobby["drifting"]]
    assert lobby["last_alert"]["state"] == "raised"
    assert (rows[f"sensor/{sensor}"]["alert_state"], rows[f"sensor/{sensor}"]["window_end"]) == ("ok",
                                                                                                  iso(t0 + 9 * 60))
    human = vigil_drift(stack, "status")
    line = next(line for line in human.stdout.splitlines() if line.startswith(f"camera/{camera} "))
    assert "alert" in line and "input." in line
