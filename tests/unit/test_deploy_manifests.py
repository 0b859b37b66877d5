"""The Kubernetes manifests validate against the Kubernetes schemas and match the services in the tree."""
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
RUNNABLE_SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py"))


def documents():
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            yield path.name, doc


@pytest.mark.parametrize("name, doc", list(documents()), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_is_valid_kubernetes(name, doc):
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_every_runnable_service_is_deployed_with_meaningful_probes():
    workloads = {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] in ("Deployment", "StatefulSet")}
    assert sorted(name.removeprefix("vigil-") for name in workloads) == RUNNABLE_SERVICES
    for name, doc in workloads.items():
        container = doc["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][-1] == f"services.{name.removeprefix('vigil-')}"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_kustomization_and_skaffold_name_existing_files():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert all((K8S / r).is_file() for r in kustomization["resources"])
    skaffold = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    assert (ROOT / skaffold["build"]["artifacts"][0]["docker"]["dockerfile"]).is_file()
    assert all((ROOT / p).is_dir() for p in skaffold["manifests"]["kustomize"]["paths"])


def test_no_secret_values_in_manifests():
    for _, doc in documents():
        assert doc["kind"] != "Secret", "secrets are created by the operator, never kept in git"


def test_every_variable_the_manifests_set_is_a_setting_the_services_read():
    from cli.settings_reference import SETTINGS_CLASSES, environment_variables

    known = {var for _, cls in SETTINGS_CLASSES for var, _, _ in environment_variables(cls)}
    used = set()
    for _, doc in documents():
        if doc["kind"] == "ConfigMap":
            used |= set(doc["data"])
        elif doc["kind"] in ("Deployment", "StatefulSet"):
            used |= {e["name"] for c in doc["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    assert used - known == set(), "manifests set variables no service reads"


def workloads() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] in ("Deployment", "StatefulSet")}


def test_every_pod_runs_confined_non_root_under_the_runtime_default_seccomp_profile():
    for name, doc in workloads().items():
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 65532, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            assert security["readOnlyRootFilesystem"] is True, name


def test_what_a_pod_writes_is_a_volume_since_its_root_filesystem_is_read_only():
    for name, doc in workloads().items():
        pod = doc["spec"]["template"]["spec"]
        claims = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], f"{name}: /tmp (tempfile, HOME)"
        assert set(mounts.values()) <= set(volumes) | claims, f"{name}: a mount without a volume"


def test_the_inference_pod_can_write_registry_versions_for_hot_swap():
    pod = workloads()["vigil-inference"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    cache = env["VIGIL_INFERENCE_REGISTRY_CACHE_DIR"]
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert any(cache == path or cache.startswith(path.rstrip("/") + "/") for path in mounted), \
        "the registry cache is on a writable volume"
    owner = next(name for path, name in mounted.items() if cache == path or cache.startswith(path.rstrip("/") + "/"))
    assert "emptyDir" in volumes[owner]


def test_manifests_are_generated_from_the_current_declarations():
    from tools.gen_manifests import stale_files
    assert stale_files() == [], "run `python -m tools.gen_manifests` after changing a service's declaration"
