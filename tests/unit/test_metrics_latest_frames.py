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
