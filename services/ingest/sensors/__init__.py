"""Sensor ingest: readings from devices (Kafka vigil.sensors.raw, or HTTP batches) are validated against the
sensor registry (compacted topic vigil.sensors.registry) and forwarded to vigil.sensors; rejects go to vigil.dlq.

Wiring: `services.ingest.sensors.ingest.SensorIngest(kafka, SensorSettings(), health).run(stop)`."""
