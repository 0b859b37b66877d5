"""Typed settings read from the environment. Every variable starts with VIGIL_; each class below documents
its own. `vigil config` prints them all, and the README's configuration reference is checked against it."""
from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """How every service reaches Kafka."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_KAFKA_", extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated.")
    security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    sasl_mechanism: str | None = Field(None, description="SASL mechanism, e.g. SCRAM-SHA-512.")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password.")
    create_topics: bool = Field(True, description="Create the topic catalog at start (idempotent).")
    replication_factor: int = Field(1, description="Replication factor of topics created at start.")
    dlq_topic: str = Field("vigil.dlq", description="Dead-letter topic for messages that cannot be processed.")

    def client_config(self) -> dict[str, str]:
        config = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        return config


class ObjectStoreSettings(BaseSettings):
    """How services reach the S3 object store (MinIO in Kubernetes, SeaweedFS locally)."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_S3_", extra="ignore")

    endpoint: str = Field("127.0.0.1:8333", description="S3 endpoint as host:port.")
    access_key: str = Field("vigil", description="S3 access key.")
    # No default: a secret never lives in code. The local stack generates one per state directory.
    secret_key: SecretStr | None = Field(None, description="S3 secret key (required by services that use S3).")
    secure: bool = Field(False, description="Use HTTPS.")
    region: str = Field("us-east-1", description="S3 region.")


class ServiceSettings(BaseSettings):
    """Settings every service has. A service's own class derives from this and sets its own prefix,
    e.g. VIGIL_INGEST_OPS_PORT."""

    model_config = SettingsConfigDict(extra="ignore")

    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")
    ops_host: str = Field("127.0.0.1", description="Address of the ops HTTP server (/metrics, /livez, /readyz).")
    ops_port: int = Field(0, description="Port of the ops HTTP server; 0 picks a free one.")
    shutdown_timeout_s: float = Field(20.0, description="How long in-flight work may take after SIGTERM.")
