"""The cameras this replica runs: started, restarted on a config change and stopped on removal, as the
registry says; each one's status published on every change and every few seconds."""
from __future__ import annotations

import threading
from typing import Callable

from prometheus_client import Gauge

from libs.common.logs import get_logger
from protos import events_pb2
from services.ingest.camera_spec import CameraSpec
from services.ingest.worker import CameraWorker, FrameSink

log = get_logger(__name__)

CAMERAS_RUNNING = Gauge("vigil_ingest_cameras", "Cameras this replica runs")


class CameraFleet:
    def __init__(self, sink: FrameSink, publish_status: Callable[[events_pb2.CameraStatus], None],
                 open_timeout_s: float, max_backoff_s: float, queue_size: int, replica_id: str = "",
                 on_tick: Callable[[], None] = lambda: None, decode_threads: int = 1) -> None:
        self.sink = sink
        self.decode_threads = decode_threads
        self.replica_id = replica_id
        self._publish = publish_status
        self.open_timeout_s = open_timeout_s
        self.max_backoff_s = max_backoff_s
        self.queue_size = queue_size
        self.on_tick = on_tick
        self._workers: dict[str, CameraWorker] = {}
        self._lock = threading.Lock()

    def publish_status(self, status: events_pb2.CameraStatus) -> None:
        status.replica = self.replica_id
        self._publish(status)

    @property
    def camera_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._workers)

    def apply(self, spec: CameraSpec) -> None:
        """Runs the camera as specified; a running camera whose spec changed is restarted."""
        with self._lock:
            current = self._workers.get(spec.camera_id)
            if current is not None and current.spec == spec:
                return
            if current is not None:
                current.stop()
            worker = CameraWorker(spec, self.sink, self._on_change, self.open_timeout_s, self.max_backoff_s,
                                  self.queue_size, self.on_tick, decode_threads=self.decode_threads)
            self._workers[spec.camera_id] = worker
            CAMERAS_RUNNING.set(len(self._workers))
        log.info("camera started" if current is None else "camera restarted with a new config",
                 camera_id=spec.camera_id, url=spec.url, fps=spec.sample_fps)
        worker.start()

    def remove(self, camera_id: str, reason: str) -> None:
        with self._lock:
            worker = self._workers.pop(camera_id, None)
            CAMERAS_RUNNING.set(len(self._workers))
        if worker is None:
            return
        worker.stop()
        status = worker.status(measure_rates=False)
        status.state, status.reason = events_pb2.CAMERA_STATE_OFFLINE, reason
        self.publish_status(status)
        log.info("camera stopped", camera_id=camera_id, reason=reason)

    def report_invalid(self, camera_id: str, reason: str) -> None:
        """A registry entry this replica cannot run: said on vigil.monitoring, nothing started."""
        self.remove(camera_id, reason)
        self.publish_status(events_pb2.CameraStatus(camera_id=camera_id, state=events_pb2.CAMERA_STATE_OFFLINE,
                                                    reason=reason))

    def publish_all(self) -> None:
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            self.publish_status(worker.status(measure_rates=True))

    def _on_change(self, worker: CameraWorker) -> None:
        # Only for workers still in the fleet: a removed camera's last word is its removal.
        with self._lock:
            current = self._workers.get(worker.spec.camera_id) is worker
        if current:
            self.publish_status(worker.status(measure_rates=False))

    def stop_all(self, reason: str = "ingest stopping", timeout_s: float = 5.0) -> None:
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
            CAMERAS_RUNNING.set(0)
        for worker in workers:  # all at once: shutdown takes one timeout, not one per camera
            worker.stop_event.set()
        for worker in workers:
            worker.stop(timeout_s=timeout_s / max(len(workers), 1))
            status = worker.status(measure_rates=False)
            status.state, status.reason = events_pb2.CAMERA_STATE_OFFLINE, reason
            self.publish_status(status)
