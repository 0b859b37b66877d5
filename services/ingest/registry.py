"""The camera registry: the compacted topic vigil.cameras, keyed by camera id, holding each camera's
CameraConfig; a tombstone removes the camera.

Ingest replicas form one consumer group over it. Kafka spreads the topic's partitions, and so the cameras,
over the replicas; when one dies its partitions, and so its cameras, move to the survivors. A replica
never commits offsets there: on every assignment it reads its partitions from the beginning, which gives
it the latest config of each of its cameras, then follows them, so an add or remove takes effect within
seconds."""
from __future__ import annotations

import threading

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from google.protobuf.message import DecodeError

from libs.common.compacted import Records, read_compacted_topic
from libs.common.kafka import producer_config
from libs.common.logs import get_logger
from libs.common.ops import Heartbeat
from libs.common.settings import KafkaSettings
from libs.common.topics import CAMERAS
from protos import events_pb2
from services.ingest.camera_spec import CameraSpec, InvalidCameraConfig
from services.ingest.fleet import CameraFleet

log = get_logger(__name__)


class CameraRegistryFollower:
    def __init__(self, kafka: KafkaSettings, fleet: CameraFleet, spec_defaults: dict, replica_id: str,
                 group_id: str = "vigil-ingest", heartbeat: Heartbeat | None = None) -> None:
        self.fleet = fleet
        self.spec_defaults = spec_defaults
        self.heartbeat = heartbeat or Heartbeat(max_age_s=30)
        self._consumer = Consumer({
            **kafka.client_config(),
            "group.id": group_id,
            "client.id": f"ingest-{replica_id}",
            "enable.auto.commit": False,
            # Cooperative: a replica joining or leaving moves only the partitions that must move, so the
            # cameras elsewhere keep streaming through a rebalance.
            "partition.assignment.strategy": "cooperative-sticky",
            # A dead replica's cameras move after this long without its heartbeats.
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            # The end of a partition marks it loaded even when compaction removed its last offsets.
            "enable.partition.eof": True,
        })
        self._partition_of: dict[str, int] = {}
        self._loading: dict[int, int] = {}  # partition -> end offset still to reach before it counts as loaded
        self._assigned: set[int] = set()
        self.loaded = threading.Event()

    def run(self, stop: threading.Event) -> None:
        self._consumer.subscribe([CAMERAS], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_revoke)
        try:
            while not stop.is_set():
                self.heartbeat.beat()
                msg = self._consumer.poll(0.25)
                if msg is None:
                    self._check_loaded()
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        self._loading.pop(msg.partition(), None)
                        self._check_loaded()
                    else:
                        log.warning("registry read error", error=msg.error().str())
                    continue
                self._apply(msg.partition(), msg.key(), msg.value())
                if msg.partition() in self._loading and msg.offset() + 1 >= self._loading[msg.partition()]:
                    del self._loading[msg.partition()]
                self._check_loaded()
        finally:
            self._consumer.close()

    def _apply(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        camera_id = (key or b"").decode("utf-8", "replace")
        if not camera_id:
            log.warning("registry entry without a camera id ignored", partition=partition)
            return
        if value is None:
            self._partition_of.pop(camera_id, None)
            self.fleet.remove(camera_id, "removed from the registry")
            return
        self._partition_of[camera_id] = partition
        try:
            config = events_pb2.CameraConfig.FromString(value)
            if config.camera_id and config.camera_id != camera_id:
                raise InvalidCameraConfig(f"key {camera_id!r} differs from camera_id {config.camera_id!r}")
            config.camera_id = camera_id
            spec = CameraSpec.from_config(config, **self.spec_defaults)
        except (DecodeError, InvalidCameraConfig) as exc:
            log.error("invalid camera config", camera_id=camera_id, error=str(exc))
            self.fleet.report_invalid(camera_id, f"invalid config: {exc}")
            return
        self.fleet.apply(spec)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            tp.offset = OFFSET_BEGINNING
            low, high = consumer.get_watermark_offsets(TopicPartition(CAMERAS, tp.partition), timeout=10)
            if high > low:
                self._loading[tp.partition] = high
            self._assigned.add(tp.partition)
        log.info("registry partitions assigned", partitions=sorted(tp.partition for tp in partitions))
        # Explicitly, so that the offsets set above are the ones used (cooperative protocol: incremental).
        consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions}
        for camera_id, partition in list(self._partition_of.items()):
            if partition in revoked:
                del self._partition_of[camera_id]
                self.fleet.remove(camera_id, "moved to another ingest replica")
        for partition in revoked:
            self._loading.pop(partition, None)
        self._assigned -= revoked
        consumer.incremental_unassign(partitions)

    def _check_loaded(self) -> None:
        if self._assigned and not self._loading:
            self.loaded.set()

    def ready(self) -> tuple[bool, str]:
        if not self._assigned:
            return False, "no registry partitions assigned (yet)"
        if self._loading:
            return False, f"reading the registry: {len(self._loading)} partitions to go"
        return True, f"{len(self._partition_of)} cameras on {len(self._assigned)} partitions"


class CameraRegistryClient:
    """Writes and reads the registry: what `vigil cameras` uses."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka

    def put(self, config: events_pb2.CameraConfig) -> None:
        CameraSpec.from_config(config, default_fps=1, default_quality=85, default_stall_timeout_s=1).validate()
        self._produce(config.camera_id, config.SerializeToString())

    def remove(self, camera_id: str) -> None:
        self._produce(camera_id, None)

    def _produce(self, camera_id: str, value: bytes | None) -> None:
        producer = Producer(producer_config(self.kafka, "vigil-cli"))
        errors: list[str] = []
        producer.produce(CAMERAS, key=camera_id.encode(), value=value,
                         on_delivery=lambda err, _msg: errors.append(err.str()) if err else None)
        if producer.flush(15) or errors:
            raise RuntimeError(f"the registry did not take the change: {errors or 'timed out'}")

    def list(self, timeout_s: float = 15.0) -> dict[str, events_pb2.CameraConfig]:
        """The registry as it stands: the latest config of each camera, tombstoned ones left out."""
        cameras: dict[str, events_pb2.CameraConfig] = {}

        def apply(records: Records) -> None:
            for key, value in records:
                camera_id = (key or b"").decode()
                if value is None:
                    cameras.pop(camera_id, None)
                else:
                    cameras[camera_id] = events_pb2.CameraConfig.FromString(value)

        read_compacted_topic(self.kafka.client_config(), CAMERAS, apply, "vigil-cli-cameras", timeout_s)
        return dict(sorted(cameras.items()))
