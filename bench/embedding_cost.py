"""What the frame embedding costs the default detector: its throughput and CPU per frame with and without the
pooled feature output, measured side by side in one run (rounds alternate, so a busy machine hurts both alike),
the figure behind VIGIL_INFERENCE_EMBEDDINGS' default. On a shared machine frames/s swing with the neighbours'
load; CPU per frame, and the fastest latencies of one request on one thread, hold steadier.

    python -m bench.embedding_cost [--seconds 2] [--rounds 20]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import openvino as ov

from bench.common import machine_description, sample_frames, say
from services.inference.detectors.yolo import YoloDetector


def run(detector: YoloDetector, tensors: list, seconds: float) -> tuple[float, float]:
    """(frames/s, CPU ms per frame) with the request queue kept full, the outputs copied out of each finished
    request as the frame pipeline does."""
    queue = detector.make_infer_queue()
    done = [0]

    def finished(request, _userdata) -> None:
        detector.infer_request_outputs(request)
        done[0] += 1

    queue.set_callback(finished)
    submitted, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() < started + seconds:
        queue.start_async({0: tensors[submitted % len(tensors)]})
        submitted += 1
    queue.wait_all()
    return done[0] / (time.perf_counter() - started), (time.process_time() - cpu_started) * 1000 / done[0]


def one_thread_latency_ms(model_dir, frames: list, repeats: int = 200) -> dict[str, np.ndarray]:
    """Latencies of single requests on one thread, the two variants interleaved."""
    core = ov.Core()
    core.set_property("CPU", {"INFERENCE_NUM_THREADS": 1})
    detectors = {name: YoloDetector.load(model_dir, performance_hint="LATENCY", core=core,
                                         embeddings=name == "with") for name in ("with", "without")}
    latencies: dict[str, list[float]] = {name: [] for name in detectors}
    for index in range(repeats):
        for name, detector in detectors.items():
            tensor = detector.preprocess(frames[index % len(frames)])[0]
            started = time.perf_counter()
            detector.infer(tensor)
            latencies[name].append((time.perf_counter() - started) * 1000)
    return {name: np.asarray(values) for name, values in latencies.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="per round and variant")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    from tools.darknet_converter import ensure_default_model
    from tools.fetch_assets import fetch_opencv_samples

    model_dir = ensure_default_model()
    detectors = {"with": YoloDetector.load(model_dir, embeddings=True),
                 "without": YoloDetector.load(model_dir, embeddings=False)}
    if detectors["with"].projection is None:
        raise SystemExit(f"{model_dir} has no embedding projection")
    frames = sample_frames(fetch_opencv_samples() / "vtest.avi", 64)
    tensors = {name: [d.preprocess(f)[0] for f in frames] for name, d in detectors.items()}
    for name, detector in detectors.items():
        run(detector, tensors[name], 2.0)  # warm-up
    fps: dict[str, list[float]] = {name: [] for name in detectors}
    cpu: dict[str, list[float]] = {name: [] for name in detectors}
    for index in range(args.rounds):
        for name in (("with", "without") if index % 2 == 0 else ("without", "with")):
            rate, cpu_ms = run(detectors[name], tensors[name], args.seconds)
            fps[name].append(rate)
            cpu[name].append(cpu_ms)
        say(f"round {index}: {fps['with'][-1]:.1f} / {fps['without'][-1]:.1f} frames/s with / without")
    median = statistics.median
    print(f"{machine_description()}, {detectors['with'].inference_precision}")
    for name in detectors:
        print(f"{name} embedding: {median(fps[name]):.1f} frames/s, {median(cpu[name]):.2f} ms CPU per frame")
    print(f"with/without, medians of paired rounds: frames/s "
          f"{median(a / b for a, b in zip(fps['with'], fps['without'])):.3f}, CPU per frame "
          f"{median(a / b for a, b in zip(cpu['with'], cpu['without'])):.3f}")
    latency = one_thread_latency_ms(model_dir, frames)
    for name, values in latency.items():
        print(f"{name} embedding, one request on one thread: min {values.min():.2f} ms, "
              f"10th percentile {np.percentile(values, 10):.2f} ms")
    print(f"with/without, one thread: min {latency['with'].min() / latency['without'].min():.3f}, 10th percentile "
          f"{np.percentile(latency['with'], 10) / np.percentile(latency['without'], 10):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
