"""Training: candidates trained on a dataset version, evaluated against the champion on the version's test split,
written as model dirs with lineage.

What is trained (issue #13, decided in coord/TRAINING.md): a per-site re-scoring stage on the served detector's own
proposals (evaluation.py, rescoring.py, trainer.py; served by services/inference/detectors/rescored.py). It fits in
seconds on two cores (the cost is one detector pass per image, cached), needs no new graph nor runtime, keeps the
base network byte for byte (so shadow, canary, promotion and rollback treat it as any model version), and acts
where a site differs: a camera whose scores fall (dimmed, turned) gets its own thresholds, classes the site never
labels are dropped, boxes of shapes and places that are never objects here are rejected. What it cannot do is find
what the detector never proposes: its recall is bounded by the proposals at the low threshold."""
