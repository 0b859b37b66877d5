"""The registry's announcements on vigil.models (compacted, keyed by model name): a ModelVersion per stage
change, so every inference server follows which version of each model is primary.

A model's rollout (a candidate version in shadow or canary, history.py) is announced under its own key,
`rollout_key(name)` = "NAME/rollout", so compaction keeps it beside the primary's: stage "shadow" or "canary",
or "retired" once the rollout is over (the candidate no longer runs). A reader tells the two apart by the key
(a model name never holds a '/'); `primaries` ignores rollout announcements by their stage.

The object store is the truth and the topic its announcement: a promotion written to the store whose
announcement never went out (the writer died between the two) is found by `unannounced_primaries` and announced
again by `repair_announcements` (a rollout's by `repair_rollout_announcements`), which the inference service's
registry follower runs periodically."""
from __future__ import annotations

from datetime import datetime, timezone

from typing import Iterable

from libs.common.compacted import CompactedTable, TableWriteFailed
from libs.common.envelope import new_envelope
from libs.common.topics import MODELS
from libs.model_registry.history import Rollout, current_primary, current_rollout
from libs.model_registry.manifest import RegistryError
from protos import events_pb2

RECONCILER = "registry-reconcile"
ROLLOUT_SUFFIX = "rollout"
ROLLOUT_ANNOUNCED_STAGES = ("shadow", "canary", "retired")


class AnnouncementFailed(RegistryError):
    pass


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


def rollout_key(name: str) -> str:
    """The key of a model's rollout announcement on vigil.models (beside its primary's, keyed by name)."""
    return f"{name}/{ROLLOUT_SUFFIX}"


def rollout_name(key: str) -> str | None:
    """The model whose rollout a vigil.models key holds, None for a primary's key."""
    name, slash, suffix = key.rpartition("/")
    return name if slash and suffix == ROLLOUT_SUFFIX else None


def rollout_announcement(manifest: dict, stage: str, artifact: events_pb2.ObjectRef, action: str, by: str,
                         share: float = 0.0, reason: str = "") -> events_pb2.ModelVersion:
    """The ModelVersion announcing the candidate version `manifest` at rollout stage "shadow", "canary" or
    "retired" (rollout over), written with announce_rollout."""
    if stage not in ROLLOUT_ANNOUNCED_STAGES:
        raise ValueError(f"rollout stage {stage!r} is not one of {', '.join(ROLLOUT_ANNOUNCED_STAGES)}")
    message = announcement(manifest, stage, artifact, action, by)
    message.metadata.update(share=repr(float(share)), reason=reason)
    return message


def registry_rollout_announcement(registry, name: str, version: int, stage: str, action: str, by: str,
                                  share: float = 0.0, reason: str = "") -> events_pb2.ModelVersion:
    """rollout_announcement of `version` of `name` as the registry (a ModelRegistry) holds it."""
    return rollout_announcement(registry.manifest(name, version), stage, registry.artifact_ref(name, version),
                                action, by, share, reason)


def primary_change_announcements(registry, name: str, retired: int | None, primary: int, action: str, by: str,
                                 rollout_before: Rollout | None = None
                                 ) -> tuple[list[events_pb2.ModelVersion], events_pb2.ModelVersion | None]:
    """What a promote or rollback (`action`) announces, from the registry (a ModelRegistry): the retired primary
    (if another) and the new one, for `announce`; and when the new primary is the candidate rolled out before
    (`rollout_before`, ModelRegistry.rollout before the change), the end of its rollout, for `announce_rollout`."""
    messages = []
    if retired is not None and retired != primary:
        messages.append(announcement(registry.manifest(name, retired), "retired",
                                     registry.artifact_ref(name, retired), action, by))
    messages.append(announcement(registry.manifest(name, primary), "primary", registry.artifact_ref(name, primary),
                                 action, by))
    ended = None
    if rollout_before is not None and rollout_before.version == primary:
        ended = registry_rollout_announcement(registry, name, primary, "retired", action, by,
                                              reason=f"version {primary} is the primary")
    return messages, ended


def rollout_share(message: events_pb2.ModelVersion) -> float:
    try:
        return float(message.metadata.get("share", "0") or 0.0)
    except ValueError:
        return 0.0


def announcements_table(client_config: dict[str, str], client_id: str,
                        topic: str = MODELS) -> CompactedTable[events_pb2.ModelVersion]:
    """vigil.models as a table: model name -> its latest announcement."""
    return CompactedTable(client_config, topic, client_id)


def announce(table: CompactedTable[events_pb2.ModelVersion], messages: list[events_pb2.ModelVersion]) -> None:
    """Writes the announcements in order, keyed by model name: the last one per model (the new primary) is
    what compaction keeps. Raises AnnouncementFailed unless every one was delivered."""
    try:
        for message in messages:
            table.put(message.model.name, message)
    except TableWriteFailed as exc:
        raise AnnouncementFailed(f"announcement on {table.topic} failed: {exc}") from exc


def announce_rollout(table: CompactedTable[events_pb2.ModelVersion], message: events_pb2.ModelVersion) -> None:
    """Writes a rollout announcement under rollout_key(its model name). Raises AnnouncementFailed unless it was
    delivered."""
    try:
        table.put(rollout_key(message.model.name), message)
    except TableWriteFailed as exc:
        raise AnnouncementFailed(f"rollout announcement on {table.topic} failed: {exc}") from exc


def rollouts(entries: Iterable[tuple[str, events_pb2.ModelVersion | None]],
             bucket: str | None = None) -> dict[str, events_pb2.ModelVersion]:
    """The last rollout announcement per model among (key, message) `entries` (in log order), of the registry in
    `bucket` if one is given. A deleted rollout key (a tombstone, value None) is left out."""
    latest: dict[str, events_pb2.ModelVersion] = {}
    for key, message in entries:
        name = rollout_name(key)
        if name is None or message is None or message.model.name != name:
            continue
        if bucket is not None and message.artifact.bucket != bucket:
            continue
        if message.stage in ROLLOUT_ANNOUNCED_STAGES and message.model.version.isdigit():
            latest[name] = message
    return latest


def primaries(messages: Iterable[events_pb2.ModelVersion | None],
              bucket: str | None = None) -> dict[str, events_pb2.ModelVersion]:
    """The last "primary" announcement per model among `messages` (in log order), of the registry in `bucket`
    if one is given. A retirement alone changes nothing: the primary announced with it is what a server loads."""
    latest: dict[str, events_pb2.ModelVersion] = {}
    for message in messages:
        if message is None:
            continue
        if bucket is not None and message.artifact.bucket != bucket:
            continue
        if message.stage == "primary" and message.model.name and message.model.version.isdigit():
            latest[message.model.name] = message
    return latest


def unannounced_primaries(histories: dict[str, list[dict]], announced: dict[str, int], now: datetime,
                          grace_s: float) -> dict[str, int]:
    """name -> primary, for the models whose primary in the store is not the one last announced as primary.
    A change younger than grace_s is left alone: whoever made it may be announcing it right now."""
    stale = {}
    for name, history in histories.items():
        primary = current_primary(history)
        if primary is None or announced.get(name) == primary:
            continue
        changed_at = datetime.fromisoformat(history[-1]["at"])
        if (now - changed_at).total_seconds() >= grace_s:
            stale[name] = primary
    return stale


def repair_announcements(registry, announced: dict[str, int], grace_s: float) -> list[events_pb2.ModelVersion]:
    """The primary announcements the topic lacks, from the registry's state (a ModelRegistry)."""
    histories = {name: registry.history(name) for name in registry.models()}
    stale = unannounced_primaries(histories, announced, datetime.now(timezone.utc), grace_s)
    return [announcement(registry.manifest(name, version), "primary", registry.artifact_ref(name, version),
                         "reconcile", RECONCILER) for name, version in sorted(stale.items())]


RolloutState = tuple[int, str, float]  # (registry version, stage, share) as a rollout announcement states it


def rollout_state(message: events_pb2.ModelVersion) -> RolloutState:
    return int(message.model.version), message.stage, rollout_share(message)


def unannounced_rollouts(histories: dict[str, list[dict]], announced: dict[str, RolloutState], now: datetime,
                         grace_s: float) -> dict[str, RolloutState]:
    """name -> the rollout state to announce, for the models whose rollout in the store is not the one last
    announced: the store's rollout, or (the announced candidate, "retired", 0.0) when the topic still shows a
    rollout the store has ended (by end_rollout or by a promotion). A change younger than grace_s is left alone."""
    stale = {}
    for name, history in histories.items():
        rollout, said = current_rollout(history), announced.get(name)
        if rollout is not None:
            wanted = (rollout.version, rollout.stage, rollout.share)
        elif said is not None and said[1] != "retired":
            wanted = (said[0], "retired", 0.0)
        else:
            continue
        if said != wanted and (now - datetime.fromisoformat(history[-1]["at"])).total_seconds() >= grace_s:
            stale[name] = wanted
    return stale


def repair_rollout_announcements(registry, announced: dict[str, RolloutState], grace_s: float
                                 ) -> list[events_pb2.ModelVersion]:
    """The rollout announcements the topic lacks, from the registry's state (a ModelRegistry)."""
    histories = {name: registry.history(name) for name in registry.models()}
    stale = unannounced_rollouts(histories, announced, datetime.now(timezone.utc), grace_s)
    return [registry_rollout_announcement(registry, name, version, stage, "reconcile", RECONCILER, share,
                                          "announced again from the registry's history")
            for name, (version, stage, share) in sorted(stale.items())]
