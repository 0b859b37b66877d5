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
            10 s). Reported: for each drift, the windows from its start to the first DriftAlert raised for the
            camera (its input, or its outputs under the model), and the control's false alarms over its windows
            (at least 60). Targets: every drift within 3 windows, no alarm on the control.

Results go to bench/results/drift.json with the date and the machine."""
from __future__ import annotations

import os

# As the service runs it (services/drift/__main__.py): numpy on one thread.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.common import machine_description, process_cpu_s, produce, say
from protos import events_pb2
from tests.drift_injections import DRIFTS, injected

LABELS = ("person", "car", "bicycle", "person", "dog")
CAMERAS = 8
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


def core_speed(events: list[tuple[bytes, bytes]], window_s: float) -> float:
    """Events per CPU-second through the DriftProcessor alone (decode, features, windows, closes)."""
    from libs.common.topics import INFERENCE
    from services.drift.monitor import DriftMonitor, DriftPolicy
    from services.drift.processor import DriftProcessor, SourceMessage

    processor = DriftProcessor(DriftMonitor(DriftPolicy(window_s=window_s, grace_s=min(5.0, window_s / 2))))
    started = time.process_time()
    for offset, (_key, value) in enumerate(events):
        processor.handle(SourceMessage(INFERENCE, 0, offset, value))
        if offset % 2000 == 1999:
            processor.take_output()
            processor.take_touched_states()
    processor.take_output()
    return len(events) / (time.process_time() - started)


def _events_read(ops_port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ops_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vigil_drift_events_total{"))


def service_speed(events: list[tuple[bytes, bytes]], window_s: float) -> dict[str, float]:
    from cli.stack.local import LocalStack, StackPorts
    from cli.stack.supervisor import Supervisor
    from libs.common.topics import CATALOG, INFERENCE, ensure_topics
    from services.drift.declaration import SERVICE

    state = Path(tempfile.mkdtemp(prefix="vigil-bench-drift-"))
    stack = LocalStack(state=state, ports=StackPorts.free(), extra_env={"drift": {
        "VIGIL_DRIFT_FROM_BEGINNING": "true", "VIGIL_DRIFT_WINDOW_S": str(window_s),
        "VIGIL_DRIFT_GROUP_ID": f"bench-{uuid.uuid4().hex[:8]}"}})
    specs = {s.name: s for s in stack.specs()}
    infra = Supervisor(stack.paths, [specs["kafka"], specs["objectstore"]])
    drift_only = Supervisor(stack.paths, [specs["drift"]])
    try:
        infra.up(progress=say)
        ensure_topics({"bootstrap.servers": stack.config.kafka_bootstrap}, 1, CATALOG)
        produce(stack.config.kafka_bootstrap, INFERENCE, events)
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
                "kafka_cpu_us_per_event": kafka_cpu_s * 1e6 / len(events)}
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

def write_clips(footage: Path, out: Path, normal_s: float) -> dict[str, tuple[Path, float]]:
    """The control clip, and per drift a clip of `normal_s` seconds of the footage (looped as needed) followed by
    the drifted footage; with the second at which the drift starts."""
    import cv2

    capture = cv2.VideoCapture(str(footage))
    fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    h, w = frames[0].shape[:2]
    normal_frames = int(normal_s * fps)
    clips = {}
    for name in ("control", *DRIFTS):
        path = out / f"{name}.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
        if name == "control":
            for frame in frames:
                writer.write(frame)
        else:
            for i in range(normal_frames):
                writer.write(frames[i % len(frames)])
            for i in range(len(frames) * 3):  # long enough to be alerted, then it loops back to normal
                writer.write(injected(name, frames[(normal_frames + i) % len(frames)]))
        writer.release()
        clips[name] = (path, normal_frames / fps if name != "control" else float("inf"))
    return clips


def drift_delays(window_s: float, reference_windows: int, control_windows: int, sample_fps: float) -> dict:
    from cli.stack.camera import fetch_footage
    from cli.stack.local import LocalStack, StackPorts
    from libs.common.cache_dir import default_cache_dir
    from libs.common.topics import DRIFT_WINDOWS, MONITORING
    from tests.integration.kafka_tools import TopicRecorder

    state = Path(tempfile.mkdtemp(prefix="vigil-bench-drift-stack-"))
    clips_dir = state / "clips"
    clips_dir.mkdir()
    # The drift starts after the reference and two scored windows.
    normal_s = (reference_windows + 2) * window_s
    clips = write_clips(fetch_footage(default_cache_dir()), clips_dir, normal_s)
    stack = LocalStack(state=state / "stack", ports=StackPorts.free(), extra_env={"drift": {
        "VIGIL_DRIFT_WINDOW_S": str(window_s), "VIGIL_DRIFT_REFERENCE_WINDOWS": str(reference_windows),
        "VIGIL_DRIFT_GRACE_S": str(min(5.0, window_s / 2))}})
    stack.install()
    try:
        stack.up(progress=say)
        stack.unregister_camera(stack.config.camera_id)  # the demo camera: not part of the measurement
        with TopicRecorder(stack.config.kafka_bootstrap, MONITORING) as monitoring, \
                TopicRecorder(stack.config.kafka_bootstrap, DRIFT_WINDOWS) as windows:
            added = {}
            for name, (path, _drift_at) in clips.items():
                stack.register_camera(f"bench-{name}", str(path), sample_fps, loop=True)
                added[name] = time.time()
            say(f"      6 cameras added; control runs for {control_windows} windows of {window_s:.0f} s "
                f"({control_windows * window_s / 60:.0f} min) after its reference")
            deadline = time.time() + (reference_windows + control_windows + 2) * window_s + 60
            while time.time() < deadline:
                time.sleep(5)
                scored = sum(1 for _, w in _decoded(windows, events_pb2.DriftWindow)
                             if w.camera_id == "bench-control" and w.status == "scored" and not w.model.name)
                if scored >= control_windows:
                    break
            results = {}
            alerts = [(m.envelope.event_id, m.drift_alert) for _, m in _decoded(monitoring, events_pb2.MonitoringEvent)
                      if m.WhichOneof("detail") == "drift_alert"]
            all_windows = [w for _, w in _decoded(windows, events_pb2.DriftWindow)]
            for name, (_path, drift_at) in clips.items():
                camera = f"bench-{name}"
                raised = sorted(a.window_end.seconds + a.window_end.nanos / 1e9 for _, a in alerts
                                if a.camera_id == camera and a.state == "raised")
                mine = [w for w in all_windows if w.camera_id == camera]
                if name == "control":
                    input_windows = [w for w in mine if not w.model.name and w.status == "scored"]
                    results[name] = {"windows_scored": len(input_windows),
                                     "windows_drifting": sum(1 for w in input_windows if w.alert_state != "ok"),
                                     "false_alarms": len(raised)}
                    continue
                start = added[name] + drift_at
                first = next((t for t in raised if t > start), None)
                results[name] = {"drift_start_s": round(drift_at, 1),
                                 "alert_after_windows": None if first is None else round((first - start) / window_s, 2),
                                 "features": sorted({a.feature for _, a in alerts
                                                     if a.camera_id == camera and a.state == "raised"})}
            return results
    finally:
        stack.supervisor.down(progress=say)
        shutil.rmtree(state, ignore_errors=True)


def _decoded(recorder, kind):
    out = []
    for _arrived, key, value in list(recorder.records):
        try:
            out.append((key, kind.FromString(value or b"")))
        except Exception:  # noqa: BLE001 (another producer's bytes on a shared topic)
            continue
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="inference events in the speed backlog")
    parser.add_argument("--speed-window-s", type=float, default=60.0,
                        help="drift windows of the speed part (the service's default: a window's close is paid once "
                             "per camera and window, so shorter windows cost more per event)")
    parser.add_argument("--window-s", type=float, default=10.0, help="drift windows of the drifts part, shortened")
    parser.add_argument("--reference-windows", type=int, default=5)
    parser.add_argument("--control-windows", type=int, default=60)
    parser.add_argument("--sample-fps", type=float, default=5.0)
    parser.add_argument("--skip-drifts", action="store_true", help="only the speed part")
    parser.add_argument("--out", type=Path, default=Path("bench/results/drift.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    say(f"[1/2] speed: {args.events} inference events through the DriftProcessor alone, then the service ...")
    events = inference_events(args.events, start_s=time.time() - args.events / CAMERAS / EVENTS_PER_S_PER_CAMERA)
    core = [core_speed(events, args.speed_window_s) for _ in range(2)]
    say(f"      processor alone: {statistics.median(core):,.0f} events per CPU-second")
    service = service_speed(events, args.speed_window_s)
    say(f"      service: {service['events_per_s']:,.0f} events/s ({service['events_per_s_after_start']:,.0f} after its "
        f"{service['startup_s']:.1f}s start), {service['events_per_cpu_s']:,.0f} events per CPU-second "
        f"({service['cpu_us_per_event']:.1f} us/event; Kafka {service['kafka_cpu_us_per_event']:.1f})")
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine_description(),
        "load_average_1m": {"before": round(load_before, 1)},
        "speed": {"window_s": args.speed_window_s, "processor_alone_events_per_cpu_s": round(statistics.median(core)),
                  **{k: round(v, 2) for k, v in service.items()},
                  "service_to_processor_ratio": round(service["events_per_cpu_s"] / statistics.median(core), 3),
                  "target_events_per_cpu_s": 20_000},
    }
    if not args.skip_drifts:
        say(f"[2/2] injected drifts through the real stack, windows of {args.window_s:.0f} s ...")
        result["drifts"] = {"window_s": args.window_s, "reference_windows": args.reference_windows,
                            "sample_fps": args.sample_fps,
                            "cameras": drift_delays(args.window_s, args.reference_windows, args.control_windows,
                                                    args.sample_fps),
                            "target": "every drift alerted within 3 windows; no alert on the control"}
    result["load_average_1m"]["after"] = round(os.getloadavg()[0], 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
