"""`make bench`: the walking skeleton's throughput beside the model's raw speed, measured in one run.

1. raw        the default model alone: preprocessed frames through OpenVINO's AsyncInferQueue.
2. end to end cameras (the footage file, played at its own 10 fps, every frame produced) → ingest → Kafka →
              inference → Kafka → ClickHouse, all as separate processes on this machine; 4, 8, 12, 16
              cameras in turn; the highest rate the pipeline keeps up with (>= 95% of the frames offered are
              stored), and its ratio to raw.
3. drain      ingest stopped: inference → ClickHouse working off a backlog left in Kafka, so the model's
              share of the CPU is not taken by ingest's decoding and JPEG encoding.
4. latency    the live RTSP camera at 5 fps, backlog skipped: capture → inference event produced, p50, p99.

All of it shares this machine's cores, so the ratio is the figure to compare across machines."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.common import machine_description, raw_throughput, sample_frames, say
from bench.stack_throughput import (
    bench_stack, frames_produced, pipeline_throughput, query, skip_backlog, stored_rows,
)
from libs.common.cache_dir import default_cache_dir
from cli.stack.local import LocalStack, install_stack


def live_latency(stack: LocalStack, seconds: float) -> dict[str, float]:
    since = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    time.sleep(seconds)
    row = query(stack, (
        "SELECT count() AS n, quantiles(0.5, 0.99)(dateDiff('millisecond', event_time, produced_time)) AS q "
        f"FROM inference_events WHERE event_time > toDateTime64('{since}', 3, 'UTC')"))[0]
    return {"events": row["n"], "p50_ms": row["q"][0], "p99_ms": row["q"][1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30, help="length of each measurement")
    parser.add_argument("--out", type=Path, default=Path("bench/results/pipeline.json"))
    args = parser.parse_args()

    cache = default_cache_dir()
    install_stack(cache)
    from cli.stack.camera import fetch_footage
    footage = fetch_footage(cache)

    say(f"[1/4] raw OpenVINO throughput (AsyncInferQueue), {args.seconds:.0f}s ...")
    from tools.darknet_converter import ensure_default_model
    raw_fps = raw_throughput(ensure_default_model(), sample_frames(footage, 64), args.seconds)["fps"]
    say(f"      {raw_fps:.1f} frames/s")

    state = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    say("[2/4] end to end: paced file cameras at 10 fps each → ingest → inference → ClickHouse ...")
    with bench_stack(state, cache, progress=say) as stack:
        ramp = []
        for cameras in (4, 8, 12, 16):
            for i in range(cameras):
                stack.register_camera(f"bench-{i}", str(footage), 10.0, loop=True)
            time.sleep(8)  # cameras open, the pipeline settles
            stored_fps = pipeline_throughput(stack, min(args.seconds, 15))
            ramp.append({"cameras": cameras, "offered_fps": cameras * 10.0, "stored_fps": round(stored_fps, 1)})
            say(f"      {cameras} cameras: {cameras * 10} frames/s offered, {stored_fps:.1f} stored")
            if stored_fps < 0.95 * cameras * 10:
                break
        kept_up = [r for r in ramp if r["stored_fps"] >= 0.95 * r["offered_fps"]]
        pipeline_fps = max(r["stored_fps"] for r in kept_up) if kept_up else ramp[0]["stored_fps"]
        for i in range(ramp[-1]["cameras"]):
            stack.unregister_camera(f"bench-{i}")

        say("[3/4] drain: inference stopped while one file camera floods Kafka, then inference alone ...")
        stack.supervisor.stop("inference", progress=say)
        stack.register_camera("flood", str(footage), 1000.0, loop=True, unpaced=True)
        time.sleep(25)
        stack.unregister_camera("flood")
        stack.supervisor.stop("ingest", progress=say)
        stack.supervisor.up(progress=say)  # inference again, on the backlog
        stack.supervisor.stop("ingest", progress=say)
        drain_fps = pipeline_throughput(stack, min(args.seconds, 20))
        say(f"      {drain_fps:.1f} frames/s stored")
        backlog = frames_produced(stack) - stored_rows(stack)
        if backlog <= 0:
            say("      warning: the backlog ran out during the window; the drain figure is a lower bound")

        say("[4/4] live camera latency at 5 fps ...")
        stack.supervisor.stop("inference", progress=say)
        skip_backlog(stack)
        # The stack's own config: the RTSP camera at 5 fps.
        live = LocalStack(state=state, cache=cache, extra_env=stack.extra_env)
        live.up(progress=say)
        time.sleep(5)
        latency = live_latency(live, args.seconds)

    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "raw_openvino_fps": round(raw_fps, 1),
        "pipeline_fps": round(pipeline_fps, 1),
        "pipeline_ramp": ramp,
        "pipeline_to_raw_ratio": round(pipeline_fps / raw_fps, 3),
        "drain_fps": round(drain_fps, 1),
        "drain_to_raw_ratio": round(drain_fps / raw_fps, 3),
        "camera_to_event_latency_ms": {"p50": latency["p50_ms"], "p99": latency["p99_ms"], "events": latency["events"]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"\nend to end {pipeline_fps:.1f} fps / raw {raw_fps:.1f} fps = {pipeline_fps / raw_fps:.2f}; "
          f"drain {drain_fps:.1f} fps = {drain_fps / raw_fps:.2f} of raw; "
          f"camera→event p50 {latency['p50_ms']:.0f} ms, p99 {latency['p99_ms']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
