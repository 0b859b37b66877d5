"""What the benchmarks share: the machine's description, sample frames, and the model's raw speed."""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import cv2


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all its threads) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_description() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {memory_gib:.0f} GiB"


def sample_frames(footage: Path, count: int) -> list:
    capture = cv2.VideoCapture(str(footage))
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    return frames


def raw_throughput(model_dir: Path, frames: list, seconds: float, precision_hint: str | None = None) -> dict:
    """Frames/s of the model alone (preprocessed frames through AsyncInferQueue), its precision, its requests
    and the CPU it spent per frame: the figure every benchmark states its ratios against."""
    from services.inference.detectors.yolo import YoloDetector

    detector = YoloDetector.load(model_dir, precision_hint=precision_hint)
    tensors = [detector.preprocess(f)[0] for f in frames]
    queue = detector.make_infer_queue()
    completed = [0]
    queue.set_callback(lambda _request, _userdata: completed.__setitem__(0, completed[0] + 1))
    # The queue is kept full the whole time (start_async blocks only while every request is busy), so the
    # device never idles between rounds; the first 2 s warm up and are not counted.
    for phase in ("warm-up", "timed"):
        completed[0], submitted = 0, 0
        started, cpu_started = time.perf_counter(), time.process_time()
        deadline = started + (2.0 if phase == "warm-up" else seconds)
        while time.perf_counter() < deadline:
            queue.start_async({0: tensors[submitted % len(tensors)]})
            submitted += 1
        queue.wait_all()
    return {"fps": completed[0] / (time.perf_counter() - started), "precision": detector.inference_precision,
            "requests": len(queue), "cpu_ms_per_frame": (time.process_time() - cpu_started) * 1000 / completed[0]}


def produce(bootstrap: str, topic: str, messages, **config) -> int:
    """Produces (key, value) pairs as fast as the client takes them (waiting when its queue is full); returns
    how many, once every one is delivered."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000,
                         "queue.buffering.max.messages": 500_000, "enable.idempotence": True, "acks": "all",
                         **config})
    sent = 0
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} events not delivered")
    return sent
