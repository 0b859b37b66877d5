#!/usr/bin/python3
"""A demo CCTV camera: serves one video file over RTSP as H.264, looped forever at its native frame rate,
on one or several mount paths, and optionally the same footage darkened (`--dim-path`, e.g. /dusk: a camera at
dusk). Runs under Debian's /usr/bin/python3 (GStreamer's RTSP server through `gi`), so it imports nothing from Vigil.

The footage is encoded to H.264 once (closed GOPs: every GOP starts with an IDR carrying SPS/PPS) and kept
in memory as access units. A feeder thread per active stream pushes them into a live `appsrc` at the frame
rate and wraps around from the last frame to the first IDR: the stream's timestamps keep increasing and the
decoder sees an ordinary keyframe, so a client reads across the loop point without noticing it. No
re-encoding at run time, so eight cameras cost little CPU.

The darkened footage is encoded once too, from the same source with the same encoder, through `videobalance
contrast=G saturation=G`: on I420 that is Y' = 16 + G (Y - 16) and C' = 128 + G (C - 128), which is exactly every
R, G, B value times G (BT.601's YCbCr -> RGB is linear in Y - 16 and C - 128), i.e. OpenCV's
`convertScaleAbs(frame, alpha=G)` up to rounding. It has the same frames in the same order, so frame i of the
dimmed mount is frame i of the normal one darkened, and both loop at the same point.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

# One keyframe per second at 10 fps: a client that joins a shared stream waits at most a second for a picture.
KEYFRAME_INTERVAL = 10
ENCODER = "x264enc speed-preset=veryfast bframes=0 key-int-max={gop} pass=qual quantizer=23 threads=2"


def log(message: str) -> None:
    print(f"rtsp-camera: {message}", file=sys.stderr, flush=True)


def _run_to_eos(pipeline: Gst.Pipeline, what: str) -> None:
    bus = pipeline.get_bus()
    pipeline.set_state(Gst.State.PLAYING)
    try:
        message = bus.timed_pop_filtered(Gst.CLOCK_TIME_NONE, Gst.MessageType.EOS | Gst.MessageType.ERROR)
        if message.type == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
            raise RuntimeError(f"{what} failed: {error.message} ({debug})")
    finally:
        pipeline.set_state(Gst.State.NULL)


def dim_filter(gain: float) -> str:
    """Every pixel's R, G, B times `gain` (see the module's docstring), as a filter on I420."""
    return f"videobalance contrast={gain:g} saturation={gain:g} ! " if gain != 1.0 else ""


def encode_h264(source: Path, target: Path, gain: float = 1.0) -> None:
    """Encode `source` (anything decodebin reads) to H.264 in Matroska (which keeps the frame rate), darkened by
    `gain` when it is below 1. Written to a temporary file and renamed, so a killed encode never looks finished."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=target.name + ".", suffix=".partial", dir=target.parent)
    os.close(fd)
    started = time.monotonic()
    try:
        pipeline = Gst.parse_launch(
            f"filesrc name=src ! decodebin ! videoconvert ! video/x-raw,format=I420 ! {dim_filter(gain)}"
            f"{ENCODER.format(gop=KEYFRAME_INTERVAL)} ! h264parse ! matroskamux ! filesink name=sink"
        )
        pipeline.get_by_name("src").set_property("location", str(source))
        pipeline.get_by_name("sink").set_property("location", partial)
        _run_to_eos(pipeline, f"encoding {source}")
        os.chmod(partial, 0o644)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    dimmed = f" darkened x{gain:g}" if gain != 1.0 else ""
    log(f"encoded {source.name}{dimmed} to H.264 in {time.monotonic() - started:.1f} s")


@dataclass(frozen=True)
class Footage:
    """The whole clip as H.264 access units (byte-stream, SPS/PPS in front of every IDR)."""

    access_units: list[bytes]
    keyframes: list[int]
    caps: str
    fps: float

    @classmethod
    def load(cls, encoded: Path) -> "Footage":
        pipeline = Gst.parse_launch(
            "filesrc name=src ! matroskademux ! h264parse config-interval=-1 ! "
            "video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
        )
        pipeline.get_by_name("src").set_property("location", str(encoded))
        sink = pipeline.get_by_name("sink")
        units: list[bytes] = []
        keyframes: list[int] = []
        caps = None
        pipeline.set_state(Gst.State.PLAYING)
        try:
            while True:
                sample = sink.emit("try-pull-sample", 30 * Gst.SECOND)
                if sample is None:
                    break
                buffer = sample.get_buffer()
                if not buffer.has_flags(Gst.BufferFlags.DELTA_UNIT):
                    keyframes.append(len(units))
                units.append(buffer.extract_dup(0, buffer.get_size()))
                caps = caps or sample.get_caps()
            message = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
            if message is not None:
                error, debug = message.parse_error()
                raise RuntimeError(f"reading {encoded} failed: {error.message} ({debug})")
        finally:
            pipeline.set_state(Gst.State.NULL)
        if not units or not keyframes or keyframes[0] != 0:
            raise RuntimeError(f"{encoded} holds no H.264 stream that starts with a keyframe")
        structure = caps.get_structure(0)
        ok, num, den = structure.get_fraction("framerate")
        fps = num / den if ok and num > 0 else 10.0
        # Keep what a payloader needs; drop codec_data and friends that belong to the container.
        caps_string = (
            "video/x-h264,stream-format=byte-stream,alignment=au,"
            f"width={structure.get_value('width')},height={structure.get_value('height')}"
        )
        return cls(units, keyframes, caps_string, fps)

    def keyframe_at_or_before(self, index: int) -> int:
        best = 0
        for keyframe in self.keyframes:
            if keyframe > index:
                break
            best = keyframe
        return best


class LiveFeed:
    """Pushes the footage into one media's appsrc at the frame rate, forever, until stopped. Starts at the
    last keyframe before where the camera's wall clock is, as if the camera had been running all along."""

    def __init__(self, appsrc: Gst.Element, footage: Footage, fps: float, epoch: float, name: str):
        self._appsrc = appsrc
        self._footage = footage
        self._period = 1.0 / fps
        self._epoch = epoch
        self.name = name
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"feed-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def join(self, timeout_s: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        units = self._footage.access_units
        index = None
        deadline = time.monotonic()
        while not self._stopped.is_set():
            if index is None:
                position = int((time.monotonic() - self._epoch) / self._period) % len(units)
                index = self._footage.keyframe_at_or_before(position)
            result = self._appsrc.emit("push-buffer", Gst.Buffer.new_wrapped_bytes(GLib.Bytes.new(units[index])))
            if result == Gst.FlowReturn.OK:
                index = (index + 1) % len(units)
            elif result == Gst.FlowReturn.FLUSHING:
                # Not playing (yet, or any more): resume at a keyframe, or the stream would start undecodable.
                index = None
            else:
                log(f"{self.name}: stream stopped ({result.value_nick})")
                return
            deadline += self._period
            delay = deadline - time.monotonic()
            if delay < -1.0:
                # Starved (suspended process, overloaded box): carry on from now instead of bursting frames.
                deadline = time.monotonic()
            elif delay > 0:
                self._stopped.wait(delay)


class LoopingCameraFactory(GstRtspServer.RTSPMediaFactory):
    """One mount path. The media is shared: every client of the path sees the same live stream."""

    def __init__(self, footage: Footage, fps: float, epoch: float, name: str, pool: GstRtspServer.RTSPAddressPool):
        super().__init__()
        self.set_address_pool(pool)
        self._footage = footage
        self._fps = fps
        self._epoch = epoch
        self._name = name
        self._feeds: set[LiveFeed] = set()
        self._feeds_lock = threading.Lock()  # "unprepared" comes from GStreamer's threads
        num, den = Gst.util_double_to_fraction(fps)
        caps = f"{footage.caps},framerate={num}/{den}"
        self.set_launch(
            f'( appsrc name=camera is-live=true format=time do-timestamp=true caps="{caps}" '
            "! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
        self.set_shared(True)
        self.connect("media-configure", self._on_media_configure)

    def _on_media_configure(self, _factory, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_by_name("camera")
        feed = LiveFeed(appsrc, self._footage, self._fps, self._epoch, self._name)
        media.connect("unprepared", lambda _media: self._retire(feed))
        with self._feeds_lock:
            self._feeds.add(feed)
        feed.start()

    def _retire(self, feed: LiveFeed) -> None:
        feed.stop()
        with self._feeds_lock:
            self._feeds.discard(feed)

    def active_feeds(self) -> list[LiveFeed]:
        with self._feeds_lock:
            return list(self._feeds)


def mount_paths(path: str, mounts: int) -> list[str]:
    first = "/" + path.strip("/")
    return [first] + [f"/cam{i}" for i in range(1, mounts)]


def port_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--path", default="demo", help="mount path of the first camera")
    parser.add_argument("--mounts", type=int, default=1, help="cameras to serve: /<path>, /cam1 .. /cam<N-1>")
    parser.add_argument("--file", type=Path, required=True, help="the footage (any format GStreamer decodes)")
    parser.add_argument("--fps", type=float, default=None, help="playback rate; default: the footage's own")
    parser.add_argument(
        "--encoded", type=Path, default=None,
        help="where to keep the footage encoded to H.264 (default: next to --file, *.h264.mkv)",
    )
    parser.add_argument(
        "--start-at", type=float, default=0.0,
        help="seconds into the footage the cameras are at when the server starts (tests use it to reach the loop point)",
    )
    parser.add_argument(
        "--rtp-ports", type=port_range, default=(41000, 41999), metavar="MIN-MAX",
        help="UDP ports for RTP/RTCP to UDP clients (busy ones are skipped)",
    )
    parser.add_argument("--dim-path", default=None,
                        help="also serve the footage darkened (a camera at dusk) on this mount path, e.g. dusk")
    parser.add_argument("--dim-gain", type=float, default=0.12, help="the darkened mount's gain on every pixel")
    parser.add_argument(
        "--dim-encoded", type=Path, default=None,
        help="where to keep the darkened footage encoded (default: next to --encoded, *.dim-GAIN.h264.mkv)",
    )
    parser.add_argument("--encode-only", action="store_true", help="encode the footage if needed and exit")
    args = parser.parse_args(argv)
    if not 0.0 < args.dim_gain <= 1.0:
        parser.error("--dim-gain is in (0, 1]")

    Gst.init(None)
    encoded = args.encoded or args.file.with_suffix(".h264.mkv")
    dim_encoded = args.dim_encoded or encoded.with_name(
        encoded.name.removesuffix(".h264.mkv") + f".dim-{args.dim_gain:g}.h264.mkv")
    wanted = [(encoded, 1.0)] + ([(dim_encoded, args.dim_gain)] if args.dim_path else [])
    for target, gain in wanted:
        if not target.exists():
            if not args.file.is_file():
                log(f"footage not found: {args.file}")
                return 2
            encode_h264(args.file, target, gain)
    if args.encode_only:
        return 0

    footage = Footage.load(encoded)
    fps = args.fps or footage.fps
    served = [(path, footage) for path in mount_paths(args.path, max(1, args.mounts))]
    if args.dim_path:
        dimmed = Footage.load(dim_encoded)
        if len(dimmed.access_units) != len(footage.access_units):
            log(f"{dim_encoded} has {len(dimmed.access_units)} frames, {encoded} {len(footage.access_units)}: "
                "delete the darkened one to encode it again")
            return 2
        served.append(("/" + args.dim_path.strip("/"), dimmed))
    epoch = time.monotonic() - args.start_at

    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    # Without a pool, the RTP/RTCP sockets of UDP clients bind to 0.0.0.0 and ::.
    pool = GstRtspServer.RTSPAddressPool()
    rtp_min, rtp_max = args.rtp_ports
    if not pool.add_range(args.host, args.host, rtp_min, rtp_max, 0):
        log(f"bad RTP port range {rtp_min}-{rtp_max} for {args.host}")
        return 2
    factories = [LoopingCameraFactory(clip, fps, epoch, path.strip("/"), pool) for path, clip in served]
    for (path, _clip), factory in zip(served, factories):
        mounts.add_factory(path, factory)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        log(f"cannot listen on {args.host}:{args.port}")
        return 1

    def stop(*_args) -> bool:
        log("stopping")
        feeds = [feed for factory in factories for feed in factory.active_feeds()]
        for feed in feeds:
            feed.stop()
        for feed in feeds:
            feed.join(1.0)
        loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, stop)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, stop)
    log(
        f"serving {len(footage.access_units)} frames at {fps:g} fps, looped, on "
        + ", ".join(f"rtsp://{args.host}:{args.port}{p}" for p, _clip in served)
    )
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
