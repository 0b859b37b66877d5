"""A promotion on the real stack: a drift worker of the test's own (10 s windows, its own consumer group) learns a
camera's reference from bright frames, raises an alert on dark ones, and, once a RolloutEvent "promoted" names
the camera on vigil.rollouts, re-learns the camera's input reference from its windows since the drift began (read
back from vigil.drift.windows), announces it with the promotion as its source, and the alert clears while the
camera stays dark.

The frames are the camera's ImageStats produced straight to vigil.frames, a window's worth at a time with event
times an hour back, each window closed by the worker's clock before the next is sent: the test takes seconds of
event time per window, not ten. The stack's own drift worker is stopped meanwhile: it would follow the test worker's
announcements on the shared compacted vigil.drift.references, act on the same promotion from its own 60 s windows
(too few of them: a withdrawal of the camera's reference), and the test worker would load what it announces."""
from __future__ import annotations

import json
import math
import time
import uuid

import pytest

from libs.common.envelope import new_envelope
from libs.common.topics import DRIFT_REFERENCES, DRIFT_WINDOWS, FRAMES, MONITORING, ROLLOUTS
from protos import events_pb2
from tests.drift_window_events import SyntheticSubjects
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import TopicRecorder, produce
from tests.integration.test_drift_cli import vigil_drift
from tests.integration.test_drift_service import WINDOW_S, DriftWorker, alerts_of, describe, seconds, windows_of

pytestmark = pytest.mark.integration

REFERENCE_WINDOWS = 4
DARK = 0.3


class Camera:
    """A camera's frames (image statistics as ingest computes them, 4 a second of event time) sent a window at a
    time; each window waited for until the test's worker has closed and published it."""

    def __init__(self, bootstrap: str, camera_id: str, windows: TopicRecorder, start: float) -> None:
        self.bootstrap, self.camera_id, self.windows = bootstrap, camera_id, windows
        self.subject = f"camera/{camera_id}"
        self.synthetic = SyntheticSubjects(camera_id, "unused", window_s=WINDOW_S)
        self.next_start = start

    def send_window(self, brightness: float = 1.0) -> events_pb2.DriftWindow:
        start = self.next_start
        self.next_start += WINDOW_S
        # SyntheticSubjects gives 2 frames a second: two interleaved runs make 40 a window (min frames 25).
        frames = [m for offset in (0.0, 0.25) for m in self.synthetic.events(start + offset, WINDOW_S, brightness)
                  if m.topic == FRAMES]
        produce(self.bootstrap, FRAMES, [(self.camera_id.encode(), m.value) for m in frames])
        closed = wait_for(lambda: [w for w in windows_of(self.windows, self.subject)
                                   if abs(seconds(w.window_start) - start) < 1e-3], 30,
                          what=f"the window at {start:.0f} closed")
        return closed[-1]


def promotion(camera_id: str, model: str, registry_version: int) -> bytes:
    return events_pb2.RolloutEvent(
        envelope=new_envelope(f"rollout/{model}", "training"), stage="promoted", previous_stage="canary",
        candidate=events_pb2.ModelRef(name=model, version="it-2"), champion=events_pb2.ModelRef(name=model,
                                                                                               version="it-1"),
        reason="canary passed its checks", actor="rollout", cameras=[camera_id],
        registry_version=registry_version).SerializeToString()


@pytest.fixture
def only_the_tests_drift_worker(stack):
    stack.supervisor.stop("drift", progress=lambda *_: None)
    try:
        yield
    finally:
        stack.supervisor.up(progress=lambda *_: None)


def test_a_promotion_naming_a_drifted_camera_relearns_its_reference_and_the_alert_clears(
        stack, only_the_tests_drift_worker, tmp_path):
    camera_id = f"promoted-{uuid.uuid4().hex[:6]}"
    model = f"drift-it-{uuid.uuid4().hex[:4]}"
    source = f"promotion of {model} version 7"
    bootstrap = stack.config.kafka_bootstrap
    worker = DriftWorker(stack, tmp_path, VIGIL_DRIFT_REFERENCE_WINDOWS=str(REFERENCE_WINDOWS))
    with worker.run() as drift, TopicRecorder(bootstrap, DRIFT_WINDOWS) as windows, \
            TopicRecorder(bootstrap, MONITORING) as monitoring, \
            TopicRecorder(bootstrap, DRIFT_REFERENCES) as references:
        # Its consumers start at the topics' ends: reading the stack camera's frames means they are positioned.
        wait_for(lambda: worker.metric("vigil_drift_events_total", topic=FRAMES) > 0, 60,
                 what="the worker reading vigil.frames")
        camera = Camera(bootstrap, camera_id, windows, math.floor(time.time() / WINDOW_S) * WINDOW_S - 3600)
        try:
            for _ in range(REFERENCE_WINDOWS + 1):
                camera.send_window()
            assert windows_of(windows, camera.subject)[-1].status == "scored", "a reference from bright frames"
            assert not alerts_of(monitoring, camera_id)

            drift_start = camera.next_start
            while not [a for a in alerts_of(monitoring, camera_id) if a[2].state == "raised"]:
                assert camera.next_start - drift_start < 4 * WINDOW_S, "no alert within 4 dark windows"
                camera.send_window(DARK)
            for _ in range(2):  # the windows since the drift began: at least 3 for a reference
                camera.send_window(DARK)

            promoted_at = time.monotonic()
            produce(bootstrap, ROLLOUTS, [(f"rollout/{model}".encode(), promotion(camera_id, model, 7))])

            def announced():
                return [a for a in (events_pb2.DriftReference.FromString(v) for _t, k, v in references.since(0)
                                    if k == camera.subject.encode() and v) if a.source == source]
            announcement = wait_for(announced, 60, what="the re-learnt reference announced")[0]
            print(f"re-learnt and announced {time.monotonic() - promoted_at:.1f} s after the promotion: "
                  f"{announcement.windows} windows from {seconds(announcement.range_start) - drift_start:+.0f} s "
                  "of the drift's start")
            assert announcement.set_by == "drift" and announcement.windows >= 3
            assert seconds(announcement.range_start) >= drift_start, "only windows since the drift began"

            dark_after = 0
            while not [a for a in alerts_of(monitoring, camera_id) if a[2].state == "cleared"]:
                assert dark_after < 4, "the alert did not clear within 4 dark windows after the promotion"
                camera.send_window(DARK)
                dark_after += 1
            print(f"cleared after {dark_after} dark windows, {time.monotonic() - promoted_at:.1f} s after the "
                  "promotion")
            assert dark_after <= 3  # clear_after = 2 clean windows, and one closing while the reference was read
        finally:
            print(describe(windows_of(windows, camera.subject)))
        states = [a.state for _t, _i, a in alerts_of(monitoring, camera_id)]
        assert sorted(set(states)) == ["cleared", "raised"] and states.index("raised") < states.index("cleared")
        assert drift.process.poll() is None, drift.log_tail()

    # `vigil drift reference show` tells why the reference is what it is.
    shown = vigil_drift(stack, "reference", "show", camera.subject, "--json")
    assert shown.returncode == 0, shown.stderr
    [row] = [json.loads(line) for line in shown.stdout.splitlines()]
    assert row["source"] == source and row["windows"] == announcement.windows, row
