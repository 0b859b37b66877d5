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
from cli.stack.component import ComponentSpec, StackPaths
from libs.common.cache_dir import default_cache_dir
from cli.stack.supervisor import Supervisor, python_module_argv
from libs.common.service_declaration import ServiceDeclaration
from services.catalog import SERVICES
from services.datasets.settings import DatasetsSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = REPO_ROOT / ".state"
SEAWEEDFS_GRPC_OFFSET = 10000  # weed serves each component's gRPC on its HTTP port + this


def _service_port_defaults() -> dict[str, int]:
    """Each service's ops port and listening ports, by their stack-wide names, as the declarations give them."""
    from services.catalog import SERVICES

    defaults: dict[str, int] = {}
    for service in SERVICES:
        defaults[service.ops_port_name] = service.local_ops_port
        defaults.update({port.name: port.local_port for port in service.ports})
    return defaults


@dataclass
class StackPorts:
    """The stack's ports: the infrastructure's as fields, the services' by the names their declarations give
    (`ports.grpc`, `ports.inference_ops`, ...), so a new service brings its ports with its declaration."""

    kafka: int = 9092
    kafka_controller: int = 9093
    s3: int = 8333
    s3_master: int = 9333
    s3_volume: int = 8380
    s3_filer: int = 8888
    rtsp: int = 8554
    services: dict[str, int] = field(default_factory=_service_port_defaults)

    def __getattr__(self, name: str) -> int:
        # Only called for names that are not fields: a service port.
        services = self.__dict__.get("services", {})
        if name in services:
            return services[name]
        raise AttributeError(f"the stack has no port named {name!r}")

    @classmethod
    def from_dict(cls, raw: dict) -> "StackPorts":
        """Reads stack.json's ports; a service declared after the stack was created gets its default port."""
        infra = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__ and k != "services"}
        services = {**_service_port_defaults(), **raw.get("services", {}),
                    # stack.json written before services declared their ports kept them beside Kafka's.
                    **{k: v for k, v in raw.items() if k not in cls.__dataclass_fields__}}
        return cls(**infra, services=services)

    @classmethod
    def free(cls) -> "StackPorts":
        """Ports nobody listens on now, for a test stack beside a running one."""
        names = [n for n in cls.__dataclass_fields__ if n != "services"] + list(_service_port_defaults())
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
                return cls.from_dict(ports)


@dataclass
class StackConfig:
    ports: StackPorts = field(default_factory=StackPorts)
    s3_access_key: str = "vigil"
    # Generated per stack on first `up` and kept in the state directory only (mode 0600), never in git.
    s3_secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # Read-only credentials of the dataset store's bucket, for its readers (training, exports): separate from the
    # writer's (the datasets service and imports use the S3 keys above).
    datasets_read_access_key: str = "vigil-datasets-read"
    datasets_read_secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    camera_id: str = "demo"
    sample_fps: float = 5.0

    @classmethod
    def load_or_create(cls, state: Path, ports: StackPorts | None = None) -> "StackConfig":
        path = state / "stack.json"
        if path.exists():
            raw = json.loads(path.read_text())
            config = cls(ports=StackPorts.from_dict(raw.pop("ports")), **raw)
            if set(cls.__dataclass_fields__) - {"ports"} <= raw.keys():
                return config
            # A field added since the stack was created (a generated key): kept from now on, so it stays the same.
        else:
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
    # The models the inference service starts with: it loads them from the cache and never builds them.
    from tools.darknet_converter import ensure_default_model
    from tools.sensor_anomaly_training import ensure_sensor_anomaly_model
    from tools.extra_models import ensure_face_model
    ensure_default_model(cache)
    ensure_sensor_anomaly_model(cache)
    ensure_face_model(cache)  # annotation blurs faces with it before people see a frame


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
                             filer_port=p.s3_filer, access_key=c.s3_access_key, secret_key=c.s3_secret_key,
                             readers=(objectstore.ReadOnlyIdentity("vigil-datasets-reader", c.datasets_read_access_key,
                                                                   c.datasets_read_secret_key,
                                                                   (DatasetsSettings().bucket,)),)),
            camera.spec(self.paths, port=p.rtsp, path=c.camera_id),
        ]
        services = [self._service_spec(service, env) for service in sorted(SERVICES, key=lambda s: s.start_rank)]
        return infra + services

    def _service_spec(self, service: ServiceDeclaration, env: dict[str, str]) -> ComponentSpec:
        """A declared service as a process of this stack: its ports, its data directory, the shared env."""
        ports = self.config.ports
        own = {service.env_var("ops_port"): str(getattr(ports, service.ops_port_name))}
        for port in service.ports:
            own[service.env_var(port.setting)] = str(getattr(ports, port.name))
        if service.data_volume is not None:
            # Named after the path inside the volume (e.g. data/clickhouse), as the stack always kept it.
            own[service.env_var(service.data_volume.setting)] = str(self.paths.data(Path(service.data_volume.path).name))
        for setting in service.pod_name_settings:
            own[service.env_var(setting)] = "local-1"
        for peer in service.peer_addresses:
            own[service.env_var(peer.setting)] = f"127.0.0.1:{getattr(ports, peer.port)}"
        if service.name == "inference":
            # The face model annotation asks inference for (built into the cache by install_stack).
            from tools.extra_models import FACE_MODEL_NAME, face_model_dir
            own["VIGIL_INFERENCE_EXTRA_MODEL_DIRS"] = json.dumps([str(face_model_dir(self.paths.cache))])
            own["VIGIL_INFERENCE_PRELOAD_MODELS"] = json.dumps([FACE_MODEL_NAME])
        if service.name == "training":  # the dataset store's reader: its read-only keys, not the writer's
            own[service.env_var("datasets_read_access_key")] = self.config.datasets_read_access_key
            own[service.env_var("datasets_read_secret_key")] = self.config.datasets_read_secret_key
        ops_port = getattr(ports, service.ops_port_name)
        return ComponentSpec(
            service.name, python_module_argv(service.module), lambda: service_ready(ops_port),
            env={**env, "VIGIL_CACHE_DIR": str(self.paths.cache), **own, **self.extra_env.get(service.name, {})},
            cwd=REPO_ROOT, start_timeout_s=service.start_timeout_s,
        )

    def up(self, progress=print) -> None:
        """Starts what is not running, then makes sure the demo camera is in the camera registry."""
        self.supervisor.up(progress=progress)
        self.register_camera(self.config.camera_id, self.config.camera_url, self.config.sample_fps)

    def register_camera(self, camera_id: str, url: str, sample_fps: float, **fields) -> None:
        from libs.common.settings import KafkaSettings
        from protos import events_pb2
        from services.ingest.camera_registry import CameraRegistryClient

        config = events_pb2.CameraConfig(camera_id=camera_id, url=url, sample_fps=sample_fps, **fields)
        registry = CameraRegistryClient(KafkaSettings(bootstrap_servers=self.config.kafka_bootstrap))
        if registry.list().get(camera_id) != config:
            registry.put(config)

    def unregister_camera(self, camera_id: str) -> None:
        from libs.common.settings import KafkaSettings
        from services.ingest.camera_registry import CameraRegistryClient

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
            ("dataset commit (POST)", f"http://127.0.0.1:{p.datasets_commit}/commit"),
            ("ops (metrics, health)", ", ".join(f"{s.name} http://127.0.0.1:{getattr(p, s.ops_port_name)}"
                                               for s in SERVICES)),
            ("logs", str(self.paths.logs())),
        ]
