"""CameraStream on real media: a video file stands in for a camera whose stream ends."""
import threading
import time

import cv2

from services.ingest.camera import CameraStream, DropOldestQueue


def short_clip(opencv_samples_dir, tmp_path, frames=15):
    capture = cv2.VideoCapture(str(opencv_samples_dir / "vtest.avi"))
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (768, 576))
    for _ in range(frames):
        ok, image = capture.read()
        writer.write(image)
    writer.release()
    return path


def test_a_stream_that_ends_is_reopened_and_frames_resume(opencv_samples_dir, tmp_path):
    clip = short_clip(opencv_samples_dir, tmp_path)
    stop, states = threading.Event(), []
    stream = CameraStream(str(clip), stop, open_timeout_s=5, read_timeout_s=2, max_backoff_s=0.2,
                          on_state=lambda state, reason: states.append((state, reason)))
    received = 0
    for frame in stream:
        assert frame.image.shape == (576, 768, 3)
        received += 1
        if received == 40:  # more than two passes over a 15-frame clip
            stop.set()
    assert stream.reconnects >= 2
    assert ("offline", "stream ended or read failed") in states
    assert [s for s, _ in states[:2]] == ["connecting", "online"]


def test_an_unreachable_camera_reports_offline_with_a_reason_and_keeps_trying(tmp_path):
    stop, states = threading.Event(), []
    stream = CameraStream("rtsp://127.0.0.1:9/none", stop, open_timeout_s=1, read_timeout_s=1, max_backoff_s=0.2,
                          on_state=lambda state, reason: states.append((state, reason)))
    consumer = threading.Thread(target=lambda: [None for _ in stream], daemon=True)
    consumer.start()
    deadline = time.monotonic() + 20
    while stream.reconnects < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    consumer.join(10)
    assert not consumer.is_alive()
    assert ("offline", "could not open stream") in states
    assert stream.reconnects >= 2


def test_a_full_queue_drops_its_oldest_item_and_counts_it():
    queue = DropOldestQueue(maxsize=2)
    for item in range(5):
        queue.put(item)
    assert queue.dropped == 3
    assert [queue.get(0.1), queue.get(0.1)] == [3, 4]
