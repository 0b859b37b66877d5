"""The local stack's demo CCTV camera: real pedestrian footage (vtest.avi from Debian's opencv-doc) served
over RTSP by GStreamer, looped forever at 10 fps, on one or several mount paths (rtsp_camera_server.py), and the
same footage darkened as a camera at dusk sees it on /dusk (every pixel x DUSK_GAIN, frame for frame)."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from cli.stack.component import ComponentSpec, StackPaths
from tools.fetch_assets import OPENCV_SAMPLES_DATA, fetch_opencv_samples

NAME = "camera"
HOST = "127.0.0.1"
# GStreamer's RTSP server is reached through Debian's PyGObject, which only Debian's own python sees.
SYSTEM_PYTHON = Path("/usr/bin/python3")
SERVER_SCRIPT = Path(__file__).with_name("rtsp_camera_server.py")
FOOTAGE_NAME = "vtest.avi"
DUSK_PATH = "dusk"
# The dimmed camera's gain on every pixel, as tests/integration/site_footage.py's DIM.
DUSK_GAIN = 0.12
DEBIAN_PACKAGES = (
    "python3-gi python3-gst-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav"
)


def log(message: str) -> None:
    print(f"[camera] {message}", file=sys.stderr, flush=True)


def footage_path(cache: Path) -> Path:
    return cache / "assets" / "opencv-samples" / OPENCV_SAMPLES_DATA / FOOTAGE_NAME


def encoded_footage_path(cache: Path) -> Path:
    """The footage encoded once to H.264 (what the server streams without re-encoding)."""
    return cache / "assets" / "camera" / "vtest.h264.mkv"


def dusk_footage_path(cache: Path, gain: float = DUSK_GAIN) -> Path:
    """The footage darkened by `gain`, encoded once the same way (what /dusk streams)."""
    return cache / "assets" / "camera" / f"vtest.dim-{gain:g}.h264.mkv"


def fetch_footage(cache: Path) -> Path:
    """vtest.avi (real pedestrian CCTV footage, 768x576, 10 fps) from Debian's opencv-doc, fetched once."""
    return fetch_opencv_samples(cache) / FOOTAGE_NAME


def _check_gstreamer() -> None:
    if not SYSTEM_PYTHON.is_file():
        raise RuntimeError(f"{SYSTEM_PYTHON} is missing: the camera needs Debian's python3 with {DEBIAN_PACKAGES}")
    probe = subprocess.run(
        [
            str(SYSTEM_PYTHON), "-c",
            "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
            "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
            "missing = [e for e in ('x264enc', 'h264parse', 'rtph264pay', 'matroskamux', 'matroskademux', 'avidemux', "
            "'avdec_msmpeg4', 'appsrc') if Gst.ElementFactory.find(e) is None]; "
            "print(' '.join(missing))",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0 or probe.stdout.strip():
        detail = probe.stdout.strip() and f"missing GStreamer elements: {probe.stdout.strip()}" or probe.stderr.strip()
        raise RuntimeError(f"GStreamer's RTSP server is not usable from {SYSTEM_PYTHON} ({detail}); "
                           f"install the Debian packages {DEBIAN_PACKAGES}")


def encode_footage(cache: Path) -> Path:
    """Encode the footage to H.264 once (a few seconds), as filmed and darkened for /dusk, so the server starts at
    once and only repacks it."""
    encoded = encoded_footage_path(cache)
    if not encoded.is_file() or not dusk_footage_path(cache).is_file():
        log(f"encoding {FOOTAGE_NAME} to H.264 (and darkened x{DUSK_GAIN:g} for /{DUSK_PATH}) ...")
        subprocess.run(
            [str(SYSTEM_PYTHON), str(SERVER_SCRIPT), "--file", str(fetch_footage(cache)), "--encoded", str(encoded),
             *_dusk_argv(cache), "--encode-only"],
            check=True,
        )
    return encoded


def _dusk_argv(cache: Path, path: str = DUSK_PATH) -> list[str]:
    return ["--dim-path", path, "--dim-gain", f"{DUSK_GAIN:g}", "--dim-encoded", str(dusk_footage_path(cache))]


def install(cache: Path) -> None:
    _check_gstreamer()
    fetch_footage(cache)
    encode_footage(cache)
    log("demo camera ready")


def rtsp_url(port: int = 8554, path: str = "demo", host: str = HOST) -> str:
    return f"rtsp://{host}:{port}/{path.strip('/')}"


def mount_paths(path: str = "demo", mounts: int = 1) -> list[str]:
    """The paths `--mounts N` serves: /<path>, then /cam1 .. /cam<N-1> (the same footage)."""
    return [path.strip("/")] + [f"cam{i}" for i in range(1, mounts)]


def spec(
    paths: StackPaths,
    port: int = 8554,
    path: str = "demo",
    mounts: int = 1,
    fps: float | None = None,
    rtp_port_min: int = 41000,
    rtp_port_max: int = 41999,
    dusk_path: str | None = DUSK_PATH,
) -> ComponentSpec:
    """RTSP on 127.0.0.1:`port` (TCP-interleaved or UDP; UDP's RTP/RTCP ports come from
    [rtp_port_min, rtp_port_max], skipping busy ones). `fps` None plays at the footage's own 10 fps. The darkened
    footage is on /`dusk_path` too (None: not served)."""
    data = paths.data(NAME)
    argv = [
        str(SYSTEM_PYTHON), str(SERVER_SCRIPT),
        "--host", HOST,
        "--port", str(port),
        "--path", path,
        "--mounts", str(mounts),
        "--file", str(footage_path(paths.cache)),
        "--encoded", str(encoded_footage_path(paths.cache)),
        "--rtp-ports", f"{rtp_port_min}-{rtp_port_max}",
    ]
    if dusk_path:
        argv += _dusk_argv(paths.cache, dusk_path)
    if fps is not None:
        argv += ["--fps", str(fps)]

    def prepare() -> None:
        fetch_footage(paths.cache)
        encode_footage(paths.cache)

    return ComponentSpec(
        name=NAME,
        argv=argv,
        healthy=lambda: rtsp_answers(HOST, port),
        # Unbuffered, so its log lines reach the supervisor's log as they happen.
        env={"PYTHONUNBUFFERED": "1"},
        cwd=data,
        prepare=prepare,
        start_timeout_s=30.0,
    )


def rtsp_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """An RTSP OPTIONS request gets `RTSP/1.0 200`."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as connection:
            connection.sendall(f"OPTIONS rtsp://{host}:{port}/ RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
            return connection.recv(256).startswith(b"RTSP/1.0 200")
    except OSError:
        return False
