"""A model's history (every promote and rollback, and the rollout stages of candidates, oldest first) and what it
implies: the primary now, the version a rollback returns to, and the candidate rolled out now."""
from __future__ import annotations

from dataclasses import dataclass, field

from libs.model_registry.manifest import RegistryError

ROLLOUT_STAGES = ("shadow", "canary")


class NoRollout(RegistryError):
    """end_rollout with no rollout in progress."""


@dataclass(frozen=True)
class Rollout:
    """A candidate version running beside the primary: "shadow" (every camera's frames also go through it, its
    results marked shadow) or "canary" (it serves `share` of the cameras, the primary running as their shadow).
    Who set the stage, when and why are told but not compared."""
    version: int
    stage: str
    share: float
    by: str = field(default="", compare=False)
    at: str = field(default="", compare=False)
    reason: str = field(default="", compare=False)


def _stacks(history: list[dict]):
    """Each entry with the promoted stack as it is after it (the same list, changed in place)."""
    stack: list[int] = []
    for entry in history:
        if entry["action"] == "promote":
            stack.append(entry["version"])
        elif entry["action"] == "rollback" and stack:
            stack.pop()
        yield entry, stack


def promoted_stack(history: list[dict]) -> list[int]:
    """The primaries one under another: a promote pushes, a rollback pops. The top is the primary now.
    Rollout entries do not touch it."""
    stack: list[int] = []
    for _, stack in _stacks(history):
        pass
    return list(stack)


def current_primary(history: list[dict]) -> int | None:
    stack = promoted_stack(history)
    return stack[-1] if stack else None


def rollback_target(history: list[dict]) -> int:
    """The version that was primary before the current one."""
    stack = promoted_stack(history)
    if len(stack) < 2:
        raise RegistryError("nothing to roll back to: no version was promoted before the current one"
                            if stack else "nothing to roll back: no version is promoted")
    return stack[-2]


def current_rollout(history: list[dict]) -> Rollout | None:
    """The candidate rolled out now: the last "rollout" entry, unless an "end_rollout" came after it or the
    rolled-out version has become the primary since (promoted, or restored by a rollback)."""
    rollout: Rollout | None = None
    for entry, stack in _stacks(history):
        action = entry["action"]
        if action == "rollout":
            rollout = Rollout(entry["version"], entry["stage"], float(entry.get("share", 0.0)),
                              entry.get("by", ""), entry.get("at", ""), entry.get("reason", ""))
        elif action == "end_rollout":
            rollout = None
        if rollout is not None and stack and stack[-1] == rollout.version:
            rollout = None
    return rollout


def rollout_entry(history: list[dict], name: str, version: int, stage: str, share: float, by: str,
                  reason: str) -> dict:
    """The history entry that rolls `version` out at `stage`, or RegistryError if it cannot be: an unknown stage,
    a share outside what the stage allows, or the primary itself as the candidate."""
    if stage not in ROLLOUT_STAGES:
        raise RegistryError(f"rollout stage {stage!r} is not one of {', '.join(ROLLOUT_STAGES)}")
    if stage == "canary" and not 0.0 < share <= 1.0:
        raise RegistryError(f"a canary's share of cameras must be in (0, 1], not {share}")
    if stage == "shadow" and share != 0.0:
        raise RegistryError(f"a shadow sees every camera's frames: it takes no share (got {share})")
    if current_primary(history) == version:
        raise RegistryError(f"{name} version {version} is the primary: there is nothing to roll out")
    return {"action": "rollout", "version": version, "stage": stage, "share": float(share), "by": by,
            "reason": reason}


def end_rollout_entry(history: list[dict], name: str, by: str, reason: str) -> dict:
    rollout = current_rollout(history)
    if rollout is None:
        raise NoRollout(f"{name} has no rollout in progress")
    return {"action": "end_rollout", "version": rollout.version, "by": by, "reason": reason}
