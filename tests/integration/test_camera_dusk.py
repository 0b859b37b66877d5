"""The demo camera's /dusk mount: the same footage darkened as a dimmed camera sees it (every pixel x DUSK_GAIN),
encoded once beside the normal footage with the same frames in the same order, and streamed in step with /demo
(both loop at the same moment). The server runs for real on free ports bound to 127.0.0.1."""
from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from cli.stack import camera
from cli.stack.component import StackPaths
from libs.common.cache_dir import default_cache_dir
from tests.integration.stack_process import free_ports, running
from tests.integration.test_local_stack_components import FOOTAGE_SECONDS, FRAME_SIZE, open_rtsp

pytestmark = pytest.mark.integration


def luma(frame: np.ndarray) -> float:
    return float(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).mean())


def decoded(path: Path, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    try:
        frames = [capture.read()[1] for _ in range(count)]
    finally:
        capture.release()
    assert all(frame is not None for frame in frames), path
    return frames


def test_the_dusk_footage_is_each_demo_frame_darkened_in_the_same_order():
    cache = default_cache_dir()
    camera.install(cache)
    demo = decoded(camera.encoded_footage_path(cache), 60)
    dusk = decoded(camera.dusk_footage_path(cache), 60)
    for i in (10, 30, 50):
        # Frame i of /dusk is closest to frame i of /demo darkened, not to its neighbours (people walk).
        errors = [float(np.abs(dusk[i].astype(np.float32) - cv2.convertScaleAbs(demo[j], alpha=camera.DUSK_GAIN)
                                .astype(np.float32)).mean()) for j in range(i - 5, i + 6)]
        assert int(np.argmin(errors)) == 5, (i, errors)
        # The gain is applied exactly before encoding (videobalance on I420); FFmpeg's YUV->BGR then reads both
        # about 0.8 grey levels low, which at this brightness makes the ratio ~0.114.
        assert 0.105 < luma(dusk[i]) / luma(demo[i]) < 0.125


def test_dusk_streams_the_demo_footage_at_a_tenth_of_its_brightness_and_loops_with_it(tmp_path: Path):
    cache = default_cache_dir()
    camera.install(cache)
    port, rtp_port = free_ports(2)
    spec = camera.spec(StackPaths(state=tmp_path / "state", cache=cache), port=port,
                       rtp_port_min=rtp_port, rtp_port_max=rtp_port + 19)
    # 6 s before the end of the clip: both readers cross the loop point within ~8 s.
    spec = dataclasses.replace(spec, argv=[*spec.argv, "--start-at", str(FOOTAGE_SECONDS - 6)])
    first = cv2.VideoCapture(str(camera.footage_path(cache))).read()[1]
    seen: dict[str, list[tuple[float, float, float]]] = {"demo": [], "dusk": []}  # (arrival, luma, distance)
    failures: list[BaseException] = []

    def watch(path: str, reference: np.ndarray) -> None:
        try:
            capture = open_rtsp(camera.rtsp_url(port, path))
            try:
                misses = 0
                while len(seen[path]) < 110:
                    ok, frame = capture.read()
                    if not ok:  # a read lost on a loaded machine (RTP over TCP, the decoder's timeout): not the mount
                        misses += 1
                        assert misses <= 10, f"{path}: {misses} reads failed"
                        continue
                    assert frame.shape[:2] == FRAME_SIZE, path
                    distance = float(np.abs(frame.astype(np.int16) - reference).mean())
                    seen[path].append((time.monotonic(), luma(frame), distance))
            finally:
                capture.release()
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            failures.append(error)

    with running(spec, tmp_path / "logs") as server:
        watchers = [threading.Thread(target=watch, args=("demo", first.astype(np.int16))),
                    threading.Thread(target=watch, args=(camera.DUSK_PATH, cv2.convertScaleAbs(
                        first, alpha=camera.DUSK_GAIN).astype(np.int16)))]
        for watcher in watchers:
            watcher.start()
        for watcher in watchers:
            watcher.join(60)
        assert not failures, failures
        assert "/dusk" in server.log_tail()
    assert server.returncode == 0, server.log_tail()

    ratio = np.median([d[1] for d in seen["dusk"]]) / np.median([d[1] for d in seen["demo"]])
    assert 0.10 < ratio < 0.13, ratio
    loop_points = {path: int(np.argmin([d[2] for d in frames])) for path, frames in seen.items()}
    for path, index in loop_points.items():
        assert 20 < index < 100, (path, index)   # the first frame came round again, mid-read
        assert seen[path][index][2] < (3.0 if path == "demo" else 1.5), (path, seen[path][index][2])
    # Both mounts reached the loop point together (each stream starts at a keyframe: within one second).
    arrived = [seen[path][index][0] for path, index in loop_points.items()]
    assert abs(arrived[0] - arrived[1]) < 1.5, arrived
