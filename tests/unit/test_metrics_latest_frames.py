"""The dashboard's frame holder: newest frames per camera, a bounded few, found by frame event id."""
from services.metrics.latest_frames import LatestFrames


def test_keeps_the_newest_frames_per_camera_and_finds_a_held_frame_by_its_event_id():
    frames = LatestFrames(per_camera=3)
    for sequence in range(5):
        assert frames.offer("a", f"f{sequence}", b"jpeg%d" % sequence, sequence, 768, 576, 1000 + sequence)
    assert not frames.offer("a", "late", b"old", 1, 768, 576, 1001), "an older frame never replaces a newer one"
    assert frames.get("a").frame_event_id == "f4"
    assert frames.get("a", "f2").jpeg == b"jpeg2"
    assert frames.get("a", "f1").frame_event_id == "f4", "a frame no longer held falls back to the newest"
    assert frames.get("b") is None
    assert frames.cameras() == [{"camera_id": "a", "sequence": 4, "width": 768, "height": 576,
                                 "event_time_ms": 1004, "bytes": 5}]


def test_at_most_max_cameras_are_held_and_the_least_recently_offered_goes_first():
    frames = LatestFrames(per_camera=2, max_cameras=3)
    for camera in ("a", "b", "c"):
        frames.offer(camera, f"{camera}0", b"x" * 1000, 0, 768, 576, 1000)
    frames.offer("a", "a1", b"x" * 1000, 1, 768, 576, 1001)          # a is fresh again: b is now the oldest
    for i in range(1000):                                             # a thousand cameras come and go
        frames.offer(f"transient-{i}", "f", b"x" * 1000, 0, 768, 576, 1000)
    assert len(frames) == 3
    assert frames.get("b") is None and frames.get("c") is None
    frames = LatestFrames(per_camera=2, max_cameras=3)
    for camera in ("a", "b", "c"):
        frames.offer(camera, f"{camera}0", b"x", 0, 768, 576, 1000)
    frames.offer("a", "a1", b"x", 1, 768, 576, 1001)
    frames.offer("d", "d0", b"x", 0, 768, 576, 1000)
    assert [c["camera_id"] for c in frames.cameras()] == ["a", "c", "d"], "b sent nothing for longest"


def test_a_camera_silent_for_longer_than_max_age_is_forgotten():
    now = [0.0]
    frames = LatestFrames(max_age_s=60, clock=lambda: now[0])
    frames.offer("gone", "g0", b"jpeg", 0, 768, 576, 1000)
    frames.offer("live", "l0", b"jpeg", 0, 768, 576, 1000)
    now[0] = 50.0
    frames.offer("live", "l1", b"jpeg", 1, 768, 576, 1001)
    now[0] = 61.0
    assert frames.get("gone") is None, "its newest frame is 61 s old"
    assert frames.get("live").frame_event_id == "l1"
    assert [c["camera_id"] for c in frames.cameras()] == ["live"]
    assert len(frames) == 1
    now[0] = 200.0
    assert frames.cameras() == [] and len(frames) == 0
