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
