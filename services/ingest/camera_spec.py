"""A camera as ingest runs it: the registry's CameraConfig with the service's defaults filled in, checked."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from libs.common.logs import redact_credentials
from protos import events_pb2

LIVE_SCHEMES = ("rtsp", "rtsps", "http", "https")


class InvalidCameraConfig(ValueError):
    pass


@dataclass(frozen=True)
class CameraSpec:
    camera_id: str
    url: str
    sample_fps: float
    jpeg_quality: int
    stall_timeout_s: float
    max_width: int = 0
    max_height: int = 0
    loop: bool = False
    unpaced: bool = False
    roi: tuple[tuple[float, float, float, float], ...] = ()
    motion_min_changed_fraction: float = 0.0

    @property
    def kind(self) -> str:
        """"stream" (RTSP, HTTP MJPEG), "device" (/dev/videoN) or "file"."""
        scheme = urlparse(self.url).scheme
        if scheme in LIVE_SCHEMES:
            return "stream"
        if self.url.startswith("/dev/video"):
            return "device"
        return "file"

    @property
    def source(self) -> str:
        """What OpenCV opens."""
        return self.url.removeprefix("file://") if self.kind == "file" else self.url

    @classmethod
    def from_config(cls, config: events_pb2.CameraConfig, default_fps: float, default_quality: int,
                    default_stall_timeout_s: float) -> "CameraSpec":
        spec = cls(
            camera_id=config.camera_id,
            url=config.url,
            sample_fps=config.sample_fps or default_fps,
            jpeg_quality=config.jpeg_quality or default_quality,
            stall_timeout_s=config.stall_timeout_s or default_stall_timeout_s,
            max_width=config.max_width,
            max_height=config.max_height,
            loop=config.loop,
            unpaced=config.unpaced,
            roi=tuple((r.x1, r.y1, r.x2, r.y2) for r in config.roi),
            motion_min_changed_fraction=config.motion_min_changed_fraction,
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        problems = []
        if not self.camera_id or "/" in self.camera_id:
            problems.append(f"camera_id {self.camera_id!r} must be non-empty and contain no '/'")
        if not self.url:
            problems.append("url is empty")
        elif urlparse(self.url).scheme not in (*LIVE_SCHEMES, "file", "") and not self.url.startswith("/dev/"):
            problems.append(f"url scheme of {redact_credentials(self.url)!r} is not one of rtsp, rtsps, http, https, file")
        if self.sample_fps <= 0:
            problems.append(f"sample_fps must be positive, got {self.sample_fps}")
        if not 10 <= self.jpeg_quality <= 100:
            problems.append(f"jpeg_quality must be 10..100, got {self.jpeg_quality}")
        if not 0 <= self.motion_min_changed_fraction < 1:
            problems.append(f"motion_min_changed_fraction must be in [0, 1), got {self.motion_min_changed_fraction}")
        for region in self.roi:
            x1, y1, x2, y2 = region
            if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
                problems.append(f"roi region {region} is not a normalized rectangle (0 <= x1 < x2 <= 1, same for y)")
        if problems:
            raise InvalidCameraConfig("; ".join(problems))

    def looks_like_a_missing_file(self) -> bool:
        return self.kind == "file" and not Path(self.source).exists()
