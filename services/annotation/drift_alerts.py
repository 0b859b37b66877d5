"""Which cameras are under a drift alert, followed from vigil.monitoring.

Every replica reads every partition (no consumer group): a camera's results may be on this replica while its
alert is keyed to a partition another replica would get. At start the topic is read from `lookback_s` ago, so an
alert raised before a restart and not cleared since is open again. A camera is under an alert while any of its
subjects (its input, or its output under a model version) has one raised and not cleared."""
from __future__ import annotations

import threading
import time
from typing import Callable

from confluent_kafka import Consumer, KafkaError, TopicPartition
from google.protobuf.message import DecodeError

from libs.common.logs import get_logger
from libs.common.ops import Heartbeat
from libs.common.topics import MONITORING
from protos import events_pb2

log = get_logger(__name__)

# camera id, under an alert now, the alert's time (seconds)
OnDrift = Callable[[str, bool, float], None]


class DriftAlertTracker:
    """The open alerts per camera, from DriftAlert events in any order of arrival per subject."""

    def __init__(self) -> None:
        self.open: dict[str, set[tuple[str, str]]] = {}

    def apply(self, alert: events_pb2.DriftAlert) -> tuple[str, bool] | None:
        """(camera id, under an alert now) when the camera's state changed, else None."""
        if not alert.camera_id:
            return None  # a sensor's alert: no frames to label
        subjects = self.open.setdefault(alert.camera_id, set())
        before = bool(subjects)
        subject = (alert.model_name, alert.model_version)
        if alert.state == "raised":
            subjects.add(subject)
        elif alert.state == "cleared":
            subjects.discard(subject)
        after = bool(subjects)
        return (alert.camera_id, after) if after != before else None


class DriftAlertFollower:
    def __init__(self, client_config: dict[str, str], on_drift: OnDrift, lookback_s: float = 86_400.0,
                 topic: str = MONITORING) -> None:
        self.client_config = client_config
        self.on_drift = on_drift
        self.lookback_s = lookback_s
        self.topic = topic
        self.tracker = DriftAlertTracker()
        self.heartbeat = Heartbeat(max_age_s=60)
        self.caught_up = threading.Event()

    def run(self, stop: threading.Event) -> None:
        consumer = Consumer({**self.client_config, "group.id": "vigil-annotation-drift", "client.id": "annotation",
                             "enable.auto.commit": False, "enable.partition.eof": True})
        try:
            partitions = sorted(consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions)
            since_ms = int((time.time() - self.lookback_s) * 1000)
            starts = consumer.offsets_for_times([TopicPartition(self.topic, p, since_ms) for p in partitions],
                                                timeout=10)
            # A partition with nothing since then (offset -1) starts at its end.
            consumer.assign([TopicPartition(self.topic, tp.partition, tp.offset if tp.offset >= 0 else -1)
                             for tp in starts])
            at_end: set[int] = set()
            while not stop.is_set():
                self.heartbeat.beat()
                for message in consumer.consume(200, timeout=0.5):
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            at_end.add(message.partition())
                            if len(at_end) == len(partitions):
                                self.caught_up.set()
                        continue
                    self._apply(message.value() or b"")
                if not self.caught_up.is_set() and len(at_end) == len(partitions):
                    self.caught_up.set()
        finally:
            consumer.close()

    def ready(self) -> tuple[bool, str]:
        return (True, "drift alerts read") if self.caught_up.is_set() else (False, "reading drift alerts")

    def _apply(self, value: bytes) -> None:
        try:
            event = events_pb2.MonitoringEvent.FromString(value)
        except DecodeError:
            return  # not ours to dead-letter: the metrics sink does for vigil.monitoring
        if event.WhichOneof("detail") != "drift_alert":
            return
        changed = self.tracker.apply(event.drift_alert)
        if changed is not None:
            camera_id, under_alert = changed
            at = event.envelope.event_time.seconds + event.envelope.event_time.nanos / 1e9
            log.info("camera drift state", camera_id=camera_id, under_alert=under_alert)
            self.on_drift(camera_id, under_alert, at)
