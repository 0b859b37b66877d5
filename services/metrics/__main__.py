"""The metrics sink: vigil.inference, vigil.monitoring, vigil.drift.windows, the annotation topics, vigil.datasets,
vigil.training, vigil.rollouts and vigil.dlq → ClickHouse, the read-only query API over it, and the dashboard (with each camera's newest frame,
followed from vigil.frames)."""
from __future__ import annotations

import sys
import threading

from libs.common.kafka import DeliveringProducer, producer_config
from libs.common.logs import get_logger
from libs.common.ops import flag_check
from libs.common.service import start_service
from libs.common.settings import KafkaSettings
from libs.common.topics import ensure_topics
from services.metrics.api import QueryApi
from services.metrics.kafka_adapter import (SINK_TOPICS, LatestFrameFollower, MetricsBatchHandler,
                                            record_consumer_lag, store_status_announcer)
from services.metrics.latest_frames import LatestFrames
from services.metrics.prefetching_runner import PrefetchingKafkaRunner
from services.metrics.settings import MetricsSettings
from services.metrics.sink import EventSink
from services.metrics.store import MetricsStore
from services.metrics.store_failures import StoreHealth


def main() -> None:
    settings = MetricsSettings()
    kafka = KafkaSettings()
    runtime = start_service("metrics", settings)
    log = get_logger()
    # Not ready until the store is migrated, the API listens and partitions are assigned: registered first, so
    # that /readyz never answers yes while the rest is still starting.
    store_open, api_listening = threading.Event(), threading.Event()
    runtime.health.readiness["store_open"] = flag_check(store_open, "metrics store open and migrated")
    runtime.health.readiness["api_listening"] = flag_check(api_listening, "query api listening")
    store = MetricsStore.open(settings.store_path, settings.clickhouse_url, settings.query_max_rows,
                             settings.query_max_seconds, settings.query_max_memory_mb * 2**20)
    store.migrate()
    store_open.set()
    if kafka.create_topics:
        ensure_topics(kafka.client_config(), kafka.replication_factor)
    runtime.on_stop("metrics store", store.close)
    frames = LatestFrames(max_cameras=settings.live_frames_max_cameras, max_age_s=settings.live_frames_max_age_s)
    api = QueryApi(store, settings.api_host, settings.api_port, frames, token=settings.api_token).start()
    runtime.on_stop("query api", api.stop)
    log.info("query api and dashboard listening", url=f"http://{settings.api_host}:{api.port}/")
    api_listening.set()
    if settings.live_frames:
        runtime.start_task("latest-frames", LatestFrameFollower(kafka.client_config(), frames).run)

    # Failed attempts at storing in a row: readiness false and the store reported unavailable on vigil.monitoring
    # after store_failures_unready of them, until a batch is stored again.
    store_health = StoreHealth(settings.store_failures_unready, on_change=store_status_announcer(
        DeliveringProducer(producer_config(kafka, client_id="metrics-status"))))
    runtime.health.readiness["store_writable"] = store_health.check
    handler = MetricsBatchHandler(EventSink(store), kafka.dlq_topic, health=store_health)
    runner = PrefetchingKafkaRunner(
        kafka, service="metrics", group_id="vigil-metrics", topics=[*SINK_TOPICS, kafka.dlq_topic],
        handler=handler, prepare=handler.prepare,
        max_batch=settings.batch_max_events, max_wait_s=settings.batch_max_wait_s,
        # Bigger fetches: a backlog is caught up in batches of batch_max_events, not of librdkafka's 1 MiB.
        consumer_overrides={"statistics.interval.ms": 5000, "stats_cb": record_consumer_lag,
                            "max.partition.fetch.bytes": 8 * 1024 * 1024},
    )
    runtime.health.liveness["consume_loop"] = runner.heartbeat.check
    runtime.health.readiness["kafka_assigned"] = flag_check(runner.assigned, "partitions assigned")
    runtime.start_task("sink", runner.run)
    sys.exit(runtime.run())


if __name__ == "__main__":
    main()
