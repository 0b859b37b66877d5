"""The local stack's infrastructure, each component started for real on free ports in a temporary state
directory: Kafka keeps what it was sent across a restart, SeaweedFS speaks S3 with the MinIO SDK and refuses
a wrong secret, the demo camera streams 768x576 frames over RTSP without a break at the end of its footage.
Every process is stopped again however a test ends (stack_process.running)."""
from __future__ import annotations

import dataclasses
import io
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from cli.stack import camera, kafka, objectstore
from cli.stack.component import StackPaths
from libs.common.cache_dir import default_cache_dir

try:  # the package layout when tests/integration is a package, else its own directory is on sys.path
    from tests.integration.stack_process import free_ports, listening_addresses, running
except ImportError:  # pragma: no cover
    from stack_process import free_ports, listening_addresses, running

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def cache() -> Path:
    """Downloads shared by every run on this machine ($VIGIL_CACHE_DIR or ~/.cache/vigil)."""
    return default_cache_dir()


@pytest.fixture
def paths(tmp_path: Path, cache: Path) -> StackPaths:
    return StackPaths(state=tmp_path / "state", cache=cache)


def assert_only_loopback(pid: int) -> None:
    addresses = listening_addresses(pid)
    assert addresses, "the process listens on nothing"
    assert all(address.startswith("127.0.0.1:") for address in addresses), addresses


# --- Kafka -------------------------------------------------------------------------------------------------


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[bytes]:
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"test-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    values: list[bytes] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while len(values) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                values.append(message.value())
    finally:
        consumer.close()
    return values


def test_kafka_keeps_a_produced_message_across_a_restart(paths: StackPaths, cache: Path, tmp_path: Path):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    kafka.install(cache)
    port, controller_port = free_ports(2)
    bootstrap = f"127.0.0.1:{port}"
    topic = "vigil.test.frames"

    with running(kafka.spec(paths, port=port, controller_port=controller_port), tmp_path / "logs") as broker:
        assert_only_loopback(broker.pid)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(timeout=30)
        assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 3

        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
        producer.produce(topic, key=b"cam-1", value=b"frame-0001")
        assert producer.flush(30) == 0
        assert consume_all(bootstrap, topic, expected=1) == [b"frame-0001"]
        first_start_s, rss_mib = broker.startup_s, broker.rss_mib()
    assert broker.returncode is not None

    # Same state directory, new process: the log dir is not formatted again and the message is still there.
    with running(kafka.spec(paths, port=port, controller_port=controller_port), tmp_path / "logs") as broker:
        assert consume_all(bootstrap, topic, expected=1) == [b"frame-0001"]
    print(f"kafka: healthy after {first_start_s:.1f} s (restart {broker.startup_s:.1f} s), RSS {rss_mib:.0f} MiB")


def test_kafka_does_not_create_topics_on_first_use(paths: StackPaths, cache: Path, tmp_path: Path):
    from confluent_kafka import KafkaError, Producer

    kafka.install(cache)
    port, controller_port = free_ports(2)
    with running(kafka.spec(paths, port=port, controller_port=controller_port), tmp_path / "logs"):
        errors = []
        producer = Producer({"bootstrap.servers": f"127.0.0.1:{port}", "message.timeout.ms": 3000})
        producer.produce("vigil.nobody.declared.this", b"x", on_delivery=lambda err, _msg: errors.append(err))
        producer.flush(10)
        assert [error.code() for error in errors] in (
            [KafkaError._UNKNOWN_TOPIC], [KafkaError.UNKNOWN_TOPIC_OR_PART], [KafkaError._MSG_TIMED_OUT]
        )


# --- SeaweedFS (S3) ----------------------------------------------------------------------------------------


def minio_client(port: int, access_key: str, secret_key: str):
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10), retries=False)
    return Minio(f"127.0.0.1:{port}", access_key=access_key, secret_key=secret_key, secure=False, http_client=http)


def test_objectstore_stores_objects_for_the_right_keys_only(paths: StackPaths, cache: Path, tmp_path: Path):
    from minio.error import S3Error

    objectstore.install(cache)
    s3_port, master_port, volume_port, filer_port = free_ports(4)
    access_key, secret_key = "vigil-test", uuid.uuid4().hex
    spec = objectstore.spec(paths, s3_port=s3_port, master_port=master_port, volume_port=volume_port,
                            filer_port=filer_port, access_key=access_key, secret_key=secret_key)
    assert all(secret_key not in arg for arg in spec.argv)

    payload = np.random.default_rng(7).bytes(300_000)
    with running(spec, tmp_path / "logs") as store:
        assert_only_loopback(store.pid)
        client = minio_client(s3_port, access_key, secret_key)
        client.make_bucket("frames")
        client.put_object("frames", "cam-1/0001.jpg", io.BytesIO(payload), len(payload), content_type="image/jpeg")
        response = client.get_object("frames", "cam-1/0001.jpg")
        try:
            assert response.read() == payload
        finally:
            response.close()
            response.release_conn()

        with pytest.raises(S3Error) as refused:
            minio_client(s3_port, access_key, "not-the-secret").list_buckets()
        assert refused.value.code in ("SignatureDoesNotMatch", "AccessDenied")
        with pytest.raises(S3Error):
            minio_client(s3_port, "nobody", secret_key).get_object("frames", "cam-1/0001.jpg")
        print(f"seaweedfs: healthy after {store.startup_s:.1f} s, RSS {store.rss_mib():.0f} MiB")
    assert store.returncode == 0
    assert secret_key not in store.log_tail(100_000)

    with running(spec, tmp_path / "logs"):
        stat = minio_client(s3_port, access_key, secret_key).stat_object("frames", "cam-1/0001.jpg")
        assert stat.size == len(payload)


# --- Demo camera (RTSP) ------------------------------------------------------------------------------------

FRAME_SIZE = (576, 768)  # vtest.avi: 768x576
FOOTAGE_SECONDS = 79.5


# OpenCV opens FFmpeg captures one at a time per process (a lock held for the whole open), and FFmpeg probes a
# stream for up to 5 s by default: 2.8 s per client here, so the third of three clients opened at once waited
# ~8 s, and under the suite's load an open timed out. Ingest probes for 0.5 s (VIGIL_INGEST_STREAM_PROBE_S);
# these clients do the same (0.2-0.6 s each). Set once, before any client thread reads it.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "analyzeduration;500000")


def open_rtsp(url: str):
    import cv2

    capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10_000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 15_000,
    ])
    assert capture.isOpened(), f"cannot open {url}"
    return capture


def read_frames(url: str, count: int, on_frame=None) -> list[float]:
    """Reads `count` frames and returns the gaps between them (s); fails on the first frame that does not come."""
    capture = open_rtsp(url)
    gaps: list[float] = []
    try:
        last = time.monotonic()
        for index in range(count):
            ok, frame = capture.read()
            assert ok, f"{url}: frame {index} of {count} did not come"
            assert frame.shape[:2] == FRAME_SIZE
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            if on_frame is not None:
                on_frame(frame)
    finally:
        capture.release()
    return gaps


@pytest.fixture
def camera_ports() -> tuple[int, int]:
    rtsp_port, rtp_port = free_ports(2)
    return rtsp_port, rtp_port


def test_camera_streams_768x576_frames_at_10_fps(paths: StackPaths, cache: Path, tmp_path: Path, camera_ports):
    camera.install(cache)
    port, rtp_port = camera_ports
    spec = camera.spec(paths, port=port, rtp_port_min=rtp_port, rtp_port_max=rtp_port + 9)
    with running(spec, tmp_path / "logs") as server:
        gaps = read_frames(camera.rtsp_url(port), 60)
        assert_only_loopback(server.pid)
        print(f"camera: healthy after {server.startup_s:.1f} s, RSS {server.rss_mib():.0f} MiB while streaming")
    # The first ~30 frames arrive at once (FFmpeg buffers them while it probes the stream); then they come
    # at the camera's pace.
    assert 0.07 < float(np.median(gaps[-20:])) < 0.13
    assert server.returncode == 0, server.log_tail()


def test_several_clients_watch_several_cameras_at_once(paths: StackPaths, cache: Path, tmp_path: Path, camera_ports):
    camera.install(cache)
    port, rtp_port = camera_ports
    spec = camera.spec(paths, port=port, mounts=3, rtp_port_min=rtp_port, rtp_port_max=rtp_port + 19)
    assert camera.mount_paths("demo", 3) == ["demo", "cam1", "cam2"]
    urls = [camera.rtsp_url(port, "demo"), camera.rtsp_url(port, "demo"), camera.rtsp_url(port, "cam2")]
    with running(spec, tmp_path / "logs") as server:
        failures: list[BaseException] = []

        def watch(url: str) -> None:
            try:
                read_frames(url, 25)
            except BaseException as error:  # noqa: BLE001 - reported by the test thread below
                failures.append(error)

        watchers = [threading.Thread(target=watch, args=(url,)) for url in urls]
        for watcher in watchers:
            watcher.start()
        for watcher in watchers:
            watcher.join(60)
        assert not failures, failures
        assert not any(watcher.is_alive() for watcher in watchers)
    assert server.returncode == 0, server.log_tail()


def test_camera_keeps_streaming_across_the_end_of_its_footage(paths: StackPaths, cache: Path, tmp_path: Path,
                                                              camera_ports):
    import cv2

    camera.install(cache)
    first_frame = cv2.VideoCapture(str(camera.footage_path(cache))).read()[1].astype(np.int16)
    port, rtp_port = camera_ports
    spec = camera.spec(paths, port=port, rtp_port_min=rtp_port, rtp_port_max=rtp_port + 9)
    # Start the camera 8 s before the end of the clip, so a reader crosses the loop point within ~10 s.
    spec = dataclasses.replace(spec, argv=[*spec.argv, "--start-at", str(FOOTAGE_SECONDS - 8)])
    distances: list[float] = []
    with running(spec, tmp_path / "logs"):
        gaps = read_frames(
            camera.rtsp_url(port), 150,
            on_frame=lambda frame: distances.append(float(np.abs(frame.astype(np.int16) - first_frame).mean())),
        )
    # The footage came round to its first frame (decoded again, so close to it, not equal) ...
    loop_point = int(np.argmin(distances))
    assert distances[loop_point] < 3.0, min(distances)
    assert max(distances[:loop_point]) > 6.0
    # ... with more than 5 s of frames after it, and never a pause a reader would notice.
    assert len(distances) - loop_point > 50
    assert max(gaps[5:]) < 0.5, max(gaps[5:])
