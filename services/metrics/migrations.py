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
