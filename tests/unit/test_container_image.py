"""deploy/Dockerfile read as instructions (no image can be built or run on these machines): the image that runs
carries the runtime dependencies only, the baked models stay read-only, and the pod's user owns the registry cache
the inference service downloads new model versions into (hot swap)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
POD_USER = "65532"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in logical]


def stages() -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    name = None
    for instruction, arguments in instructions((ROOT / "deploy" / "Dockerfile").read_text()):
        if instruction == "FROM":
            name = arguments.split(" AS ")[-1].strip() if " AS " in arguments else arguments
            found[name] = []
        found[name].append((instruction, arguments))
    return found


def runs(stage: list[tuple[str, str]]) -> str:
    return " && ".join(arguments for instruction, arguments in stage if instruction == "RUN")


def env(stage: list[tuple[str, str]]) -> dict[str, str]:
    pairs = {}
    for instruction, arguments in stage:
        if instruction == "ENV":
            pairs.update(item.split("=", 1) for item in shlex.split(arguments))
    return pairs


def inference_registry_cache_dir() -> str:
    for doc in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "inference.yaml").read_text()):
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            return next(e["value"] for e in container["env"] if e["name"] == "VIGIL_INFERENCE_REGISTRY_CACHE_DIR")
    raise AssertionError("no inference Deployment")


def test_the_image_that_runs_is_its_own_stage_after_the_builder():
    names = list(stages())
    assert len(names) == 2 and names[-1] == "runtime", names


def test_the_builder_bakes_the_models_with_the_full_toolchain_and_builds_a_runtime_only_venv():
    builder = runs(stages()["builder"])
    assert re.search(r"/opt/venv/bin/pip install [^&]*-r \S*requirements-runtime\.lock", builder)
    assert re.search(r"/opt/build-venv/bin/pip install [^&]*-r \S*/requirements\.lock", builder)
    assert "/opt/build-venv/bin/python -c \"from tools.darknet_converter import ensure_default_model" in builder
    assert "ensure_sensor_anomaly_model" in builder


def test_the_runtime_stage_installs_nothing_and_copies_only_the_runtime_venv_the_models_and_the_code():
    runtime = stages()["runtime"]
    assert "pip install" not in runs(runtime) and "requirements.lock" not in str(runtime)
    copied_from_builder = [arguments.split()[1:] for instruction, arguments in runtime
                           if instruction == "COPY" and arguments.startswith("--from=builder")]
    assert copied_from_builder == [["/opt/venv", "/opt/venv"], ["/var/cache/vigil/models", "/var/cache/vigil/models"],
                                   ["/app", "/app"]]
    assert env(runtime)["PATH"].startswith("/opt/venv/bin:")


def test_the_pods_user_owns_the_registry_cache_and_not_the_baked_models():
    runtime = stages()["runtime"]
    cache = env(runtime)["VIGIL_CACHE_DIR"]
    registry_cache = inference_registry_cache_dir()
    assert registry_cache.startswith(cache + "/"), "the manifests point the registry cache into the image's cache"
    made = re.search(r"install -d -o (\d+) -g (\d+) -m \d+ (\S+)", runs(runtime))
    assert made and made.groups() == (POD_USER, POD_USER, registry_cache)
    assert "chown" not in runs(runtime), "the baked models stay root's"
    assert runtime[-1] == ("USER", f"{POD_USER}:{POD_USER}")


def test_the_runtime_home_is_writable_under_a_read_only_root():
    assert env(stages()["runtime"])["HOME"] == "/tmp"


def test_everything_copied_from_the_build_context_exists():
    for name, stage in stages().items():
        for instruction, arguments in stage:
            if instruction == "COPY" and not arguments.startswith("--from="):
                for source in arguments.split()[:-1]:  # (the last is the destination)
                    assert (ROOT / source).exists(), f"{name}: COPY {source}"
