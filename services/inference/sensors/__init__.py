"""The sensor path: sensor readings scored with the sensor anomaly model (features, scoring core, Kafka adapter)."""
