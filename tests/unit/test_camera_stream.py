"""CameraStream on real media: a video file stands in for a camera whose stream ends."""
import threading
import time

import cv2

from services.ingest.camera import CameraStream, DropOldestQueue, ReadOptions, StreamClock


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
    # A file without looping stands in for a stream that ends: read it as a live source would be.
    stream = CameraStream(str(clip), stop, ReadOptions(open_timeout_s=5, stall_timeout_s=2, live=True),
                          max_backoff_s=0.2, on_state=lambda state, reason: states.append((state, reason)))
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
    stream = CameraStream("rtsp://127.0.0.1:9/none", stop, ReadOptions(open_timeout_s=1, stall_timeout_s=1),
                          max_backoff_s=0.2, on_state=lambda state, reason: states.append((state, reason)))
    consumer = threading.Thread(target=lambda: [None for _ in stream], daemon=True)
    consumer.start()
    deadline = time.monotonic() + 20
    while stream.reconnects < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    consumer.join(10)
    assert not consumer.is_alive()
    assert ("offline", "cannot connect to 127.0.0.1:9: Connection refused") in states
    assert stream.reconnects >= 2


def test_a_full_queue_drops_its_oldest_item_and_counts_it():
    queue = DropOldestQueue(maxsize=2)
    for item in range(5):
        queue.put(item)
    assert queue.dropped == 3
    assert [queue.get(0.1), queue.get(0.1)] == [3, 4]


def test_a_looped_file_plays_on_without_going_offline(opencv_samples_dir, tmp_path):
    clip = short_clip(opencv_samples_dir, tmp_path, frames=5)
    stop, states = threading.Event(), []
    stream = CameraStream(str(clip), stop, ReadOptions(stall_timeout_s=2, live=False, loop=True, paced=False),
                          on_state=lambda state, reason: states.append(state))
    for received, _ in enumerate(stream, start=1):
        if received == 30:
            stop.set()
    assert states == ["connecting", "online"] and stream.reconnects == 0


def test_a_file_that_is_not_looped_ends_offline_without_retrying(opencv_samples_dir, tmp_path):
    clip = short_clip(opencv_samples_dir, tmp_path, frames=5)
    states = []
    stream = CameraStream(str(clip), threading.Event(), ReadOptions(live=False, paced=False),
                          on_state=lambda state, reason: states.append((state, reason)))
    assert len(list(stream)) == 5
    assert states[-1] == ("offline", "end of file") and stream.reconnects == 0


def test_a_paced_file_plays_at_its_own_frame_rate(opencv_samples_dir, tmp_path):
    clip = short_clip(opencv_samples_dir, tmp_path, frames=10)  # 10 frames at 10 fps: one second
    started = time.monotonic()
    frames = list(CameraStream(str(clip), threading.Event(), ReadOptions(live=False, paced=True)))
    assert len(frames) == 10 and time.monotonic() - started >= 0.85


def test_only_the_frames_the_sampler_keeps_are_decoded_and_handed_over(opencv_samples_dir, tmp_path):
    clip = short_clip(opencv_samples_dir, tmp_path, frames=12)
    calls = []
    reads = []
    keep_every_third = lambda _t: (calls.append(1) or len(calls) % 3 == 0)  # noqa: E731
    frames = list(CameraStream(str(clip), threading.Event(), ReadOptions(live=False, paced=False),
                               keep=keep_every_third, on_read=lambda: reads.append(1)))
    assert (len(reads), len(frames)) == (12, 4)


def test_stream_time_is_anchored_to_the_wall_clock_and_falls_back_when_missing():
    clock = StreamClock()
    first, from_stream = clock.capture_time(pos_ms=1000.0, now_ns=5_000_000_000)
    assert (first, from_stream) == (5_000_000_000, True)
    second, _ = clock.capture_time(pos_ms=1040.0, now_ns=5_100_000_000)  # read late: the stream's time wins
    assert second == 5_040_000_000
    assert clock.capture_time(pos_ms=0.0, now_ns=6_000_000_000) == (6_000_000_000, False)
    assert clock.capture_time(pos_ms=900.0, now_ns=6_000_000_000) == (6_000_000_000, False)  # went backwards
    far, _ = clock.capture_time(pos_ms=2000.0, now_ns=60_000_000_000)  # a restarted server: re-anchored
    assert far == 60_000_000_000


def inter_coded_clip(opencv_samples_dir, tmp_path, frames=12):
    """MPEG-4 Part 2 (P-frames between key frames): a codec FFmpeg decodes on several threads when let."""
    capture = cv2.VideoCapture(str(opencv_samples_dir / "vtest.avi"))
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (768, 576))
    for _ in range(frames):
        writer.write(capture.read()[1])
    writer.release()
    return path


def test_one_decoder_thread_decodes_the_same_frames_as_ffmpegs_own_choice_and_counts_its_cpu(
        opencv_samples_dir, tmp_path):
    from libs.common.stage_cpu import STAGE_RUNS

    clip = inter_coded_clip(opencv_samples_dir, tmp_path)
    decodes_before = STAGE_RUNS.labels("ingest.decode")._value.get()

    def frames_with(decode_threads: int) -> list:
        options = ReadOptions(live=False, paced=False, decode_threads=decode_threads)
        return [f.image for f in CameraStream(str(clip), threading.Event(), options)]

    single, chosen = frames_with(1), frames_with(0)
    assert len(single) == len(chosen) == 12
    assert all((a == b).all() for a, b in zip(single, chosen))
    # Every grab is a decode, the one that finds the end of the file included.
    assert STAGE_RUNS.labels("ingest.decode")._value.get() - decodes_before >= 24
