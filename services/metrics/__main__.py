"""The metrics sink: vigil.inference, vigil.monitoring and vigil.dlq → ClickHouse, and the read-only query API
over it."""
from __future__ import annotations

import threading

from libs.common.kafka import KafkaRunner
from libs.common.logs import get_logger
from libs.common.ops import flag_check
from libs.common.service import start_service
from libs.common.settings import KafkaSettings
from libs.common.topics import INFERENCE, MONITORING, ensure_topics
from services.metrics.api import QueryApi
from services.metrics.kafka_adapter import metrics_batch_handler, record_consumer_lag
from services.metrics.settings import MetricsSettings
from services.metrics.sink import EventSink
from services.metrics.store import MetricsStore


def main() -> None:
    settings = MetricsSettings()
    kafka = KafkaSettings()
    runtime = start_service("metrics", settings)
    log = get_logger()
    store = MetricsStore.open(settings.store_path, settings.clickhouse_url, settings.query_max_rows,
                             settings.query_max_seconds)
    store.migrate()
    store_open = threading.Event()
    store_open.set()
    if kafka.create_topics:
        ensure_topics(kafka.client_config(), kafka.replication_factor)
    api = QueryApi(store, settings.api_host, settings.api_port).start()
    log.info("query api listening", url=f"http://{settings.api_host}:{api.port}/api/query")

    runner = KafkaRunner(
        kafka, service="metrics", group_id="vigil-metrics", topics=[INFERENCE, MONITORING, kafka.dlq_topic],
        handler=metrics_batch_handler(EventSink(store), kafka.dlq_topic),
        max_batch=settings.batch_max_events, max_wait_s=settings.batch_max_wait_s,
        consumer_overrides={"statistics.interval.ms": 5000, "stats_cb": record_consumer_lag},
    )
    runtime.health.liveness["consume_loop"] = runner.heartbeat.check
    runtime.health.readiness["store_open"] = flag_check(store_open, "metrics store open")
    runtime.health.readiness["kafka_assigned"] = flag_check(runner.assigned, "partitions assigned")
    try:
        runner.run(runtime.stop)
    finally:
        api.stop()
        store.close()
        runtime.close()


if __name__ == "__main__":
    main()
