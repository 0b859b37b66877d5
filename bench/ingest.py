"""`python -m bench.ingest`: CPU cost of one camera in ingest, and how many cameras one core sustains.

Each camera is an H.264 file of the demo footage at 640x480 or 1280x720, 25 fps, played at its own pace (a
file costs no network, so what is measured is ingest: demux, decode, sampling, JPEG encoding), sampled to
5 fps. Frames go to a sink that only counts them, so Kafka's share is left out. CPU is the process's own
CPU time over the measured wall time, for several camera counts in one run; "dropped" counts frames lost
in the per-camera queues, which must stay zero."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.common import machine_description, say
from libs.common.cache_dir import default_cache_dir
from services.ingest.camera_spec import CameraSpec
from services.ingest.worker import CameraWorker

SIZES = {"640x480": (640, 480), "1280x720": (1280, 720)}


def make_clip(footage: Path, width: int, height: int, out_dir: Path) -> Path:
    """The footage as a 25 fps H.264 MP4 of the given size (made once, with GStreamer's x264)."""
    clip = out_dir / f"vtest-{width}x{height}-25fps.mp4"
    if clip.exists():
        return clip
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = clip.with_suffix(".partial.mp4")
    subprocess.run([
        "gst-launch-1.0", "-q", "filesrc", f"location={footage}", "!", "decodebin", "!", "videoconvert", "!",
        "videoscale", "!", f"video/x-raw,width={width},height={height}", "!", "videorate", "!",
        "video/x-raw,framerate=25/1", "!", "x264enc", "speed-preset=veryfast", "key-int-max=50", "!",
        "mp4mux", "!", "filesink", f"location={partial}",
    ], check=True)
    partial.rename(clip)
    return clip


class CountingSink:
    def __init__(self) -> None:
        self.frames = 0

    def publish(self, frame) -> bool:
        self.frames += 1
        return True


def measure(clip: Path, cameras: int, seconds: float, sample_fps: float) -> dict[str, float]:
    sink = CountingSink()
    workers = [
        CameraWorker(CameraSpec(camera_id=f"bench-{i}", url=str(clip), sample_fps=sample_fps, jpeg_quality=85,
                                stall_timeout_s=10, loop=True),
                     sink, on_change=lambda _w: None, open_timeout_s=10, max_backoff_s=1, queue_size=4).start()
        for i in range(cameras)
    ]
    time.sleep(3)  # open, first keyframes
    read0, dropped0, produced0 = (sum(w.counters.frames_read for w in workers),
                                  sum(w.stream.frames.dropped for w in workers), sink.frames)
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    read = sum(w.counters.frames_read for w in workers) - read0
    dropped = sum(w.stream.frames.dropped for w in workers) - dropped0
    produced = sink.frames - produced0
    for worker in workers:
        worker.stop_event.set()
    for worker in workers:
        worker.stop(timeout_s=5)
    return {
        "cameras": cameras,
        "cpu_cores_used": round(cpu / wall, 3),
        "cpu_per_camera_core": round(cpu / wall / cameras, 4),
        "fps_in_per_camera": round(read / wall / cameras, 2),
        "fps_out_per_camera": round(produced / wall / cameras, 2),
        "dropped": dropped,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--out", type=Path, default=Path("bench/results/ingest.json"))
    args = parser.parse_args()

    from cli.stack.camera import fetch_footage
    cache = default_cache_dir()
    footage = fetch_footage(cache)
    results = {}
    for name, (width, height) in SIZES.items():
        clip = make_clip(footage, width, height, cache / "assets" / "bench")
        runs = []
        for count in args.cameras:
            say(f"{name}: {count} cameras, 25 fps in, 5 fps out, {args.seconds:.0f}s ...")
            run = measure(clip, count, args.seconds, sample_fps=5.0)
            say(f"      {run}")
            runs.append(run)
        # The per-camera cost from the largest run that kept up (25 in, ~5 out, nothing dropped).
        sustained = [r for r in runs if r["dropped"] == 0 and r["fps_in_per_camera"] >= 24 and r["fps_out_per_camera"] >= 4.5]
        basis = max(sustained, key=lambda r: r["cameras"]) if sustained else runs[-1]
        results[name] = {"runs": runs, "cpu_per_camera_core": basis["cpu_per_camera_core"],
                         "cameras_per_core": round(1 / basis["cpu_per_camera_core"], 1),
                         "sustained_without_drops": bool(sustained)}
    summary = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine_description(),
               "sizes": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    for name, result in results.items():
        print(f"{name}: {result['cpu_per_camera_core'] * 100:.1f}% of a core per camera -> "
              f"{result['cameras_per_core']} cameras per core (target for 1280x720: 12)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
