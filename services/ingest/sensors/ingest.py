"""SensorIngest: the registry follower, the validating consumer of vigil.sensors.raw and the HTTP endpoint,
started together and stopped cleanly. The ingest service runs it on a thread beside its cameras."""
from __future__ import annotations

import threading

from libs.common.kafka import KafkaRunner
from libs.common.logs import get_logger
from libs.common.ops import Health, Heartbeat, flag_check
from libs.common.settings import KafkaSettings
from libs.common.topics import SENSORS_RAW
from services.ingest.sensors.http_api import ReadingBatchIntake, SensorHttpApi
from services.ingest.sensors.kafka_adapter import ReadingPublisher, sensor_reading_batch_handler
from services.ingest.sensors.sensor_registry import SensorRegistry, sensor_registry_table
from services.ingest.sensors.settings import SensorSettings
from services.ingest.sensors.validation import ClockLimits

log = get_logger(__name__)

SERVICE = "ingest-sensors"


class SensorIngest:
    def __init__(self, kafka: KafkaSettings, settings: SensorSettings, health: Health) -> None:
        self.kafka = kafka
        self.settings = settings
        self.registry = SensorRegistry()
        self.consume_heartbeat = Heartbeat(max_age_s=60)
        if not settings.enabled:  # no client, no socket, no check
            return
        self.follower = self.registry.follower(sensor_registry_table(kafka.client_config(), "vigil-sensor-registry"))
        self.publisher = ReadingPublisher(kafka)
        # Bound here, not in run(), so that a port already taken fails the service at start.
        self.http = SensorHttpApi(
            ReadingBatchIntake(self.publisher, settings.http_max_readings, settings.delivery_timeout_s),
            settings.http_host, settings.http_port, settings.http_max_body_bytes,
        )
        health.liveness["sensors_consume_loop"] = self.consume_heartbeat.check
        health.liveness["sensors_registry_follower"] = self.follower.heartbeat.check
        # Not "partitions assigned": with more replicas than partitions some replicas rightly have none.
        health.readiness["sensors_registry_loaded"] = flag_check(self.follower.loaded, "sensor registry loaded")
        health.readiness["sensors_http"] = flag_check(self.http.listening, "sensor HTTP endpoint listening")

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.settings.enabled else None

    def run(self, stop: threading.Event) -> None:
        """Blocks until `stop` is set (returns at once when disabled). Readings are judged only once the
        registry has been read to its end: before that every sensor would look unknown."""
        if not self.settings.enabled:
            log.info("sensor ingest disabled")
            return
        helpers_stop = threading.Event()
        follower = threading.Thread(target=self.follower.run, args=(helpers_stop,), name="sensor-registry",
                                    daemon=True)
        follower.start()
        self.http.start()
        log.info("sensor HTTP endpoint listening",
                 url=f"http://{self.settings.http_host}:{self.http.port}/api/sensors/readings")
        try:
            while not self.follower.loaded.wait(0.5):
                self.consume_heartbeat.beat()
                if stop.is_set():
                    return
                if not follower.is_alive():
                    raise RuntimeError("the sensor registry follower stopped before the registry was loaded")
            KafkaRunner(
                self.kafka, service=SERVICE, group_id=self.settings.group_id, topics=[SENSORS_RAW],
                handler=sensor_reading_batch_handler(
                    self.registry, ClockLimits(self.settings.max_future_skew_s, self.settings.max_age_s)),
                max_batch=self.settings.batch_max_readings, heartbeat=self.consume_heartbeat,
            ).run(stop)
        finally:
            self.http.stop()  # waits for requests in flight
            undelivered = self.publisher.close()
            if undelivered:
                log.error("sensor readings from HTTP undelivered at shutdown", count=undelivered)
            helpers_stop.set()
            follower.join()
            log.info("sensor ingest stopped")
