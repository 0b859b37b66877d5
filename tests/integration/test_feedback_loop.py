"""The feedback loop on the shared stack, as `make demo-loop` runs it: a camera darkens, drift raises an alert, the
scripted annotator labels through the annotation service's HTTP API, datasets commits a version, training trains
and gates a candidate, the rollout takes it through shadow and canary to promotion, and the alert clears. Then a
candidate trained on shuffled labels is refused by the gate, and, forced into shadow, rolled back by the live
checks. Every step is an event: the metrics store has the rollout's rows, and the registry the lineage from the
promoted version back to its cameras.

Marked `last`: it promotes a model, which changes what the stack serves for any test after it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cli.stack.local import REPO_ROOT
from tests.integration.conftest import query

pytestmark = [pytest.mark.last, pytest.mark.timeout(2700)]


def vigil(stack, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "--state-dir", str(stack.paths.state), *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def test_the_loop_closes_by_itself_and_worse_candidates_are_stopped(stack, tmp_path):
    summary_file = tmp_path / "loop.json"
    loop = vigil(stack, "demo", "loop", "--camera", "loop-test", "--json", str(summary_file), timeout=2600)
    assert loop.returncode == 0, loop.stderr[-6000:]
    summary = json.loads(summary_file.read_text())

    # Every stage happened, in order, and the candidate is better than the champion on the site's test split.
    marks = summary["marks_s"]
    order = ["drift_detected", "labelled_and_committed", "trained", "shadow", "canary", "promoted", "alert_cleared"]
    assert [marks[step] for step in order] == sorted(marks[step] for step in order), marks
    assert summary["state"] == "eligible"
    assert summary["candidate_map50"] > summary["champion_map50"]
    assert summary["items_of_camera"] > 0

    # The worse candidates: refused by the gate, and rolled back by a live check when forced past it.
    worse = summary["worse_candidates"]
    assert worse["refused_by_gate"] and worse["gate_reasons"]
    assert worse["forced_outcome"] == "rolled_back"
    assert any(check in worse["forced_reason"] for check in ("disagreement", "output_drift", "error_rate",
                                                            "latency_ratio")), worse["forced_reason"]

    # The registry: the candidate is the primary, its lineage goes back to the dataset version and the camera.
    name, _, registry_version = summary["candidate"].partition(":")
    shown = vigil(stack, "models", "show", name, registry_version, "--lineage")
    assert shown.returncode == 0, shown.stderr
    assert summary["version"] in shown.stdout and "loop-test" in shown.stdout

    # The metrics store: each rollout step is a row.
    steps = query(stack, f"SELECT stage FROM rollout_events WHERE model_name = '{name}' "
                         f"AND registry_version = {int(registry_version)} ORDER BY event_time")
    assert [row["stage"] for row in steps] == ["shadow", "canary", "promoted"]
