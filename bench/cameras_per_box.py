"""`python -m bench.cameras_per_box`: where a frame's CPU goes on its whole path, and how many cameras one box
keeps up with. One run, one machine, the whole stack as separate processes.

1. model      the default model alone (FP32 at the device's default precision, and the INT8 variant):
              frames/s and CPU ms per frame, the figure every other one is compared with.
2. stages     --stage-cameras cameras (the footage as 1280x720 H.264 at 25 fps, played at its own pace,
              sampled to 5 fps) through the whole stack; over a window, the CPU each stage spent per frame:
              ingest's own stages (decode, colour conversion, motion gate, scale, image statistics, JPEG
              encode, produce) and inference's (consume, JPEG decode, preprocess, postprocess, produce) from
              the services' `vigil_stage_cpu_seconds_total` (thread CPU time, see libs/common/stage_cpu.py);
              librdkafka's threads from /proc; the broker, the sink and every other process of the stack from
              /proc. A process's CPU that no stage accounts for is its "other" row; for inference that row is
              what it spent beyond the model's own figure (OpenVINO's threads are not told apart in /proc).
3. sizing     the same cameras added 2 at a time until the stack stores < 95% of the frames offered; the
              figure is the most cameras it kept up with. Measured for each configuration in --configs:
              before   (FFmpeg picks its decoder threads, as ingest did before this benchmark),
              default  (today's defaults: one decoder thread per camera),
              int8     (the INT8 variant, accepted at >= 95% of detections kept, served by inference),
              detect   (a detection-size stream: ingest scales each camera to 640 wide, `--max-width 640`),
              int8+detect.

Every figure shares this machine's cores with everything else the stack runs (drift, annotation, datasets,
training, the object store), as a real box would; the ratio to the model's own speed is the figure to compare
across machines."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.common import machine_description, raw_throughput, sample_frames, say
from bench.stack_throughput import bench_stack, pipeline_throughput, skip_backlog
from cli.stack.local import LocalStack

SAMPLE_FPS = 5.0
SOURCE = (1280, 720)
DETECT_WIDTH = 640
# The stages each service counts, in the order a frame meets them.
INGEST_STAGES = ("decode", "convert", "motion", "scale", "stats", "encode", "produce")
INFERENCE_STAGES = ("consume", "decode", "preprocess", "postprocess", "produce")
CONFIGS = {
    "before": {"env": {"ingest": {"VIGIL_INGEST_DECODE_THREADS": "0"}}, "int8": False, "max_width": 0},
    "default": {"env": {}, "int8": False, "max_width": 0},
    "int8": {"env": {}, "int8": True, "max_width": 0},
    "detect": {"env": {}, "int8": False, "max_width": DETECT_WIDTH},
    "int8+detect": {"env": {}, "int8": True, "max_width": DETECT_WIDTH},
}


# --- what the processes spent, from /proc and from the services' /metrics -----------------------------------

def _stat_fields(path: Path) -> list[str] | None:
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def group_cpu_s(pid: int) -> float:
    """CPU seconds of every live process in `pid`'s process group (a component and the children it forks)."""
    import os
    ticks = os.sysconf("SC_CLK_TCK")
    own = _stat_fields(Path(f"/proc/{pid}/stat"))
    if own is None:
        return 0.0
    group, total = own[2], 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry / "stat")
            if fields is not None and fields[2] == group:
                total += int(fields[11]) + int(fields[12])
    return total / ticks


def rdkafka_cpu_s(pid: int) -> float:
    """CPU seconds of a process's librdkafka threads (they name themselves rdk:main, rdk:broker...)."""
    import os
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if not (task / "comm").read_text().startswith("rdk:"):
                continue
        except OSError:
            continue
        fields = _stat_fields(task / "stat")
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def stage_counters(ops_port: int) -> dict[str, tuple[float, float]]:
    """stage -> (CPU seconds, runs) as the service's /metrics says now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{ops_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    cpu: dict[str, float] = {}
    runs: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vigil_stage_cpu_seconds_total":
                cpu[sample.labels["stage"]] = sample.value
            elif sample.name == "vigil_stage_runs_total":
                runs[sample.labels["stage"]] = sample.value
    return {stage: (cpu[stage], runs.get(stage, 0.0)) for stage in cpu}


@dataclass
class Snapshot:
    at: float
    process_cpu: dict[str, float]
    rdkafka_cpu: dict[str, float]
    stages: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)


def ops_port(stack: LocalStack, service_name: str) -> int:
    from services.catalog import service
    return getattr(stack.config.ports, service(service_name).ops_port_name)


def snapshot(stack: LocalStack) -> Snapshot:
    pids = {c.name: stack.supervisor.running_pid(c.name) for c in stack.supervisor.specs}
    return Snapshot(
        at=time.monotonic(),
        process_cpu={name: group_cpu_s(pid) for name, pid in pids.items() if pid},
        rdkafka_cpu={name: rdkafka_cpu_s(pids[name]) for name in ("ingest", "inference") if pids.get(name)},
        stages={name: stage_counters(ops_port(stack, name)) for name in ("ingest", "inference")},
    )


def idle_cores(stack: LocalStack, seconds: float) -> dict[str, float]:
    """Each process's CPU seconds per second with no camera at all."""
    before = snapshot(stack)
    time.sleep(seconds)
    after = snapshot(stack)
    elapsed = after.at - before.at
    return {name: (after.process_cpu.get(name, 0.0) - spent) / elapsed for name, spent in before.process_cpu.items()}


def stage_table(before: Snapshot, after: Snapshot, model_cpu_ms: float, idle_cores: dict[str, float]) -> dict:
    """CPU ms per produced frame for each stage, between two snapshots; rows in the order of the path.

    A process's whole-process figure is what it spent beyond its idle rate (`idle_cores`, CPU seconds per
    second with no camera): a broker's heartbeats or a sink's polling cost the same with one camera or forty,
    so charging them to the frames of a light window would say more about the window than about a frame."""
    def stage_delta(service: str, stage: str) -> tuple[float, float]:
        cpu0, runs0 = before.stages[service].get(f"{service}.{stage}", (0.0, 0.0))
        cpu1, runs1 = after.stages[service].get(f"{service}.{stage}", (0.0, 0.0))
        return cpu1 - cpu0, runs1 - runs0

    frames = stage_delta("ingest", "encode")[1]
    inferred = stage_delta("inference", "postprocess")[1]
    if frames <= 0 or inferred <= 0:
        raise RuntimeError(f"no frames went through the stack in the window ({frames} encoded, {inferred} inferred)")

    def per_frame(cpu_s: float, count: float = frames) -> float:
        return round(cpu_s * 1000 / count, 3)

    window_s = after.at - before.at

    def process(name: str) -> float:
        spent = after.process_cpu.get(name, 0.0) - before.process_cpu.get(name, 0.0)
        return max(0.0, spent - idle_cores.get(name, 0.0) * window_s)

    rows: list[dict] = []
    for service, stages, count in (("ingest", INGEST_STAGES, frames), ("inference", INFERENCE_STAGES, inferred)):
        attributed = 0.0
        for stage in stages:
            cpu, _runs = stage_delta(service, stage)
            attributed += cpu
            rows.append({"process": service, "stage": stage, "cpu_ms_per_frame": per_frame(cpu, count)})
        rdk = after.rdkafka_cpu.get(service, 0.0) - before.rdkafka_cpu.get(service, 0.0)
        rows.append({"process": service, "stage": "librdkafka threads", "cpu_ms_per_frame": per_frame(rdk, count)})
        attributed += rdk
        if service == "inference":
            rows.append({"process": service, "stage": "infer (the model's own figure)",
                         "cpu_ms_per_frame": round(model_cpu_ms, 3)})
            attributed += model_cpu_ms * count / 1000
        rows.append({"process": service, "stage": "other (unattributed)",
                     "cpu_ms_per_frame": per_frame(max(0.0, process(service) - attributed), count)})
        if service == "ingest":
            rows.append({"process": "kafka", "stage": "broker", "cpu_ms_per_frame": per_frame(process("kafka"))})
    rows.append({"process": "metrics", "stage": "sink (ClickHouse)", "cpu_ms_per_frame": per_frame(process("metrics"))})
    for name in sorted(set(after.process_cpu) - {"ingest", "inference", "kafka", "metrics"}):
        rows.append({"process": name, "stage": "whole process", "cpu_ms_per_frame": per_frame(process(name))})
    total = sum(r["cpu_ms_per_frame"] for r in rows)
    return {"frames": int(frames), "inferred": int(inferred), "window_s": round(window_s, 1),
            "idle_cores": {name: round(cores, 3) for name, cores in sorted(idle_cores.items())},
            "frames_per_s": round(frames / window_s, 1), "rows": rows, "total_cpu_ms_per_frame": round(total, 2)}


# --- the stack under load ---------------------------------------------------------------------------------

def add_cameras(stack: LocalStack, clip: Path, first: int, last: int, max_width: int) -> None:
    for i in range(first, last):
        stack.register_camera(f"box-{i}", str(clip), SAMPLE_FPS, loop=True, max_width=max_width)


def remove_cameras(stack: LocalStack, count: int) -> None:
    for i in range(count):
        stack.unregister_camera(f"box-{i}")


def restart_pipeline(stack: LocalStack, env: dict[str, dict[str, str]]) -> LocalStack:
    """Ingest and inference again with `env` (the others keep running), inference on fresh frames only."""
    stack.supervisor.stop("ingest", progress=say)
    stack.supervisor.stop("inference", progress=say)
    skip_backlog(stack)
    merged = {name: dict(values) for name, values in stack.extra_env.items()}
    for name, values in env.items():
        merged.setdefault(name, {}).update(values)
    configured = LocalStack(state=stack.paths.state, cache=stack.paths.cache, extra_env=merged)
    configured.supervisor.up(progress=say)
    return configured


def sizing_ramp(stack: LocalStack, clip: Path, max_width: int, seconds: float, step: int, most: int) -> dict:
    """Cameras added `step` at a time until fewer than 95% of the offered frames are stored."""
    ramp, cameras = [], 0
    while cameras < most:
        add_cameras(stack, clip, cameras, cameras + step, max_width)
        cameras += step
        # The new cameras open and the pipeline settles; the first step also waits for the restarted services'
        # consumer groups to settle.
        time.sleep(8 if ramp else 20)
        offered = cameras * SAMPLE_FPS
        stored = pipeline_throughput(stack, seconds)
        if stored < 0.95 * offered:
            # One window on a shared machine can be unlucky: a step fails only when a second one agrees.
            stored = max(stored, pipeline_throughput(stack, seconds))
        ramp.append({"cameras": cameras, "offered_fps": offered, "stored_fps": round(stored, 1)})
        say(f"      {cameras} cameras: {offered:.0f} frames/s offered, {stored:.1f} stored")
        if stored < 0.95 * offered:
            break
    remove_cameras(stack, cameras)
    kept = [r for r in ramp if r["stored_fps"] >= 0.95 * r["offered_fps"]]
    return {"ramp": ramp, "cameras": max((r["cameras"] for r in kept), default=0),
            "stored_fps": max((r["stored_fps"] for r in kept), default=0.0)}


def print_tables(result: dict) -> None:
    model = result["model"]
    print(f"\nthe model alone: FP32 ({model['fp32']['precision']}) {model['fp32']['fps']:.1f} frames/s, "
          f"{model['fp32']['cpu_ms_per_frame']:.2f} CPU ms/frame; INT8 {model['int8']['fps']:.1f} frames/s, "
          f"{model['int8']['cpu_ms_per_frame']:.2f} CPU ms/frame")
    table = result["stages"]
    print(f"\nwhere the CPU goes: {table['cameras']} cameras, 1280x720 25 fps sampled to 5 fps, "
          f"{table['frames']} frames in {table['window_s']} s")
    print("(whole processes: beyond their idle CPU; idle cores: " +
          ", ".join(f"{name} {cores:.2f}" for name, cores in table["idle_cores"].items()) + ")")
    print(f"{'process':<12}{'stage':<34}{'CPU ms/frame':>14}")
    for row in table["rows"]:
        print(f"{row['process']:<12}{row['stage']:<34}{row['cpu_ms_per_frame']:>14.2f}")
    print(f"{'':<12}{'total':<34}{table['total_cpu_ms_per_frame']:>14.2f}  "
          f"(the model's own: {model['fp32']['cpu_ms_per_frame']:.2f})")
    print(f"\n{'configuration':<16}{'cameras at 5 fps':>18}{'frames/s stored':>17}{'of raw FP32':>13}")
    for name, sizing in result["sizing"].items():
        print(f"{name:<16}{sizing['cameras']:>18}{sizing['stored_fps']:>17.1f}{sizing['ratio_to_raw_fp32']:>13.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15, help="length of each measurement window")
    parser.add_argument("--stage-cameras", type=int, default=8, help="cameras while the stages are measured")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--step", type=int, default=2, help="cameras added at each step of a sizing ramp")
    parser.add_argument("--most", type=int, default=40, help="most cameras a ramp tries")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cameras_per_box.json"))
    args = parser.parse_args()

    from bench.ingest import make_clip
    from cli.stack.camera import fetch_footage
    from cli.stack.local import install_stack
    from libs.common.cache_dir import default_cache_dir
    from tools.darknet_converter import ensure_default_model
    from tools.quantize import ensure_int8_model

    cache = default_cache_dir()
    install_stack(cache)
    footage = fetch_footage(cache)
    clip = make_clip(footage, *SOURCE, cache / "assets" / "bench")
    model_dir = ensure_default_model(cache)
    say("building (or reusing) the INT8 variant ...")
    int8_dir = ensure_int8_model(model_dir, footage)
    frames = sample_frames(footage, 64)
    model = {}
    for label, directory in (("fp32", model_dir), ("int8", int8_dir)):
        say(f"[model] {label} alone, {args.seconds:.0f}s ...")
        model[label] = {k: round(v, 3) if isinstance(v, float) else v
                        for k, v in raw_throughput(directory, frames, args.seconds).items()}
        say(f"      {model[label]['fps']:.1f} frames/s, {model[label]['cpu_ms_per_frame']:.2f} CPU ms/frame")

    state = Path(tempfile.mkdtemp(prefix="vigil-bench-box-"))
    with bench_stack(state, cache, progress=say) as stack:
        say(f"[stages] idle, then {args.stage_cameras} cameras, {args.seconds * 2:.0f}s windows ...")
        idle = idle_cores(stack, args.seconds * 2)
        add_cameras(stack, clip, 0, args.stage_cameras, 0)
        pipeline_throughput(stack, 5)  # the cameras are open and the stack has stored frames
        before = snapshot(stack)
        time.sleep(args.seconds * 2)
        stages = {"cameras": args.stage_cameras,
                  **stage_table(before, snapshot(stack), model["fp32"]["cpu_ms_per_frame"], idle)}
        remove_cameras(stack, args.stage_cameras)
        say(f"      {stages['total_cpu_ms_per_frame']:.1f} CPU ms per frame in all")

        sizing = {}
        for name in args.configs:
            config = CONFIGS[name]
            env = {name_: dict(v) for name_, v in config["env"].items()}
            if config["int8"]:
                env.setdefault("inference", {})["VIGIL_INFERENCE_MODEL_DIR"] = str(int8_dir)
            say(f"[sizing] {name} ...")
            configured = restart_pipeline(stack, env)
            sizing[name] = sizing_ramp(configured, clip, config["max_width"], args.seconds, args.step, args.most)
            sizing[name]["ratio_to_raw_fp32"] = round(sizing[name]["stored_fps"] / model["fp32"]["fps"], 3)
            sizing[name]["ratio_to_raw_int8"] = round(sizing[name]["stored_fps"] / model["int8"]["fps"], 3)

    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine_description(),
              "source": f"{SOURCE[0]}x{SOURCE[1]} H.264 25 fps, sampled to {SAMPLE_FPS:.0f} fps",
              "model": model, "stages": stages, "sizing": sizing}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print_tables(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
