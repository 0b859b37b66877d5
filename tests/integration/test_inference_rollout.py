"""A candidate version of the default model rolled out through the registry on a real stack (SeaweedFS, Kafka,
the inference service): `vigil models rollout` in shadow puts its results on vigil.inference.shadow while the
champion keeps vigil.inference; as a canary on every camera it serves vigil.inference with the champion as the
shadow; the service restarted mid-rollout resumes it from vigil.models; `--end` stops it, and a promotion of the
candidate makes it the primary for every camera and ends its rollout; a rollout whose announcement was lost is
announced by reconciling."""
from __future__ import annotations

import getpass
import json
import time
import types

import cv2
import numpy as np
import pytest

from cli.__main__ import main
from cli.models import cmd_promote, cmd_reconcile, cmd_rollout
from libs.common.envelope import new_envelope
from libs.common.topics import FRAMES, INFERENCE, INFERENCE_SHADOW, MODELS
from libs.model_registry.announcements import rollout_key
from libs.model_registry.history import Rollout
from libs.model_registry.manifest import RegistryError
from libs.model_registry.store import BUCKET
from protos import events_pb2
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import end_offsets, produce, read_range
from tests.integration.test_inference_grpc import inference_stack
from tests.integration.test_inference_registry_follow import NAME, default_model_as, registry_of

pytestmark = pytest.mark.integration
CAMERAS = ("cam-a", "cam-c")  # positions 0.60 and 0.11 (routing.py)
CANDIDATE = "1+site.rollout.s0"
JPEG = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))[1].tobytes()


@pytest.fixture(scope="module")
def rollout_stack(tmp_path_factory):
    with inference_stack(tmp_path_factory.mktemp("inference-rollout")) as stack:
        yield stack


class Frames:
    """Frames for CAMERAS produced now, and the (primary, shadow) model versions of their results."""

    def __init__(self, stack) -> None:
        self.bootstrap = stack.config.kafka_bootstrap
        self.sequence = 0

    def versions(self) -> dict[str, tuple[str, str | None]]:
        """camera -> (the version on vigil.inference, the version on vigil.inference.shadow or None)."""
        starts = {topic: end_offsets(self.bootstrap, topic) for topic in (INFERENCE, INFERENCE_SHADOW)}
        frames = [events_pb2.Frame(envelope=new_envelope(f"camera/{c}", "test"), camera_id=c, sequence=self.sequence,
                                   width=64, height=48, encoding="jpeg", data=JPEG) for c in CAMERAS]
        self.sequence += 1
        produce(self.bootstrap, FRAMES, [(f.camera_id.encode(), f.SerializeToString()) for f in frames])
        ids = {f.envelope.event_id for f in frames}

        def results(topic):
            found = read_range(self.bootstrap, topic, starts[topic], end_offsets(self.bootstrap, topic))
            return {r.frame_event_id: r for r in map(events_pb2.InferenceResult.FromString, (m.value() for m in found))
                    if r.frame_event_id in ids}

        primary = wait_for(lambda: (lambda got: got if set(got) == ids else None)(results(INFERENCE)), 60,
                           what="a result per frame on vigil.inference")
        time.sleep(0.5)  # the shadow results go out in the same batch as the primary ones
        shadow = results(INFERENCE_SHADOW)
        assert not any(r.shadow for r in primary.values()) and all(r.shadow for r in shadow.values())
        assert {r.model.name for r in [*primary.values(), *shadow.values()]} == {NAME}
        return {f.camera_id: (primary[f.envelope.event_id].model.version,
                              shadow[f.envelope.event_id].model.version if f.envelope.event_id in shadow else None)
                for f in frames}

    def until(self, expected: dict[str, tuple[str, str | None]], what: str, timeout_s: float = 120) -> None:
        seen = []
        wait_for(lambda: seen.append(self.versions()) or seen[-1] == expected, timeout_s, interval_s=0.2,
                 what=f"{what}: {expected} (last seen {seen[-1:]})")


def vigil_models(stack, capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["--state-dir", str(stack.paths.state), "models", *args])
    return code, capsys.readouterr().out


def rollout_args(**kwargs):
    return types.SimpleNamespace(**{"bucket": BUCKET, "bootstrap": None, "name": NAME, "version": None,
                                    "stage": None, "share": None, "reason": "", "end": False, **kwargs})


def test_a_candidate_runs_in_shadow_then_as_a_canary_survives_a_restart_and_stops_when_ended(rollout_stack,
                                                                                              tmp_path, capsys):
    from tools.darknet_converter import ensure_default_model

    stack = rollout_stack
    registry = registry_of(stack)
    metadata, candidate_dir = default_model_as(stack, tmp_path / "candidate", CANDIDATE)
    champion = metadata["version"]
    assert registry.import_dir(NAME, ensure_default_model(stack.paths.cache), "test")["version"] == 1
    assert registry.import_dir(NAME, candidate_dir, "test")["version"] == 2
    assert cmd_promote(stack, types.SimpleNamespace(bucket=BUCKET, bootstrap=None, name=NAME, version=1)) == 0
    frames = Frames(stack)
    assert frames.versions() == {c: (champion, None) for c in CAMERAS}

    with pytest.raises(RegistryError, match="is the primary"):  # the primary itself is no candidate
        cmd_rollout(stack, rollout_args(version=1, stage="shadow"))

    assert cmd_rollout(stack, rollout_args(version=2, stage="shadow", reason="gate passed")) == 0
    assert registry.rollout(NAME) == Rollout(2, "shadow", 0.0)
    frames.until({c: (champion, CANDIDATE) for c in CAMERAS}, "the candidate in shadow on every camera")

    assert cmd_rollout(stack, rollout_args(version=2, stage="canary", share=1.0)) == 0
    frames.until({c: (CANDIDATE, champion) for c in CAMERAS}, "the candidate serving, the champion its shadow")

    # Half the cameras: cam-c (0.11) on the candidate, cam-a (0.60) back on the champion without a shadow.
    assert vigil_models(stack, capsys, "rollout", NAME, "2", "--stage", "canary", "--share", "0.5")[0] == 0
    frames.until({"cam-c": (CANDIDATE, champion), "cam-a": (champion, None)}, "a canary on half the cameras")
    code, out = vigil_models(stack, capsys, "show", NAME)
    assert code == 0 and json.loads(out)["registry"]["primary"] == 1
    assert {k: v for k, v in json.loads(out)["registry"]["rollout"].items() if k != "at"} == {
        "version": 2, "stage": "canary", "share": 0.5, "by": f"cli/{getpass.getuser()}", "reason": ""}
    assert "version 2 rolled out as a canary on 50% of the cameras" in vigil_models(
        stack, capsys, "show", NAME, "1", "--lineage")[1]

    # Both keys are kept on the compacted topic: a restarted server serves the primary and resumes the canary.
    assert registry.primary(NAME) == 1 and registry.rollout(NAME) == Rollout(2, "canary", 0.5)
    stack.supervisor.stop("inference", progress=lambda *_: None)
    stack.supervisor.up(progress=lambda *_: None)
    frames.until({"cam-c": (CANDIDATE, champion), "cam-a": (champion, None)}, "the canary resumed after a restart")

    assert cmd_rollout(stack, rollout_args(end=True, reason="enough")) == 0
    assert registry.rollout(NAME) is None
    frames.until({c: (champion, None) for c in CAMERAS}, "the candidate stopped")

    # Shadow again, then the candidate promoted: it serves every camera and its rollout is over.
    assert cmd_rollout(stack, rollout_args(version=2, stage="shadow")) == 0
    frames.until({c: (champion, CANDIDATE) for c in CAMERAS}, "the candidate in shadow again")
    assert cmd_promote(stack, types.SimpleNamespace(bucket=BUCKET, bootstrap=None, name=NAME, version=2)) == 0
    frames.until({c: (CANDIDATE, None) for c in CAMERAS}, "the promoted candidate serving, no shadow")
    assert registry.rollout(NAME) is None
    assert [e["action"] for e in registry.history(NAME)] == ["promote", "rollout", "rollout", "rollout",
                                                             "end_rollout", "rollout", "promote"]

    # A rollout recorded but never announced (its writer died in between) is announced by reconciling.
    registry.set_rollout(NAME, 1, "shadow", "test", reason="the old champion, watched")
    assert cmd_reconcile(stack, types.SimpleNamespace(bucket=BUCKET, bootstrap=None, grace_s=0.0)) == 0
    frames.until({c: (CANDIDATE, champion) for c in CAMERAS}, "the old champion in shadow after reconciling")

    bootstrap = stack.config.kafka_bootstrap
    keyed = [(m.key().decode(), events_pb2.ModelVersion.FromString(m.value()))
             for m in read_range(bootstrap, MODELS, None, end_offsets(bootstrap, MODELS))]
    assert [(v.stage, v.metadata["share"], v.metadata["action"]) for key, v in keyed if key == rollout_key(NAME)] == [
        ("shadow", "0.0", "rollout"), ("canary", "1.0", "rollout"), ("canary", "0.5", "rollout"),
        ("retired", "0.0", "end_rollout"), ("shadow", "0.0", "rollout"), ("retired", "0.0", "promote"),
        ("shadow", "0.0", "reconcile")]
