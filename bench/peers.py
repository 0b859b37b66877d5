"""`python -m bench.peers`: Vigil's gRPC inference beside real peers, MLServer 1.7.1 and KServe 0.21, in one run:
the same model dir, the same 64 frames, the same client (tritonclient, a client nobody here wrote), the same
load; and MLServer's Kafka server beside Vigil's Kafka path, on the Kafka 4.4 broker of Vigil's stack.

What is measured, per server: frames/s and latency p50/p99 of ModelInfer with an "image" UINT8 [576, 768, 3]
input from --clients concurrent tritonclient threads for --seconds (after 2 s of warm-up), the server's CPU
milliseconds per frame (from /proc, summed over the server process and every process it forked, so MLServer's
inference workers count), and the client's. Beside them, the model's raw OpenVINO speed (bench.common.
raw_throughput) in the same run, and each ratio Vigil / peer.

Why it is fair:
- The same work per request. Each peer runs a runtime of bench/peer_runtimes/ in the peer's own venv with
  PYTHONPATH at this repo, so it calls Vigil's own YoloDetector: the same OpenVINO version, the same compiled
  graph (THROUGHPUT hint, the device's default precision, BGR->RGB float in the graph), the same OpenCV resize,
  YOLO decode and NMS, and it returns Vigil's three outputs. The run checks it: every peer's detections on a
  frame must match Vigil's (same count, each matched by class at IoU >= 0.9).
- Each server in its best reasonable configuration on 2 cores. Vigil: its defaults (8 gRPC threads). Peers:
  predict hands the blocking detect to a thread pool, since both await predict on their event loop, where a
  blocking one would serve one request at a time. MLServer is measured twice: parallel_workers=0 (inference in
  the server process: no copy of each 1.3 MB frame to a worker; the pick for 2 cores, where one OpenVINO model
  already uses both), and parallel_workers=1, its default (one inference worker process; pinned uvloop 0.21
  for it: MLServer 1.7.1's workers die at start with uvloop >= 0.22, which raises in get_event_loop). KServe:
  one process (its --workers forks only the REST server, gRPC always runs in one), per-request latency logging
  off and log level WARNING (its interceptor logs every call at INFO).
- Where MLServer's CPU goes (not the runtime's doing): its gRPC converter unpacks raw_input_contents into a
  Python list of 1.3 M ints (struct.unpack in mlserver/raw.py) that NumpyCodec then turns back into an array;
  with parallel_workers=1 that request is also pickled to the worker and back.
- The same client process code for all, one server under load at a time; the stack's Kafka broker and Vigil's
  idle service run throughout, for every server alike. All bound to 127.0.0.1.
- Kafka: Vigil's leg is bench.inference's (a backlog of 4 cameras' 768x576 JPEG frame events). MLServer's Kafka
  server takes JSON InferenceRequests (JPEG bytes as base64 text in an "image_bytes" input: Kafka messages are
  JSON there), so it decodes the same JPEGs; its consumer has no group and starts at the latest offset, so it is
  warmed up with a few requests first and then given the backlog. If it does not run on Kafka 4.4, the error
  is recorded, not a number.

The peers install themselves once into venvs of their own under <cache>/peers/ (their pins conflict with
Vigil's): python3.11 -m venv, then uv pip install of the pinned peer plus Vigil's openvino, numpy, OpenCV and
structlog versions; a stamp file marks each done."""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Iterator

from bench.common import machine_description, process_cpu_s, say

REPO = Path(__file__).resolve().parent.parent
MODEL = "yolov3-tiny"
FRAME_COUNT = 64
IOU_AGREEMENT = 0.9


@dataclass(frozen=True)
class Peer:
    name: str
    version: str
    requirement: str
    extra_pins: tuple[str, ...] = ()  # where the resolver's newest breaks the peer at this version

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


MLSERVER = Peer("mlserver", "1.7.1", "mlserver==1.7.1", ("uvloop==0.21.0",))
KSERVE = Peer("kserve", "0.21", "kserve==0.21.0")


def peer_requirements(peer: Peer) -> list[str]:
    """The peer pinned, plus the libraries Vigil's detector code needs at the versions Vigil's own venv has, so
    the peer runs the same OpenVINO, the same OpenCV resize and the same decode."""
    shared = ("openvino", "numpy", "opencv-python-headless", "structlog")
    return [peer.requirement, *peer.extra_pins] + [f"{name}=={metadata.version(name)}" for name in shared]


def ensure_peer_venv(cache: Path, peer: Peer) -> Path:
    """A venv of the peer's own under the cache, installed once: a stamp naming the requirements marks it done.
    Returns the venv."""
    venv = cache / "peers" / peer.key
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    requirements = peer_requirements(peer)
    if stamp.exists() and stamp.read_text().split() == requirements:
        return venv
    if not python.exists():
        say(f"creating the venv for {peer.key} in {venv} ...")
        subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    say(f"installing {' '.join(requirements)} into {venv} (once) ...")
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv), "pip", "install", "-p", str(python), *requirements], check=True)
    stamp.write_text("\n".join(requirements) + "\n")
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- processes --------------------------------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    """The pid and every live process below it (MLServer's inference workers are its children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def tree_cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += process_cpu_s(pid)
    return total


@dataclass
class PeerServer:
    """A peer server process (its own process group, so everything it forks is stopped with it)."""
    name: str
    command: list[str]
    env: dict[str, str]
    http_port: int
    grpc_port: int
    log: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def start(self, timeout_s: float = 180) -> None:
        say(f"starting {self.name} (gRPC 127.0.0.1:{self.grpc_port}) ...")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(self.command, env={**os.environ, **self.env}, cwd=REPO, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.http_port}/v2/models/{MODEL}/ready"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready within {timeout_s:.0f}s:\n{self.log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    @contextlib.contextmanager
    def running(self) -> Iterator["PeerServer"]:
        try:
            self.start()
            yield self
        finally:
            self.stop()


def mlserver_server(venv: Path, model_dir: Path, work: Path, parallel_workers: int,
                    kafka: dict[str, str] | None = None) -> PeerServer:
    """`mlserver start` on a repository of one model-settings.json naming the runtime; settings as MLSERVER_*."""
    repository = work / f"mlserver-repo-{parallel_workers}"
    (repository / MODEL).mkdir(parents=True, exist_ok=True)
    (repository / MODEL / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "bench.peer_runtimes.mlserver_yolo.YoloRuntime",
        "parameters": {"uri": str(model_dir)}}))
    http_port, grpc_port = free_port(), free_port()
    env = {"PYTHONPATH": str(REPO), "MLSERVER_HOST": "127.0.0.1", "MLSERVER_HTTP_PORT": str(http_port),
           "MLSERVER_GRPC_PORT": str(grpc_port), "MLSERVER_METRICS_PORT": str(free_port()),
           "MLSERVER_PARALLEL_WORKERS": str(parallel_workers),
           "MLSERVER_METRICS_DIR": str(work / f"mlserver-metrics-{parallel_workers}"), **(kafka or {})}
    name = f"MLServer {MLSERVER.version} (parallel_workers={parallel_workers}{', Kafka' if kafka else ''})"
    return PeerServer(name, [str(venv / "bin" / "mlserver"), "start", str(repository)], env, http_port,
                      grpc_port, work / f"mlserver-{parallel_workers}{'-kafka' if kafka else ''}.log")


def kserve_server(venv: Path, model_dir: Path, work: Path) -> PeerServer:
    http_port, grpc_port = free_port(), free_port()
    command = [str(venv / "bin" / "python"), "-m", "bench.peer_runtimes.kserve_yolo", str(model_dir),
               "--http_port", str(http_port), "--grpc_port", str(grpc_port), "--workers", "1",
               "--enable_latency_logging", "false"]
    return PeerServer(f"KServe {KSERVE.version}", command, {"PYTHONPATH": str(REPO), "KSERVE_LOGLEVEL": "WARNING"},
                      http_port, grpc_port, work / "kserve.log")


# -- the client, a process of its own (tritonclient's protos clash with Vigil's in one process) -------------

def client_load(url: str, footage: Path, seconds: float, clients: int, server_pid: int) -> dict:
    """Runs in the client process: ModelInfer from `clients` threads over one tritonclient connection, the
    frames taken in turn; 2 s of warm-up, then `seconds` timed. Also returns the detections of frame 0."""
    import numpy as np
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    from bench.common import sample_frames

    frames = sample_frames(footage, FRAME_COUNT)
    client = triton.InferenceServerClient(url=url)
    inputs = []
    for frame in frames:
        tensor = triton.InferInput("image", list(frame.shape), "UINT8")
        tensor.set_data_from_numpy(frame)
        inputs.append([tensor])
    first = client.infer(MODEL, inputs[0])
    detections = {"boxes": first.as_numpy("boxes").tolist(), "scores": first.as_numpy("scores").tolist(),
                  "classes": [c.decode() for c in first.as_numpy("classes")]}

    def load(duration: float) -> tuple[list[float], list[str], float, float, float]:
        latencies: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()
        stop_at = time.perf_counter() + duration

        def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    client.infer(MODEL, inputs[i % len(inputs)])
                except InferenceServerException as error:
                    failures.append(str(error)[:200])
                    continue
                with lock:
                    latencies.append((time.perf_counter() - t0) * 1000)
                i += clients

        server_pids = descendants(server_pid)
        server_started = tree_cpu_s(server_pids)
        started, cpu_started = time.perf_counter(), time.process_time()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        return (latencies, failures, elapsed, time.process_time() - cpu_started,
                tree_cpu_s(server_pids) - server_started)

    load(2.0)
    latencies, failures, elapsed, client_cpu, server_cpu = load(seconds)
    client.close()
    done = max(len(latencies), 1)
    return {"fps": len(latencies) / elapsed, "requests": len(latencies), "failed": len(failures),
            "failures": failures[:3], "clients": clients, "frame": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
            "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
            "server_processes": len(descendants(server_pid)),
            "server_cpu_ms_per_frame": server_cpu * 1000 / done, "client_cpu_ms_per_frame": client_cpu * 1000 / done,
            "detections_frame0": detections}


def run_client(grpc_port: int, footage: Path, seconds: float, clients: int, server_pid: int) -> dict:
    command = [sys.executable, "-m", "bench.peers", "--client", f"127.0.0.1:{grpc_port}", "--footage", str(footage),
               "--seconds", str(seconds), "--clients", str(clients), "--server-pid", str(server_pid)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=seconds + 300)
    if done.returncode != 0:
        raise RuntimeError(f"the client failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


# -- agreement ----------------------------------------------------------------------------------------------

def iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def agreement(reference: dict, other: dict) -> dict:
    """Same count, and each of the reference's detections matched (greedily, same class) at IoU >= 0.9."""
    unmatched = list(range(len(other["boxes"])))
    matched, worst_iou, worst_score = 0, 1.0, 0.0
    for box, score, label in zip(reference["boxes"], reference["scores"], reference["classes"]):
        candidates = [(iou(box, other["boxes"][k]), k) for k in unmatched if other["classes"][k] == label]
        if candidates:
            best, k = max(candidates)
            if best >= IOU_AGREEMENT:
                unmatched.remove(k)
                matched += 1
                worst_iou = min(worst_iou, best)
                worst_score = max(worst_score, abs(score - other["scores"][k]))
    same = len(reference["boxes"]) == len(other["boxes"]) == matched
    return {"agrees": same, "vigil_count": len(reference["boxes"]), "peer_count": len(other["boxes"]),
            "matched": matched, "min_iou": round(worst_iou, 4), "max_score_diff": round(worst_score, 5)}


# -- Kafka --------------------------------------------------------------------------------------------------

def mlserver_kafka_throughput(venv: Path, model_dir: Path, work: Path, bootstrap: str, frames: list,
                              count: int) -> dict:
    """MLServer's Kafka server (MLSERVER_KAFKA_ENABLED) on the stack's broker: warmed up with 8 requests, then
    a backlog of `count` JSON InferenceRequests carrying the same JPEGs as Vigil's leg. Returns the figures, or
    {"ran": False, "error": ...} with what failed."""
    import cv2
    from confluent_kafka.admin import AdminClient, NewTopic

    from bench.common import produce
    from tests.integration.kafka_tools import end_offsets, read_range

    topic_in, topic_out = "bench.peers.mlserver-input", "bench.peers.mlserver-output"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(t, 6, 1, config={"max.message.bytes": str(2 << 20)})
                                       for t in (topic_in, topic_out)]).values():
        with contextlib.suppress(Exception):  # already there from an earlier run on this state
            future.result()
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes() for f in frames]
    bodies = [json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                                      "data": [base64.b64encode(j).decode()]}]}).encode() for j in jpegs]
    headers = [("mlserver-model", MODEL.encode())]

    def messages(n: int, tag: str):
        return [(f"bench-{i % 4}-{tag}-{i}".encode(), bodies[i % len(bodies)]) for i in range(n)]

    def wait_outputs(start: dict, n: int, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while sum(end_offsets(bootstrap, topic_out).values()) - sum(start.values()) < n:
            if server.process.poll() is not None:
                raise RuntimeError(f"MLServer exited with {server.process.returncode}")
            if time.monotonic() > deadline:
                got = sum(end_offsets(bootstrap, topic_out).values()) - sum(start.values())
                raise TimeoutError(f"{got} of {n} responses on {topic_out} within {timeout_s:.0f}s")
            time.sleep(0.05)
        return time.perf_counter()

    server = mlserver_server(venv, model_dir, work, 0, kafka={
        "MLSERVER_KAFKA_ENABLED": "true", "MLSERVER_KAFKA_SERVERS": bootstrap,
        "MLSERVER_KAFKA_TOPIC_INPUT": topic_in, "MLSERVER_KAFKA_TOPIC_OUTPUT": topic_out})
    try:
        with server.running():
            deadline = time.monotonic() + 60
            while "Reading messages from consumer" not in server.log.read_text(errors="replace"):
                if server.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("MLServer's Kafka consumer never started reading")
                time.sleep(0.5)
            time.sleep(2)  # the consumer seeks to the latest offset once its partitions are assigned
            start = end_offsets(bootstrap, topic_out)
            produce_with_headers(bootstrap, topic_in, messages(8, "warm"), headers)
            wait_outputs(start, 8, 120)
            start = end_offsets(bootstrap, topic_out)
            pids = descendants(server.process.pid)
            cpu_started, started = tree_cpu_s(pids), time.perf_counter()
            produce_with_headers(bootstrap, topic_in, messages(count, "backlog"), headers)
            finished = wait_outputs(start, count, 600)
            cpu = tree_cpu_s(pids) - cpu_started
            replies = read_range(bootstrap, topic_out, start, end_offsets(bootstrap, topic_out))
            sample = json.loads(replies[0].value())
            outputs = {o["name"]: o["shape"] for o in sample.get("outputs", [])}
            return {"ran": True, "fps": count / (finished - started), "frames": count,
                    "server_cpu_ms_per_frame": cpu * 1000 / count, "reply_outputs": outputs,
                    "aiokafka": peer_package_version(venv, "aiokafka")}
    except Exception as error:  # noqa: BLE001 - what failed is the result here
        tail = server.log_tail(25)
        return {"ran": False, "error": f"{type(error).__name__}: {error}",
                "server_log_tail": tail[-4000:], "aiokafka": peer_package_version(venv, "aiokafka")}


def produce_with_headers(bootstrap: str, topic: str, messages: list, headers: list) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "acks": "all",
                         "message.max.bytes": 2 << 20})
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise RuntimeError("frames not delivered to the broker")


def peer_package_version(venv: Path, package: str) -> str:
    done = subprocess.run([str(venv / "bin" / "python"), "-c",
                           f"import importlib.metadata as m; print(m.version({package!r}))"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "?"


# -- the run ------------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15, help="length of each timed measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent tritonclient threads")
    parser.add_argument("--kafka-frames", type=int, default=600, help="backlog of each Kafka leg")
    parser.add_argument("--out", type=Path, default=Path("bench/results/peers.json"))
    parser.add_argument("--client", help=argparse.SUPPRESS)  # the client process: URL
    parser.add_argument("--footage", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(client_load(args.client, args.footage, args.seconds, args.clients, args.server_pid)))
        return 0

    from bench.common import raw_throughput, sample_frames
    from bench.inference import kafka_throughput
    from cli.stack.camera import fetch_footage
    from libs.common.cache_dir import default_cache_dir
    from tests.integration.test_inference_grpc import inference_stack
    from tools.darknet_converter import ensure_default_model

    cache = default_cache_dir()
    venvs = {peer.name: ensure_peer_venv(cache, peer) for peer in (MLSERVER, KSERVE)}
    footage = fetch_footage(cache)
    model_dir = ensure_default_model(cache)
    frames = sample_frames(footage, FRAME_COUNT)
    work = Path(tempfile.mkdtemp(prefix="vigil-bench-peers-"))

    say(f"raw OpenVINO, {args.seconds:.0f}s ...")
    raw = raw_throughput(model_dir, frames, args.seconds)
    say(f"      {raw['fps']:.1f} frames/s ({raw['precision']})")

    grpc: dict[str, dict] = {}
    with inference_stack(work / "stack") as stack:
        vigil_pid = stack.supervisor.running_pid("inference")
        say(f"Vigil gRPC, {args.clients} clients, {args.seconds:.0f}s ...")
        grpc["vigil"] = run_client(stack.config.ports.grpc, footage, args.seconds, args.clients, vigil_pid)
        say(f"      {grpc['vigil']['fps']:.1f} frames/s")
        peers = {"mlserver_pw0": mlserver_server(venvs["mlserver"], model_dir, work, 0),
                 "mlserver_pw1": mlserver_server(venvs["mlserver"], model_dir, work, 1),
                 "kserve": kserve_server(venvs["kserve"], model_dir, work)}
        for key, server in peers.items():
            with server.running():
                say(f"{server.name} gRPC, {args.clients} clients, {args.seconds:.0f}s ...")
                grpc[key] = run_client(server.grpc_port, footage, args.seconds, args.clients, server.process.pid)
                say(f"      {grpc[key]['fps']:.1f} frames/s")

        say(f"Vigil Kafka, backlog of {args.kafka_frames} frames ...")
        kafka_throughput(stack, frames, 64)  # warms the consumer group and the producer, as bench.inference does
        vigil_kafka = kafka_throughput(stack, frames, args.kafka_frames, vigil_pid)
        say(f"      {vigil_kafka['fps']:.1f} frames/s")
        say(f"MLServer Kafka server on Kafka 4.4, backlog of {args.kafka_frames} frames ...")
        ml_kafka = mlserver_kafka_throughput(venvs["mlserver"], model_dir, work, stack.config.kafka_bootstrap,
                                             frames, args.kafka_frames)
        say(f"      {ml_kafka['fps']:.1f} frames/s" if ml_kafka["ran"] else f"      did not run: {ml_kafka['error']}")

    vigil = grpc["vigil"]
    for key in peers:
        grpc[key]["agreement_with_vigil"] = agreement(vigil["detections_frame0"],
                                                      grpc[key]["detections_frame0"])
    ratios = {key: {"fps_vigil_over_peer": round(vigil["fps"] / grpc[key]["fps"], 2),
                    "server_cpu_vigil_over_peer": round(vigil["server_cpu_ms_per_frame"]
                                                        / grpc[key]["server_cpu_ms_per_frame"], 2),
                    "p50_vigil_over_peer": round(vigil["p50_ms"] / grpc[key]["p50_ms"], 2)}
              for key in peers}
    if ml_kafka["ran"]:
        ratios["kafka_mlserver"] = {"fps_vigil_over_peer": round(vigil_kafka["fps"] / ml_kafka["fps"], 2),
                                    "server_cpu_vigil_over_peer": round(vigil_kafka["server_cpu_ms_per_frame"]
                                                                        / ml_kafka["server_cpu_ms_per_frame"], 2)}
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "model": f"{MODEL} ({model_dir}), {raw['precision']}",
        "frames": f"{FRAME_COUNT} frames of the footage, 768x576, raw BGR pixels as 'image' UINT8 [576, 768, 3]",
        "load": f"tritonclient.grpc {metadata.version('tritonclient')}, {args.clients} threads, {args.seconds:g}s "
                "timed after 2s warm-up, one server at a time",
        "raw_openvino": {**raw, "fps": round(raw["fps"], 1)},
        "grpc": {key: {k: (round(v, 2) if isinstance(v, float) else v) for k, v in figures.items()
                       if k != "detections_frame0"} for key, figures in grpc.items()},
        "grpc_ratio_to_raw": {key: round(figures["fps"] / raw["fps"], 3) for key, figures in grpc.items()},
        "ratios_vigil_over_peer": ratios,
        "kafka": {"vigil": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in vigil_kafka.items()},
                  "mlserver": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in ml_kafka.items()}},
        "peers": {
            "mlserver": {"version": MLSERVER.version, "venv": str(venvs["mlserver"]),
                         "requirements": peer_requirements(MLSERVER),
                         "config": {"mlserver_pw0": "parallel_workers=0: inference in the server process, "
                                                    "detect on the event loop's thread pool (the pick for 2 cores)",
                                    "mlserver_pw1": "parallel_workers=1 (MLServer's default): one inference "
                                                    "worker process; server CPU sums both"}},
            "kserve": {"version": KSERVE.version, "venv": str(venvs["kserve"]),
                       "requirements": peer_requirements(KSERVE),
                       "config": "one process (gRPC is single-process in KServe), --enable_latency_logging "
                                 "false, KSERVE_LOGLEVEL=WARNING, detect on the event loop's thread pool, "
                                 "bound to 127.0.0.1 by the launcher"},
            "vigil": "the inference service with its defaults (8 gRPC threads, embeddings on), in its stack",
            "runtimes": "bench/peer_runtimes/: Vigil's YoloDetector.load (THROUGHPUT, default precision)",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print_table(result, args.clients)
    return 0


def print_table(result: dict, clients: int) -> None:
    names = {"vigil": "Vigil", "mlserver_pw0": "MLServer 1.7.1, parallel_workers=0",
             "mlserver_pw1": "MLServer 1.7.1, parallel_workers=1", "kserve": "KServe 0.21"}
    print(f"\n{result['machine']}; {result['model']}")
    print(f"{'gRPC, ' + str(clients) + ' clients, 768x576':<40}{'frames/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'server CPU':>11}{'client CPU':>11}{'Vigil/peer fps':>15}{'same dets':>10}")
    raw = result["raw_openvino"]
    print(f"{'raw OpenVINO (' + raw['precision'] + ')':<40}{raw['fps']:>9.1f}{'-':>8}{'-':>8}"
          f"{raw['cpu_ms_per_frame']:>11.1f}{'-':>11}{'-':>15}{'-':>10}")
    for key, figures in result["grpc"].items():
        ratio = result["ratios_vigil_over_peer"].get(key, {}).get("fps_vigil_over_peer")
        same = figures.get("agreement_with_vigil", {}).get("agrees")
        print(f"{names[key]:<40}{figures['fps']:>9.1f}{figures['p50_ms']:>8.0f}{figures['p99_ms']:>8.0f}"
              f"{figures['server_cpu_ms_per_frame']:>11.1f}{figures['client_cpu_ms_per_frame']:>11.1f}"
              f"{(f'{ratio:.2f}' if ratio else '-'):>15}{('-' if same is None else 'yes' if same else 'NO'):>10}")
    print("(CPU in ms per frame; server CPU sums every process of the server)")
    kafka = result["kafka"]
    print(f"\nKafka backlog of {kafka['vigil']['frames']} JPEG frames:")
    print(f"  Vigil            {kafka['vigil']['fps']:>7.1f} frames/s, "
          f"{kafka['vigil']['server_cpu_ms_per_frame']:.1f} ms CPU/frame")
    ml = kafka["mlserver"]
    if ml["ran"]:
        print(f"  MLServer Kafka   {ml['fps']:>7.1f} frames/s, {ml['server_cpu_ms_per_frame']:.1f} ms CPU/frame "
              f"(aiokafka {ml['aiokafka']}); Vigil/MLServer "
              f"{result['ratios_vigil_over_peer']['kafka_mlserver']['fps_vigil_over_peer']:.2f}")
    else:
        print(f"  MLServer Kafka   did not run on Kafka 4.4 (aiokafka {ml['aiokafka']}): {ml['error']}")


if __name__ == "__main__":
    sys.exit(main())
