"""The drift service's message handling without Kafka: frames and results in, windows and alerts out, replays
skipped, poison dead-lettered, and state that survives a restart."""
from __future__ import annotations

import numpy as np
import pytest

from libs.common.envelope import new_envelope
from libs.common.kafka import Rejected
from libs.common.topics import DRIFT_WINDOWS, FRAMES, INFERENCE, INFERENCE_SHADOW, MONITORING
from protos import events_pb2
from services.drift.monitor import DriftMonitor, DriftPolicy
from services.drift.processor import DriftProcessor, SourceMessage
from services.drift.windows import ComparisonPolicy, DriftKey

WINDOW_S = 10.0
T0 = 1_800_000_000.0  # a window boundary


def processor() -> DriftProcessor:
    return DriftProcessor(DriftMonitor(DriftPolicy(window_s=WINDOW_S, grace_s=1.0, reference_windows=3,
                                                   raise_after=2, clear_after=2,
                                                   comparison=ComparisonPolicy(min_frames=20))))


class Camera:
    """Frames of one camera at 5 fps with image statistics around a scene's normal, or darkened."""

    def __init__(self, camera_id: str = "lobby", seed: int = 1) -> None:
        self.camera_id, self.rng, self.offset = camera_id, np.random.default_rng(seed), 0

    def frames(self, start: float, seconds: float, brightness: float = 1.0) -> list[SourceMessage]:
        messages = []
        for i in range(int(seconds * 5)):
            t = start + i / 5
            luma = float(self.rng.normal(110, 6)) * brightness
            frame = events_pb2.Frame(
                envelope=new_envelope(f"camera/{self.camera_id}", "ingest", event_time_ns=int(t * 1e9)),
                camera_id=self.camera_id, sequence=self.offset,
                image_stats=events_pb2.ImageStats(
                    mean_luma=luma, contrast=float(self.rng.normal(50, 3)) * brightness,
                    sharpness=float(self.rng.normal(400, 30)), saturation=float(self.rng.normal(60, 4)),
                    underexposed_share=max(0.0, float(self.rng.normal(0.02, 0.005))) / brightness,
                    overexposed_share=max(0.0, float(self.rng.normal(0.01, 0.003)))))
            messages.append(SourceMessage(FRAMES, 0, self.offset, frame.SerializeToString()))
            self.offset += 1
        return messages


def run(p: DriftProcessor, messages: list[SourceMessage]) -> list:
    out = []
    for message in messages:
        assert p.handle(message) is None
        out += p.take_output(now=T0).messages
    return out


def decoded(messages, topic):
    kind = events_pb2.DriftWindow if topic == DRIFT_WINDOWS else events_pb2.MonitoringEvent
    return [kind.FromString(m.value) for m in messages if m.topic == topic]


def test_dusk_on_a_camera_raises_an_alert_after_two_drifting_windows_and_clears_after_two_clean_ones():
    p, camera = processor(), Camera()
    out = run(p, camera.frames(T0, 5 * WINDOW_S))  # 3 windows build the reference, 2 compared
    out += run(p, camera.frames(T0 + 5 * WINDOW_S, 3 * WINDOW_S, brightness=0.3))
    out += run(p, camera.frames(T0 + 8 * WINDOW_S, 4 * WINDOW_S))
    windows = decoded(out, DRIFT_WINDOWS)
    assert [w.status for w in windows[:3]] == ["reference"] * 3
    assert all(w.status == "scored" for w in windows[3:])
    alerts = [e.drift_alert for e in decoded(out, MONITORING)]
    assert [a.state for a in alerts] == ["raised", "cleared"]
    raised = alerts[0]
    assert raised.camera_id == "lobby" and raised.feature.startswith("input.") and raised.score > raised.threshold
    assert raised.window_start.seconds == T0 + 6 * WINDOW_S  # the second dark window
    assert [w.alert_state for w in windows if w.window_start.seconds == T0 + 6 * WINDOW_S] == ["alert"]


def test_a_message_read_again_after_a_restart_leaves_the_window_as_it_was():
    p, camera = processor(), Camera()
    messages = camera.frames(T0, 6)
    run(p, messages)
    replayed = [m.offset for m in messages]
    run(p, messages)  # the same offsets again
    state = p.monitor.key_state(next(iter(p.applied)))
    [window] = state["open"]
    assert window["frames"] == len(replayed) == 30


def test_state_restored_into_a_new_processor_closes_the_same_windows():
    first, camera = processor(), Camera()
    run(first, camera.frames(T0, 1.5 * WINDOW_S))
    saved = first.take_touched_states()
    second = processor()
    for data in saved.values():
        second.restore(data)
    rest = camera.frames(T0 + 1.5 * WINDOW_S, WINDOW_S)
    [a, b] = [decoded(run(x, rest), DRIFT_WINDOWS) for x in (first, second)]
    assert [(w.window_start.seconds, w.count) for w in a] == [(w.window_start.seconds, w.count) for w in b] \
        == [(T0 + WINDOW_S, 50)]


def test_a_message_that_is_not_its_topics_event_is_rejected_with_a_reason():
    rejected = processor().handle(SourceMessage(INFERENCE, 0, 0, b"\xff\xff not protobuf"))
    assert isinstance(rejected, Rejected) and rejected.reason == "malformed_event"


def test_a_window_with_few_frames_is_insufficient_data_never_an_alarm():
    p, camera = processor(), Camera()
    out = run(p, camera.frames(T0, 3 * WINDOW_S))
    out += run(p, camera.frames(T0 + 3 * WINDOW_S, 2, brightness=0.2))  # 10 dark frames, then silence
    out += p.take_output(now=T0 + 10 * WINDOW_S, close_idle=True).messages
    last = decoded(out, DRIFT_WINDOWS)[-1]
    assert (last.status, last.count) == ("insufficient_data", 10)
    assert decoded(out, MONITORING) == []


def results(camera: str, start: float, count: int, model: str = "yolov3-tiny", shadow: bool = False,
            first_offset: int = 0, embedding_dim: int = 8, seed: int = 2) -> list[SourceMessage]:
    """InferenceResults of one camera at 5 fps: a few detections of mixed classes and an embedding each."""
    rng = np.random.default_rng(seed)
    topic = INFERENCE_SHADOW if shadow else INFERENCE
    messages = []
    for i in range(count):
        t = start + i / 5
        result = events_pb2.InferenceResult(
            envelope=new_envelope(f"camera/{camera}", "inference", event_time_ns=int(t * 1e9)),
            camera_id=camera, frame_event_id=f"{camera}-frame-{i}", width=640, height=480, shadow=shadow,
            model=events_pb2.ModelRef(name=model, version="1"),
            embedding=rng.normal(size=embedding_dim).astype(np.float32).tolist())
        for d in range(int(rng.integers(0, 4))):
            x, y = float(rng.uniform(0, 500)), float(rng.uniform(0, 400))
            result.detections.add(label=("person", "car")[d % 2], score=float(rng.uniform(0.3, 1.0)),
                                  box=events_pb2.Box(x1=x, y1=y, x2=x + 40, y2=y + 80))
        messages.append(SourceMessage(topic, 0, first_offset + i, result.SerializeToString()))
    return messages


def test_a_batch_is_recorded_as_its_messages_one_by_one():
    messages = results("lobby", T0, 120) + results("gate", T0, 120, seed=3) + Camera().frames(T0, 24)
    messages.sort(key=lambda m: (m.offset, m.topic))
    one_by_one, batched = processor(), processor()
    out_one = run(one_by_one, messages)
    out_batched = []
    for first in range(0, len(messages), 37):  # batches cut across windows and subjects
        assert batched.handle_batch(messages[first:first + 37]) == []
        out_batched += batched.take_output(now=T0).messages
    def without_envelopes(out):  # an envelope carries the time it was made; subjects close in any order
        windows = sorted(decoded(out, DRIFT_WINDOWS), key=lambda w: (w.subject, w.window_start.seconds))
        for window in windows:
            window.ClearField("envelope")
        return [w.SerializeToString() for w in windows]
    assert len(decoded(out_one, DRIFT_WINDOWS)) == 6  # two closed per subject
    assert without_envelopes(out_batched) == without_envelopes(out_one)
    assert one_by_one.take_touched_states() == batched.take_touched_states()


def test_a_primary_and_its_shadow_meet_in_one_batch_and_the_disagreement_goes_to_the_primarys_window():
    p = processor()
    primary = results("lobby", T0, 5)
    shadow = results("lobby", T0, 5, model="yolov8n", shadow=True)
    assert p.handle_batch([m for pair in zip(primary, shadow) for m in pair]) == []
    [window] = p.monitor.windows.open[DriftKey("camera/lobby", "yolov3-tiny", "1")].values()
    assert window.numeric["output.shadow_disagreement"].seen == 5


def test_an_embedding_of_another_length_is_rejected_and_the_rest_of_its_batch_recorded():
    p = processor()
    batch = results("lobby", T0, 7)
    batch[3:4] = results("lobby", T0 + 0.6, 1, embedding_dim=5, first_offset=3)
    rejected = p.handle_batch(batch)
    assert [(index, r.reason) for index, r in rejected] == [(3, "invalid_event")]
    [window] = p.monitor.windows.open[DriftKey("camera/lobby", "yolov3-tiny", "1")].values()
    assert window.frames == 6 and window.embeddings.seen == 6
