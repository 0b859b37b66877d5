"""The frame a selected result was computed on, found on vigil.frames when it is needed, not kept in memory.

Results name their frame (frame_event_id) and its capture time, and frames are on vigil.frames for 2 h. Holding
every recent frame to join them with their results would cost megabytes per camera-second, for the few frames a
selection budget takes. So the join is a seek: the first offset of the frame's partition at its capture time
(offsets_for_times, a broker lookup), then a short forward scan for the event id. vigil.frames and
vigil.inference are both keyed by camera id with the same partition count, so the result's partition is tried
first, the others only if the frame is not there. Memory is one consumer's fetch buffer, whatever the load."""
from __future__ import annotations

from confluent_kafka import Consumer, KafkaError, TopicPartition
from google.protobuf.message import DecodeError
from prometheus_client import Counter

from libs.common.claimcheck import ClaimCheckStore, frame_bytes
from libs.common.topics import FRAMES
from protos import events_pb2

SEARCHED = Counter("vigil_annotation_frame_searches_total", "Frames looked up on vigil.frames, by outcome",
                   ["outcome"])
# Kafka timestamps are the producer's: a frame reaches Kafka a little after its capture. Start a little before it.
LOOKBACK_S = 5.0


class FrameFetcher:
    def __init__(self, client_config: dict[str, str], search_s: float = 30.0, max_scanned: int = 5000,
                 claim_check: ClaimCheckStore | None = None, topic: str = FRAMES) -> None:
        self.topic = topic
        self.search_s = search_s
        self.max_scanned = max_scanned
        self.claim_check = claim_check
        self._consumer = Consumer({**client_config, "group.id": "vigil-annotation-frame-search",
                                   "client.id": "annotation-frames", "enable.auto.commit": False,
                                   "enable.partition.eof": True, "fetch.max.bytes": 8 * 1024 * 1024})
        self._partitions: list[int] | None = None

    def close(self) -> None:
        self._consumer.close()

    def fetch(self, camera_id: str, frame_event_id: str, captured_at: float,
              partition_hint: int | None = None) -> events_pb2.Frame | None:
        """The frame, or None when it is no longer (or not yet) on the topic within search_s of its capture."""
        partitions = self._partition_ids()
        order = ([partition_hint] if partition_hint in partitions else []) + \
            [p for p in partitions if p != partition_hint]
        for partition in order:
            frame = self._search(partition, camera_id.encode(), frame_event_id, captured_at)
            if frame is not None:
                SEARCHED.labels("found").inc()
                return frame
        SEARCHED.labels("gone").inc()
        return None

    def image(self, frame: events_pb2.Frame) -> bytes:
        """The frame's JPEG bytes, inline or from its claim-check object."""
        return frame_bytes(frame, self.claim_check)

    def _partition_ids(self) -> list[int]:
        if self._partitions is None:
            metadata = self._consumer.list_topics(self.topic, timeout=10)
            self._partitions = sorted(metadata.topics[self.topic].partitions)
        return self._partitions

    def _search(self, partition: int, key: bytes, frame_event_id: str, captured_at: float) -> events_pb2.Frame | None:
        start_ms = int((captured_at - LOOKBACK_S) * 1000)
        end_ms = int((captured_at + self.search_s) * 1000)
        (start,) = self._consumer.offsets_for_times([TopicPartition(self.topic, partition, start_ms)], timeout=10)
        if start.offset < 0:
            return None  # nothing on the partition at or after that time
        self._consumer.assign([TopicPartition(self.topic, partition, start.offset)])
        try:
            scanned = 0
            while scanned < self.max_scanned:
                messages = self._consumer.consume(64, timeout=2.0)
                if not messages:
                    return None
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            return None
                        continue
                    scanned += 1
                    if message.timestamp()[1] > end_ms:
                        return None
                    if message.key() != key:
                        continue
                    try:
                        frame = events_pb2.Frame.FromString(message.value() or b"")
                    except DecodeError:
                        continue
                    if frame.envelope.event_id == frame_event_id:
                        return frame
            return None
        finally:
            self._consumer.unassign()
