import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CameraState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAMERA_STATE_UNSPECIFIED: _ClassVar[CameraState]
    CAMERA_STATE_CONNECTING: _ClassVar[CameraState]
    CAMERA_STATE_ONLINE: _ClassVar[CameraState]
    CAMERA_STATE_STALLED: _ClassVar[CameraState]
    CAMERA_STATE_OFFLINE: _ClassVar[CameraState]
CAMERA_STATE_UNSPECIFIED: CameraState
CAMERA_STATE_CONNECTING: CameraState
CAMERA_STATE_ONLINE: CameraState
CAMERA_STATE_STALLED: CameraState
CAMERA_STATE_OFFLINE: CameraState

class Envelope(_message.Message):
    __slots__ = ("event_id", "source", "event_time", "ingest_time", "schema_version", "trace_id", "producer")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    INGEST_TIME_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    source: str
    event_time: _timestamp_pb2.Timestamp
    ingest_time: _timestamp_pb2.Timestamp
    schema_version: int
    trace_id: str
    producer: str
    def __init__(self, event_id: _Optional[str] = ..., source: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ingest_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., schema_version: _Optional[int] = ..., trace_id: _Optional[str] = ..., producer: _Optional[str] = ...) -> None: ...

class ObjectRef(_message.Message):
    __slots__ = ("bucket", "key", "size", "sha256")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    key: str
    size: int
    sha256: str
    def __init__(self, bucket: _Optional[str] = ..., key: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("envelope", "camera_id", "sequence", "width", "height", "encoding", "data", "ref", "capture_time_from_stream", "image_stats")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FROM_STREAM_FIELD_NUMBER: _ClassVar[int]
    IMAGE_STATS_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    camera_id: str
    sequence: int
    width: int
    height: int
    encoding: str
    data: bytes
    ref: ObjectRef
    capture_time_from_stream: bool
    image_stats: ImageStats
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., camera_id: _Optional[str] = ..., sequence: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., encoding: _Optional[str] = ..., data: _Optional[bytes] = ..., ref: _Optional[_Union[ObjectRef, _Mapping]] = ..., capture_time_from_stream: _Optional[bool] = ..., image_stats: _Optional[_Union[ImageStats, _Mapping]] = ...) -> None: ...

class ImageStats(_message.Message):
    __slots__ = ("mean_luma", "contrast", "sharpness", "saturation", "underexposed_share", "overexposed_share", "edge_orientation")
    MEAN_LUMA_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_FIELD_NUMBER: _ClassVar[int]
    SHARPNESS_FIELD_NUMBER: _ClassVar[int]
    SATURATION_FIELD_NUMBER: _ClassVar[int]
    UNDEREXPOSED_SHARE_FIELD_NUMBER: _ClassVar[int]
    OVEREXPOSED_SHARE_FIELD_NUMBER: _ClassVar[int]
    EDGE_ORIENTATION_FIELD_NUMBER: _ClassVar[int]
    mean_luma: float
    contrast: float
    sharpness: float
    saturation: float
    underexposed_share: float
    overexposed_share: float
    edge_orientation: float
    def __init__(self, mean_luma: _Optional[float] = ..., contrast: _Optional[float] = ..., sharpness: _Optional[float] = ..., saturation: _Optional[float] = ..., underexposed_share: _Optional[float] = ..., overexposed_share: _Optional[float] = ..., edge_orientation: _Optional[float] = ...) -> None: ...

class SensorReading(_message.Message):
    __slots__ = ("envelope", "sensor_id", "quantity", "value", "unit", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    sensor_id: str
    quantity: str
    value: float
    unit: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., sensor_id: _Optional[str] = ..., quantity: _Optional[str] = ..., value: _Optional[float] = ..., unit: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("label", "class_id", "score", "box")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    label: str
    class_id: int
    score: float
    box: Box
    def __init__(self, label: _Optional[str] = ..., class_id: _Optional[int] = ..., score: _Optional[float] = ..., box: _Optional[_Union[Box, _Mapping]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version", "precision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    precision: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., precision: _Optional[str] = ...) -> None: ...

class InferenceResult(_message.Message):
    __slots__ = ("envelope", "camera_id", "frame_event_id", "frame_sequence", "model", "detections", "stage_latency_ms", "width", "height", "shadow", "sensor_id", "anomaly_score", "embedding")
    class StageLatencyMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    STAGE_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_SCORE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    camera_id: str
    frame_event_id: str
    frame_sequence: int
    model: ModelRef
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    stage_latency_ms: _containers.ScalarMap[str, float]
    width: int
    height: int
    shadow: bool
    sensor_id: str
    anomaly_score: float
    embedding: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., camera_id: _Optional[str] = ..., frame_event_id: _Optional[str] = ..., frame_sequence: _Optional[int] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., stage_latency_ms: _Optional[_Mapping[str, float]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., shadow: _Optional[bool] = ..., sensor_id: _Optional[str] = ..., anomaly_score: _Optional[float] = ..., embedding: _Optional[_Iterable[float]] = ...) -> None: ...

class CameraStatus(_message.Message):
    __slots__ = ("camera_id", "state", "reason", "fps_read", "fps_produced", "frames_dropped", "frames_skipped", "reconnects", "last_frame_time", "replica")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FPS_READ_FIELD_NUMBER: _ClassVar[int]
    FPS_PRODUCED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    RECONNECTS_FIELD_NUMBER: _ClassVar[int]
    LAST_FRAME_TIME_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    state: CameraState
    reason: str
    fps_read: float
    fps_produced: float
    frames_dropped: int
    frames_skipped: int
    reconnects: int
    last_frame_time: _timestamp_pb2.Timestamp
    replica: str
    def __init__(self, camera_id: _Optional[str] = ..., state: _Optional[_Union[CameraState, str]] = ..., reason: _Optional[str] = ..., fps_read: _Optional[float] = ..., fps_produced: _Optional[float] = ..., frames_dropped: _Optional[int] = ..., frames_skipped: _Optional[int] = ..., reconnects: _Optional[int] = ..., last_frame_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., replica: _Optional[str] = ...) -> None: ...

class DriftAlert(_message.Message):
    __slots__ = ("model_name", "feature", "metric", "score", "threshold", "window_start", "window_end", "camera_id", "model_version", "sensor_id", "state", "top_features", "windows")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOP_FEATURES_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    feature: str
    metric: str
    score: float
    threshold: float
    window_start: _timestamp_pb2.Timestamp
    window_end: _timestamp_pb2.Timestamp
    camera_id: str
    model_version: str
    sensor_id: str
    state: str
    top_features: _containers.RepeatedCompositeFieldContainer[DriftScore]
    windows: int
    def __init__(self, model_name: _Optional[str] = ..., feature: _Optional[str] = ..., metric: _Optional[str] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., camera_id: _Optional[str] = ..., model_version: _Optional[str] = ..., sensor_id: _Optional[str] = ..., state: _Optional[str] = ..., top_features: _Optional[_Iterable[_Union[DriftScore, _Mapping]]] = ..., windows: _Optional[int] = ...) -> None: ...

class DriftScore(_message.Message):
    __slots__ = ("feature", "metric", "score", "threshold", "drifted", "p_value", "window_count", "reference_count")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DRIFTED_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_COUNT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    feature: str
    metric: str
    score: float
    threshold: float
    drifted: bool
    p_value: float
    window_count: int
    reference_count: int
    def __init__(self, feature: _Optional[str] = ..., metric: _Optional[str] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., drifted: _Optional[bool] = ..., p_value: _Optional[float] = ..., window_count: _Optional[int] = ..., reference_count: _Optional[int] = ...) -> None: ...

class DriftWindow(_message.Message):
    __slots__ = ("envelope", "subject", "camera_id", "sensor_id", "model", "window_start", "window_end", "count", "status", "scores", "alert_state", "summary")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    ALERT_STATE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    subject: str
    camera_id: str
    sensor_id: str
    model: ModelRef
    window_start: _timestamp_pb2.Timestamp
    window_end: _timestamp_pb2.Timestamp
    count: int
    status: str
    scores: _containers.RepeatedCompositeFieldContainer[DriftScore]
    alert_state: str
    summary: bytes
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., subject: _Optional[str] = ..., camera_id: _Optional[str] = ..., sensor_id: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., count: _Optional[int] = ..., status: _Optional[str] = ..., scores: _Optional[_Iterable[_Union[DriftScore, _Mapping]]] = ..., alert_state: _Optional[str] = ..., summary: _Optional[bytes] = ...) -> None: ...

class DriftReference(_message.Message):
    __slots__ = ("envelope", "subject", "camera_id", "sensor_id", "model", "profile", "source", "set_by", "set_time", "range_start", "range_end", "windows")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SET_BY_FIELD_NUMBER: _ClassVar[int]
    SET_TIME_FIELD_NUMBER: _ClassVar[int]
    RANGE_START_FIELD_NUMBER: _ClassVar[int]
    RANGE_END_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    subject: str
    camera_id: str
    sensor_id: str
    model: ModelRef
    profile: ObjectRef
    source: str
    set_by: str
    set_time: _timestamp_pb2.Timestamp
    range_start: _timestamp_pb2.Timestamp
    range_end: _timestamp_pb2.Timestamp
    windows: int
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., subject: _Optional[str] = ..., camera_id: _Optional[str] = ..., sensor_id: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., profile: _Optional[_Union[ObjectRef, _Mapping]] = ..., source: _Optional[str] = ..., set_by: _Optional[str] = ..., set_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., range_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., range_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., windows: _Optional[int] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("model", "state", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    state: str
    reason: str
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ServiceStatus(_message.Message):
    __slots__ = ("service", "component", "state", "reason", "failures")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    service: str
    component: str
    state: str
    reason: str
    failures: int
    def __init__(self, service: _Optional[str] = ..., component: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., failures: _Optional[int] = ...) -> None: ...

class MonitoringEvent(_message.Message):
    __slots__ = ("envelope", "camera_status", "drift_alert", "model_status", "service_status", "rollout")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CAMERA_STATUS_FIELD_NUMBER: _ClassVar[int]
    DRIFT_ALERT_FIELD_NUMBER: _ClassVar[int]
    MODEL_STATUS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_STATUS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    camera_status: CameraStatus
    drift_alert: DriftAlert
    model_status: ModelStatus
    service_status: ServiceStatus
    rollout: RolloutEvent
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., camera_status: _Optional[_Union[CameraStatus, _Mapping]] = ..., drift_alert: _Optional[_Union[DriftAlert, _Mapping]] = ..., model_status: _Optional[_Union[ModelStatus, _Mapping]] = ..., service_status: _Optional[_Union[ServiceStatus, _Mapping]] = ..., rollout: _Optional[_Union[RolloutEvent, _Mapping]] = ...) -> None: ...

class AnnotationTask(_message.Message):
    __slots__ = ("envelope", "task_id", "camera_id", "frame_event_id", "frame", "reason", "proposals", "priority", "model", "state", "width", "height", "captured_at", "labels_wanted", "leases", "submission_ids", "schema_version", "reason_detail", "faces_blurred", "revision", "perceptual_hash")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_FIELD_NUMBER: _ClassVar[int]
    LABELS_WANTED_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_IDS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_DETAIL_FIELD_NUMBER: _ClassVar[int]
    FACES_BLURRED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PERCEPTUAL_HASH_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    task_id: str
    camera_id: str
    frame_event_id: str
    frame: ObjectRef
    reason: str
    proposals: _containers.RepeatedCompositeFieldContainer[Detection]
    priority: float
    model: ModelRef
    state: str
    width: int
    height: int
    captured_at: _timestamp_pb2.Timestamp
    labels_wanted: int
    leases: _containers.RepeatedCompositeFieldContainer[AnnotationLease]
    submission_ids: _containers.RepeatedScalarFieldContainer[str]
    schema_version: str
    reason_detail: str
    faces_blurred: bool
    revision: int
    perceptual_hash: int
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., task_id: _Optional[str] = ..., camera_id: _Optional[str] = ..., frame_event_id: _Optional[str] = ..., frame: _Optional[_Union[ObjectRef, _Mapping]] = ..., reason: _Optional[str] = ..., proposals: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., priority: _Optional[float] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., state: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., captured_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels_wanted: _Optional[int] = ..., leases: _Optional[_Iterable[_Union[AnnotationLease, _Mapping]]] = ..., submission_ids: _Optional[_Iterable[str]] = ..., schema_version: _Optional[str] = ..., reason_detail: _Optional[str] = ..., faces_blurred: _Optional[bool] = ..., revision: _Optional[int] = ..., perceptual_hash: _Optional[int] = ...) -> None: ...

class AnnotationLease(_message.Message):
    __slots__ = ("annotator", "lease_id", "expires_at")
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    annotator: str
    lease_id: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, annotator: _Optional[str] = ..., lease_id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AnnotationLabel(_message.Message):
    __slots__ = ("envelope", "task_id", "annotator", "labels", "rejected", "label_id", "kind", "verdict", "status", "camera_id", "frame", "width", "height", "captured_at", "schema_version", "reviewer", "model", "frame_event_id", "reason", "agreement")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    LABEL_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FRAME_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    task_id: str
    annotator: str
    labels: _containers.RepeatedCompositeFieldContainer[Detection]
    rejected: bool
    label_id: str
    kind: str
    verdict: str
    status: str
    camera_id: str
    frame: ObjectRef
    width: int
    height: int
    captured_at: _timestamp_pb2.Timestamp
    schema_version: str
    reviewer: str
    model: ModelRef
    frame_event_id: str
    reason: str
    agreement: float
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., task_id: _Optional[str] = ..., annotator: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., rejected: _Optional[bool] = ..., label_id: _Optional[str] = ..., kind: _Optional[str] = ..., verdict: _Optional[str] = ..., status: _Optional[str] = ..., camera_id: _Optional[str] = ..., frame: _Optional[_Union[ObjectRef, _Mapping]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., captured_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., schema_version: _Optional[str] = ..., reviewer: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., frame_event_id: _Optional[str] = ..., reason: _Optional[str] = ..., agreement: _Optional[float] = ...) -> None: ...

class DatasetVersion(_message.Message):
    __slots__ = ("envelope", "dataset", "version", "manifest", "item_count", "parent_versions", "action", "actor", "message", "branch", "tag", "statistics", "schema_version")
    class StatisticsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    dataset: str
    version: str
    manifest: ObjectRef
    item_count: int
    parent_versions: _containers.RepeatedScalarFieldContainer[str]
    action: str
    actor: str
    message: str
    branch: str
    tag: str
    statistics: _containers.ScalarMap[str, int]
    schema_version: str
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., dataset: _Optional[str] = ..., version: _Optional[str] = ..., manifest: _Optional[_Union[ObjectRef, _Mapping]] = ..., item_count: _Optional[int] = ..., parent_versions: _Optional[_Iterable[str]] = ..., action: _Optional[str] = ..., actor: _Optional[str] = ..., message: _Optional[str] = ..., branch: _Optional[str] = ..., tag: _Optional[str] = ..., statistics: _Optional[_Mapping[str, int]] = ..., schema_version: _Optional[str] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("envelope", "model", "stage", "artifact", "metadata", "trained_on")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TRAINED_ON_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    model: ModelRef
    stage: str
    artifact: ObjectRef
    metadata: _containers.ScalarMap[str, str]
    trained_on: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., stage: _Optional[str] = ..., artifact: _Optional[_Union[ObjectRef, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., trained_on: _Optional[_Iterable[str]] = ...) -> None: ...

class TrainingRun(_message.Message):
    __slots__ = ("envelope", "run_id", "dataset", "dataset_version", "base_model", "state", "step", "done", "total", "eta_s", "candidate", "champion", "candidate_map50", "champion_map50", "reasons", "elapsed_s")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ETA_S_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_MAP50_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_MAP50_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    run_id: str
    dataset: str
    dataset_version: str
    base_model: str
    state: str
    step: str
    done: int
    total: int
    eta_s: float
    candidate: ModelRef
    champion: ModelRef
    candidate_map50: float
    champion_map50: float
    reasons: _containers.RepeatedScalarFieldContainer[str]
    elapsed_s: float
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., run_id: _Optional[str] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[str] = ..., base_model: _Optional[str] = ..., state: _Optional[str] = ..., step: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., eta_s: _Optional[float] = ..., candidate: _Optional[_Union[ModelRef, _Mapping]] = ..., champion: _Optional[_Union[ModelRef, _Mapping]] = ..., candidate_map50: _Optional[float] = ..., champion_map50: _Optional[float] = ..., reasons: _Optional[_Iterable[str]] = ..., elapsed_s: _Optional[float] = ...) -> None: ...

class RolloutEvent(_message.Message):
    __slots__ = ("envelope", "candidate", "champion", "stage", "previous_stage", "reason", "checks", "canary_share", "actor", "cameras", "registry_version")
    class ChecksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    CANARY_SHARE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_VERSION_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    candidate: ModelRef
    champion: ModelRef
    stage: str
    previous_stage: str
    reason: str
    checks: _containers.ScalarMap[str, float]
    canary_share: float
    actor: str
    cameras: _containers.RepeatedScalarFieldContainer[str]
    registry_version: int
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., candidate: _Optional[_Union[ModelRef, _Mapping]] = ..., champion: _Optional[_Union[ModelRef, _Mapping]] = ..., stage: _Optional[str] = ..., previous_stage: _Optional[str] = ..., reason: _Optional[str] = ..., checks: _Optional[_Mapping[str, float]] = ..., canary_share: _Optional[float] = ..., actor: _Optional[str] = ..., cameras: _Optional[_Iterable[str]] = ..., registry_version: _Optional[int] = ...) -> None: ...

class Region(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class CameraConfig(_message.Message):
    __slots__ = ("camera_id", "url", "sample_fps", "max_width", "max_height", "jpeg_quality", "loop", "roi", "motion_min_changed_fraction", "stall_timeout_s", "labels", "unpaced")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FPS_FIELD_NUMBER: _ClassVar[int]
    MAX_WIDTH_FIELD_NUMBER: _ClassVar[int]
    MAX_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    LOOP_FIELD_NUMBER: _ClassVar[int]
    ROI_FIELD_NUMBER: _ClassVar[int]
    MOTION_MIN_CHANGED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    STALL_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    UNPACED_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    url: str
    sample_fps: float
    max_width: int
    max_height: int
    jpeg_quality: int
    loop: bool
    roi: _containers.RepeatedCompositeFieldContainer[Region]
    motion_min_changed_fraction: float
    stall_timeout_s: float
    labels: _containers.ScalarMap[str, str]
    unpaced: bool
    def __init__(self, camera_id: _Optional[str] = ..., url: _Optional[str] = ..., sample_fps: _Optional[float] = ..., max_width: _Optional[int] = ..., max_height: _Optional[int] = ..., jpeg_quality: _Optional[int] = ..., loop: _Optional[bool] = ..., roi: _Optional[_Iterable[_Union[Region, _Mapping]]] = ..., motion_min_changed_fraction: _Optional[float] = ..., stall_timeout_s: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ..., unpaced: _Optional[bool] = ...) -> None: ...

class SensorDefinition(_message.Message):
    __slots__ = ("sensor_id", "quantity", "unit", "min_value", "max_value", "description", "updated_time", "updated_by")
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    MIN_VALUE_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    sensor_id: str
    quantity: str
    unit: str
    min_value: float
    max_value: float
    description: str
    updated_time: _timestamp_pb2.Timestamp
    updated_by: str
    def __init__(self, sensor_id: _Optional[str] = ..., quantity: _Optional[str] = ..., unit: _Optional[str] = ..., min_value: _Optional[float] = ..., max_value: _Optional[float] = ..., description: _Optional[str] = ..., updated_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ...) -> None: ...

class SensorAnomalyResult(_message.Message):
    __slots__ = ("envelope", "sensor_id", "quantity", "value", "model", "score", "anomaly", "threshold", "stage_latency_ms", "reading_event_id", "unit", "features")
    class StageLatencyMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    SENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    STAGE_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    READING_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    sensor_id: str
    quantity: str
    value: float
    model: ModelRef
    score: float
    anomaly: bool
    threshold: float
    stage_latency_ms: _containers.ScalarMap[str, float]
    reading_event_id: str
    unit: str
    features: _containers.ScalarMap[str, float]
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., sensor_id: _Optional[str] = ..., quantity: _Optional[str] = ..., value: _Optional[float] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., score: _Optional[float] = ..., anomaly: _Optional[bool] = ..., threshold: _Optional[float] = ..., stage_latency_ms: _Optional[_Mapping[str, float]] = ..., reading_event_id: _Optional[str] = ..., unit: _Optional[str] = ..., features: _Optional[_Mapping[str, float]] = ...) -> None: ...
