"""Rollout stages in a model's history (a candidate version in shadow, then as a canary) and their announcements
under NAME/rollout on vigil.models, beside the primary's."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from libs.model_registry.announcements import (
    announcement, primaries, rollout_announcement, rollout_key, rollout_name, rollout_share, rollout_state, rollouts,
    unannounced_rollouts,
)
from libs.model_registry.history import (
    NoRollout, Rollout, current_primary, current_rollout, end_rollout_entry, promoted_stack, rollback_target,
    rollout_entry,
)
from libs.model_registry.manifest import RegistryError
from protos import events_pb2

NAME = "yolov3-tiny"


def promote(version):
    return {"action": "promote", "version": version, "by": "test"}


def rollout(version, stage, share=0.0):
    return {"action": "rollout", "version": version, "stage": stage, "share": share, "by": "test", "reason": ""}


END = {"action": "end_rollout", "version": 0, "by": "test", "reason": ""}
ROLLBACK = {"action": "rollback", "version": 0, "by": "test"}


def test_the_last_rollout_stage_is_the_rollout_in_progress_until_it_is_ended():
    history = [promote(1)]
    assert current_rollout(history) is None
    history.append(rollout(2, "shadow"))
    assert current_rollout(history) == Rollout(2, "shadow", 0.0)
    history.append(rollout(2, "canary", 0.25))
    assert current_rollout(history) == Rollout(2, "canary", 0.25)
    history.append(END)
    assert current_rollout(history) is None
    history.append(rollout(3, "shadow"))
    assert current_rollout(history) == Rollout(3, "shadow", 0.0)


def test_promoting_the_candidate_ends_its_rollout_and_promoting_another_does_not():
    history = [promote(1), rollout(2, "canary", 0.5)]
    assert current_rollout([*history, promote(3)]) == Rollout(2, "canary", 0.5)
    assert current_rollout([*history, promote(2)]) is None
    # Ended once: a rollback to version 1 does not bring the rollout back.
    assert current_rollout([*history, promote(2), ROLLBACK]) is None


def test_rollout_entries_leave_the_promotion_stack_and_rollbacks_alone():
    history = [promote(1), rollout(2, "shadow"), promote(3), rollout(4, "canary", 0.1), END, ROLLBACK]
    assert promoted_stack(history) == [1]
    assert current_primary(history) == 1
    assert rollback_target([promote(1), rollout(2, "shadow"), promote(3), END]) == 1


def test_a_rollout_of_the_primary_an_unknown_stage_or_a_share_the_stage_does_not_take_is_refused():
    history = [promote(1)]
    with pytest.raises(RegistryError, match="is the primary"):
        rollout_entry(history, NAME, 1, "shadow", 0.0, "test", "")
    with pytest.raises(RegistryError, match="not one of"):
        rollout_entry(history, NAME, 2, "production", 0.0, "test", "")
    for share in (0.0, -0.1, 1.5):
        with pytest.raises(RegistryError, match="share"):
            rollout_entry(history, NAME, 2, "canary", share, "test", "")
    with pytest.raises(RegistryError, match="takes no share"):
        rollout_entry(history, NAME, 2, "shadow", 0.5, "test", "")
    entry = rollout_entry(history, NAME, 2, "canary", 1.0, "ci", "shadow passed")
    assert entry == {"action": "rollout", "version": 2, "stage": "canary", "share": 1.0, "by": "ci",
                     "reason": "shadow passed"}


def test_ending_needs_a_rollout_in_progress_and_names_the_candidate_it_ends():
    with pytest.raises(NoRollout, match="no rollout in progress"):
        end_rollout_entry([promote(1)], NAME, "test", "")
    entry = end_rollout_entry([promote(1), rollout(2, "shadow")], NAME, "test", "disagreement 0.6")
    assert (entry["action"], entry["version"], entry["reason"]) == ("end_rollout", 2, "disagreement 0.6")


def manifest(version):
    return {"name": NAME, "version": version, "precision": "fp32", "source_version": f"v{version}"}


ARTIFACT = events_pb2.ObjectRef(bucket="vigil-models", key=f"{NAME}/2/manifest.json")


def test_a_rollout_announcement_says_stage_share_reason_and_is_keyed_beside_the_primary():
    message = rollout_announcement(manifest(2), "canary", ARTIFACT, "rollout", "ci", 0.25, "shadow passed")
    assert (message.model.name, message.model.version, message.stage) == (NAME, "2", "canary")
    assert dict(message.metadata) == {"action": "rollout", "by": "ci", "share": "0.25", "reason": "shadow passed",
                                      "source_version": "v2"}
    assert rollout_share(message) == 0.25
    assert rollout_key(NAME) == f"{NAME}/rollout" != NAME
    assert rollout_name(rollout_key(NAME)) == NAME and rollout_name(NAME) is None
    with pytest.raises(ValueError, match="not one of"):
        rollout_announcement(manifest(2), "primary", ARTIFACT, "rollout", "ci")


def test_primaries_ignore_rollout_announcements_and_rollouts_take_only_those_under_the_rollout_key():
    primary = announcement(manifest(1), "primary", ARTIFACT, "promote", "ci")
    shadow = rollout_announcement(manifest(2), "shadow", ARTIFACT, "rollout", "ci")
    canary = rollout_announcement(manifest(2), "canary", ARTIFACT, "rollout", "ci", 0.5)
    retired = rollout_announcement(manifest(2), "retired", ARTIFACT, "end_rollout", "ci")
    assert {name: m.model.version for name, m in primaries([primary, shadow, canary, retired]).items()} == {NAME: "1"}
    entries = [(NAME, primary), (rollout_key(NAME), shadow), (rollout_key(NAME), canary)]
    assert rollouts(entries)[NAME].stage == "canary"
    assert rollouts([*entries, (rollout_key(NAME), retired)])[NAME].stage == "retired"
    assert rollouts(entries, bucket="another-registry") == {}
    # A rollout announcement under a primary's key, or of another model than its key names, is not one.
    assert rollouts([(NAME, shadow), ("other/rollout", shadow), (rollout_key(NAME), None)]) == {}


def stamped(entries, at="2026-11-29T10:00:00+00:00"):
    return [{**e, "at": at} for e in entries]


NOW = datetime(2026, 11, 29, 10, 1, tzinfo=timezone.utc)  # a minute after the entries


def test_a_rollout_stage_whose_announcement_was_lost_is_found_once_older_than_the_grace():
    history = stamped([promote(1), rollout(2, "canary", 0.25)])
    assert unannounced_rollouts({NAME: history}, {}, NOW, grace_s=30) == {NAME: (2, "canary", 0.25)}
    assert unannounced_rollouts({NAME: history}, {NAME: (2, "shadow", 0.0)}, NOW, 30) == {NAME: (2, "canary", 0.25)}
    assert unannounced_rollouts({NAME: history}, {NAME: (2, "canary", 0.25)}, NOW, 30) == {}
    assert unannounced_rollouts({NAME: history}, {}, NOW, grace_s=120) == {}, "its writer may be announcing it"


def test_a_rollout_ended_in_the_store_but_still_announced_is_retired_and_none_is_left_alone():
    ended = stamped([promote(1), rollout(2, "shadow"), END])
    promoted = stamped([promote(1), rollout(2, "canary", 0.5), promote(2)])
    for history in (ended, promoted):
        assert unannounced_rollouts({NAME: history}, {NAME: (2, "canary", 0.5)}, NOW, 30) == {
            NAME: (2, "retired", 0.0)}
        assert unannounced_rollouts({NAME: history}, {NAME: (2, "retired", 0.0)}, NOW, 30) == {}
    assert unannounced_rollouts({NAME: stamped([promote(1)])}, {}, NOW, 30) == {}


def test_the_rollout_state_of_an_announcement_round_trips_its_share():
    message = rollout_announcement(manifest(2), "canary", ARTIFACT, "rollout", "ci", 0.1 + 0.2)
    assert rollout_state(message) == (2, "canary", 0.1 + 0.2)
