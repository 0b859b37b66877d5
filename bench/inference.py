"""`python -m bench.inference`: the default model's raw OpenVINO speed beside the two ways it is served, in one run.

1. raw FP32   preprocessed frames through AsyncInferQueue alone, the device's default precision (bf16 on
              CPUs that have it), and with f32 forced;
   raw INT8   the same for the NNCF INT8 variant (built once into the cache, accepted at >= 95% kept detections);
2. gRPC       the inference service (a process of its own) answering ModelInfer with raw pixels from
              --clients concurrent client threads in this process; frames/s, latency p50/p99 per request;
              once with the footage's 768x576 frames (the figure that counts), once with frames the client
              resized to the network's 416x416 first (a third of the bytes to move);
   tritonclient the same 768x576 frames from the same number of client threads through tritonclient (a process
              of its own: its protos clash with ours), once inline (raw pixels in the request) and once through
              system shared memory (each thread its own region, the frame written into it before each call, as a
              same-host client does; only the region's name crosses gRPC), so the two compare with one client;
3. Kafka      a backlog of JPEG frame events of 4 cameras produced to vigil.frames, worked off by the same
              service into vigil.inference; frames/s, and the in-service latency (decode to postprocess) p50/p99.

Both paths run the default model at its default precision, so their ratio is to raw FP32 (default). The
clients, Kafka and the service share this machine's cores: say so beside the figures. On a machine the
measurement saturates, throughput follows CPU time per frame, so each figure comes with the CPU milliseconds
a frame cost the service and the client: what a path spends beyond raw inference is where its ratio goes."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from bench.common import machine_description, process_cpu_s, raw_throughput, sample_frames, say


def quantiles(values: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


def timed_clients(clients: int, seconds: float, call: Callable[[int, int], object], failure: type[BaseException],
                  server_pid: int | None) -> dict:
    """`clients` threads calling call(client, frame_index) for `seconds`: requests, failures, frames/s, latency,
    and the CPU milliseconds a frame cost the server and this process (the client)."""
    latencies: list[float] = []
    failures: list[str] = []
    stop_at = time.perf_counter() + seconds
    lock = threading.Lock()

    def client(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                call(offset, i)
            except failure as error:
                failures.append(str(error))
                continue
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000)
            i += clients

    server_cpu_started = process_cpu_s(server_pid) if server_pid else 0.0
    started, cpu_started = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    client_cpu_s = time.process_time() - cpu_started
    server_cpu_s = process_cpu_s(server_pid) - server_cpu_started if server_pid else float("nan")
    done = max(len(latencies), 1)
    return {"fps": len(latencies) / elapsed, "requests": len(latencies), "failed": len(failures),
            "clients": clients, **quantiles(latencies or [float("nan")]),
            "server_cpu_ms_per_frame": server_cpu_s * 1000 / done,
            "client_cpu_ms_per_frame": client_cpu_s * 1000 / done}


def grpc_throughput(port: int, frames: list, seconds: float, clients: int, server_pid: int | None = None) -> dict:
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
    result = timed_clients(clients, seconds, lambda _, i: stub.ModelInfer(requests[i % len(requests)]),
                           grpc.RpcError, server_pid)
    channel.close()
    return {**result, "frame": f"{frames[0].shape[1]}x{frames[0].shape[0]}"}


def tritonclient_throughput(port: int, footage: Path, seconds: float, clients: int, server_pid: int,
                            shared_memory: bool) -> dict:
    """The tritonclient leg, run in a process of its own (this module with --tritonclient-leg); its figures."""
    leg = subprocess.run([sys.executable, "-m", "bench.inference", "--tritonclient-leg",
                          "shared-memory" if shared_memory else "inline", "--port", str(port), "--footage",
                          str(footage), "--seconds", str(seconds), "--clients", str(clients),
                          "--server-pid", str(server_pid)], capture_output=True, text=True, timeout=seconds + 300)
    if leg.returncode != 0:
        raise RuntimeError(f"the tritonclient leg failed: {leg.stderr[-2000:]}")
    return json.loads(leg.stdout)


def tritonclient_leg(port: int, frames: list, seconds: float, clients: int, server_pid: int,
                     shared_memory: bool) -> dict:
    """In the tritonclient process: each client thread its own client and, through shared memory, its own region,
    into which it writes each frame before the call (the copy a same-host client makes instead of gRPC's)."""
    import tritonclient.grpc as triton
    import tritonclient.utils.shared_memory as shm
    from tritonclient.utils import InferenceServerException

    url = f"127.0.0.1:{port}"
    shape, frame_bytes = list(frames[0].shape), frames[0].nbytes
    connections = [triton.InferenceServerClient(url=url) for _ in range(clients)]
    regions = []
    if shared_memory:
        connections[0].unregister_system_shared_memory()
        for k, connection in enumerate(connections):
            name, key = f"bench-{k}", f"/vigil-bench-{os.getpid()}-{k}"
            regions.append(shm.create_shared_memory_region(name, key, frame_bytes))
            connection.register_system_shared_memory(name, key, frame_bytes)

    def call(client: int, i: int):
        image = triton.InferInput("image", shape, "UINT8")
        if shared_memory:
            shm.set_shared_memory_region(regions[client], [frames[i % len(frames)]])
            image.set_shared_memory(f"bench-{client}", frame_bytes)
        else:
            image.set_data_from_numpy(frames[i % len(frames)])
        return connections[client].infer("yolov3-tiny", [image])

    try:
        for k in range(clients):  # warm: every client's channel connected, every region touched
            call(k, k)
        result = timed_clients(clients, seconds, call, InferenceServerException, server_pid)
    finally:
        if shared_memory:
            connections[0].unregister_system_shared_memory()
        for region in regions:
            shm.destroy_shared_memory_region(region)
        for connection in connections:
            connection.close()
    return {**result, "frame": f"{shape[1]}x{shape[0]}"}


def kafka_throughput(stack, frames: list, count: int, service_pid: int | None = None) -> dict:
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
    service_cpu_started = process_cpu_s(service_pid) if service_pid else 0.0
    started = time.perf_counter()
    produce(bootstrap, FRAMES, messages)
    while sum(end_offsets(bootstrap, INFERENCE).values()) - sum(start.values()) < count:
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    service_cpu_s = process_cpu_s(service_pid) - service_cpu_started if service_pid else float("nan")
    results = [events_pb2.InferenceResult.FromString(m.value())
               for m in read_range(bootstrap, INFERENCE, start, end_offsets(bootstrap, INFERENCE))]
    in_service = [sum(v for k, v in r.stage_latency_ms.items() if k != "queue") for r in results]
    return {"fps": count / elapsed, "frames": count, **quantiles(in_service),
            "server_cpu_ms_per_frame": service_cpu_s * 1000 / count}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15, help="length of each timed measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent gRPC client threads")
    parser.add_argument("--kafka-frames", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("bench/results/inference.json"))
    # The tritonclient leg's own process (started by tritonclient_throughput, not by hand).
    parser.add_argument("--tritonclient-leg", choices=("inline", "shared-memory"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--footage", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tritonclient_leg:
        print(json.dumps(tritonclient_leg(args.port, sample_frames(args.footage, 64), args.seconds, args.clients,
                                          args.server_pid, args.tritonclient_leg == "shared-memory")))
        return 0

    from cli.stack.camera import fetch_footage
    from libs.common.cache_dir import default_cache_dir
    from tools.darknet_converter import ensure_default_model
    from tools.quantize import ensure_int8_model
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

    network_sized = [cv2.resize(f, (416, 416), interpolation=cv2.INTER_LINEAR) for f in frames]
    with inference_stack(Path(tempfile.mkdtemp(prefix="vigil-bench-inference-"))) as stack:
        service = stack.supervisor.running_pid("inference")
        say(f"gRPC path, {args.clients} clients, {args.seconds:.0f}s ...")
        grpc_result = grpc_throughput(stack.config.ports.grpc, frames, args.seconds, args.clients, service)
        say(f"      {grpc_result['fps']:.1f} frames/s")
        say(f"gRPC path, frames resized to 416x416 by the client, {args.seconds:.0f}s ...")
        grpc_small = grpc_throughput(stack.config.ports.grpc, network_sized, args.seconds, args.clients, service)
        say(f"      {grpc_small['fps']:.1f} frames/s")
        tritonclient = {}
        for leg, through_shm in (("inline", False), ("shared_memory", True)):
            say(f"gRPC path through tritonclient, {leg.replace('_', ' ')}, {args.clients} clients, "
                f"{args.seconds:.0f}s ...")
            tritonclient[leg] = tritonclient_throughput(stack.config.ports.grpc, footage, args.seconds,
                                                        args.clients, service, through_shm)
            say(f"      {tritonclient[leg]['fps']:.1f} frames/s")
        say(f"Kafka path, backlog of {args.kafka_frames} frames ...")
        kafka_throughput(stack, frames, 64)  # warm the consumer group and the producer
        kafka_result = kafka_throughput(stack, frames, args.kafka_frames, service)
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
        "grpc_network_sized_frames": {**grpc_small, "ratio_to_raw": round(grpc_small["fps"] / base, 3)},
        **{f"grpc_tritonclient_{leg}": {**figures, "ratio_to_raw": round(figures["fps"] / base, 3)}
           for leg, figures in tritonclient.items()},
        "kafka": {**kafka_result, "ratio_to_raw": round(kafka_result["fps"] / base, 3)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"\n{'measurement':<48}{'frames/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'ratio':>7}{'CPU ms/frame':>28}")
    for name, figures in (("raw FP32 (default precision, " + raw["fp32_default"]["precision"] + ")",
                           raw["fp32_default"]), ("raw FP32 (f32 forced)", raw["fp32_f32"]),
                          ("raw INT8", raw["int8"]),
                          (f"gRPC, {args.clients} clients, 768x576 raw pixels", grpc_result),
                          (f"gRPC, {args.clients} clients, 416x416 raw pixels", grpc_small),
                          (f"tritonclient, {args.clients} clients, 768x576 inline", tritonclient["inline"]),
                          (f"tritonclient, {args.clients} clients, 768x576 system shm",
                           tritonclient["shared_memory"]),
                          ("Kafka, 4 cameras, 768x576 JPEG (backlog)", kafka_result)):
        p50 = f"{figures['p50_ms']:.0f}" if "p50_ms" in figures else "-"
        p99 = f"{figures['p99_ms']:.0f}" if "p99_ms" in figures else "-"
        cpu = (f"{figures['cpu_ms_per_frame']:.1f}" if "cpu_ms_per_frame" in figures else
               f"{figures['server_cpu_ms_per_frame']:.1f} service" + (
                   f" + {figures['client_cpu_ms_per_frame']:.1f} client" if "client_cpu_ms_per_frame" in figures
                   else ""))
        print(f"{name:<48}{figures['fps']:>9.1f}{p50:>8}{p99:>8}{figures['fps'] / base:>7.2f}{cpu:>28}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
