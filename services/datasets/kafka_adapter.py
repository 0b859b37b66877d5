"""vigil.annotations into the label intake, versions out on vigil.datasets: a KafkaRunner handler (decode, take) and
its checkpoint (commit when due, announce the version); the runner holds the topic's offsets until then."""
from __future__ import annotations

import time

from confluent_kafka import Message
from minio.error import S3Error
from prometheus_client import Counter, Gauge
from urllib3.exceptions import HTTPError

from libs.common.kafka import Outbound, Outcome, Rejected, Retryable, decode_each
from libs.common.logs import get_logger
from libs.common.topics import DATASETS
from protos import events_pb2
from services.datasets.events import dataset_event
from services.datasets.labels_intake import AUTHOR, LabelIntake, UnusableLabel

log = get_logger(__name__)

LABELS = Counter("vigil_datasets_labels_total", "Labels of vigil.annotations by what became of them: taken (an item "
                 "waiting for its version), skipped (a submission or a rejection), refused (dead-lettered)",
                 ["outcome"])
VERSIONS = Counter("vigil_datasets_versions_committed_total", "Versions the service committed")
WAITING = Gauge("vigil_datasets_labels_waiting", "Items taken and waiting for the next version (their offsets held)")

# A commit that failed (the store unreachable) is tried again after this long, doubling up to the maximum.
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 60.0


class LabelsAdapter:
    def __init__(self, intake: LabelIntake, topic: str = DATASETS) -> None:
        self.intake = intake
        self.topic = topic
        self._retry_at = 0.0
        self._backoff = RETRY_FIRST_S
        WAITING.set_function(lambda: intake.waiting)

    def handle_batch(self, batch: list[Message]) -> list[Outcome]:
        labels, positions, outcomes = decode_each(batch, events_pb2.AnnotationLabel)
        for label, position in zip(labels, positions):
            try:
                taken = self.intake.take(label)
                outcomes[position] = []
                LABELS.labels("taken" if taken is not None else "skipped").inc()
            except UnusableLabel as refused:
                outcomes[position] = Rejected(refused.reason, refused.detail)
                LABELS.labels("refused").inc()
            except (S3Error, HTTPError, OSError) as exc:
                raise Retryable(f"object store: {exc}") from exc
        return outcomes

    def checkpoint(self, final: bool) -> list[Outbound] | None:
        if not final and time.monotonic() < self._retry_at:
            return None
        try:
            committed = self.intake.checkpoint(final)
        except Exception as exc:  # noqa: BLE001 - the offsets stay held; the labels wait and the commit is retried
            if final:
                raise
            log.warning("commit failed; retried later", error=str(exc)[:500], retry_in_s=self._backoff)
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, RETRY_MAX_S)
            return None
        self._backoff = RETRY_FIRST_S
        if committed is None:
            return None
        VERSIONS.inc(len(committed))
        store = self.intake.store
        return [Outbound(self.topic, dataset_event(manifest, "commit", AUTHOR, branch=self.intake.branch,
                                                   manifest_ref=store.manifest_ref(manifest)).SerializeToString(),
                         key=manifest.dataset.encode())
                for manifest in committed]
