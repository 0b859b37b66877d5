"""The store's schema as numbered migrations. Applied in order at start and recorded in
schema_migrations, so a store created by an older version is brought up to date in place.
Never edit a migration that has shipped: add the next one."""
from __future__ import annotations

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "inference_events", """
        CREATE TABLE IF NOT EXISTS inference_events (
            event_id UUID,
            trace_id String,
            camera_id LowCardinality(String),
            frame_event_id UUID,
            frame_sequence UInt64,
            model_name LowCardinality(String),
            model_version LowCardinality(String),
            model_precision LowCardinality(String),
            event_time DateTime64(3, 'UTC'),
            ingest_time DateTime64(3, 'UTC'),
            produced_time DateTime64(3, 'UTC'),
            stored_time DateTime64(3, 'UTC') DEFAULT now64(3),
            width UInt32,
            height UInt32,
            shadow Bool,
            detection_count UInt32,
            labels Array(LowCardinality(String)),
            scores Array(Float32),
            boxes Array(Tuple(Float32, Float32, Float32, Float32)),
            stage_latency_ms Map(LowCardinality(String), Float64),
            INDEX event_id_bloom event_id TYPE bloom_filter GRANULARITY 4,
            INDEX event_time_minmax event_time TYPE minmax GRANULARITY 1
        )
        -- The sink stores each event id once by checking before it inserts; the replacing engine is the
        -- second line of defence should two sinks ever race.
        ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMMDD(event_time)
        ORDER BY (camera_id, event_time, event_id)
        TTL toDateTime(event_time) + INTERVAL 30 DAY
    """),
]

# Rollups and derived tables read inference_events; each SELECT below is used twice: as the materialized
# view (new rows) and as the backfill right after it (rows stored before the view existed).
_DETECTIONS_SELECT = """
    SELECT event_id, camera_id, model_name, model_version, shadow, event_time,
           toUInt16(i) AS detection_index, labels[i] AS label, scores[i] AS score,
           boxes[i].1 AS x1, boxes[i].2 AS y1, boxes[i].3 AS x2, boxes[i].4 AS y2
    FROM inference_events ARRAY JOIN arrayEnumerate(labels) AS i
"""
_INFERENCE_MINUTE_SELECT = """
    SELECT toStartOfMinute(event_time) AS minute, camera_id, model_name, model_version, shadow,
           count() AS frames, sum(detection_count) AS detections, countIf(detection_count = 0) AS empty_frames
    FROM inference_events GROUP BY minute, camera_id, model_name, model_version, shadow
"""
# Every stage the producer timed, plus 'total' (their sum): p50/p95/p99 per model and stage come from here.
_LATENCY_MINUTE_SELECT = """
    SELECT toStartOfMinute(event_time) AS minute, model_name, model_version, camera_id, stage,
           quantilesState(0.5, 0.95, 0.99)(ms) AS latency_ms, count() AS samples
    FROM inference_events
    ARRAY JOIN arrayConcat(mapKeys(stage_latency_ms), ['total']) AS stage,
               arrayConcat(mapValues(stage_latency_ms), [arraySum(mapValues(stage_latency_ms))]) AS ms
    GROUP BY minute, model_name, model_version, camera_id, stage
"""
_DETECTIONS_MINUTE_SELECT = """
    SELECT toStartOfMinute(event_time) AS minute, camera_id, model_name, shadow, label,
           count() AS detections, sum(toFloat64(score)) AS score_sum
    FROM inference_events ARRAY JOIN labels AS label, scores AS score
    GROUP BY minute, camera_id, model_name, shadow, label
"""
_CAMERA_MINUTE_SELECT = """
    SELECT toStartOfMinute(event_time) AS minute, camera_id,
           avgState(fps_produced) AS fps_produced, avgState(fps_read) AS fps_read,
           min(frames_dropped) AS frames_dropped_min, max(frames_dropped) AS frames_dropped_max,
           argMaxState(state, event_time) AS last_state, count() AS reports
    FROM camera_health GROUP BY minute, camera_id
"""
_DEAD_LETTERS_MINUTE_SELECT = """
    SELECT toStartOfMinute(event_time) AS minute, origin_topic, reason, service, count() AS letters
    FROM dead_letters GROUP BY minute, origin_topic, reason, service
"""


def _view(name: str, target: str, select: str) -> str:
    return f"CREATE MATERIALIZED VIEW IF NOT EXISTS {name} TO {target} AS {select}"


def _view_and_backfill(version: int, view_migration: str, backfill_migration: str, view: str, target: str,
                       select: str) -> list[tuple[int, str, str]]:
    """Two migrations: the view that feeds `target` from new rows, then `target` filled from the rows stored
    before the view existed (migrations run before the sink consumes, so nothing is counted twice)."""
    return [(version, view_migration, _view(view, target, select)),
            (version + 1, backfill_migration, f"INSERT INTO {target} {select}")]


def _events_engine(key: str, ttl_days: int | None, partition: str | None = "toYYYYMM(event_time)") -> str:
    """The engine of a table of events: one row per event id (the sink checks before it inserts; replacing
    on the sort key is the second line of defence), dropped ttl_days after the event (None: kept forever)."""
    partition_clause = f"PARTITION BY {partition}\n        " if partition else ""
    ttl_clause = f"\n        TTL toDateTime(event_time) + INTERVAL {ttl_days} DAY" if ttl_days is not None else ""
    return f"ENGINE = ReplacingMergeTree\n        {partition_clause}ORDER BY ({key}){ttl_clause}"


def _rollup(table: str, key: str, columns: list[str]) -> str:
    """A per-minute rollup: partial aggregates merged by the engine, kept longer than the raw events."""
    body = ",\n            ".join(["minute DateTime('UTC')", *columns])
    return f"""
        CREATE TABLE IF NOT EXISTS {table} (
            {body}
        )
        ENGINE = AggregatingMergeTree
        PARTITION BY toYYYYMM(minute)
        ORDER BY ({key}, minute)
        TTL minute + INTERVAL 400 DAY
    """


MIGRATIONS += [
    (2, "detections", f"""
        CREATE TABLE IF NOT EXISTS detections (
            event_id UUID,
            camera_id LowCardinality(String),
            model_name LowCardinality(String),
            model_version LowCardinality(String),
            shadow Bool,
            event_time DateTime64(3, 'UTC'),
            detection_index UInt16,
            label LowCardinality(String),
            score Float32,
            x1 Float32, y1 Float32, x2 Float32, y2 Float32
        )
        -- Filled by the engine from inference_events (one insert feeds both), so a detection exists exactly
        -- when its event does.
        {_events_engine("camera_id, event_time, event_id, detection_index", 30, partition="toYYYYMMDD(event_time)")}
    """),
    *_view_and_backfill(3, "detections_from_inference", "detections_backfill",
                        "detections_from_inference", "detections", _DETECTIONS_SELECT),
    (5, "inference_minute", _rollup("inference_minute", "camera_id, model_name, model_version, shadow", [
        "camera_id LowCardinality(String)",
        "model_name LowCardinality(String)",
        "model_version LowCardinality(String)",
        "shadow Bool",
        "frames SimpleAggregateFunction(sum, UInt64)",
        "detections SimpleAggregateFunction(sum, UInt64)",
        "empty_frames SimpleAggregateFunction(sum, UInt64)",
    ])),
    *_view_and_backfill(6, "inference_minute_view", "inference_minute_backfill",
                        "inference_minute_from_inference", "inference_minute", _INFERENCE_MINUTE_SELECT),
    (8, "latency_minute", _rollup("latency_minute", "model_name, stage, model_version, camera_id", [
        "model_name LowCardinality(String)",
        "model_version LowCardinality(String)",
        "camera_id LowCardinality(String)",
        "stage LowCardinality(String)",
        "latency_ms AggregateFunction(quantiles(0.5, 0.95, 0.99), Float64)",
        "samples SimpleAggregateFunction(sum, UInt64)",
    ])),
    *_view_and_backfill(9, "latency_minute_view", "latency_minute_backfill",
                        "latency_minute_from_inference", "latency_minute", _LATENCY_MINUTE_SELECT),
    (11, "detections_minute", _rollup("detections_minute", "label, camera_id, model_name, shadow", [
        "camera_id LowCardinality(String)",
        "model_name LowCardinality(String)",
        "shadow Bool",
        "label LowCardinality(String)",
        "detections SimpleAggregateFunction(sum, UInt64)",
        "score_sum SimpleAggregateFunction(sum, Float64)",
    ])),
    *_view_and_backfill(12, "detections_minute_view", "detections_minute_backfill",
                        "detections_minute_from_inference", "detections_minute", _DETECTIONS_MINUTE_SELECT),
    (14, "monitoring_events", f"""
        CREATE TABLE IF NOT EXISTS monitoring_events (
            event_id UUID,
            trace_id String,
            source LowCardinality(String),
            producer LowCardinality(String),
            kind LowCardinality(String),      -- camera_status, drift_alert, model_status
            subject String,                   -- the camera id or the model name
            event_time DateTime64(3, 'UTC'),
            ingest_time DateTime64(3, 'UTC'),
            stored_time DateTime64(3, 'UTC') DEFAULT now64(3),
            detail String                     -- the event's payload as JSON
        )
        {_events_engine("kind, subject, event_time, event_id", 30, partition="toYYYYMMDD(event_time)")}
    """),
    (15, "camera_health", f"""
        CREATE TABLE IF NOT EXISTS camera_health (
            event_id UUID,
            camera_id LowCardinality(String),
            event_time DateTime64(3, 'UTC'),
            state LowCardinality(String),
            reason String,
            fps_read Float64,
            fps_produced Float64,
            frames_dropped UInt64,
            frames_skipped UInt64,
            reconnects UInt32,
            last_frame_time Nullable(DateTime64(3, 'UTC'))
        )
        {_events_engine("camera_id, event_time, event_id", 90, partition="toYYYYMM(event_time)")}
    """),
    (16, "drift_scores", f"""
        CREATE TABLE IF NOT EXISTS drift_scores (
            event_id UUID,
            model_name LowCardinality(String),
            feature LowCardinality(String),
            metric LowCardinality(String),
            camera_id LowCardinality(String),
            score Float64,
            threshold Float64,
            window_start DateTime64(3, 'UTC'),
            window_end DateTime64(3, 'UTC'),
            event_time DateTime64(3, 'UTC')
        )
        {_events_engine("model_name, feature, metric, event_time, event_id", 400, partition="toYYYYMM(event_time)")}
    """),
    (17, "dead_letters", f"""
        CREATE TABLE IF NOT EXISTS dead_letters (
            event_id UUID,                    -- derived from the dead letter's own topic, partition and offset
            event_time DateTime64(3, 'UTC'),  -- when it was dead-lettered (its Kafka timestamp)
            dlq_partition Int32,
            dlq_offset Int64,
            reason LowCardinality(String),
            error String,
            service LowCardinality(String),
            origin_topic LowCardinality(String),
            origin_partition Int32,
            origin_offset Int64,
            message_key String,
            message_bytes UInt32
        )
        {_events_engine("origin_topic, event_time, event_id", 30, partition="toYYYYMM(event_time)")}
    """),
    (18, "camera_minute", _rollup("camera_minute", "camera_id", [
        "camera_id LowCardinality(String)",
        "fps_produced AggregateFunction(avg, Float64)",
        "fps_read AggregateFunction(avg, Float64)",
        "frames_dropped_min SimpleAggregateFunction(min, UInt64)",
        "frames_dropped_max SimpleAggregateFunction(max, UInt64)",
        "last_state AggregateFunction(argMax, LowCardinality(String), DateTime64(3, 'UTC'))",
        "reports SimpleAggregateFunction(sum, UInt64)",
    ])),
    (19, "camera_minute_view", _view("camera_minute_from_health", "camera_minute", _CAMERA_MINUTE_SELECT)),
    (20, "dead_letters_minute", _rollup("dead_letters_minute", "origin_topic, reason, service", [
        "origin_topic LowCardinality(String)",
        "reason LowCardinality(String)",
        "service LowCardinality(String)",
        "letters SimpleAggregateFunction(sum, UInt64)",
    ])),
    (21, "dead_letters_minute_view", _view("dead_letters_minute_from_dead_letters", "dead_letters_minute",
                                           _DEAD_LETTERS_MINUTE_SELECT)),
    (22, "annotations", f"""
        CREATE TABLE IF NOT EXISTS annotations (
            event_id UUID,
            task_id String,
            kind LowCardinality(String),      -- task or label
            camera_id LowCardinality(String),
            frame_event_id String,
            model_name LowCardinality(String),
            reason LowCardinality(String),
            annotator LowCardinality(String),
            rejected Bool,
            labels Array(LowCardinality(String)),
            priority Float64,
            event_time DateTime64(3, 'UTC')
        )
        {_events_engine("task_id, kind, event_time, event_id", 400, partition="toYYYYMM(event_time)")}
    """),
    (23, "model_versions", f"""
        CREATE TABLE IF NOT EXISTS model_versions (
            event_id UUID,
            model_name LowCardinality(String),
            model_version String,
            model_precision LowCardinality(String),
            stage LowCardinality(String),     -- candidate, primary, canary, shadow, retired
            artifact String,
            metadata Map(String, String),
            trained_on Array(String),
            event_time DateTime64(3, 'UTC')
        )
        {_events_engine("model_name, model_version, event_time, event_id", 3650, partition=None)}
    """),
]

MIGRATIONS += [
    (24, "inference_staging", """
        -- Each batch of vigil.inference is parsed by the engine itself (FORMAT Protobuf) into this table, then
        -- moved into inference_events minus the ids already stored, and the table is emptied: see
        -- services/metrics/protobuf_ingest.py. Column names follow the protobuf fields (nested with _ or .).
        CREATE TABLE IF NOT EXISTS inference_staging (
            envelope_event_id String,
            envelope_trace_id String,
            envelope_event_time_seconds Int64,
            envelope_event_time_nanos Int32,
            envelope_ingest_time_seconds Int64,
            envelope_ingest_time_nanos Int32,
            camera_id String,
            frame_event_id String,
            frame_sequence UInt64,
            model_name String,
            model_version String,
            model_precision String,
            `detections.label` Array(String),
            `detections.score` Array(Float32),
            `detections.box_x1` Array(Float32),
            `detections.box_y1` Array(Float32),
            `detections.box_x2` Array(Float32),
            `detections.box_y2` Array(Float32),
            stage_latency_ms Map(String, Float64),
            width UInt32,
            height UInt32,
            shadow Bool,
            kafka_timestamp_ms Int64,
            batch_index UInt32
        ) ENGINE = Memory
    """),
]

MIGRATIONS += [
    # Two more, for batches parsed ahead of their write while the previous batch is stored (protobuf_ingest.py).
    (25, "inference_staging_0", "CREATE TABLE IF NOT EXISTS inference_staging_0 AS inference_staging"),
    (26, "inference_staging_1", "CREATE TABLE IF NOT EXISTS inference_staging_1 AS inference_staging"),
]

MIGRATIONS += [
    (27, "sensor_anomalies", f"""
        -- One row per scored sensor reading (vigil.inference.sensors), flagged or not, so a sensor's score is
        -- there to plot beside its anomalies.
        CREATE TABLE IF NOT EXISTS sensor_anomalies (
            event_id UUID,
            trace_id String,
            sensor_id LowCardinality(String),
            quantity LowCardinality(String),
            unit LowCardinality(String),
            value Float64,
            model_name LowCardinality(String),
            model_version LowCardinality(String),
            score Float32,
            anomaly Bool,
            threshold Float32,
            reading_event_id UUID,
            event_time DateTime64(3, 'UTC'),
            produced_time DateTime64(3, 'UTC'),
            features Map(LowCardinality(String), Float64)
        )
        {_events_engine("sensor_id, event_time, event_id", 30, partition="toYYYYMMDD(event_time)")}
    """),
]

MIGRATIONS += [
    # Drift scores come from every closed window (vigil.drift.windows), one row per feature and statistic, no longer
    # from alerts: what a row is about (subject, sensor, model version), the verdict and the window's state. Rows
    # stored before have window_status '' (a drift alert's one feature).
    (28, "drift_scores_of_windows", """
        ALTER TABLE drift_scores
            ADD COLUMN IF NOT EXISTS subject LowCardinality(String) AFTER event_time,
            ADD COLUMN IF NOT EXISTS sensor_id LowCardinality(String) AFTER subject,
            ADD COLUMN IF NOT EXISTS model_version LowCardinality(String) AFTER sensor_id,
            ADD COLUMN IF NOT EXISTS drifted Bool DEFAULT score > threshold AFTER model_version,
            ADD COLUMN IF NOT EXISTS p_value Nullable(Float64) AFTER drifted,
            ADD COLUMN IF NOT EXISTS window_count UInt32 AFTER p_value,
            ADD COLUMN IF NOT EXISTS reference_count UInt32 AFTER window_count,
            ADD COLUMN IF NOT EXISTS window_status LowCardinality(String) AFTER reference_count,
            ADD COLUMN IF NOT EXISTS alert_state LowCardinality(String) AFTER window_status
    """),
    (29, "drift_windows", f"""
        -- Every closed drift window, scored or not: a window with too few events ('insufficient_data') or one that
        -- built the reference has no scores, and is still seen here.
        CREATE TABLE IF NOT EXISTS drift_windows (
            event_id UUID,
            subject LowCardinality(String),   -- camera/<id>, camera/<id>|<model>|<version>, sensor/<id>
            camera_id LowCardinality(String),
            sensor_id LowCardinality(String),
            model_name LowCardinality(String),
            model_version LowCardinality(String),
            window_start DateTime64(3, 'UTC'),
            window_end DateTime64(3, 'UTC'),
            event_time DateTime64(3, 'UTC'),  -- the window's end
            count UInt32,                     -- events in the window
            status LowCardinality(String),    -- scored, insufficient_data, reference
            alert_state LowCardinality(String),  -- ok, drifting, alert (after this window)
            features UInt16,                  -- scores computed
            drifted_features Array(LowCardinality(String))
        )
        {_events_engine("subject, event_time, event_id", 400)}
    """),
    (30, "drift_alerts", f"""
        -- Drift alerts raised and cleared (also in monitoring_events, kind drift_alert, as JSON): open alerts are
        -- the subjects whose newest row is 'raised'.
        CREATE TABLE IF NOT EXISTS drift_alerts (
            event_id UUID,
            subject LowCardinality(String),
            camera_id LowCardinality(String),
            sensor_id LowCardinality(String),
            model_name LowCardinality(String),
            model_version LowCardinality(String),
            state LowCardinality(String),     -- raised, cleared
            windows UInt32,                   -- consecutive drifting (raised) or clean (cleared) windows
            window_start DateTime64(3, 'UTC'),
            window_end DateTime64(3, 'UTC'),
            event_time DateTime64(3, 'UTC'),
            top_features Array(LowCardinality(String)),
            top_metrics Array(LowCardinality(String)),
            top_scores Array(Float64),
            top_thresholds Array(Float64)
        )
        {_events_engine("subject, event_time, event_id", 400)}
    """),
]

# Drift alerts a store holds from before drift_alerts (in monitoring_events only, their detail as the JSON of the
# DriftAlert: field names as in the proto, defaults left out), as the sink now writes them (rows.py: subject as
# drift_subject builds it; an alert naming one feature and no list has that feature as its list).
_DRIFT_ALERTS_FROM_MONITORING = """
    INSERT INTO drift_alerts (event_id, subject, camera_id, sensor_id, model_name, model_version, state, windows,
                              window_start, window_end, event_time, top_features, top_metrics, top_scores,
                              top_thresholds)
    SELECT event_id,
           arrayStringConcat(arrayFilter(part -> part != '', [
               multiIf(sensor_id != '', concat('sensor/', sensor_id), camera_id != '', concat('camera/', camera_id), ''),
               model_name, model_version]), '|'),
           camera_id, sensor_id, model_name, model_version, if(state = '', 'raised', state), windows,
           parseDateTime64BestEffortOrZero(JSONExtractString(detail, 'window_start'), 3, 'UTC'),
           parseDateTime64BestEffortOrZero(JSONExtractString(detail, 'window_end'), 3, 'UTC'),
           event_time,
           if(empty(top) AND feature != '', [feature], arrayMap(x -> JSONExtractString(x, 'feature'), top)),
           if(empty(top) AND feature != '', [JSONExtractString(detail, 'metric')],
              arrayMap(x -> JSONExtractString(x, 'metric'), top)),
           if(empty(top) AND feature != '', [JSONExtractFloat(detail, 'score')],
              arrayMap(x -> JSONExtractFloat(x, 'score'), top)),
           if(empty(top) AND feature != '', [JSONExtractFloat(detail, 'threshold')],
              arrayMap(x -> JSONExtractFloat(x, 'threshold'), top))
    FROM (SELECT event_id, event_time, detail, JSONExtractString(detail, 'camera_id') AS camera_id,
                 JSONExtractString(detail, 'sensor_id') AS sensor_id, JSONExtractString(detail, 'model_name') AS model_name,
                 JSONExtractString(detail, 'model_version') AS model_version, JSONExtractString(detail, 'state') AS state,
                 JSONExtractUInt(detail, 'windows') AS windows, JSONExtractString(detail, 'feature') AS feature,
                 JSONExtractArrayRaw(detail, 'top_features') AS top
          FROM monitoring_events WHERE kind = 'drift_alert' LIMIT 1 BY event_id)
"""

MIGRATIONS += [
    (31, "drift_alerts_backfill", _DRIFT_ALERTS_FROM_MONITORING),
]

MIGRATIONS += [
    # Annotation (issue #11): the annotations table, made before the contracts, becomes one row per AnnotationLabel
    # (vigil.annotations): kind is now 'submission' or 'review' (no sink ever wrote the 'task'/'label' rows it was
    # made for), with the label's status, verdict, reviewer, box count and the agreement of a task labelled twice;
    # labels is the class of each box. A task's priority is the task's, in annotation_tasks.
    (32, "annotations_of_labels", """
        ALTER TABLE annotations
            ADD COLUMN IF NOT EXISTS label_id String AFTER event_time,
            ADD COLUMN IF NOT EXISTS status LowCardinality(String) AFTER label_id,
            ADD COLUMN IF NOT EXISTS verdict LowCardinality(String) AFTER status,
            ADD COLUMN IF NOT EXISTS reviewer LowCardinality(String) AFTER verdict,
            ADD COLUMN IF NOT EXISTS model_version LowCardinality(String) AFTER reviewer,
            ADD COLUMN IF NOT EXISTS box_count UInt16 AFTER model_version,
            ADD COLUMN IF NOT EXISTS agreement Nullable(Float64) AFTER box_count,
            ADD COLUMN IF NOT EXISTS schema_version LowCardinality(String) AFTER agreement,
            DROP COLUMN IF EXISTS priority
    """),
    (33, "annotation_tasks", """
        -- The annotation queue as the compacted vigil.annotation.tasks holds it: every task in its latest state
        -- (the highest revision), for the queue depth by state. A row per revision is inserted, the engine keeps
        -- the highest; queries take each task's highest revision themselves (LIMIT 1 BY), merged or not.
        CREATE TABLE IF NOT EXISTS annotation_tasks (
            event_id UUID,                    -- uuid5 of (task id, revision): a revision delivered again is one row
            source_event_id String,           -- the envelope's event id of the AnnotationTask
            task_id String,
            revision UInt64,
            state LowCardinality(String),     -- open, leased, submitted, accepted, rejected
            camera_id LowCardinality(String),
            frame_event_id String,
            model_name LowCardinality(String),
            model_version LowCardinality(String),
            reason LowCardinality(String),    -- the selection rule: uncertain, shadow_disagreement, ...
            priority Float64,
            labels_wanted UInt8,              -- 2: in the share labelled twice for agreement
            submissions UInt8,
            lease_holders Array(LowCardinality(String)),
            schema_version LowCardinality(String),
            captured_at DateTime64(3, 'UTC'),
            -- The envelope's time: the annotation service keeps the task's creation envelope in every revision, so
            -- this is when the task was made, the same in a revision published again (the sink's dedupe looks the
            -- id up around it).
            event_time DateTime64(3, 'UTC'),
            published_time DateTime64(3, 'UTC'),  -- when the revision was first published (its Kafka timestamp)
            INDEX event_id_bloom event_id TYPE bloom_filter GRANULARITY 4,
            INDEX event_time_minmax event_time TYPE minmax GRANULARITY 1
        )
        -- Not partitioned (a task's revisions must meet in one part to be replaced) and no TTL: like the
        -- compacted topic, the table keeps every task's latest state; a task is one small row once merged.
        ENGINE = ReplacingMergeTree(revision)
        ORDER BY task_id
    """),
]

MIGRATIONS += [
    (34, "dataset_events", f"""
        -- The datasets' audit trail (issue #12): every DatasetVersion on vigil.datasets, one row per event: a
        -- version committed or imported, a tag set, an export, a garbage collection; who did it and what it did.
        -- Kept forever, like the topic: a model's lineage points back to the versions it was trained on.
        CREATE TABLE IF NOT EXISTS dataset_events (
            event_id UUID,
            dataset LowCardinality(String),
            version String,                      -- the content-addressed version the event is about
            action LowCardinality(String),       -- commit, tag, export, import, gc
            actor LowCardinality(String),        -- a person (CLI) or a service (datasets)
            message String,                      -- the commit message, or what the action did
            branch LowCardinality(String),
            tag String,
            item_count UInt64,
            parent_versions Array(String),
            manifest String,                     -- s3://bucket/key of the version's manifest
            manifest_sha256 String,
            statistics Map(LowCardinality(String), UInt64),  -- items, boxes, split.train, class.person, ...
            schema_version LowCardinality(String),
            event_time DateTime64(3, 'UTC')
        )
        {_events_engine("dataset, event_time, event_id", None)}
    """),
]

MIGRATIONS += [
    # Closing the loop (issue #13): training jobs and rollouts, each step an event on Kafka and a row here.
    (35, "training_runs", f"""
        -- Every TrainingRun on vigil.training, one row per report: a job started, each step's progress, and its
        -- outcome (eligible, refused at the gate, failed) with the candidate's and the champion's mAP@0.5. A job's
        -- run_id is derived from (dataset version, base model); its state is its newest report.
        CREATE TABLE IF NOT EXISTS training_runs (
            event_id UUID,
            run_id String,
            dataset LowCardinality(String),
            dataset_version String,
            base_model LowCardinality(String),
            state LowCardinality(String),        -- started, progress, eligible, refused, failed
            step LowCardinality(String),         -- proposals, fit, calibrate, evaluate, import, ...
            done UInt32,
            total UInt32,
            eta_s Nullable(Float64),             -- seconds the step is expected to take still; NULL: unknown
            candidate_name LowCardinality(String),
            candidate_version String,
            champion_name LowCardinality(String),
            champion_version String,
            candidate_map50 Float64,
            champion_map50 Float64,
            reasons Array(String),               -- why the gate refused it, or why the job failed
            elapsed_s Float64,                   -- seconds since the job started
            producer LowCardinality(String),
            event_time DateTime64(3, 'UTC')
        )
        -- Kept as long as the registry's history (model_versions): how a model version came to be.
        {_events_engine("base_model, run_id, event_time, event_id", 3650)}
    """),
    (36, "rollout_events", f"""
        -- Every RolloutEvent on vigil.rollouts: a candidate version's steps (shadow, canary, promoted,
        -- rolled_back), why each was taken and the live checks measured over the stage it ends. A rollback is also
        -- a MonitoringEvent on vigil.monitoring (in monitoring_events, kind rollout), never a second row here.
        CREATE TABLE IF NOT EXISTS rollout_events (
            event_id UUID,
            model_name LowCardinality(String),
            candidate_version String,
            candidate_precision LowCardinality(String),
            champion_name LowCardinality(String),
            champion_version String,
            stage LowCardinality(String),        -- shadow, canary, promoted, rolled_back
            previous_stage LowCardinality(String),
            reason String,
            checks Map(LowCardinality(String), Float64),  -- frames, error_rate, latency_p95_ms, disagreement, ...
            canary_share Float64,
            actor LowCardinality(String),        -- rollout (the controller) or a person
            event_time DateTime64(3, 'UTC')
        )
        -- Kept forever, like the topic: with the registry's history it is how a model came to serve.
        {_events_engine("model_name, event_time, event_id", None)}
    """),
]

MIGRATIONS += [
    # RolloutEvent gained the candidate's registry version (candidate_version is the version its results carry) and
    # the cameras it was trained on (whose drift references are re-learnt once it is promoted).
    (37, "rollout_events_cameras", """
        ALTER TABLE rollout_events
            ADD COLUMN IF NOT EXISTS registry_version UInt32 AFTER candidate_precision,
            ADD COLUMN IF NOT EXISTS cameras Array(LowCardinality(String)) AFTER actor
    """),
]
