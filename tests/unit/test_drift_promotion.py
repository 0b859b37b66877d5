"""A promoted model's training cameras accept their current conditions as the new normal (services/drift/promotion.py):
which cameras are re-learnt and from when, the reference re-learnt from the windows since the drift began (read back
as vigil.drift.windows holds them), or dropped and learnt afresh when there are too few, and the open alert then
clearing through the normal path; a promotion read twice re-learns nothing more."""
from __future__ import annotations

import pytest

from libs.common.envelope import new_envelope
from libs.common.topics import DRIFT_REFERENCES, DRIFT_WINDOWS, MONITORING
from protos import events_pb2
from services.drift.monitor import DriftMonitor
from services.drift.processor import DriftProcessor, reference_announcement
from services.drift.profiles import FIRST_WINDOWS, TIME_RANGE
from services.drift.promotion import (
    Promotion, apply_promotion, plan_promotion, promotion_of, relearnt_references)
from services.drift.window_history import RangeSelection
from services.drift.windows import DriftKey
from tests.drift_window_events import SyntheticSubjects

WINDOW_S = 20.0  # 40 frames a window at SyntheticSubjects' 2 a second (min_frames 30)
T0 = 1_800_000_000.0  # a window boundary
CAMERA = "dusk"
INPUT = DriftKey(f"camera/{CAMERA}")
DARK = 0.3


def rollout_event(stage: str = "promoted", cameras=(CAMERA,), at: float = T0 + 3600, registry_version: int = 4,
                  name: str = "yolov3-tiny") -> bytes:
    return events_pb2.RolloutEvent(
        envelope=new_envelope(f"rollout/{name}", "training", event_time_ns=int(at * 1e9)),
        candidate=events_pb2.ModelRef(name=name, version="1.1"), champion=events_pb2.ModelRef(name=name, version="1"),
        stage=stage, actor="rollout", cameras=list(cameras), registry_version=registry_version).SerializeToString()


class Site:
    """A camera watched by a DriftProcessor, and the windows it published (what vigil.drift.windows holds)."""

    def __init__(self) -> None:
        self.subjects = SyntheticSubjects(CAMERA, "t-1", window_s=WINDOW_S, reference_windows=3)
        self.processor: DriftProcessor = self.subjects.processor
        self.published: list[events_pb2.DriftWindow] = []
        self.alerts: list[events_pb2.DriftAlert] = []
        self.references = []
        self.next_start = T0

    @property
    def monitor(self) -> DriftMonitor:
        return self.processor.monitor

    def run(self, windows: int, brightness: float = 1.0) -> None:
        messages = self.subjects.windows(self.next_start, windows, brightness)
        self.next_start += windows * WINDOW_S
        self.take(messages)

    def take(self, messages) -> None:
        for message in messages:
            if message.topic == DRIFT_WINDOWS:
                self.published.append(events_pb2.DriftWindow.FromString(message.value))
            elif message.topic == MONITORING:
                alert = events_pb2.MonitoringEvent.FromString(message.value).drift_alert
                if alert.camera_id == CAMERA and not alert.model_name:
                    self.alerts.append(alert)

    def read(self, selection: RangeSelection, wanted) -> None:
        """As window_reader.windows_in_range offers what it reads."""
        for event in self.published:
            selection.offer(event, wanted)

    def promote(self, value: bytes, now: float):
        promotion = promotion_of(value)
        plan = plan_promotion(self.monitor, promotion, now)
        if not plan.relearn:
            return plan, None
        profiles, thin = relearnt_references(plan, self.monitor, now, self.read)
        output = apply_promotion(self.monitor, plan, profiles, thin, self.processor.touched)
        return plan, output

    def input_states(self) -> list[str]:
        return [w.alert_state for w in self.published if w.subject == f"camera/{CAMERA}"]


def drifted_site(dark_windows: int) -> Site:
    site = Site()
    site.run(5)  # 3 make the reference, 2 compared
    assert INPUT in site.monitor.references and not site.alerts
    site.run(dark_windows, DARK)
    assert [a.state for a in site.alerts] == ["raised"], site.input_states()
    return site


def test_a_promotion_event_names_the_model_version_and_the_cameras():
    promotion = promotion_of(rollout_event(cameras=("dusk", "lobby", "dusk", "")))
    assert promotion.source == "promotion of yolov3-tiny version 4"
    assert promotion.cameras == ("dusk", "lobby") and promotion.at == T0 + 3600
    assert promotion_of(rollout_event(registry_version=0)).source == "promotion of yolov3-tiny version 1.1"
    for stage in ("shadow", "canary", "rolled_back"):
        assert promotion_of(rollout_event(stage)) is None
    with pytest.raises(ValueError):
        promotion_of(b"\xff\x00 not a protobuf")
    with pytest.raises(ValueError):
        promotion_of(rollout_event(name=""))


def test_the_announcement_tells_why_a_reference_is_what_it_is():
    site = drifted_site(2)
    profile = site.monitor.references[INPUT]
    ref = events_pb2.ObjectRef(bucket="b", key="k", sha256="0" * 64)
    sources = {}
    for source in (FIRST_WINDOWS, TIME_RANGE, "promotion of yolov3-tiny version 4"):
        out = reference_announcement(type(profile)(**{**profile.__dict__, "source": source}), ref)
        sources[source] = events_pb2.DriftReference.FromString(out.value).source
    assert sources == {FIRST_WINDOWS: "auto", TIME_RANGE: "manual",
                       "promotion of yolov3-tiny version 4": "promotion of yolov3-tiny version 4"}


def test_a_promotion_relearns_the_drifted_camera_from_the_windows_since_the_drift_began_and_the_alert_clears():
    site = drifted_site(4)  # raised by the second dark window, two more after it
    drift_start = T0 + 5 * WINDOW_S
    plan, output = site.promote(rollout_event(cameras=(CAMERA, "never-seen")), now=T0 + 3600)
    assert [r.key for r in plan.relearn] == [INPUT] and plan.relearn[0].since == drift_start
    assert plan.skipped == {"never-seen": "no windows of its frames seen"}
    # The output subjects are not re-learnt: a promoted version is a subject of its own.
    profile = site.monitor.references[INPUT]
    assert output.references == [profile] and not output.messages
    assert profile.source == "promotion of yolov3-tiny version 4" and profile.set_by == "drift"
    # the newest three of the four dark windows
    assert (profile.start, profile.end, profile.windows) == (drift_start + WINDOW_S, drift_start + 4 * WINDOW_S, 3)
    assert INPUT in site.processor.touched  # its state goes to the table with the next snapshot

    site.run(3, DARK)
    assert [a.state for a in site.alerts] == ["raised", "cleared"], site.input_states()
    cleared = site.alerts[-1]
    # clear_after (2) clean windows against the new reference, the first the one after the promotion
    assert cleared.window_end.seconds == int(site.next_start - WINDOW_S)
    assert site.input_states()[-3:] == ["alert", "ok", "ok"]


def test_a_promotion_read_twice_or_older_than_the_reference_relearns_nothing():
    site = drifted_site(4)
    site.promote(rollout_event(), now=T0 + 3600)
    relearnt = site.monitor.references[INPUT]
    again, output = site.promote(rollout_event(at=T0 + 3700), now=T0 + 3700)
    assert output is None and again.skipped == {CAMERA: "its reference was re-learnt for this promotion already"}
    # An older promotion of another version (a replay from the beginning of the topic): the reference is newer.
    older, output = site.promote(rollout_event(at=relearnt.set_at - 1, registry_version=3), now=T0 + 3700)
    assert output is None and "is newer" in older.skipped[CAMERA]
    assert site.monitor.references[INPUT] is relearnt


def test_too_few_windows_since_the_drift_began_drop_the_reference_to_be_learnt_afresh_even_across_a_restart():
    site = drifted_site(2)  # raised by the second dark window: two windows since the drift began, three needed
    plan, output = site.promote(rollout_event(), now=T0 + 3600)
    assert plan.relearn and not output.references
    assert INPUT not in site.monitor.references
    assert site.monitor.builders[INPUT].source == "promotion of yolov3-tiny version 4"
    # Its announcement withdrawn: a restart loads no reference for it, and the state brings the re-learning back.
    [withdrawal] = output.messages
    assert (withdrawal.topic, withdrawal.key, withdrawal.value) == (DRIFT_REFERENCES, b"camera/dusk", None)
    restarted = DriftProcessor(DriftMonitor(site.monitor.policy))
    for key, state in site.processor.take_touched_states().items():
        restarted.restore(state)
    assert restarted.monitor.builders[INPUT].source == "promotion of yolov3-tiny version 4"
    assert site.promote(rollout_event(), now=T0 + 3700)[0].skipped == {
        CAMERA: "its reference is being learnt afresh for this promotion already"}

    # The next three dark windows make the reference (no verdict meanwhile), the two after it clear the alert.
    site.run(6, DARK)
    assert site.monitor.references[INPUT].source == "promotion of yolov3-tiny version 4"
    assert site.monitor.references[INPUT].start == T0 + 7 * WINDOW_S
    assert [a.state for a in site.alerts] == ["raised", "cleared"], site.input_states()
    assert site.input_states()[-6:] == ["alert"] * 4 + ["ok"] * 2


def test_the_windows_read_back_are_this_workers_length_only():
    site = drifted_site(4)
    other = SyntheticSubjects(CAMERA, "t-1", window_s=60.0, reference_windows=3)
    longer = [events_pb2.DriftWindow.FromString(m.value) for m in other.windows(T0, 8, DARK)
              if m.topic == DRIFT_WINDOWS]
    site.published = site.published + longer  # another worker's 60 s windows of the same subject, same starts
    plan, _output = site.promote(rollout_event(), now=T0 + 3600)
    assert site.monitor.references[INPUT].windows == 3
    assert site.monitor.references[INPUT].end - site.monitor.references[INPUT].start == 3 * WINDOW_S
    assert isinstance(plan.promotion, Promotion)
