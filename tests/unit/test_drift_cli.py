"""`vigil drift`: its arguments and times, and references built from the DriftWindow messages the drift service
publishes (made here by its own processor), without Kafka or S3."""
from __future__ import annotations

import pytest

from cli.__main__ import build_parser
from cli.drift import BadInput, parse_range, parse_target, parse_time, reference_row, status_rows
from libs.common.topics import DRIFT_WINDOWS, MONITORING
from protos import events_pb2
from services.drift.processor import reference_announcement
from services.drift.profiles import ReferenceProfile
from services.drift.window_history import RangeSelection, build_references, camera_subject_filter, closed_window
from services.drift.windows import ComparisonPolicy, DriftKey
from tests.drift_window_events import SyntheticSubjects

T0 = 1_800_000_000.0  # a 60 s window boundary
LOBBY_IN, LOBBY_OUT, SENSOR = (DriftKey("camera/lobby"), DriftKey("camera/lobby", "yolov3-tiny", "1"),
                               DriftKey("sensor/t-1"))


@pytest.fixture(scope="module")
def published():
    """Six windows of a camera, its model and a sensor, then three darkened ones (an alert is raised)."""
    subjects = SyntheticSubjects("lobby", "t-1")
    return subjects.windows(T0, 6) + subjects.windows(T0 + 6 * 60, 3, brightness=0.3)


def drift_windows(messages) -> list[events_pb2.DriftWindow]:
    return [events_pb2.DriftWindow.FromString(m.value) for m in messages if m.topic == DRIFT_WINDOWS]


def test_iso_times_with_a_zone_are_read_and_times_without_one_refused():
    assert parse_time("2026-11-28T18:00:00Z") == 1795888800.0
    assert parse_time("2026-11-28T19:00:00+01:00") == 1795888800.0
    with pytest.raises(BadInput, match="no time zone"):
        parse_time("2026-11-28T18:00:00")
    with pytest.raises(BadInput, match="not an ISO 8601 time"):
        parse_time("yesterday")


def test_a_range_ending_before_it_starts_is_refused():
    assert parse_range("2026-11-28T18:00:00Z", "2026-11-28T19:00:00Z") == (1795888800.0, 1795892400.0)
    with pytest.raises(BadInput, match="must be after"):
        parse_range("2026-11-28T19:00:00Z", "2026-11-28T18:00:00Z")


def test_the_command_line_forms_of_the_issue_parse():
    args = build_parser().parse_args(["drift", "reference", "set", "demo", "--from", "2026-11-28T18:00:00Z",
                                      "--to", "2026-11-28T19:00:00Z", "--model", "yolov3-tiny@2", "--by", "ops"])
    assert (args.command, args.drift_command, args.reference_command, args.target, args.start, args.end,
            args.model, args.by) == ("drift", "reference", "set", "demo", "2026-11-28T18:00:00Z",
                                     "2026-11-28T19:00:00Z", "yolov3-tiny@2", "ops")
    assert build_parser().parse_args(["drift", "reference", "show"]).subject is None
    assert build_parser().parse_args(["drift", "status", "--json"]).json


def test_the_target_names_a_camera_its_model_or_a_sensor():
    described, wanted = parse_target("lobby", None, None)
    assert described == "camera/lobby" and wanted(LOBBY_IN) and wanted(LOBBY_OUT) and not wanted(SENSOR)
    _, wanted = parse_target("camera/lobby", None, "yolov3-tiny@1")
    assert wanted(LOBBY_OUT) and not wanted(LOBBY_IN) and not wanted(DriftKey("camera/lobby", "yolov3-tiny", "2"))
    _, wanted = parse_target(None, "t-1", None)
    assert wanted(SENSOR) and not wanted(LOBBY_IN)
    _, wanted = parse_target("sensor/t-1", None, None)
    assert wanted(SENSOR)
    for target, sensor, model in [(None, None, None), ("lobby", "t-1", None), ("sensor/t-1", None, "m"),
                                  ("lobby", None, "m@"), ("a/b", None, None)]:
        with pytest.raises(BadInput):
            parse_target(target, sensor, model)


def test_a_window_is_rebuilt_from_its_published_samples(published):
    windows = drift_windows(published)
    first = closed_window(windows[0])
    assert (first.key, first.start, first.end) == (DriftKey.parse(windows[0].subject), T0, T0 + 60)
    assert first.summary.frames == windows[0].count == 120
    with pytest.raises(ValueError, match="no samples"):
        closed_window(events_pb2.DriftWindow(subject="camera/x"))


def test_references_are_built_from_the_windows_wholly_inside_the_range(published):
    selection = RangeSelection(T0 + 30, T0 + 5 * 60)  # windows 1..4 lie wholly inside; 0 starts before
    for event in drift_windows(published) * 2:  # published twice (a restart): counted once
        selection.offer(event, camera_subject_filter("lobby"))
    assert sorted(selection.windows) == [LOBBY_IN, LOBBY_OUT]
    assert all(len(windows) == 4 for windows in selection.windows.values())
    profiles = build_references(selection, sorted(selection.windows), "ops@example", T0 + 3600,
                                ComparisonPolicy(min_frames=30))
    for profile in profiles:
        assert (profile.start, profile.end, profile.windows, profile.source, profile.set_by, profile.set_at) == (
            T0 + 60, T0 + 5 * 60, 4, "time_range", "ops@example", T0 + 3600)
        assert profile.thresholds, "four windows give thresholds learnt from their spread"
    assert "input.mean_luma" in profiles[0].summary.numeric
    # The announcement the service follows, and what `show` makes of it.
    out = reference_announcement(profiles[1], events_pb2.ObjectRef(bucket="vigil-drift", key="k", sha256="s"))
    announcement = events_pb2.DriftReference.FromString(out.value)
    assert (announcement.subject, announcement.source, announcement.set_by, announcement.windows) == (
        "camera/lobby|yolov3-tiny|1", "manual", "ops@example", 4)
    row = reference_row(announcement, ReferenceProfile.from_json_bytes(profiles[1].to_json_bytes()))
    assert (row["range_start"], row["range_end"], row["events"]) == ("2027-01-15T08:01:00Z", "2027-01-15T08:05:00Z",
                                                                     480)
    assert set(row["thresholds"]) <= set(row["features"])


def test_status_shows_each_subjects_newest_window_its_drifting_features_and_the_alert(published):
    alerts = [events_pb2.MonitoringEvent.FromString(m.value).drift_alert for m in published if m.topic == MONITORING]
    rows = {r["subject"]: r for r in status_rows(drift_windows(published)[::-1], alerts)}
    assert sorted(rows) == ["camera/lobby", "camera/lobby|yolov3-tiny|1", "sensor/t-1"]
    lobby = rows["camera/lobby"]
    assert (lobby["window_start"], lobby["status"], lobby["count"], lobby["alert_state"]) == (
        "2027-01-15T08:08:00Z", "scored", 120, "alert")
    assert "input.mean_luma" in [d["feature"] for d in lobby["drifting"]]
    assert all(d["score"] > d["threshold"] for d in lobby["drifting"])
    assert lobby["last_alert"]["state"] == "raised"
    assert rows["sensor/t-1"]["alert_state"] == "ok" and rows["sensor/t-1"]["last_alert"] is None
