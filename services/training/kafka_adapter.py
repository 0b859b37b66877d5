"""vigil.datasets into training jobs, their TrainingRun events out on vigil.training: a KafkaRunner handler. Each
committed version that triggers (triggers.py) is trained on there and then, in the handler, so its offset is
committed only once the job is over and its outcome delivered (at least once: a job cut short runs again, and a
replay of a version already in the registry only announces its outcome again).

A job's failure (an unknown version, no test split, an image that does not decode) is a "failed" event, and the
announcement counts as handled; a store that does not answer is retried (Retryable) with the batch; a record
that is not a DatasetVersion goes to the dead-letter topic. A SIGTERM stops a job at its next progress step
(before the import), and the version is trained again after the restart."""
from __future__ import annotations

import threading
import time
from typing import Callable

from confluent_kafka import Message
from minio.error import S3Error
from prometheus_client import Counter, Histogram
from urllib3.exceptions import HTTPError

from libs.common.kafka import Outbound, Outcome, Retryable, decode_each
from libs.common.logs import get_logger
from libs.common.topics import TRAINING
from protos import events_pb2
from services.training.job import JobResult, OnProgress
from services.training.run_events import TrainingRunEvents
from services.training.triggers import TriggerPolicy, trained_version

log = get_logger(__name__)

VERSIONS = Counter("vigil_training_dataset_versions_total", "Announced dataset versions by what became of them: "
                   "trained, skipped (not a trigger), already_trained (a replay), failed (the job failed)",
                   ["outcome"])
OUTCOMES = Counter("vigil_training_jobs_total", "Training jobs by outcome: eligible, refused, failed", ["outcome"])
JOB_SECONDS = Histogram("vigil_training_job_seconds", "Time of a training job, from trigger to outcome",
                        buckets=(5, 10, 30, 60, 120, 300, 600, 1200, 3600))

# Store failures that pass: the batch is retried instead of failing the job.
_TRANSIENT_S3 = frozenset({"ServiceUnavailable", "SlowDown", "InternalError", "RequestTimeout"})

# (dataset, version, progress callback) -> the imported candidate: run_training with the stores bound.
Train = Callable[[str, str, OnProgress], JobResult]


class JobInterrupted(Exception):
    """The service is stopping: the job ends at its progress step, before anything is imported."""


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (HTTPError, ConnectionError)) or (
        isinstance(exc, S3Error) and exc.code in _TRANSIENT_S3)


class DatasetVersionsAdapter:
    def __init__(self, train: Train, policy: TriggerPolicy, registry, base_model: str, seed: int,
                 publish: Callable[[Outbound], None], stop: threading.Event,
                 beat: Callable[[], None] = lambda: None,
                 on_eligible: Callable[[JobResult], None] | None = None,
                 progress_every_s: float = 1.0, topic: str = TRAINING) -> None:
        self.train = train
        self.policy = policy
        self.registry = registry
        self.base_model = base_model
        self.seed = seed
        self.publish = publish  # produced at once (started, progress); the runner delivers before committing
        self.stop = stop
        self.beat = beat  # the consume loop's liveness: a job is progress
        self.on_eligible = on_eligible
        self.progress_every_s = progress_every_s
        self.topic = topic

    def handle_batch(self, batch: list[Message]) -> list[Outcome]:
        versions, positions, outcomes = decode_each(batch, events_pb2.DatasetVersion)
        for version, position in zip(versions, positions):
            outcomes[position] = self.handle(version)
        return outcomes

    def _outbound(self, event: events_pb2.TrainingRun) -> Outbound:
        return Outbound(self.topic, event.SerializeToString(), key=self.base_model.encode())

    def handle(self, version: events_pb2.DatasetVersion) -> list[Outbound]:
        skip = self.policy.skip_reason(version)
        if skip is not None:
            log.info("dataset version skipped", dataset=version.dataset, version=version.version,
                     action=version.action, reason=skip)
            VERSIONS.labels("skipped").inc()
            return []
        run = TrainingRunEvents(version.dataset, version.version, self.base_model, self.seed,
                                trace_id=version.envelope.trace_id or None, every_s=self.progress_every_s)
        try:
            earlier = trained_version(self.registry, self.base_model, version.dataset, version.version, self.seed)
        except Exception as exc:  # noqa: BLE001
            if _transient(exc):
                raise Retryable(f"model registry: {exc}") from exc
            log.exception("the registry's versions cannot be read", model=self.base_model)
            return [self._outbound(run.failed(f"the registry's versions cannot be read: {exc}"[:2000]))]
        if earlier is not None:
            log.info("dataset version already trained; skipped", dataset=version.dataset, version=version.version,
                     model=self.base_model, seed=self.seed, registry_version=earlier["version"], run_id=run.run_id)
            VERSIONS.labels("already_trained").inc()
            return [self._outbound(run.already_trained(earlier))]
        return self._run(version, run)

    def _run(self, version: events_pb2.DatasetVersion, run: TrainingRunEvents) -> list[Outbound]:
        log.info("training job started", dataset=version.dataset, version=version.version, model=self.base_model,
                 seed=self.seed, run_id=run.run_id, items=version.statistics.get("items", version.item_count))
        self.publish(self._outbound(run.started()))

        def progress(step: str, done: int, total: int, eta_s: float | None) -> None:
            self.beat()
            if self.stop.is_set() and step != "import":  # once imported, the job is as good as done
                raise JobInterrupted(f"stopped during {step}")
            event = run.progress(step, done, total, eta_s)
            if event is not None:
                self.publish(self._outbound(event))

        started = time.monotonic()
        try:
            result = self.train(version.dataset, version.version, progress)
        except JobInterrupted as exc:
            log.warning("training job interrupted; the version is trained again after the restart",
                        run_id=run.run_id, reason=str(exc))
            raise Retryable(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - a failed job is an outcome, not a crash
            if _transient(exc):
                raise Retryable(f"object store: {exc}") from exc
            reason = f"{type(exc).__name__}: {exc}"
            log.exception("training job failed", run_id=run.run_id, dataset=version.dataset,
                          version=version.version)
            VERSIONS.labels("failed").inc()
            OUTCOMES.labels("failed").inc()
            return [self._outbound(run.failed(reason[:2000]))]
        JOB_SECONDS.observe(time.monotonic() - started)
        VERSIONS.labels("trained").inc()
        outcome = run.outcome(result)
        OUTCOMES.labels(outcome.state).inc()
        self.publish(self._outbound(outcome))
        if result.eligible and self.on_eligible is not None:
            try:
                self.on_eligible(result)
            except Exception:  # noqa: BLE001 - the candidate is registered; its rollout can be started again
                log.exception("on_eligible failed", model=result.name, version=result.version)
        return []
