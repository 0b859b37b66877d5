"""The training job end to end on a real SeaweedFS S3 and the real OpenVINO detector: a dataset version of the site
(tests/integration/site_footage.py) is trained on against the registry's primary, and the candidate lands in the
registry as the next version with its lineage (dataset@version, code, params, seed, metrics, the data's cameras and
times) and the gate's report beside it, marked eligible; a candidate fitted on shuffled labels, trained by
`vigil train`, is registered too but refused by the gate (exit 3). Nothing is promoted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli.stack.local import StackConfig, StackPorts
from libs.common.cache_dir import default_cache_dir
from libs.model_registry.store import ModelRegistry
from services.training.job import run_training
from services.training.trainer import REPORT_FILE, TrainingParams
from tests.integration.site_footage import CAPTURED_FROM, DATASET, READER, commit_shuffled_labels
from tests.integration.site_footage import base_dir, s3, store, version  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

MODEL = "yolov3-tiny"
PROPOSALS = default_cache_dir() / "training" / "proposals"  # where `vigil train` keeps them: its run reuses ours


@pytest.fixture(scope="module")
def registry(s3, base_dir) -> ModelRegistry:
    """The served detector as version 1 of the model, promoted: the champion."""
    registry = ModelRegistry(s3, "vigil-models")
    registry.import_dir(MODEL, base_dir, by="test")
    registry.promote(MODEL, 1, by="test")
    return registry


@pytest.fixture(scope="module")
def state_dir(s3, tmp_path_factory) -> Path:
    """A stack.json pointing `vigil` at the lone S3, with its writer's keys and the datasets' read-only ones."""
    state = tmp_path_factory.mktemp("state")
    credentials = s3._provider.retrieve()  # noqa: SLF001 (tests only)
    port = int(s3._base_url.host.rsplit(":", 1)[1])  # noqa: SLF001
    StackConfig.load_or_create(state, StackPorts(s3=port))
    config = json.loads((state / "stack.json").read_text())
    config.update(s3_access_key=credentials.access_key, s3_secret_key=credentials.secret_key,
                  datasets_read_access_key=READER.access_key, datasets_read_secret_key=READER.secret_key)
    (state / "stack.json").write_text(json.dumps(config))
    return state


def vigil(state: Path, *args: str) -> subprocess.CompletedProcess:
    command = Path(sys.executable).parent / "vigil"
    return subprocess.run([str(command), "--state-dir", str(state), *args], capture_output=True, text=True,
                          timeout=600)


def test_a_trained_candidate_is_registered_with_its_lineage_and_the_gates_report_marked_eligible(
        store, version, registry, tmp_path):
    steps = []
    result = run_training(store, registry, DATASET, version, MODEL, seed=0, params=TrainingParams(), by="test",
                          progress=lambda step, done, total, eta_s: steps.append((step, done, total)),
                          work_dir=tmp_path / "work", cache_dir=PROPOSALS)
    print(f"\n{MODEL} version {result.version}: eligible={result.eligible}; champion {result.champion.ref} "
          f"mAP@0.5 {result.champion_map50:.4f}, candidate {result.candidate_map50:.4f}; "
          f"seconds {result.to_json()['seconds']}")

    assert (result.version, result.champion.registry_version) == (2, 1)
    assert result.eligible, result.reasons
    assert {"champion", "proposals", "fit", "evaluation", "import"} <= {step for step, _, _ in steps}
    assert ("import", 1, 1) == steps[-1]
    assert registry.primary(MODEL) == 1  # registered, not promoted

    manifest = registry.manifest(MODEL, 2)
    assert manifest["lineage"]["parent_version"] == 1 and manifest["lineage"]["imported_by"] == "test"
    trained = manifest["lineage"]["derived_from"]
    assert (trained["dataset"], trained["dataset_version"], trained["seed"]) == (DATASET, version, 0)
    assert len(trained["code_version"].removesuffix("-dirty")) == 40
    assert trained["params"]["margin"] == 0.01
    assert trained["metrics"]["candidate_map50"] == result.candidate_map50
    assert trained["champion"] == {"name": MODEL, "registry_version": 1}
    data = trained["data"]
    assert data["items"] == len(store.version(DATASET, version).items) and data["source_task_ids"] == 0
    assert set(data["cameras"]) == {"street", "street-dim"}
    assert data["captured_from"] == "2027-01-15T08:00:00Z" and CAPTURED_FROM == 1_800_000_000.0
    assert data["cameras"]["street"]["captured_to"] == data["captured_to"] > data["captured_from"]
    assert manifest["model_json"]["gate"]["eligible"] is True
    assert manifest["model_json"]["gate"]["champion"] == f"{MODEL}:1"
    assert {f["path"] for f in manifest["files"]} >= {"model.bin", "rescoring.json", REPORT_FILE}
    assert not list((tmp_path / "work").glob(".candidate-*"))  # the candidate dir is gone once imported

    report = json.loads(registry.client.get_object("vigil-models", f"{MODEL}/2/{REPORT_FILE}").read())
    assert report["decision"]["eligible"] is True and report["dataset_version"] == version


def test_vigil_train_on_shuffled_labels_registers_a_refused_candidate_and_exits_3(
        store, version, registry, state_dir):
    worse = commit_shuffled_labels(store, version)
    trained = vigil(state_dir, "train", f"{DATASET}@{worse}", "--json")
    print(f"\n{trained.stdout}{trained.stderr[-600:]}")
    assert trained.returncode == 3, trained.stderr
    answer = json.loads(trained.stdout)
    assert answer["eligible"] is False and answer["reasons"] and answer["champion"] == f"{MODEL}:1"
    assert answer["dataset_version"] == worse and answer["candidate_map50"] is not None
    assert "vigil: proposals" in trained.stderr and "ETA" in trained.stderr
    assert "read-only keys" not in trained.stderr  # the dataset was read with them, not the writer's

    manifest = registry.manifest(MODEL, answer["version"])
    assert manifest["model_json"]["gate"]["eligible"] is False
    assert manifest["lineage"]["derived_from"]["dataset_version"] == worse
    assert registry.primary(MODEL) == 1

    lineage = vigil(state_dir, "models", "show", MODEL, str(answer["version"]), "--lineage")
    assert lineage.returncode == 0, lineage.stderr
    print(lineage.stdout)
    assert f"refused by the gate against {MODEL}:1" in lineage.stdout
    assert f"trained on {DATASET}@{worse}" in lineage.stdout
    assert "camera street-dim:" in lineage.stdout and f"<- {MODEL} version 1 " in lineage.stdout

    assert vigil(state_dir, "train", f"{DATASET}@no-such-branch").returncode == 2


def test_a_candidate_trained_once_a_trained_version_is_primary_is_gated_against_it_and_derives_from_it(
        store, version, registry, state_dir, tmp_path):
    """The champion may itself be a re-scored version: its stage is what the new candidate must beat, and the
    lineage runs back through it to the detector."""
    registry.promote(MODEL, 2, by="test")
    result = run_training(store, registry, DATASET, version, MODEL, seed=1, by="test", work_dir=tmp_path / "work",
                          cache_dir=PROPOSALS)
    print(f"\nagainst version 2: champion mAP@0.5 {result.champion_map50:.4f}, candidate "
          f"{result.candidate_map50:.4f}, eligible={result.eligible}: {'; '.join(result.reasons)}")
    assert result.champion.registry_version == 2
    # The same data trained again gives the champion's own figures: not better by the margin, so not eligible.
    assert not result.eligible and "margin" in result.reasons[0]
    assert result.champion_map50 == registry.manifest(MODEL, 2)["lineage"]["derived_from"]["metrics"][
        "candidate_map50"]  # the champion served through its own stage, as evaluated when it was trained
    assert registry.manifest(MODEL, result.version)["lineage"]["parent_version"] == 2
    lineage = vigil(state_dir, "models", "show", MODEL, str(result.version), "--lineage").stdout
    assert [line.split(" (")[0] for line in lineage.splitlines() if "version" in line] == [
        f"{MODEL} version {result.version}", f"<- {MODEL} version 2", f"<- {MODEL} version 1"]
