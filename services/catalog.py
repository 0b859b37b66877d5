"""Every Vigil service, found by its declaration (services/<name>/declaration.py defines SERVICE).

A package without a declaration is not a service yet (drift, annotation and datasets until they are built)."""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from libs.common.service_declaration import ServiceDeclaration
from libs.common.settings import KafkaSettings, ObjectStoreSettings
from libs.common.topics import CATALOG, SHARED_TOPICS

# Read by every service: listed first by `vigil config`.
SHARED_SETTINGS = (("Kafka (all services)", KafkaSettings), ("Object store (all services)", ObjectStoreSettings))

# Topics whose contracts exist for services not built yet; each moves into its service's declaration with it.
PLANNED_OWNERS = {"vigil.drift.windows": "drift", "vigil.drift.references": "drift"}


def _discover() -> tuple[ServiceDeclaration, ...]:
    found = []
    for package in sorted(p.name for p in pkgutil.iter_modules([str(Path(__file__).parent)]) if p.ispkg):
        if (Path(__file__).parent / package / "declaration.py").exists():
            declaration = importlib.import_module(f"services.{package}.declaration").SERVICE
            if declaration.name != package:
                raise ValueError(f"services/{package}/declaration.py declares a service named {declaration.name!r}")
            found.append(declaration)
    return tuple(found)


SERVICES: tuple[ServiceDeclaration, ...] = _discover()


def service(name: str) -> ServiceDeclaration:
    for declaration in SERVICES:
        if declaration.name == name:
            return declaration
    raise KeyError(f"no service named {name!r}; services: {', '.join(s.name for s in SERVICES)}")


def settings_classes() -> list[tuple[str, type]]:
    """Every settings class, as `vigil config` and the README's reference list them."""
    return [*SHARED_SETTINGS, *(entry for s in SERVICES for entry in s.settings)]


def topic_owners() -> dict[str, str]:
    """Topic name -> the service that owns it ("shared" for topics every service produces)."""
    owners: dict[str, str] = {name: "shared" for name in SHARED_TOPICS}
    for declaration in SERVICES:
        for topic in declaration.owns_topics:
            if topic in owners:
                raise ValueError(f"{topic} is owned by both {owners[topic]} and {declaration.name}")
            owners[topic] = declaration.name
    for topic, planned in PLANNED_OWNERS.items():
        owners.setdefault(topic, f"{planned} (not built yet)")
    return {spec.name: owners.get(spec.name, "") for spec in CATALOG}
