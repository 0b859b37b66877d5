"""Writes deploy/k8s/<service>.yaml (a workload and its Service) for every declared service, and the kustomization
that lists them, from the services' declarations. `python -m tools.gen_manifests` (`--check` exits 1 when the
files on disk differ: a unit test runs that check, so a declaration change cannot ship without its manifests).

Shared resources (namespace.yaml, config.yaml) are written by hand."""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from libs.common.service_declaration import OPS_CONTAINER_PORT, ServiceDeclaration
from services.catalog import SERVICES, service as catalog_service

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
HAND_WRITTEN = ("namespace.yaml", "config.yaml")
NAMESPACE = "vigil"
POD_USER = 65532  # the image's USER
S3_SECRET = "vigil-s3"  # created by the operator (README), never kept in git


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: object) -> bool:  # a manifest reads better with repeats than with &id001
        return True


def _yaml(doc: dict) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120)


def _env(name: str, value: str) -> dict:
    return {"name": name, "value": value}


def _secret_env(name: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": S3_SECRET, "key": key}}}


def _container(service: ServiceDeclaration) -> dict:
    env = [_secret_env("VIGIL_S3_ACCESS_KEY", "access-key"), _secret_env("VIGIL_S3_SECRET_KEY", "secret-key"),
           # In a pod every listener binds all interfaces: the pod's network is the boundary.
           _env(service.env_var("ops_host"), "0.0.0.0"), _env(service.env_var("ops_port"), str(OPS_CONTAINER_PORT))]
    for port in service.ports:
        env.append(_env(service.env_var(port.host_setting), "0.0.0.0"))
        env.append(_env(service.env_var(port.setting), str(port.container_port)))
    for setting in service.pod_name_settings:
        env.append({"name": service.env_var(setting), "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    for peer in service.peer_addresses:
        peer_port = next(p for p in catalog_service(peer.service).ports if p.name == peer.port)
        env.append(_env(service.env_var(peer.setting),
                        f"{catalog_service(peer.service).kubernetes_name}:{peer_port.container_port}"))
    for secret in service.secret_settings:
        env.append({"name": service.env_var(secret.setting),
                    "valueFrom": {"secretKeyRef": {"name": secret.secret, "key": secret.key}}})
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    for scratch in service.scratch_dirs:
        env.append(_env(service.env_var(scratch.setting), scratch.path))
        mounts.append({"name": scratch.volume_name, "mountPath": scratch.path})
    if service.data_volume is not None:
        env.append(_env(service.env_var(service.data_volume.setting), service.data_volume.path))
        mounts.append({"name": "data", "mountPath": service.data_volume.mount_path})
    ops_probe = {"path": "/readyz", "port": "ops"}
    return {
        "name": service.name,
        "image": "vigil",
        "command": ["python", "-m", service.module],
        "envFrom": [{"configMapRef": {"name": "vigil-config"}}],
        "env": env,
        "ports": [{"name": "ops", "containerPort": OPS_CONTAINER_PORT},
                  *({"name": p.name.replace("_", "-"), "containerPort": p.container_port} for p in service.ports)],
        # Until the first readiness, for as long as the local stack gives the service to start.
        "startupProbe": {"httpGet": ops_probe, "periodSeconds": 5,
                         "failureThreshold": max(12, int(service.start_timeout_s / 5))},
        "livenessProbe": {"httpGet": {"path": "/livez", "port": "ops"}, "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {"httpGet": ops_probe, "periodSeconds": 5},
        "resources": {"requests": {"cpu": service.resources.cpu, "memory": service.resources.memory},
                      "limits": {"memory": service.resources.memory}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": mounts,
    }


def workload(service: ServiceDeclaration) -> dict:
    labels = {"app.kubernetes.io/name": service.kubernetes_name, "app.kubernetes.io/part-of": "vigil"}
    volumes = [{"name": "tmp", "emptyDir": {}},
               *({"name": s.volume_name, "emptyDir": {}} for s in service.scratch_dirs)]
    spec: dict = {
        "replicas": service.replicas,
        "selector": {"matchLabels": {"app.kubernetes.io/name": service.kubernetes_name}},
        "template": {
            "metadata": {"labels": labels, "annotations": {"prometheus.io/scrape": "true",
                                                           "prometheus.io/port": str(OPS_CONTAINER_PORT)}},
            "spec": {
                "terminationGracePeriodSeconds": 30,
                "securityContext": {"runAsNonRoot": True, "runAsUser": POD_USER, "runAsGroup": POD_USER,
                                    "fsGroup": POD_USER, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [_container(service)],
                "volumes": volumes,
            },
        },
    }
    kind = "Deployment"
    if service.data_volume is not None:
        # Data that outlives a pod: one claim per replica, and a stable identity to find it again.
        kind = "StatefulSet"
        spec = {"serviceName": service.kubernetes_name, **spec, "volumeClaimTemplates": [{
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": service.data_volume.size}}},
        }]}
    return {"apiVersion": "apps/v1", "kind": kind,
            "metadata": {"name": service.kubernetes_name, "namespace": NAMESPACE, "labels": labels}, "spec": spec}


def kubernetes_service(service: ServiceDeclaration) -> dict:
    ports = [{"name": "ops", "port": OPS_CONTAINER_PORT, "targetPort": "ops"}]
    ports += [{"name": p.name.replace("_", "-"), "port": p.container_port, "targetPort": p.name.replace("_", "-")}
              for p in service.ports if p.exposed]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service.kubernetes_name, "namespace": NAMESPACE,
                         "labels": {"app.kubernetes.io/part-of": "vigil"}},
            "spec": {"selector": {"app.kubernetes.io/name": service.kubernetes_name}, "ports": ports}}


def rendered() -> dict[str, str]:
    """File name -> content, for every generated file."""
    header = ("# Generated by `python -m tools.gen_manifests` from services/{name}/declaration.py: edit that, not this.\n"
              "# {summary}. Probes: /livez = its tasks make progress, /readyz = it can work now.\n")
    files = {}
    for service in SERVICES:
        docs = [workload(service), kubernetes_service(service)]
        body = "---\n".join(_yaml(doc) for doc in docs)
        files[f"{service.name}.yaml"] = header.format(name=service.name, summary=service.summary) + body
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": [*HAND_WRITTEN, *(f"{s.name}.yaml" for s in SERVICES)]}
    files["kustomization.yaml"] = ("# Generated by `python -m tools.gen_manifests`.\n"
                                   + _yaml(kustomization))
    return files


def stale_files() -> list[str]:
    return [name for name, text in rendered().items()
            if not (K8S / name).exists() or (K8S / name).read_text() != text]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_files()
        if stale:
            print(f"stale manifests: {', '.join(stale)} (run `python -m tools.gen_manifests`)", file=sys.stderr)
        return 1 if stale else 0
    for name, text in rendered().items():
        (K8S / name).write_text(text)
    print(f"wrote {len(rendered())} files into {K8S.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
