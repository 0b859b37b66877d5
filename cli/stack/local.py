"""The local stack: real Kafka, SeaweedFS (S3), a demo RTSP camera, and Vigil's services as separate
processes, all bound to 127.0.0.1, all state under one directory.

The stack's configuration (ports, generated credentials) is written to <state>/stack.json on first `up` and
read back by every later command, so `vigil status`, `tail` and `query` find what `up` started, and a
`down` then `up` comes back on the same ports with the same data."""
from __future__ import annotations

import json
import os
import secrets
import socket
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cli.stack import camera, kafka, objectstore
from cli.stack.component import ComponentSpec, StackPaths, default_cache_dir
from cli.stack.supervisor import Supervisor, python_module_argv

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = REPO_ROOT / ".state"
SEAWEEDFS_GRPC_OFFSET = 10000  # weed serves each component's gRPC on its HTTP port + this


@dataclass
class StackPorts:
    kafka: int = 9092
    kafka_controller: int = 9093
    s3: int = 8333
    s3_master: int = 9333
    s3_volume: int = 8380
    s3_filer: int = 8888
    rtsp: int = 8554
    grpc: int = 8001
    query_api: int = 8088
    ingest_ops: int = 9101
    sensors_http: int = 8090
    inference_ops: int = 9102
    metrics_ops: int = 9103

    @classmethod
    def free(cls) -> "StackPorts":
        """Ports nobody listens on now, for a test stack beside a running one."""
        names = list(cls.__dataclass_fields__)
        while True:
            sockets = []
            for _ in names:
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                sockets.append(s)
            ports = {name: s.getsockname()[1] for name, s in zip(names, sockets)}
            for s in sockets:
                s.close()
            # SeaweedFS reserves each of its HTTP ports + 10000 for gRPC and refuses to start on a port that
            # is another's reserved one: draw again in that (rare) case.
            taken = set(ports.values())
            if not any(port + SEAWEEDFS_GRPC_OFFSET in taken for port in taken):
                return cls(**ports)


@dataclass
class StackConfig:
    ports: StackPorts = field(default_factory=StackPorts)
    s3_access_key: str = "vigil"
    # Generated per stack on first `up` and kept in the state directory only (mode 0600), never in git.
    s3_secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    camera_id: str = "demo"
    sample_fps: float = 5.0

    @classmethod
    def load_or_create(cls, state: Path, ports: StackPorts | None = None) -> "StackConfig":
        path = state / "stack.json"
        if path.exists():
            raw = json.loads(path.read_text())
            return cls(ports=StackPorts(**raw.pop("ports")), **raw)
        config = cls(ports=ports or StackPorts())
        state.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(config), indent=2))
        path.chmod(0o600)
        return config

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.kafka}"

    @property
    def query_api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.query_api}"

    @property
    def camera_url(self) -> str:
        return f"rtsp://127.0.0.1:{self.ports.rtsp}/{self.camera_id}"

    def service_env(self) -> dict[str, str]:
        """What every Vigil service of this stack gets in its environment."""
        return {
            "VIGIL_KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "VIGIL_S3_ENDPOINT": f"127.0.0.1:{self.ports.s3}",
            "VIGIL_S3_ACCESS_KEY": self.s3_access_key,
            "VIGIL_S3_SECRET_KEY": self.s3_secret_key,
            "PYTHONUNBUFFERED": "1",
        }


def install_stack(cache: Path) -> None:
    """Downloads what the stack needs into the cache, once per machine (idempotent)."""
    kafka.install(cache)
    objectstore.install(cache)
    camera.install(cache)
    from services.inference.detector import ensure_default_model
    ensure_default_model(cache)


def service_ready(port: int) -> bool:
    """The service whose ops endpoint is on this port says it can work now (/readyz answers 200)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class LocalStack:
    def __init__(self, state: Path | None = None, cache: Path | None = None, ports: StackPorts | None = None,
                 extra_env: dict[str, dict[str, str]] | None = None) -> None:
        state = Path(state or os.environ.get("VIGIL_STATE_DIR") or DEFAULT_STATE_DIR).resolve()
        self.paths = StackPaths(state=state, cache=Path(cache or default_cache_dir()))
        self.config = StackConfig.load_or_create(state, ports)
        # Per-service environment overrides (tests tune batch sizes, thresholds...).
        self.extra_env = extra_env or {}
        self.supervisor = Supervisor(self.paths, self.specs())

    def install(self) -> None:
        install_stack(self.paths.cache)

    def specs(self) -> list[ComponentSpec]:
        p, c = self.config.ports, self.config
        env = c.service_env()
        infra = [
            kafka.spec(self.paths, port=p.kafka, controller_port=p.kafka_controller),
            objectstore.spec(self.paths, s3_port=p.s3, master_port=p.s3_master, volume_port=p.s3_volume,
                             filer_port=p.s3_filer, access_key=c.s3_access_key, secret_key=c.s3_secret_key),
            camera.spec(self.paths, port=p.rtsp, path=c.camera_id),
        ]
        services = [
            ComponentSpec(
                "metrics", python_module_argv("services.metrics"), lambda: service_ready(p.metrics_ops),
                env={**env, "VIGIL_METRICS_OPS_PORT": str(p.metrics_ops), "VIGIL_METRICS_API_PORT": str(p.query_api),
                     "VIGIL_METRICS_STORE_PATH": str(self.paths.data("clickhouse")), **self.extra_env.get("metrics", {})},
                cwd=REPO_ROOT,
            ),
            ComponentSpec(
                "inference", python_module_argv("services.inference"), lambda: service_ready(p.inference_ops),
                env={**env, "VIGIL_INFERENCE_OPS_PORT": str(p.inference_ops), "VIGIL_INFERENCE_GRPC_PORT": str(p.grpc),
                     "VIGIL_CACHE_DIR": str(self.paths.cache), **self.extra_env.get("inference", {})},
                cwd=REPO_ROOT, start_timeout_s=300,  # the first start on a machine converts the model
            ),
            ComponentSpec(
                "ingest", python_module_argv("services.ingest"), lambda: service_ready(p.ingest_ops),
                env={**env, "VIGIL_INGEST_OPS_PORT": str(p.ingest_ops), "VIGIL_INGEST_REPLICA_ID": "local-1",
                     "VIGIL_INGEST_SENSORS_HTTP_PORT": str(p.sensors_http),
                     **self.extra_env.get("ingest", {})},
                cwd=REPO_ROOT,
            ),
        ]
        return infra + services

    def up(self, progress=print) -> None:
        """Starts what is not running, then makes sure the demo camera is in the camera registry."""
        self.supervisor.up(progress=progress)
        self.register_camera(self.config.camera_id, self.config.camera_url, self.config.sample_fps)

    def register_camera(self, camera_id: str, url: str, sample_fps: float, **fields) -> None:
        from libs.common.settings import KafkaSettings
        from protos import events_pb2
        from services.ingest.registry import CameraRegistryClient

        config = events_pb2.CameraConfig(camera_id=camera_id, url=url, sample_fps=sample_fps, **fields)
        registry = CameraRegistryClient(KafkaSettings(bootstrap_servers=self.config.kafka_bootstrap))
        if registry.list().get(camera_id) != config:
            registry.put(config)

    def unregister_camera(self, camera_id: str) -> None:
        from libs.common.settings import KafkaSettings
        from services.ingest.registry import CameraRegistryClient

        CameraRegistryClient(KafkaSettings(bootstrap_servers=self.config.kafka_bootstrap)).remove(camera_id)

    def where_to_look(self) -> list[tuple[str, str]]:
        p = self.config.ports
        return [
            ("kafka", self.config.kafka_bootstrap),
            ("s3", f"http://127.0.0.1:{p.s3}"),
            ("camera", self.config.camera_url),
            ("grpc inference", f"127.0.0.1:{p.grpc}"),
            ("query api", f"{self.config.query_api_url}/api/query"),
            ("sensor readings (HTTP)", f"http://127.0.0.1:{p.sensors_http}/api/sensors/readings"),
            ("dashboard", f"{self.config.query_api_url}/"),
            ("ops (metrics, health)", ", ".join(f"{n} http://127.0.0.1:{port}" for n, port in
                                               (("ingest", p.ingest_ops), ("inference", p.inference_ops),
                                                ("metrics", p.metrics_ops)))),
            ("logs", str(self.paths.logs())),
        ]
