"""The configuration reference: every setting of every service, generated from the settings classes so
that the README's table can be checked against the code."""
from __future__ import annotations

from pydantic_settings import BaseSettings

from libs.common.settings import KafkaSettings, ObjectStoreSettings
from services.inference.settings import InferenceSettings
from services.ingest.settings import IngestSettings
from services.metrics.settings import MetricsSettings

SETTINGS_CLASSES: list[tuple[str, type[BaseSettings]]] = [
    ("Kafka (all services)", KafkaSettings),
    ("Object store (all services)", ObjectStoreSettings),
    ("ingest", IngestSettings),
    ("inference", InferenceSettings),
    ("metrics", MetricsSettings),
]


def environment_variables(cls: type[BaseSettings]) -> list[tuple[str, str, str]]:
    prefix = cls.model_config.get("env_prefix", "")
    rows = []
    for name, info in cls.model_fields.items():
        default = info.default
        shown = "(secret)" if "secret" in name or "password" in name else ("" if default is None else str(default))
        rows.append(((prefix + name).upper(), shown, info.description or ""))
    return rows


def settings_reference_markdown() -> str:
    lines = []
    for title, cls in SETTINGS_CLASSES:
        lines += [f"#### {title}", "", "| variable | default | meaning |", "|---|---|---|"]
        lines += [f"| `{var}` | `{default}` | {meaning} |" for var, default, meaning in environment_variables(cls)]
        lines.append("")
    return "\n".join(lines)
