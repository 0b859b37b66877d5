"""`python -m bench.annotation_selection`: how many inference results a second the annotation service's selection
digests on one core (issue #11's target: at least 5,000 events/s).

A realistic mix of InferenceResults as bytes, as they come off vigil.inference and vigil.inference.shadow:
16 cameras at 5 fps, 0 to 8 detections a frame (scores above the model's 0.25 threshold, most of them confident;
person and car common, a few rare classes), a 64-dim embedding each; a quarter of the cameras also run a shadow
model (its result for the same frame, boxes jittered, now and then one missed or relabelled); two cameras under a
drift alert. Each event is decoded from its bytes, made a Candidate and offered to the Selector (consider, or
offer_shadow for shadow results); a selection is admitted with a 64-bit hash standing in for the frame's (the
frame fetch and its pHash are the intake's, measured apart below), so budgets fill and slide as in the service,
whose clock here is the events' time.

Reported in events per CPU-second (time.process_time, this process only): the whole path, and its parts (decode
and Candidate alone; the Selector alone on decoded Candidates), the median of --repeats runs; beside them what a
selected frame costs the intake to hash (perceptual_hash of one 768x576 JPEG of the demo footage, or of a
synthetic frame when the footage is not cached). Results go to bench/results/annotation_selection.json."""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.common import machine_description, sample_frames, say
from protos import events_pb2

CAMERAS = 16
FPS = 5.0
SHADOW_CAMERAS = CAMERAS // 4
DRIFTING_CAMERAS = ("bench-14", "bench-15")
COMMON = ("person", "person", "person", "car", "car", "bicycle")
RARE = ("dog", "truck", "motorbike")
TARGET_EVENTS_PER_S = 5_000


def _result(camera: str, frame_event_id: str, step: int, t: float, detections, model: str, shadow: bool,
            embedding: np.ndarray) -> bytes:
    result = events_pb2.InferenceResult(
        envelope=events_pb2.Envelope(event_id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"{frame_event_id}/{model}")),
                                     source=f"camera/{camera}", producer="bench", schema_version=1,
                                     trace_id=uuid.uuid4().hex),
        camera_id=camera, frame_event_id=frame_event_id, frame_sequence=step, width=768, height=576, shadow=shadow,
        model=events_pb2.ModelRef(name=model, version="1", precision="bf16"), embedding=embedding.tolist())
    result.envelope.event_time.FromNanoseconds(int(t * 1e9))
    for label, score, (x1, y1, x2, y2) in detections:
        result.detections.add(label=label, score=score, box=events_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))
    return result.SerializeToString()


def inference_events(count: int, start_s: float, seed: int = 7) -> list[bytes]:
    """`count` serialized InferenceResults (primary and shadow, interleaved as they arrive) from start_s on."""
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(256, 64)).astype(np.float32)
    events: list[bytes] = []
    step = 0
    while len(events) < count:
        for c in range(CAMERAS):
            camera, t = f"bench-{c}", start_s + step / FPS
            frame_event_id = str(uuid.uuid5(uuid.NAMESPACE_OID, f"{camera}/{step}"))
            detections = []
            for _ in range(int(rng.integers(0, 9))):
                label = RARE[int(rng.integers(0, len(RARE)))] if rng.random() < 0.01 else \
                    COMMON[int(rng.integers(0, len(COMMON)))]
                score = float(0.25 + 0.75 * rng.beta(5, 1.5))  # mostly confident; about 1 in 15 inside the band
                x, y = float(rng.uniform(0, 700)), float(rng.uniform(0, 480))
                box = (x, y, x + float(rng.uniform(20, 60)), y + float(rng.uniform(40, 90)))
                detections.append((label, score, box))
            embedding = embeddings[(step * CAMERAS + c) % 256]
            events.append(_result(camera, frame_event_id, step, t, detections, "yolov3-tiny", False, embedding))
            if c < SHADOW_CAMERAS:
                seen = []
                for label, score, box in detections:
                    if rng.random() < 0.03:
                        continue  # the shadow misses it
                    if rng.random() < 0.02:
                        label = COMMON[int(rng.integers(0, len(COMMON)))]
                    jitter = rng.normal(0, 2, 4)
                    seen.append((label, float(np.clip(score + rng.normal(0, 0.05), 0.25, 1.0)),
                                 tuple(float(v) for v in np.array(box) + jitter)))
                events.append(_result(camera, frame_event_id, step, t, seen, "yolov8n", True, embedding))
        step += 1
    return events[:count]


def _selector():
    from services.annotation.selection import Selector, SelectionPolicy

    selector = Selector(SelectionPolicy())
    for camera in DRIFTING_CAMERAS:
        selector.note_drift(camera, True, 0.0)
    return selector


def _frame_hash(frame_event_id: str) -> int:
    return uuid.UUID(frame_event_id).int >> 64  # 64 bits as distinct as the frames of a busy scene's


def whole_path(events: list[bytes]) -> tuple[float, collections.Counter]:
    """Events per CPU-second: decode, Candidate, consider/offer_shadow, and admit when selected."""
    from services.annotation.selection import Candidate

    selector = _selector()
    admitted: collections.Counter = collections.Counter()
    decode = events_pb2.InferenceResult.FromString
    started = time.process_time()
    for value in events:
        result = decode(value)
        candidate = Candidate.from_result(result)
        now = candidate.event_time
        selection = selector.offer_shadow(candidate, now) if result.shadow else selector.consider(candidate, now)
        if selection is not None:
            chosen = selection.candidate or candidate
            if selector.admit(chosen, selection, _frame_hash(chosen.frame_event_id), now):
                admitted[selection.rule] += 1
    return len(events) / (time.process_time() - started), admitted


def decode_only(events: list[bytes]) -> float:
    from services.annotation.selection import Candidate

    decode = events_pb2.InferenceResult.FromString
    started = time.process_time()
    for value in events:
        Candidate.from_result(decode(value))
    return len(events) / (time.process_time() - started)


def decoded(events: list[bytes]) -> list:
    from services.annotation.selection import Candidate

    return [(r.shadow, Candidate.from_result(r)) for r in map(events_pb2.InferenceResult.FromString, events)]


def selector_only(candidates: list) -> float:
    selector = _selector()
    started = time.process_time()
    for shadow, candidate in candidates:
        now = candidate.event_time
        selection = selector.offer_shadow(candidate, now) if shadow else selector.consider(candidate, now)
        if selection is not None:
            chosen = selection.candidate or candidate
            selector.admit(chosen, selection, _frame_hash(chosen.frame_event_id), now)
    return len(candidates) / (time.process_time() - started)


def hash_cost_ms(samples: int = 50) -> tuple[float, str]:
    """CPU milliseconds of perceptual_hash on one frame: the demo footage's when cached, else synthetic."""
    import cv2

    from libs.common.cache_dir import default_cache_dir
    from services.annotation.near_duplicates import perceptual_hash

    found = list((default_cache_dir() / "assets" / "opencv-samples").glob("**/vtest.avi"))
    if found:
        frames, source = sample_frames(found[0], samples), "demo footage (vtest.avi, 768x576)"
    else:
        rng = np.random.default_rng(1)
        frames = [cv2.resize(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8), (768, 576)) for _ in range(samples)]
        source = "synthetic 768x576 frames"
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes() for f in frames]
    perceptual_hash(jpegs[0])  # the first call pays for lazy initialisation in the libraries
    started = time.process_time()
    for data in jpegs:
        perceptual_hash(data)
    return (time.process_time() - started) * 1000 / len(jpegs), source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000, help="inference results in the mix")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/annotation_selection.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    say(f"building {args.events:,} inference results ({CAMERAS} cameras at {FPS:.0f} fps, "
        f"{SHADOW_CAMERAS} with a shadow model) ...")
    events = inference_events(args.events, start_s=time.time() - args.events / CAMERAS / FPS)
    shadows = sum(1 for v in events if events_pb2.InferenceResult.FromString(v).shadow)
    runs, admitted = [], collections.Counter()
    for _ in range(args.repeats):
        speed, admitted = whole_path(events)
        runs.append(speed)
    say(f"whole path: {statistics.median(runs):,.0f} events per CPU-second "
        f"(runs {', '.join(f'{r:,.0f}' for r in runs)})")
    candidates = decoded(events)
    decode_runs = [decode_only(events) for _ in range(args.repeats)]
    selector_runs = [selector_only(candidates) for _ in range(args.repeats)]
    hash_ms, hash_source = hash_cost_ms()
    say(f"decode and Candidate alone: {statistics.median(decode_runs):,.0f}/CPU-s; Selector alone: "
        f"{statistics.median(selector_runs):,.0f}/CPU-s; perceptual_hash {hash_ms:.2f} ms a frame")
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine_description(),
        "load_average_1m": {"before": round(load_before, 1), "after": round(os.getloadavg()[0], 1)},
        "mix": {"events": len(events), "shadow_results": shadows, "cameras": CAMERAS, "fps_per_camera": FPS,
                "cameras_with_shadow": SHADOW_CAMERAS, "cameras_under_drift": len(DRIFTING_CAMERAS),
                "simulated_s": round(args.events / (CAMERAS + SHADOW_CAMERAS) / FPS, 1)},
        "events_per_cpu_s": round(statistics.median(runs)),
        "runs_events_per_cpu_s": [round(r) for r in runs],
        "decode_and_candidate_events_per_cpu_s": round(statistics.median(decode_runs)),
        "selector_alone_events_per_cpu_s": round(statistics.median(selector_runs)),
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "target_met": statistics.median(runs) >= TARGET_EVENTS_PER_S,
        "admitted_by_rule": dict(sorted(admitted.items())),
        "perceptual_hash_cpu_ms_per_frame": round(hash_ms, 2), "perceptual_hash_frames": hash_source,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
