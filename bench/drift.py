"""`python -m bench.drift`: the drift service's evaluation harness, in two parts measured in one run.

1. speed    a backlog of inference results (4 detections and a 64-dim embedding each, 8 cameras, event times
            spread over windows so they close as it goes) produced to vigil.inference while the drift service is
            down, then the service (its own process, as deployed) started from the beginning: events/s from its
            start until it has read every event, and its CPU per event from /proc (events per CPU-second is what
            one core digests). Beside it, the same events through the DriftProcessor alone in this process
            (no Kafka, no faust): the service's share of that speed is the ratio to compare across machines.
            Target: >= 20,000 events/s on one core.
2. drifts   the real stack (ingest -> inference -> drift) with the demo clip (real pedestrian CCTV, 768x576) as
            six file cameras at 5 fps: a control that plays the clip, looped, and five that play it once and then
            a drifted copy: brightness down to 30% (dusk), Gaussian blur sigma 3 (defocus), the view shifted by 20%
            (a knocked camera), half the frame covered, a 10 degree rotation. Windows are shortened (--window-s,
            10 s), and each camera's reference spans the looped footage (8 windows of 10 s for its 80 s). The
            drift's start is the event time of the first drifted frame on vigil.frames (each frame matched to the
            clip frame with the same image statistics). Reported: for each drift and subject (the camera's input,
            its outputs under the model), the windows from that start to the end of the window that raised the
            DriftAlert, the alert's top features, and which features drifted in the first windows wholly after
            the start; the control's drifting windows and false alarms over its windows (at least 60). Targets:
            every drift within 3 windows, no alarm on the control.

Results go to bench/results/drift.json with the date and the machine."""
from __future__ import annotations

import os

# As the service runs it (services/drift/__main__.py): numpy on one thread.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from bench.common import machine_description, process_cpu_s, produce, sample_frames, say
from protos import events_pb2
from tests.drift_injections import DRIFTS, injected

LABELS = ("person", "car", "bicycle", "person", "dog")
CAMERAS = 8
# The drift service's faust settings beyond faust's defaults that bear on speed (services/drift/faust_app.py),
# measured as a floor of their own beside faust's defaults.
FAUST_TUNING = {"sensors": False, "cython_optimizations": True, "take_events": 10_000}
EVENTS_PER_S_PER_CAMERA = 5


def inference_events(count: int, start_s: float) -> list[tuple[bytes, bytes]]:
    """(key, value) of `count` InferenceResults: 8 cameras at 5 fps from start_s, 4 detections and a unit 64-dim
    embedding each, scores and boxes varying as a scene's would."""
    rng = np.random.default_rng(7)
    embeddings = rng.normal(size=(256, 64)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    events = []
    for i in range(count):
        camera, step = i % CAMERAS, i // CAMERAS
        t_ns = int((start_s + step / EVENTS_PER_S_PER_CAMERA) * 1e9)
        event_id = str(uuid.UUID(int=i + 1))
        result = events_pb2.InferenceResult(
            envelope=events_pb2.Envelope(event_id=event_id, source=f"camera/bench-{camera}", producer="bench",
                                         schema_version=1, trace_id=uuid.uuid4().hex),
            camera_id=f"bench-{camera}", frame_event_id=event_id, frame_sequence=step, width=768, height=576,
            model=events_pb2.ModelRef(name="yolov3-tiny", version="1", precision="bf16"),
            embedding=embeddings[i % 256].tolist())
        result.envelope.event_time.FromNanoseconds(t_ns)
        for d in range(4):
            x, y = float(rng.uniform(0, 700)), float(rng.uniform(0, 500))
            result.detections.add(label=LABELS[(i + d) % len(LABELS)], class_id=d, score=float(rng.uniform(0.3, 0.95)),
                                  box=events_pb2.Box(x1=x, y1=y, x2=x + float(rng.uniform(20, 60)),
                                                     y2=y + float(rng.uniform(40, 120))))
        events.append((f"bench-{camera}".encode(), result.SerializeToString()))
    return events


def core_speed(events: list[tuple[bytes, bytes]], window_s: float, batch: int = 2000) -> float:
    """Events per CPU-second through the DriftProcessor alone (decode, features, windows, closes, the state
    snapshots), in batches as the service takes them."""
    from libs.common.topics import INFERENCE
    from services.drift.monitor import DriftMonitor, DriftPolicy
    from services.drift.processor import DriftProcessor, SourceMessage

    processor = DriftProcessor(DriftMonitor(DriftPolicy(window_s=window_s, grace_s=min(5.0, window_s / 2))))
    messages = [SourceMessage(INFERENCE, 0, offset, value) for offset, (_key, value) in enumerate(events)]
    started = time.process_time()
    for first in range(0, len(messages), batch):
        processor.handle_batch(messages[first:first + batch])
        processor.take_output()
        processor.take_touched_states()
    return len(events) / (time.process_time() - started)


def _events_read(ops_port: int) -> float:
    return sum(v for k, v in drift_counters(ops_port).items() if k.startswith("vigil_drift_events_total{"))


def floor_speeds(bootstrap: str, topic: str, count: int) -> dict[str, dict]:
    """Events per CPU-second of reading the same backlog with nothing done per event (bench/drift_floor.py): the
    ceiling of any drift service on that client."""
    from bench.drift_floor import measure

    floors = {"confluent_kafka": measure("confluent", bootstrap, topic, count),
              "aiokafka": measure("aiokafka", bootstrap, topic, count),
              "faust_take_events": measure("faust", bootstrap, topic, count),
              "faust_take_events_as_configured": measure("faust", bootstrap, topic, count, FAUST_TUNING),
              # not a floor: the drift processor's whole work on batches aiokafka reads, no faust in the path
              "aiokafka_with_drift_processor": measure("aiokafka_processor", bootstrap, topic, count)}
    for name, floor in floors.items():
        say(f"      floor, {name}: {floor['events_per_cpu_s']:,.0f} events per CPU-second "
            f"({floor['cpu_us_per_event']:.1f} us/event)")
    return {name: {"events_per_cpu_s": round(f["events_per_cpu_s"]),
                   "cpu_us_per_event": round(f["cpu_us_per_event"], 2)} for name, f in floors.items()}


def service_speed(events: list[tuple[bytes, bytes]], window_s: float, reader: str = "faust",
                  floors: bool = True) -> dict[str, float]:
    """The drift service's speed on the backlog, its sources read by `reader` (VIGIL_DRIFT_SOURCE_READER), with the
    floors measured on the same stack when `floors`."""
    from cli.stack.local import LocalStack, StackPorts
    from cli.stack.supervisor import Supervisor
    from libs.common.topics import CATALOG, INFERENCE, ensure_topics
    from services.drift.declaration import SERVICE

    state = Path(tempfile.mkdtemp(prefix="vigil-bench-drift-"))
    stack = LocalStack(state=state, ports=StackPorts.free(), extra_env={"drift": {
        "VIGIL_DRIFT_FROM_BEGINNING": "true", "VIGIL_DRIFT_WINDOW_S": str(window_s),
        "VIGIL_DRIFT_GROUP_ID": f"bench-{uuid.uuid4().hex[:8]}", "VIGIL_DRIFT_SOURCE_READER": reader}})
    specs = {s.name: s for s in stack.specs()}
    infra = Supervisor(stack.paths, [specs["kafka"], specs["objectstore"]])
    drift_only = Supervisor(stack.paths, [specs["drift"]])
    try:
        infra.up(progress=say)
        ensure_topics({"bootstrap.servers": stack.config.kafka_bootstrap}, 1, CATALOG)
        produce(stack.config.kafka_bootstrap, INFERENCE, events)
        floor = floor_speeds(stack.config.kafka_bootstrap, INFERENCE, len(events)) if floors else None
        kafka_pid = infra.running_pid("kafka")
        kafka_cpu = process_cpu_s(kafka_pid)
        started = time.perf_counter()
        drift_only.up(progress=lambda _: None)
        ready_s = time.perf_counter() - started
        pid = drift_only.running_pid("drift")
        cpu = process_cpu_s(pid)
        ops_port = getattr(stack.config.ports, SERVICE.ops_port_name)
        deadline = time.monotonic() + 600
        while _events_read(ops_port) < len(events):
            if time.monotonic() > deadline:
                raise RuntimeError(f"drift read {_events_read(ops_port):.0f} of {len(events)} events in 600 s")
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        cpu_s, kafka_cpu_s = process_cpu_s(pid) - cpu, process_cpu_s(kafka_pid) - kafka_cpu
        return {"events": len(events), "seconds": seconds, "startup_s": ready_s,
                "events_per_s": len(events) / seconds,
                "events_per_s_after_start": len(events) / max(seconds - ready_s, 1e-9),
                "events_per_cpu_s": len(events) / cpu_s, "cpu_us_per_event": cpu_s * 1e6 / len(events),
                "kafka_cpu_us_per_event": kafka_cpu_s * 1e6 / len(events), "floor": floor}
    except Exception:
        kept = Path(tempfile.gettempdir()) / "vigil-bench-drift.log"
        shutil.copy(stack.paths.logs() / "drift.log", kept)
        say(f"--- last lines of drift.log (all of it in {kept}) ---\n{drift_only.log_tail('drift', 20)}")
        raise
    finally:
        drift_only.down(progress=say)
        infra.down(progress=say)
        shutil.rmtree(state, ignore_errors=True)


# --- part 2: injected drifts through the real stack ----------------------------------------------------------

@dataclass(frozen=True)
class Clip:
    path: Path
    fps: float
    frames: int  # frames of the footage in the clip's first pass
    normal_frames: int  # the drifted copy starts at this frame (the control never drifts)


def footage_frames(footage: Path) -> tuple[list[np.ndarray], float]:
    """Every frame of the footage, and its frame rate."""
    import cv2

    capture = cv2.VideoCapture(str(footage))
    fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
    capture.release()
    return sample_frames(footage, 1_000_000), fps


def write_clips(frames: list[np.ndarray], fps: float, out: Path, normal_s: float) -> dict[str, Clip]:
    """The control clip, and per drift a clip of `normal_s` seconds of the footage (looped as needed) followed by
    the drifted footage, three times the footage's length (long enough to be alerted; then it loops back)."""
    import cv2

    h, w = frames[0].shape[:2]
    normal_frames = int(normal_s * fps)
    clips = {}
    for name in ("control", *DRIFTS):
        path = out / f"{name}.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
        if name == "control":
            for frame in frames:
                writer.write(frame)
            clips[name] = Clip(path, fps, len(frames), len(frames))
        else:
            for i in range(normal_frames):
                writer.write(frames[i % len(frames)])
            for i in range(len(frames) * 3):
                writer.write(injected(name, frames[(normal_frames + i) % len(frames)]))
            clips[name] = Clip(path, fps, normal_frames + len(frames) * 3, normal_frames)
        writer.release()
    return clips


def clip_statistics(clip: Clip, last: int) -> np.ndarray:
    """Ingest's image statistics of the clip's frames 0..last as ingest decodes them (the same file, the same
    decoder): the fingerprints the frames on vigil.frames are matched against."""
    from services.ingest.image_stats import image_stats

    return np.array([_stats_vector(image_stats(frame)) for frame in sample_frames(clip.path, last + 1)])


def _stats_vector(stats: events_pb2.ImageStats) -> list[float]:
    return [getattr(stats, name) for name in events_pb2.ImageStats.DESCRIPTOR.fields_by_name]


class TopicDigest:
    """A digest of every message of a topic from now on, with its arrival time (wall clock): frames are dropped
    as they arrive, only what `digest` keeps stays (six cameras at 5 fps for a quarter of an hour are 30,000)."""

    def __init__(self, bootstrap: str, topic: str, kind, digest) -> None:
        from tests.integration.kafka_tools import end_offsets

        self.kind, self.digest = kind, digest
        self.records: list[tuple] = []
        self._stop = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                                   "enable.auto.commit": False})
        self._consumer.assign([TopicPartition(topic, p, o) for p, o in end_offsets(bootstrap, topic).items()])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            try:
                event = self.kind.FromString(msg.value() or b"")
            except Exception:  # noqa: BLE001 (another producer's bytes on a shared topic)
                continue
            self.records.append((time.time(), *self.digest(event)))
        self._consumer.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _frame_digest(frame: events_pb2.Frame) -> tuple:
    return frame.camera_id, frame.envelope.event_time.ToNanoseconds() / 1e9, frame.sequence, \
        _stats_vector(frame.image_stats)


def _result_digest(result: events_pb2.InferenceResult) -> tuple:
    return result.camera_id, result.envelope.event_time.ToNanoseconds() / 1e9


def frames_of(frames: TopicDigest, camera: str) -> list[tuple[float, int, list[float]]]:
    return sorted((t, seq, stats) for _arrived, cam, t, seq, stats in list(frames.records) if cam == camera)


def result_lag(results: TopicDigest, camera: str) -> dict:
    """How long after their frame's event time the camera's inference results reached vigil.inference: the drift
    service closes a window `grace` after its end by the newest event it read (the frames), so results later
    than that fall into closed windows and are dropped as late."""
    lags = np.array([arrived - t for arrived, cam, t in list(results.records) if cam == camera])
    if not lags.size:
        return {"results": 0}
    return {"results": int(lags.size), "lag_s_median": round(float(np.median(lags)), 2),
            "lag_s_p95": round(float(np.quantile(lags, 0.95)), 2)}


def drift_counters(ops_port: int) -> dict[str, float]:
    """The drift service's counters of events read (by topic and outcome) and windows closed (by status)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ops_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(("vigil_drift_events_total{", "vigil_drift_windows_total{"))}


def first_drifted_frame(frames: list[tuple[float, int, list[float]]], expected: np.ndarray,
                        normal_frames: int) -> dict | None:
    """The first frame on vigil.frames that shows the drifted footage: each frame is matched to the clip frame
    whose statistics are nearest (ingest decodes the same file, so the right one is at distance ~0); the first
    matched at or past `normal_frames` is the drift's start, and its event time is what the delays count from."""
    if not frames:
        return None
    scale = expected.std(axis=0) + 1e-9
    reference = expected / scale
    for event_time, sequence, stats in frames:
        distances = np.linalg.norm(reference - np.asarray(stats) / scale, axis=1)
        index = int(np.argmin(distances))
        if index >= normal_frames:
            return {"event_time": event_time, "sequence": sequence, "clip_frame": index,
                    "match_distance": round(float(distances[index]), 4),
                    "after_first_frame_s": round(event_time - frames[0][0], 2)}
    return None


def _seconds(timestamp) -> float:
    return timestamp.seconds + timestamp.nanos / 1e9


def subject_report(alerts: list[events_pb2.DriftAlert], windows: list[events_pb2.DriftWindow], start: float,
                   window_s: float, drifting_windows: int = 3) -> dict:
    """One subject of a drifted camera (its input, or its outputs under the model): the delay from the first
    drifted frame's event time to the end of the window that raised the alert (in windows, and as the count of
    windows from the one the drift started in, that one being 1); the raising alert's top features; and per
    feature, in how many of the first `drifting_windows` windows lying wholly after the start it drifted, and
    the first of those windows' scores."""
    raised = sorted((a for a in alerts if a.state == "raised" and _seconds(a.window_end) > start),
                    key=lambda a: _seconds(a.window_end))
    after = sorted((w for w in windows if w.status == "scored" and _seconds(w.window_start) >= start),
                   key=lambda w: _seconds(w.window_start))[:drifting_windows]
    drifting: dict[str, int] = {}
    for window in after:
        for score in window.scores:
            if score.drifted:
                drifting[score.feature] = drifting.get(score.feature, 0) + 1
    report = {"alert_after_windows": None, "alert_window": None, "top_features": [],
              "drifting_features": dict(sorted(drifting.items(), key=lambda kv: (-kv[1], kv[0]))),
              "windows_read": len(after),
              # every feature of the first window wholly drifted: [metric, score, threshold]
              "first_window_scores": {score.feature: [score.metric, _finite(score.score), _finite(score.threshold)]
                                      for score in (after[0].scores if after else ())}}
    if raised:
        first = raised[0]
        report["alert_after_windows"] = round((_seconds(first.window_end) - start) / window_s, 2)
        report["alert_window"] = int(round((_seconds(first.window_end) - start // window_s * window_s) / window_s))
        report["top_features"] = [{"feature": f.feature, "metric": f.metric, "score": _finite(f.score),
                                   "threshold": _finite(f.threshold)} for f in first.top_features]
    return report


def _finite(value: float) -> float | None:
    """Rounded for the results file; an infinite threshold (a feature that cannot drift) as null, which JSON has."""
    return round(value, 3) if math.isfinite(value) else None


def drift_delays(window_s: float, reference_windows: int | None, control_windows: int, sample_fps: float) -> dict:
    from cli.stack.camera import fetch_footage
    from cli.stack.local import LocalStack, StackPorts
    from libs.common.cache_dir import default_cache_dir
    from libs.common.topics import DRIFT_WINDOWS, FRAMES, INFERENCE, MONITORING
    from services.drift.declaration import SERVICE
    from tests.integration.kafka_tools import TopicRecorder

    frames, fps = footage_frames(fetch_footage(default_cache_dir()))
    footage_s = len(frames) / fps
    if reference_windows is None:
        # The reference must span the looped footage: one of 5 windows of 10 s leaves 30 s of the 80 s clip out,
        # and the control then reads those seconds as drift (or, thresholds learnt on too little, misses drifts).
        reference_windows = max(5, math.ceil(footage_s / window_s))
    state = Path(tempfile.mkdtemp(prefix="vigil-bench-drift-stack-"))
    clips_dir = state / "clips"
    clips_dir.mkdir()
    # The drift starts after the reference and two scored windows.
    normal_s = (reference_windows + 2) * window_s
    clips = write_clips(frames, fps, clips_dir, normal_s)
    del frames
    expected = {name: clip_statistics(clip, clip.normal_frames + int(2 * clip.fps))
                for name, clip in clips.items() if name != "control"}
    stack = LocalStack(state=state / "stack", ports=StackPorts.free(), extra_env={"drift": {
        "VIGIL_DRIFT_WINDOW_S": str(window_s), "VIGIL_DRIFT_REFERENCE_WINDOWS": str(reference_windows),
        "VIGIL_DRIFT_GRACE_S": str(min(5.0, window_s / 2))}})
    stack.install()
    logs: list[TopicDigest] = []
    try:
        stack.up(progress=say)
        stack.unregister_camera(stack.config.camera_id)  # the demo camera: not part of the measurement
        bootstrap = stack.config.kafka_bootstrap
        frame_log = TopicDigest(bootstrap, FRAMES, events_pb2.Frame, _frame_digest)
        result_log = TopicDigest(bootstrap, INFERENCE, events_pb2.InferenceResult, _result_digest)
        logs += [frame_log, result_log]
        with TopicRecorder(stack.config.kafka_bootstrap, MONITORING) as monitoring, \
                TopicRecorder(stack.config.kafka_bootstrap, DRIFT_WINDOWS) as windows:
            for name, clip in clips.items():
                stack.register_camera(f"bench-{name}", str(clip.path), sample_fps, loop=True)
            say(f"      6 cameras added; reference {reference_windows} windows of {window_s:.0f} s, then the control "
                f"runs for {control_windows} windows ({control_windows * window_s / 60:.0f} min)")
            deadline = time.time() + (reference_windows + control_windows + 2) * window_s + 120
            while time.time() < deadline:
                time.sleep(5)
                scored = sum(1 for _, w in _decoded(windows, events_pb2.DriftWindow)
                             if w.camera_id == "bench-control" and w.status == "scored" and not w.model.name)
                if scored >= control_windows:
                    break
            alerts = [m.drift_alert for _, m in _decoded(monitoring, events_pb2.MonitoringEvent)
                      if m.WhichOneof("detail") == "drift_alert"]
            all_windows = [w for _, w in _decoded(windows, events_pb2.DriftWindow)]
        counters = drift_counters(getattr(stack.config.ports, SERVICE.ops_port_name))
        for log in logs:
            log.close()
        return {"reference_windows": reference_windows, "drift_service_counters": counters,
                "cameras": {name: {**camera_report(name, clip, alerts, all_windows, frame_log,
                                                   expected.get(name), window_s),
                                   "inference": result_lag(result_log, f"bench-{name}")}
                            for name, clip in clips.items()}}
    finally:
        for log in logs:
            log.close()
        stack.supervisor.down(progress=say)
        shutil.rmtree(state, ignore_errors=True)


def camera_report(name: str, clip: Clip, alerts: list, windows: list, frame_log: TopicDigest,
                  expected: np.ndarray | None, window_s: float) -> dict:
    camera = f"bench-{name}"
    mine = [w for w in windows if w.camera_id == camera]
    my_alerts = [a for a in alerts if a.camera_id == camera]
    inputs = [w for w in mine if not w.model.name]
    outputs = [w for w in mine if w.model.name]
    statuses = {"input_windows": _by_status(inputs), "output_windows": _by_status(outputs)}
    if name == "control":
        scored_in = [w for w in inputs if w.status == "scored"]
        scored_out = [w for w in outputs if w.status == "scored"]
        return {"windows_scored": len(scored_in), "windows_drifting": sum(w.alert_state != "ok" for w in scored_in),
                "output_windows_scored": len(scored_out),
                "output_windows_drifting": sum(w.alert_state != "ok" for w in scored_out),
                "false_alarms": sum(a.state == "raised" for a in my_alerts), **statuses}
    first = first_drifted_frame(frames_of(frame_log, camera), expected, clip.normal_frames)
    if first is None:
        return {"drift_start": None, "alert_after_windows": None, **statuses}
    start = first.pop("event_time")
    report = {"drift_start": datetime.fromtimestamp(start, timezone.utc).isoformat(timespec="milliseconds"),
              "first_drifted_frame": first}
    report["input"] = subject_report([a for a in my_alerts if not a.model_name], inputs, start, window_s)
    report["outputs"] = subject_report([a for a in my_alerts if a.model_name], outputs, start, window_s)
    delays = [r["alert_after_windows"] for r in (report["input"], report["outputs"])
              if r["alert_after_windows"] is not None]
    report["alert_after_windows"] = min(delays) if delays else None
    return {**report, **statuses}


def _by_status(windows: list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for window in windows:
        counts[window.status] = counts.get(window.status, 0) + 1
    return dict(sorted(counts.items()))


def _decoded(recorder, kind):
    out = []
    for _arrived, key, value in list(recorder.records):
        try:
            out.append((key, kind.FromString(value or b"")))
        except Exception:  # noqa: BLE001 (another producer's bytes on a shared topic)
            continue
    return out


def say_service(what: str, service: dict[str, float]) -> None:
    say(f"      {what}: {service['events_per_s']:,.0f} events/s ({service['events_per_s_after_start']:,.0f} after "
        f"its {service['startup_s']:.1f}s start), {service['events_per_cpu_s']:,.0f} events per CPU-second "
        f"({service['cpu_us_per_event']:.1f} us/event; Kafka {service['kafka_cpu_us_per_event']:.1f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="inference events in the speed backlog")
    parser.add_argument("--speed-window-s", type=float, default=60.0,
                        help="drift windows of the speed part (the service's default: a window's close is paid once "
                             "per camera and window, so shorter windows cost more per event)")
    parser.add_argument("--window-s", type=float, default=10.0, help="drift windows of the drifts part, shortened")
    parser.add_argument("--reference-windows", type=int, default=None,
                        help="windows in each camera's reference (default: enough to span the looped footage)")
    parser.add_argument("--control-windows", type=int, default=60)
    parser.add_argument("--sample-fps", type=float, default=5.0)
    part = parser.add_mutually_exclusive_group()
    part.add_argument("--skip-drifts", action="store_true", help="only the speed part")
    part.add_argument("--skip-speed", action="store_true",
                      help="only the drifts part (the speed figures already in --out are kept)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/drift.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine_description(),
              "load_average_1m": {"before": round(load_before, 1)}}
    if args.skip_speed:
        result["speed"] = previous.get("speed")
        result["speed_date"] = previous.get("speed_date", previous.get("date"))
    else:
        say(f"[1/2] speed: {args.events} inference events through the DriftProcessor alone, then the service ...")
        events = inference_events(args.events, start_s=time.time() - args.events / CAMERAS / EVENTS_PER_S_PER_CAMERA)
        core = [core_speed(events, args.speed_window_s) for _ in range(2)]
        say(f"      processor alone: {statistics.median(core):,.0f} events per CPU-second")
        service = service_speed(events, args.speed_window_s, reader="faust")
        floor = service.pop("floor")
        say_service("service, sources read by faust's agent", service)
        own = service_speed(events, args.speed_window_s, reader="aiokafka", floors=False)
        own.pop("floor")
        say_service("service, sources read by its own aiokafka consumer", own)
        result["speed"] = {"window_s": args.speed_window_s,
                           "processor_alone_events_per_cpu_s": round(statistics.median(core)),
                           **{k: round(v, 2) for k, v in service.items()},
                           "service_to_processor_ratio": round(service["events_per_cpu_s"] / statistics.median(core), 3),
                           # VIGIL_DRIFT_SOURCE_READER=aiokafka: the same backlog, the same service, its sources
                           # read by a consumer of its own (services/drift/source_reader.py); the lines above: faust
                           "aiokafka_reader": {k: round(v, 2) for k, v in own.items()},
                           "target_events_per_cpu_s": 20_000,
                           # the same backlog read with nothing done per event, each client in a process of its
                           # own (bench/drift_floor.py): no drift service on a client can beat its floor
                           "floor_events_per_cpu_s": floor}
    if args.skip_drifts:
        result["drifts"] = previous.get("drifts")
    else:
        say(f"[2/2] injected drifts through the real stack, windows of {args.window_s:.0f} s ...")
        found = drift_delays(args.window_s, args.reference_windows, args.control_windows, args.sample_fps)
        result["drifts"] = {"window_s": args.window_s, "reference_windows": found["reference_windows"],
                            "sample_fps": args.sample_fps, "cameras": found["cameras"],
                            "drift_service_counters": found["drift_service_counters"],
                            "target": "every drift alerted within 3 windows; no alert on the control"}
    result["load_average_1m"]["after"] = round(os.getloadavg()[0], 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
