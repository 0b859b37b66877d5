"""`python -m bench.inference`: the default model's raw OpenVINO speed beside the two ways it is served, in one run.

1. raw FP32   preprocessed frames through AsyncInferQueue alone, the device's default precision (bf16 on
              CPUs that have it), and with f32 forced;
   raw INT8   the same for the NNCF INT8 variant (built once into the cache, accepted at >= 95% kept detections);
2. gRPC       the inference service (a process of its own) answering ModelInfer with raw pixels from
              --clients concurrent client threads in this process; frames/s, latency p50/p99 per request;
3. Kafka      a backlog of JPEG frame events of 4 cameras produced to vigil.frames, worked off by the same
              service into vigil.inference; frames/s, and the in-service latency (decode to postprocess) p50/p99.

Both paths run the default model at its default precision, so their ratio is to raw FP32 (default). The
clients, Kafka and the service share this machine's cores: say so beside the figures."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.__main__ import machine_description, sample_frames, say


def raw_throughput(model_dir: Path, frames: list, seconds: float, precision_hint: str | None = None) -> dict:
    from services.inference.detector import YoloDetector

    detector = YoloDetector.load(model_dir, precision_hint=precision_hint)
    tensors = [detector.preprocess(f)[0] for f in frames]
    queue = detector.make_infer_queue()
    completed = [0]
    queue.set_callback(lambda _request, _userdata: completed.__setitem__(0, completed[0] + 1))
    # The queue is kept full the whole time (start_async blocks only while every request is busy), so the
    # device never idles between rounds; the first 2 s warm up and are not counted.
    for phase in ("warm-up", "timed"):
        completed[0], submitted = 0, 0
        started = time.perf_counter()
        deadline = started + (2.0 if phase == "warm-up" else seconds)
        while time.perf_counter() < deadline:
            queue.start_async({0: tensors[submitted % len(tensors)]})
            submitted += 1
        queue.wait_all()
    return {"fps": completed[0] / (time.perf_counter() - started), "precision": detector.inference_precision,
            "requests": len(queue)}


def quantiles(values: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


def grpc_throughput(port: int, frames: list, seconds: float, clients: int) -> dict:
    import grpc

    from protos import inference_pb2 as pb
    from protos import inference_pb2_grpc

    requests = []
    for frame in frames:
        request = pb.ModelInferRequest(model_name="yolov3-tiny")
        request.inputs.append(pb.ModelInferRequest.InferInputTensor(name="image", datatype="UINT8",
                                                                    shape=list(frame.shape)))
        request.raw_input_contents.append(frame.tobytes())
        requests.append(request)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)])
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    for request in requests[:8]:
        stub.ModelInfer(request)
    latencies: list[float] = []
    failures: list[str] = []
    stop_at = time.perf_counter() + seconds
    lock = threading.Lock()

    def client(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                stub.ModelInfer(requests[i % len(requests)])
            except grpc.RpcError as error:
                failures.append(str(error.code()))
                continue
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000)
            i += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    channel.close()
    return {"fps": len(latencies) / elapsed, "requests": len(latencies), "failed": len(failures),
            "clients": clients, **quantiles(latencies)}


def kafka_throughput(stack, frames: list, count: int) -> dict:
    import cv2

    from libs.common.envelope import new_envelope
    from libs.common.topics import FRAMES, INFERENCE
    from protos import events_pb2
    from tests.integration.kafka_tools import end_offsets, produce, read_range

    bootstrap = stack.config.kafka_bootstrap
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes() for f in frames]
    cameras = [f"bench-{k}" for k in range(4)]
    start = end_offsets(bootstrap, INFERENCE)
    messages = []
    for i in range(count):
        camera = cameras[i % len(cameras)]
        frame = events_pb2.Frame(envelope=new_envelope(f"camera/{camera}", "bench"), camera_id=camera,
                                 sequence=i // len(cameras), width=768, height=576, encoding="jpeg",
                                 data=jpegs[i % len(jpegs)])
        messages.append((camera.encode(), frame.SerializeToString()))
    started = time.perf_counter()
    produce(bootstrap, FRAMES, messages)
    while sum(end_offsets(bootstrap, INFERENCE).values()) - sum(start.values()) < count:
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    results = [events_pb2.InferenceResult.FromString(m.value())
               for m in read_range(bootstrap, INFERENCE, start, end_offsets(bootstrap, INFERENCE))]
    in_service = [sum(v for k, v in r.stage_latency_ms.items() if k != "queue") for r in results]
    return {"fps": count / elapsed, "frames": count, **quantiles(in_service)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15, help="length of each timed measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent gRPC client threads")
    parser.add_argument("--kafka-frames", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("bench/results/inference.json"))
    args = parser.parse_args()

    from cli.stack.camera import fetch_footage
    from cli.stack.component import default_cache_dir
    from services.inference.detector import ensure_default_model
    from services.inference.quantize import ensure_int8_model
    from tests.integration.test_inference_grpc import inference_stack

    cache = default_cache_dir()
    footage = fetch_footage(cache)
    model_dir = ensure_default_model(cache)
    say("building (or reusing) the INT8 variant ...")
    int8_dir = ensure_int8_model(model_dir, footage)
    int8_metrics = json.loads((int8_dir / "model.json").read_text())["metrics"]
    frames = sample_frames(footage, 64)

    raw = {}
    for label, directory, hint in (("fp32_default", model_dir, None), ("fp32_f32", model_dir, "f32"),
                                   ("int8", int8_dir, None)):
        say(f"raw {label}, {args.seconds:.0f}s ...")
        raw[label] = raw_throughput(directory, frames, args.seconds, hint)
        say(f"      {raw[label]['fps']:.1f} frames/s ({raw[label]['precision']})")

    with inference_stack(Path(tempfile.mkdtemp(prefix="vigil-bench-inference-"))) as stack:
        say(f"gRPC path, {args.clients} clients, {args.seconds:.0f}s ...")
        grpc_result = grpc_throughput(stack.config.ports.grpc, frames, args.seconds, args.clients)
        say(f"      {grpc_result['fps']:.1f} frames/s")
        say(f"Kafka path, backlog of {args.kafka_frames} frames ...")
        kafka_throughput(stack, frames, 64)  # warm the consumer group and the producer
        kafka_result = kafka_throughput(stack, frames, args.kafka_frames)
        say(f"      {kafka_result['fps']:.1f} frames/s")

    base = raw["fp32_default"]["fps"]
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "raw": {k: {**v, "fps": round(v["fps"], 1)} for k, v in raw.items()},
        "int8_to_fp32_default": round(raw["int8"]["fps"] / base, 2),
        "int8_to_fp32_f32": round(raw["int8"]["fps"] / raw["fp32_f32"]["fps"], 2),
        "int8_kept_detections": int8_metrics,
        "grpc": {**grpc_result, "ratio_to_raw": round(grpc_result["fps"] / base, 3)},
        "kafka": {**kafka_result, "ratio_to_raw": round(kafka_result["fps"] / base, 3)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"\n{'measurement':<44}{'frames/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}")
    for name, figures in (("raw FP32 (default precision, " + raw["fp32_default"]["precision"] + ")",
                           raw["fp32_default"]), ("raw FP32 (f32 forced)", raw["fp32_f32"]),
                          ("raw INT8", raw["int8"]), (f"gRPC, {args.clients} clients, raw pixels", grpc_result),
                          ("Kafka, 4 cameras, JPEG frames (backlog)", kafka_result)):
        p50 = f"{figures['p50_ms']:.0f}" if "p50_ms" in figures else "-"
        p99 = f"{figures['p99_ms']:.0f}" if "p99_ms" in figures else "-"
        print(f"{name:<44}{figures['fps']:>10.1f}{p50:>9}{p99:>9}{figures['fps'] / base:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
