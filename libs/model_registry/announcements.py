"""The registry's announcements on vigil.models (compacted, keyed by model name): a ModelVersion per stage
change, so every inference server follows which version of each model is primary."""
from __future__ import annotations

from libs.common.envelope import new_envelope
from protos import events_pb2


def announcement(manifest: dict, stage: str, artifact: events_pb2.ObjectRef, action: str, by: str
                 ) -> events_pb2.ModelVersion:
    """The ModelVersion for vigil.models (keyed by model name)."""
    return events_pb2.ModelVersion(
        envelope=new_envelope(source=f"registry/{manifest['name']}", producer="vigil-models"),
        model=events_pb2.ModelRef(name=manifest["name"], version=str(manifest["version"]),
                                  precision=manifest["precision"]),
        stage=stage, artifact=artifact,
        metadata={"action": action, "by": by, "source_version": manifest["source_version"]},
    )
