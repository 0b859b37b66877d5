"""A model's promotion history (every promote and rollback, oldest first) and what it implies: the primary now
and the version a rollback returns to."""
from __future__ import annotations

from libs.model_registry.manifest import RegistryError


def promoted_stack(history: list[dict]) -> list[int]:
    """The primaries one under another: a promote pushes, a rollback pops. The top is the primary now."""
    stack: list[int] = []
    for entry in history:
        if entry["action"] == "promote":
            stack.append(entry["version"])
        elif entry["action"] == "rollback" and stack:
            stack.pop()
    return stack


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
