"""Sensor ingest on its own (python -m services.ingest.sensors), with the ingest service's ops server and
settings: for tests and for sites that run sensors without cameras."""
from __future__ import annotations

import sys

from libs.common.service import start_service
from libs.common.settings import KafkaSettings
from libs.common.topics import ensure_topics
from services.ingest.sensors.ingest import SERVICE, SensorIngest
from services.ingest.sensors.settings import SensorSettings
from services.ingest.settings import IngestSettings


def main() -> None:
    kafka = KafkaSettings()
    settings = SensorSettings()
    runtime = start_service(SERVICE, IngestSettings())
    if kafka.create_topics:
        ensure_topics(kafka.client_config(), kafka.replication_factor)
    if not settings.enabled:
        raise SystemExit("sensor ingest is disabled (VIGIL_SENSORS_ENABLED=false): nothing to run")
    runtime.start_task("sensors", SensorIngest(kafka, settings, runtime.health).run)
    sys.exit(runtime.run())


if __name__ == "__main__":
    main()
