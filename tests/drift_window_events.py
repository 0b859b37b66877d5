"""DriftWindow (and DriftAlert) messages as the drift service publishes them, made by its own DriftProcessor from
synthetic frames, inference results and sensor readings: for tests of what reads vigil.drift.windows."""
from __future__ import annotations

import numpy as np

from libs.common.envelope import new_envelope
from libs.common.kafka import Outbound
from libs.common.topics import FRAMES, INFERENCE, INFERENCE_SENSORS
from protos import events_pb2
from services.drift.monitor import DriftMonitor, DriftPolicy
from services.drift.processor import DriftProcessor, SourceMessage
from services.drift.windows import ComparisonPolicy


class SyntheticSubjects:
    """One processor fed a camera's frames (image statistics), a model's results for them, and a sensor's
    readings, 2 per second; darkened frames (brightness < 1) drift."""

    def __init__(self, camera_id: str, sensor_id: str, model: tuple[str, str] = ("yolov3-tiny", "1"),
                 window_s: float = 60.0, reference_windows: int = 3, seed: int = 7) -> None:
        self.camera_id, self.sensor_id, self.model = camera_id, sensor_id, model
        self.window_s = window_s
        self.rng = np.random.default_rng(seed)
        self.offset = 0
        self.processor = DriftProcessor(DriftMonitor(DriftPolicy(
            window_s=window_s, grace_s=1.0, reference_windows=reference_windows, raise_after=2, clear_after=2,
            comparison=ComparisonPolicy(min_frames=30))))

    def _message(self, topic: str, event) -> SourceMessage:
        self.offset += 1
        return SourceMessage(topic, 0, self.offset, event.SerializeToString())

    def events(self, start: float, seconds: float, brightness: float = 1.0) -> list[SourceMessage]:
        out = []
        for i in range(int(seconds * 2)):
            t = start + i / 2
            rng = self.rng
            envelope = new_envelope(f"camera/{self.camera_id}", "ingest", event_time_ns=int(t * 1e9))
            out.append(self._message(FRAMES, events_pb2.Frame(
                envelope=envelope, camera_id=self.camera_id, sequence=self.offset,
                image_stats=events_pb2.ImageStats(
                    mean_luma=float(rng.normal(110, 6)) * brightness,
                    contrast=float(rng.normal(50, 3)) * brightness, sharpness=float(rng.normal(400, 30)),
                    saturation=float(rng.normal(60, 4)),
                    underexposed_share=max(0.0, float(rng.normal(0.02, 0.005))) / brightness,
                    overexposed_share=max(0.0, float(rng.normal(0.01, 0.003)))))))
            n = int(rng.integers(1, 4))
            out.append(self._message(INFERENCE, events_pb2.InferenceResult(
                envelope=new_envelope(f"camera/{self.camera_id}", "inference", event_time_ns=int(t * 1e9)),
                camera_id=self.camera_id, frame_event_id=envelope.event_id,
                model=events_pb2.ModelRef(name=self.model[0], version=self.model[1]), width=640, height=480,
                detections=[events_pb2.Detection(label="person", score=float(rng.uniform(0.4, 1.0)) * brightness,
                                                 box=events_pb2.Box(x1=10, y1=10, x2=60, y2=140))
                            for _ in range(n)])))
            value = float(rng.normal(21, 0.5))
            out.append(self._message(INFERENCE_SENSORS, events_pb2.SensorAnomalyResult(
                envelope=new_envelope(f"sensor/{self.sensor_id}", "inference", event_time_ns=int(t * 1e9)),
                sensor_id=self.sensor_id, quantity="temperature", value=value, score=abs(value - 21),
                anomaly=False)))
        return out

    def windows(self, start: float, count: int, brightness: float = 1.0) -> list[Outbound]:
        """The messages (DriftWindow on vigil.drift.windows, DriftAlert on vigil.monitoring) of `count` windows
        from `start` (a window boundary), closed by the clock after the last."""
        out = []
        for message in self.events(start, count * self.window_s, brightness):
            assert self.processor.handle(message) is None
            out += self.processor.take_output(now=start).messages
        out += self.processor.take_output(now=start + (count + 1) * self.window_s, close_idle=True).messages
        return out
