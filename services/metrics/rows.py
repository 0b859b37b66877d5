"""Events as rows of the store's tables (pure: no store, no Kafka).

Each table the sink writes has a TableSpec: its columns in insert order, which column is the event id (the
dedupe key) and which the event time (it narrows the dedupe lookup to a few granules). Times are integer
milliseconds since the epoch, which the DateTime64(3) columns take as they are."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

from google.protobuf.json_format import MessageToDict

from libs.common.kafka import (DLQ_ERROR, DLQ_ORIGIN_OFFSET, DLQ_ORIGIN_PARTITION, DLQ_ORIGIN_TOPIC, DLQ_REASON,
                               DLQ_SERVICE)
from protos import events_pb2


class InvalidEvent(ValueError):
    pass


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[str, ...]
    id_index: int = 0
    # Columns that tell apart the rows of one event, where an event has several (a window's scores, one per
    # feature and statistic): a replayed event's rows are dropped by its id, one batch's copies by (id, these).
    row_key: tuple[str, ...] = ()
    # Whether the sink looks a batch's ids up over the whole table rather than around their event times: for a
    # small table whose producer may announce an event again later under its id with a new time.
    ids_across_time: bool = False

    @property
    def time_index(self) -> int:
        return self.columns.index("event_time")


INFERENCE_COLUMNS = (
    "event_id", "trace_id", "camera_id", "frame_event_id", "frame_sequence", "model_name", "model_version",
    "model_precision", "event_time", "ingest_time", "produced_time", "width", "height", "shadow",
    "detection_count", "labels", "scores", "boxes", "stage_latency_ms",
)
INFERENCE = TableSpec("inference_events", INFERENCE_COLUMNS)
MONITORING = TableSpec("monitoring_events", (
    "event_id", "trace_id", "source", "producer", "kind", "subject", "event_time", "ingest_time", "detail"))
CAMERA_HEALTH = TableSpec("camera_health", (
    "event_id", "camera_id", "event_time", "state", "reason", "fps_read", "fps_produced", "frames_dropped",
    "frames_skipped", "reconnects", "last_frame_time"))
DRIFT = TableSpec("drift_scores", (
    "event_id", "model_name", "feature", "metric", "camera_id", "score", "threshold", "window_start",
    "window_end", "event_time", "subject", "sensor_id", "model_version", "drifted", "p_value", "window_count",
    "reference_count", "window_status", "alert_state"), row_key=("feature", "metric"))
DRIFT_WINDOWS = TableSpec("drift_windows", (
    "event_id", "subject", "camera_id", "sensor_id", "model_name", "model_version", "window_start", "window_end",
    "event_time", "count", "status", "alert_state", "features", "drifted_features"))
DRIFT_ALERTS = TableSpec("drift_alerts", (
    "event_id", "subject", "camera_id", "sensor_id", "model_name", "model_version", "state", "windows",
    "window_start", "window_end", "event_time", "top_features", "top_metrics", "top_scores", "top_thresholds"))
DEAD_LETTERS = TableSpec("dead_letters", (
    "event_id", "event_time", "dlq_partition", "dlq_offset", "reason", "error", "service", "origin_topic",
    "origin_partition", "origin_offset", "message_key", "message_bytes"))
SENSOR_ANOMALIES = TableSpec("sensor_anomalies", (
    "event_id", "trace_id", "sensor_id", "quantity", "unit", "value", "model_name", "model_version", "score",
    "anomaly", "threshold", "reading_event_id", "event_time", "produced_time", "features"))
MODEL_VERSIONS = TableSpec("model_versions", (
    "event_id", "model_name", "model_version", "model_precision", "stage", "artifact", "metadata", "trained_on",
    "event_time"))
ANNOTATIONS = TableSpec("annotations", (
    "event_id", "task_id", "kind", "camera_id", "frame_event_id", "model_name", "reason", "annotator", "rejected",
    "labels", "event_time", "label_id", "status", "verdict", "reviewer", "model_version", "box_count", "agreement",
    "schema_version"))
ANNOTATION_TASKS = TableSpec("annotation_tasks", (
    "event_id", "source_event_id", "task_id", "revision", "state", "camera_id", "frame_event_id", "model_name",
    "model_version", "reason", "priority", "labels_wanted", "submissions", "lease_holders", "schema_version",
    "captured_at", "event_time", "published_time"))
DATASET_EVENTS = TableSpec("dataset_events", (
    "event_id", "dataset", "version", "action", "actor", "message", "branch", "tag", "item_count",
    "parent_versions", "manifest", "manifest_sha256", "statistics", "schema_version", "event_time"))
TRAINING_RUNS = TableSpec("training_runs", (
    "event_id", "run_id", "dataset", "dataset_version", "base_model", "state", "step", "done", "total", "eta_s",
    "candidate_name", "candidate_version", "champion_name", "champion_version", "candidate_map50",
    "champion_map50", "reasons", "elapsed_s", "producer", "event_time"),
    # A run's outcome is announced again (same id, a new time) when a replayed trigger finds it trained.
    ids_across_time=True)
ROLLOUT_EVENTS = TableSpec("rollout_events", (
    "event_id", "model_name", "candidate_version", "candidate_precision", "champion_name", "champion_version",
    "stage", "previous_stage", "reason", "checks", "canary_share", "actor", "event_time", "registry_version",
    "cameras"))
TABLES = {spec.name: spec for spec in (INFERENCE, MONITORING, CAMERA_HEALTH, DRIFT, DRIFT_WINDOWS, DRIFT_ALERTS,
                                       DEAD_LETTERS, SENSOR_ANOMALIES, MODEL_VERSIONS, ANNOTATIONS,
                                       ANNOTATION_TASKS, DATASET_EVENTS, TRAINING_RUNS, ROLLOUT_EVENTS)}

# Dead letters carry no envelope of their own (their bytes may be anything): their id is derived from where
# they sit in the dead-letter topic, so a re-read dead letter gets the same id.
_DEAD_LETTER_ID_NAMESPACE = uuid.UUID("0b7f2d4e-8a61-4f0c-b7c5-2f8d3e9a1c44")
# A task's row is one revision of it: its id is derived from (task id, revision), not from the envelope, so a
# revision published again (a replica that lost a compare-and-swap republishes the winner's) is one row too.
_TASK_REVISION_ID_NAMESPACE = uuid.UUID("6c1d9a3e-52b4-4e7f-8f0a-d3b2c6e1a975")

Rows = dict[str, list[tuple[Any, ...]]]


def _ms(ts) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def _uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidEvent(f"{field} is not a UUID: {value!r}") from None


def inference_row(result: events_pb2.InferenceResult, produced_ms: int) -> tuple[Any, ...]:
    """One row in the order of INFERENCE_COLUMNS. produced_ms is the Kafka timestamp of the event."""
    env = result.envelope
    detections = result.detections
    return (
        _uuid(env.event_id, "envelope.event_id"),
        env.trace_id,
        result.camera_id,
        _uuid(result.frame_event_id, "frame_event_id"),
        result.frame_sequence,
        result.model.name,
        result.model.version,
        result.model.precision,
        _ms(env.event_time),
        _ms(env.ingest_time),
        produced_ms,
        result.width,
        result.height,
        result.shadow,
        len(detections),
        [d.label for d in detections],
        [d.score for d in detections],
        [(d.box.x1, d.box.y1, d.box.x2, d.box.y2) for d in detections],
        dict(result.stage_latency_ms),
    )


def sensor_anomaly_row(result: events_pb2.SensorAnomalyResult, produced_ms: int) -> tuple[Any, ...]:
    """One row in the order of SENSOR_ANOMALIES' columns. produced_ms is the Kafka timestamp of the event."""
    env = result.envelope
    return (
        _uuid(env.event_id, "envelope.event_id"), env.trace_id, result.sensor_id, result.quantity, result.unit,
        result.value, result.model.name, result.model.version, result.score, result.anomaly, result.threshold,
        _uuid(result.reading_event_id, "reading_event_id"), _ms(env.event_time), produced_ms,
        dict(result.features),
    )


def model_version_row(version: events_pb2.ModelVersion) -> tuple[Any, ...]:
    """One row in the order of MODEL_VERSIONS' columns: a model version entering a stage (an announcement of
    the registry on vigil.models)."""
    if not version.model.name:
        raise InvalidEvent("model.name is empty")
    artifact = version.artifact
    return (
        _uuid(version.envelope.event_id, "envelope.event_id"), version.model.name, version.model.version,
        version.model.precision, version.stage, f"s3://{artifact.bucket}/{artifact.key}" if artifact.key else "",
        dict(version.metadata), list(version.trained_on), _ms(version.envelope.event_time),
    )


def annotation_label_row(label: events_pb2.AnnotationLabel) -> tuple[Any, ...]:
    """One row in the order of ANNOTATIONS' columns: an annotator's submission or a reviewer's decision
    (vigil.annotations), with the class of each box and, for a task labelled twice, the agreement."""
    if not label.task_id:
        raise InvalidEvent("AnnotationLabel.task_id is empty")
    boxes = label.labels
    return (
        _uuid(label.envelope.event_id, "envelope.event_id"), label.task_id, label.kind, label.camera_id,
        label.frame_event_id, label.model.name, label.reason, label.annotator, label.rejected,
        [box.label for box in boxes], _ms(label.envelope.event_time), label.label_id, label.status, label.verdict,
        label.reviewer, label.model.version, len(boxes), label.agreement if label.HasField("agreement") else None,
        label.schema_version,
    )


def annotation_task_row(task: events_pb2.AnnotationTask, published_ms: int) -> tuple[Any, ...]:
    """One row in the order of ANNOTATION_TASKS' columns: one revision of a task (vigil.annotation.tasks, where
    the compacted topic keeps each task's latest). A revision carries the envelope the task was created with, so
    the time of the transition is when it was published: published_ms, the Kafka timestamp. The envelope's time
    stays the row's event time: the same for a revision published again, whose row is then found stored."""
    if not task.task_id:
        raise InvalidEvent("AnnotationTask.task_id is empty")
    if not task.state:
        raise InvalidEvent("AnnotationTask.state is empty")
    return (
        uuid.uuid5(_TASK_REVISION_ID_NAMESPACE, f"{task.task_id}/{task.revision}"), task.envelope.event_id,
        task.task_id, task.revision, task.state, task.camera_id, task.frame_event_id, task.model.name,
        task.model.version, task.reason, task.priority, min(task.labels_wanted, 255),
        min(len(task.submission_ids), 255), [lease.annotator for lease in task.leases], task.schema_version,
        _ms(task.captured_at), _ms(task.envelope.event_time), published_ms,
    )


def dataset_event_row(event: events_pb2.DatasetVersion) -> tuple[Any, ...]:
    """One row in the order of DATASET_EVENTS' columns: what was done to a dataset (vigil.datasets: a version
    committed or imported, a tag, an export, a garbage collection), by whom, with the version's statistics. An
    action this sink does not know is stored all the same: the audit trail keeps what happened. A collection of
    the whole bucket is about no dataset: its dataset is empty."""
    if not event.action:
        raise InvalidEvent("DatasetVersion.action is empty")
    if not event.dataset and event.action != "gc":
        raise InvalidEvent(f"DatasetVersion.dataset is empty (action {event.action!r}; only a gc may be about "
                           f"no dataset)")
    manifest = event.manifest
    return (
        _uuid(event.envelope.event_id, "envelope.event_id"), event.dataset, event.version, event.action,
        event.actor, event.message, event.branch, event.tag, event.item_count, list(event.parent_versions),
        f"s3://{manifest.bucket}/{manifest.key}" if manifest.key else "", manifest.sha256, dict(event.statistics),
        event.schema_version, _ms(event.envelope.event_time),
    )


def training_run_row(run: events_pb2.TrainingRun) -> tuple[Any, ...]:
    """One row in the order of TRAINING_RUNS' columns: one report of a training job (vigil.training): started, a
    step's progress, or its outcome (eligible, refused at the gate, failed) with both models' mAP@0.5 and the
    reasons. A state this sink does not know is stored all the same; an unknown ETA (negative) is NULL."""
    if not run.run_id:
        raise InvalidEvent("TrainingRun.run_id is empty")
    if not run.state:
        raise InvalidEvent("TrainingRun.state is empty")
    return (
        _uuid(run.envelope.event_id, "envelope.event_id"), run.run_id, run.dataset, run.dataset_version,
        run.base_model, run.state, run.step, run.done, run.total, run.eta_s if run.eta_s >= 0 else None,
        run.candidate.name, run.candidate.version, run.champion.name, run.champion.version, run.candidate_map50,
        run.champion_map50, list(run.reasons), run.elapsed_s, run.envelope.producer, _ms(run.envelope.event_time),
    )


def _rollout_model(rollout: events_pb2.RolloutEvent) -> str:
    """The model a rollout is of: the candidate's name (the champion's, should a step name no candidate)."""
    return rollout.candidate.name or rollout.champion.name


def rollout_event_row(rollout: events_pb2.RolloutEvent) -> tuple[Any, ...]:
    """One row in the order of ROLLOUT_EVENTS' columns: a step of a candidate's rollout (vigil.rollouts: shadow,
    canary, promoted, rolled_back), why it was taken, the live checks measured over the stage it ends, and the
    cameras the candidate was trained on."""
    if not _rollout_model(rollout):
        raise InvalidEvent("RolloutEvent names no model (candidate.name and champion.name are empty)")
    if not rollout.stage:
        raise InvalidEvent("RolloutEvent.stage is empty")
    candidate, champion = rollout.candidate, rollout.champion
    return (
        _uuid(rollout.envelope.event_id, "envelope.event_id"), _rollout_model(rollout), candidate.version,
        candidate.precision, champion.name, champion.version, rollout.stage, rollout.previous_stage,
        rollout.reason, dict(rollout.checks), rollout.canary_share, rollout.actor, _ms(rollout.envelope.event_time),
        rollout.registry_version, list(rollout.cameras),
    )


_CAMERA_STATES = {v: k.removeprefix("CAMERA_STATE_").lower()
                  for k, v in events_pb2.CameraState.items()}


def drift_subject(camera_id: str, sensor_id: str, model_name: str, model_version: str) -> str:
    """The drift service's name of what a window or an alert is about, as it keys vigil.drift.windows:
    "camera/lobby" (the camera's images), "camera/lobby|yolov3-tiny|3" (a model's outputs on it), "sensor/t-17".
    A DriftAlert carries the parts, not the name; one naming neither camera nor sensor is about its model."""
    base = f"sensor/{sensor_id}" if sensor_id else f"camera/{camera_id}" if camera_id else ""
    return "|".join((base, model_name, model_version)).strip("|")


def drift_window_rows(window: events_pb2.DriftWindow) -> Rows:
    """A drift_windows row for every closed window (scored, insufficient data or building the reference), and a
    drift_scores row for each of its scores (feature and statistic)."""
    event_id = _uuid(window.envelope.event_id, "envelope.event_id")
    if not window.subject:
        raise InvalidEvent("DriftWindow.subject is empty")
    model = window.model
    start, end, event_ms = _ms(window.window_start), _ms(window.window_end), _ms(window.envelope.event_time)
    scores = window.scores
    return {
        DRIFT_WINDOWS.name: [(
            event_id, window.subject, window.camera_id, window.sensor_id, model.name, model.version, start, end,
            event_ms, window.count, window.status, window.alert_state, len(scores),
            [s.feature for s in scores if s.drifted],
        )],
        DRIFT.name: [(
            event_id, model.name, s.feature, s.metric, window.camera_id, s.score, s.threshold, start, end, event_ms,
            window.subject, window.sensor_id, model.version, s.drifted,
            s.p_value if s.HasField("p_value") else None, s.window_count, s.reference_count, window.status,
            window.alert_state,
        ) for s in scores],
    }


def _drift_alert_row(event_id: uuid.UUID, event_ms: int, alert: events_pb2.DriftAlert) -> tuple[Any, ...]:
    top = alert.top_features
    # An alert of an older producer names one feature and no list.
    if not top and alert.feature:
        top = [events_pb2.DriftScore(feature=alert.feature, metric=alert.metric, score=alert.score,
                                     threshold=alert.threshold)]
    return (
        event_id, drift_subject(alert.camera_id, alert.sensor_id, alert.model_name, alert.model_version),
        alert.camera_id, alert.sensor_id, alert.model_name, alert.model_version, alert.state or "raised",
        alert.windows, _ms(alert.window_start), _ms(alert.window_end), event_ms, [s.feature for s in top],
        [s.metric for s in top], [s.score for s in top], [s.threshold for s in top],
    )


def monitoring_rows(event: events_pb2.MonitoringEvent) -> Rows:
    """A monitoring_events row for every event, plus its row in camera_health or drift_alerts. A drift alert's
    scores are not drift_scores rows: those come from the windows (drift_window_rows), which hold every score,
    the alert's among them. Likewise a rollback (rollout) is a monitoring_events row only: its rollout_events row
    comes from the same step on vigil.rollouts (rollout_event_row)."""
    env = event.envelope
    event_id = _uuid(env.event_id, "envelope.event_id")
    kind = event.WhichOneof("detail")
    if kind is None:
        raise InvalidEvent("MonitoringEvent has no detail (camera_status, drift_alert, model_status, "
                           "service_status or rollout)")
    detail = getattr(event, kind)
    event_ms = _ms(env.event_time)
    rows: Rows = {}
    if kind == "camera_status":
        subject = detail.camera_id
        rows[CAMERA_HEALTH.name] = [(
            event_id, detail.camera_id, event_ms, _CAMERA_STATES.get(detail.state, "unspecified"), detail.reason,
            detail.fps_read, detail.fps_produced, detail.frames_dropped, detail.frames_skipped, detail.reconnects,
            _ms(detail.last_frame_time) if detail.HasField("last_frame_time") else None,
        )]
    elif kind == "drift_alert":
        alert_row = _drift_alert_row(event_id, event_ms, detail)
        subject = alert_row[1]
        rows[DRIFT_ALERTS.name] = [alert_row]
    elif kind == "service_status":
        subject = f"{detail.service}/{detail.component}"
    elif kind == "rollout":
        # A rollback announced for alerting: its rollout_events row comes from vigil.rollouts, not from here.
        subject = _rollout_model(detail)
    else:
        subject = detail.model.name
    rows[MONITORING.name] = [(
        event_id, env.trace_id, env.source, env.producer, kind, subject, event_ms, _ms(env.ingest_time),
        json.dumps(MessageToDict(detail, preserving_proto_field_name=True), sort_keys=True),
    )]
    return rows


def dead_letter_row(topic: str, partition: int, offset: int, timestamp_ms: int,
                    headers: Mapping[str, bytes], key: bytes | None, size: int) -> tuple[Any, ...]:
    def header(name: str, default: str = "") -> str:
        value = headers.get(name)
        return value.decode("utf-8", "replace") if value is not None else default

    def header_int(name: str) -> int:
        try:
            return int(header(name, "-1"))
        except ValueError:
            return -1

    return (
        uuid.uuid5(_DEAD_LETTER_ID_NAMESPACE, f"{topic}/{partition}/{offset}"), timestamp_ms, partition, offset,
        header(DLQ_REASON, "unknown"), header(DLQ_ERROR)[:4096], header(DLQ_SERVICE),
        header(DLQ_ORIGIN_TOPIC, "unknown"), header_int(DLQ_ORIGIN_PARTITION),
        header_int(DLQ_ORIGIN_OFFSET), (key or b"").decode("utf-8", "replace"), size,
    )
