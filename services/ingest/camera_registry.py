"""The camera registry: the compacted table vigil.cameras, keyed by camera id, holding each camera's
CameraConfig; a tombstone removes the camera.

Ingest replicas follow it as one consumer group. Kafka spreads the topic's partitions, and so the cameras,
over the replicas; when one dies its partitions, and so its cameras, move to the survivors. A replica reads each
partition it is given from the beginning, which gives it the latest config of each of its cameras, then follows
it, so an add or remove takes effect within seconds."""
from __future__ import annotations

from libs.common.compacted import Change, CompactedTable
from libs.common.logs import get_logger
from libs.common.ops import Heartbeat
from libs.common.settings import KafkaSettings
from libs.common.topics import CAMERAS
from protos import events_pb2
from services.ingest.camera_spec import CameraSpec, InvalidCameraConfig
from services.ingest.fleet import CameraFleet

log = get_logger(__name__)


class CameraRegistryFollower:
    """Runs, in the fleet, the cameras of the registry's partitions this replica is given."""

    def __init__(self, kafka: KafkaSettings, fleet: CameraFleet, spec_defaults: dict, replica_id: str,
                 group_id: str = "vigil-ingest", heartbeat: Heartbeat | None = None) -> None:
        self.fleet = fleet
        self.spec_defaults = spec_defaults
        table = CompactedTable(kafka.client_config(), CAMERAS, client_id=f"ingest-{replica_id}")
        self._follower = table.follower(self._apply, group=group_id, heartbeat=heartbeat, poll_s=0.25)
        self.heartbeat = self._follower.heartbeat
        self.run = self._follower.run
        self.ready = self._follower.ready

    def _apply(self, changes: list[Change]) -> None:
        for change in changes:
            if change.problem:
                self._invalid(change.key, change.problem)
            elif change.value is None:
                self.fleet.remove(change.key, "moved to another ingest replica" if change.moved
                                  else "removed from the registry")
            else:
                self._run(change.key, change.value)

    def _run(self, camera_id: str, config: events_pb2.CameraConfig) -> None:
        try:
            if config.camera_id and config.camera_id != camera_id:
                raise InvalidCameraConfig(f"key {camera_id!r} differs from camera_id {config.camera_id!r}")
            keyed = events_pb2.CameraConfig(camera_id=camera_id)
            keyed.MergeFrom(config)  # the table's value stays as read
            spec = CameraSpec.from_config(keyed, **self.spec_defaults)
        except InvalidCameraConfig as exc:
            self._invalid(camera_id, str(exc))
            return
        self.fleet.apply(spec)

    def _invalid(self, camera_id: str, problem: str) -> None:
        log.error("invalid camera config", camera_id=camera_id, error=problem)
        self.fleet.report_invalid(camera_id, f"invalid config: {problem}")


class CameraRegistryClient:
    """Writes and reads the registry: what `vigil cameras` uses."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.table = CompactedTable(kafka.client_config(), CAMERAS, client_id="vigil-cli")

    def put(self, config: events_pb2.CameraConfig) -> None:
        CameraSpec.from_config(config, default_fps=1, default_quality=85, default_stall_timeout_s=1).validate()
        self.table.put(config.camera_id, config, timeout_s=15)

    def remove(self, camera_id: str) -> None:
        self.table.delete(camera_id, timeout_s=15)

    def list(self, timeout_s: float = 15.0) -> dict[str, events_pb2.CameraConfig]:
        """The registry as it stands: the latest config of each camera, tombstoned ones left out."""
        return dict(sorted(self.table.snapshot(timeout_s).items()))
