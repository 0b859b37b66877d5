"""Sensor ingest on its own (python -m services.ingest.sensors), with the ingest service's ops server and
settings: for tests and for sites that run sensors without cameras."""
from __future__ import annotations

from libs.common.service import start_service
from libs.common.settings import KafkaSettings
from libs.common.topics import ensure_topics
from services.ingest.sensors.ingest import SERVICE, SensorIngest
from services.ingest.sensors.settings import SensorSettings
from services.ingest.settings import IngestSettings


def main() -> None:
    kafka = KafkaSettings()
    runtime = start_service(SERVICE, IngestSettings())
    try:
        if kafka.create_topics:
            ensure_topics(kafka.client_config(), kafka.replication_factor)
        SensorIngest(kafka, SensorSettings(), runtime.health).run(runtime.stop)
    finally:
        runtime.close()


if __name__ == "__main__":
    main()
