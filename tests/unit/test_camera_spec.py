import pytest

from protos import events_pb2
from services.ingest.camera_spec import CameraSpec, InvalidCameraConfig

DEFAULTS = {"default_fps": 5.0, "default_quality": 85, "default_stall_timeout_s": 5.0}


def spec(**fields) -> CameraSpec:
    return CameraSpec.from_config(events_pb2.CameraConfig(**{"camera_id": "cam", "url": "rtsp://h/s", **fields}),
                                  **DEFAULTS)


def test_unset_fields_take_the_service_defaults():
    s = spec()
    assert (s.sample_fps, s.jpeg_quality, s.stall_timeout_s) == (5.0, 85, 5.0)


def test_the_kind_of_source_follows_the_url():
    assert spec(url="rtsp://10.0.0.1/stream").kind == "stream"
    assert spec(url="https://cam/mjpeg").kind == "stream"
    assert spec(url="/dev/video0").kind == "device"
    assert spec(url="file:///data/a.mp4").kind == "file" and spec(url="file:///data/a.mp4").source == "/data/a.mp4"


@pytest.mark.parametrize("fields, message", [
    ({"camera_id": ""}, "camera_id"),
    ({"camera_id": "a/b"}, "camera_id"),
    ({"url": ""}, "url is empty"),
    ({"url": "ftp://x/y"}, "url scheme"),
    ({"sample_fps": -1}, "sample_fps"),
    ({"jpeg_quality": 5}, "jpeg_quality"),
    ({"motion_min_changed_fraction": 1.5}, "motion"),
    ({"roi": [events_pb2.Region(x1=0.5, y1=0, x2=0.2, y2=1)]}, "roi region"),
])
def test_invalid_configs_are_refused_with_the_reason(fields, message):
    with pytest.raises(InvalidCameraConfig, match=message):
        spec(**fields)
