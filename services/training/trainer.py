"""Training a candidate on a dataset version: the base detector (the served OpenVINO model, by the same
detector code inference uses) proposes boxes on every item's image once (cached per image blob), the re-scoring
stage is fitted on the train split and its thresholds calibrated on val, candidate and champion are evaluated on
test, and the candidate is written as a model dir: the base model's files, rescoring.json, the evaluation report,
and model.json naming the stage and recording its lineage (dataset@version, code version, parameters, seed,
metrics). Progress goes to the log (and `on_progress`) as steps with an ETA."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np

from libs.common.logs import get_logger
from services.datasets.manifest import Item
from services.inference.detectors import DETECTOR_KINDS, model_kind
from services.inference.detectors.base import Detection
from services.inference.detectors.rescored import Rescoring, rescoring_file
from services.training.evaluation import EvaluationReport, GateDecision, evaluate, gate, gate_report
from services.training.rescoring import FeatureSpec, ItemProposals, fit, site_classes

REPO_ROOT = Path(__file__).resolve().parents[2]
RESCORING_FILE = "rescoring.json"
REPORT_FILE = "evaluation.json"
PROPOSAL_CACHE_VERSION = "1"  # bump when what a cached proposal holds changes


@dataclass(frozen=True)
class TrainingParams:
    proposal_threshold: float = 0.05  # the base detector proposes down to this score
    champion_threshold: float = 0.25  # the score threshold the champion serves at (inference's default)
    l2: float = 1.0
    camera_buckets: int = 8
    use_embedding: bool = True  # the frame's 64-dim embedding among the features, where the model gives one
    min_ground_truth: int = 5  # boxes of a class a camera needs in val for thresholds of its own
    # Thresholds must find on val at least (1 + recall_slack) x the true boxes the champion serves there (the
    # recall measured on a small val split does not carry to test exactly; the slack keeps the gate's tolerance)
    recall_slack: float = 0.1
    # the gate: mAP@0.5 must beat the champion's by this (a point: a candidate no better than the champion, such as
    # the same data trained again, is not worth a rollout)
    margin: float = 0.01
    tolerance: float = 0.02  # ... and no class's AP or recall may fall by more
    device: str = "CPU"
    precision_hint: str | None = "f32"  # the same numbers on every machine, whatever the CPU runs best


@dataclass(frozen=True)
class TrainingResult:
    model_dir: Path
    candidate: EvaluationReport
    champion: EvaluationReport
    decision: GateDecision
    lineage: dict
    timings_s: dict = field(default_factory=dict)
    cameras: dict = field(default_factory=dict)  # camera -> items, candidate_map50, champion_map50 on test


class Progress:
    """Log lines `training progress` with the step, how far it is, and the ETA of the step from its pace."""

    def __init__(self, on_progress: Callable[[str, int, int, float | None], None] | None = None):
        self.log = get_logger(__name__)
        self.on_progress = on_progress or (lambda step, done, total, eta_s: None)

    def step(self, step: str, done: int, total: int, started: float, every: int = 1) -> None:
        if done % every and done != total:
            return
        elapsed = time.monotonic() - started
        eta_s = elapsed / done * (total - done) if done else None
        self.log.info("training progress", step=step, done=done, total=total,
                      eta_s=round(eta_s, 1) if eta_s is not None else None)
        self.on_progress(step, done, total, eta_s)


def code_version() -> str:
    """The git commit this code is, with "-dirty" when the working tree differs from it ("unknown" outside git)."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def model_identity(model_dir: Path, proposal_threshold: float, precision_hint: str | None) -> str:
    """What proposals depend on: the network's files, the threshold and the precision."""
    digest = hashlib.sha256(f"{PROPOSAL_CACHE_VERSION}:{proposal_threshold}:{precision_hint}".encode())
    for name in ("model.xml", "model.bin", "model.json", "embedding_projection.npy"):
        path = Path(model_dir) / name
        if path.is_file():
            digest.update(name.encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


class ProposalCache:
    """The base detector's proposals (and the frame's embedding) per image blob, on disk: one JSON a blob under a
    dir of the model's identity, so a second training over the same images runs no network."""

    def __init__(self, root: Path, identity: str):
        self.dir = Path(root) / identity
        self.dir.mkdir(parents=True, exist_ok=True)

    def get(self, blob: str) -> tuple[tuple[Detection, ...], np.ndarray | None] | None:
        path = self.dir / f"{blob}.json"
        if not path.is_file():
            return None
        content = json.loads(path.read_text())
        detections = tuple(Detection(d["label"], d["class_id"], d["score"], tuple(d["box"]))
                           for d in content["detections"])
        embedding = content.get("embedding")
        return detections, (np.asarray(embedding, np.float32) if embedding is not None else None)

    def put(self, blob: str, detections: Sequence[Detection], embedding: np.ndarray | None) -> None:
        content = {"detections": [{"label": d.label, "class_id": d.class_id, "score": d.score, "box": list(d.box)}
                                  for d in detections],
                   "embedding": embedding.tolist() if embedding is not None else None}
        tmp = self.dir / f".{blob}.tmp"
        tmp.write_text(json.dumps(content))
        tmp.replace(self.dir / f"{blob}.json")


def base_proposals(dataset_store, items: Sequence[Item], base_model_dir: Path, params: TrainingParams,
                   cache_dir: Path, progress: Progress) -> dict[str, ItemProposals]:
    """item id -> the base detector's proposals on its image (each distinct blob run once, then cached)."""
    cache = ProposalCache(cache_dir, model_identity(base_model_dir, params.proposal_threshold,
                                                     params.precision_hint))
    detector = None
    by_blob: dict[str, tuple[tuple[Detection, ...], np.ndarray | None]] = {}
    blobs = sorted({item.blob for item in items})
    started = time.monotonic()
    for done, blob in enumerate(blobs, start=1):
        cached = cache.get(blob)
        if cached is None:
            if detector is None:
                detector = DETECTOR_KINDS[model_kind(base_model_dir)](
                    Path(base_model_dir), params.device, params.precision_hint, params.proposal_threshold,
                    embeddings=params.use_embedding)
            image = cv2.imdecode(np.frombuffer(dataset_store.get_blob(blob), np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"blob {blob} is not an image OpenCV can decode")
            tensor, info = detector.preprocess(image)
            outputs = detector.infer(tensor)
            cached = (tuple(detector.postprocess(outputs, info)), detector.embedding(outputs))
            cache.put(blob, *cached)
        by_blob[blob] = cached
        progress.step("proposals", done, len(blobs), started, every=25)
    return {item.item_id: ItemProposals(item, *by_blob[item.blob]) for item in items}


def champion_detections(base_model_dir: Path, proposals: Mapping[str, ItemProposals], threshold: float
                        ) -> dict[str, list[Detection]]:
    """What the champion serves on each item: the base detector at its served threshold (the proposals above it:
    suppression keeps the same boxes at any lower threshold), behind its own re-scoring stage if it has one."""
    metadata = json.loads((Path(base_model_dir) / "model.json").read_text())
    name = rescoring_file(metadata)
    if name:
        stage = Rescoring.read(Path(base_model_dir) / name)
        return {i: stage.apply(p.detections, p.item.width, p.item.height, p.item.camera_id, p.embedding)
                for i, p in proposals.items()}
    return {i: [d for d in p.detections if d.score >= threshold] for i, p in proposals.items()}


def write_model_dir(base_model_dir: Path, out_dir: Path, rescoring: Rescoring, metadata: dict, report: bytes
                    ) -> Path:
    """The base dir's files (but an earlier re-scoring stage), rescoring.json, the report, and model.json last
    (a dir is finished once it has one)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; a candidate is written to a new dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    base_metadata = json.loads((Path(base_model_dir) / "model.json").read_text())
    skip = {"model.json", rescoring_file(base_metadata), REPORT_FILE}
    for path in sorted(Path(base_model_dir).iterdir()):
        if path.is_file() and path.name not in skip and not path.name.startswith("."):
            shutil.copy2(path, out_dir / path.name)
    (out_dir / RESCORING_FILE).write_text(json.dumps(rescoring.to_json(), indent=1) + "\n")
    (out_dir / REPORT_FILE).write_bytes(report)
    (out_dir / "model.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return out_dir


def train_candidate(dataset_store, dataset: str, version: str, base_model_dir: Path, out_dir: Path, seed: int = 0,
                    params: TrainingParams | None = None, *, cache_dir: Path | None = None, name: str | None = None,
                    on_progress: Callable[[str, int, int, float | None], None] | None = None) -> TrainingResult:
    """Trains the re-scoring stage of `base_model_dir` on `dataset@version` (a version id, branch or tag) and
    writes the candidate to `out_dir`. `name`: the candidate's model name (default: the base's)."""
    params = params or TrainingParams()
    progress = Progress(on_progress)
    log = progress.log
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    manifest = dataset_store.version(dataset, version)
    items = [item for item in manifest.items if item.verdict in ("labelled", "nothing_to_label")]
    splits = {split: [item for item in items if item.split == split] for split in ("train", "val", "test")}
    log.info("training started", dataset=dataset, version=manifest.version, base=str(base_model_dir),
             **{f"{split}_items": len(s) for split, s in splits.items()})
    if not splits["train"] or not splits["test"]:
        raise ValueError(f"{dataset}@{manifest.version} needs train and test items "
                         f"(has {', '.join(f'{k} {len(v)}' for k, v in splits.items())})")

    proposals = base_proposals(dataset_store, items, base_model_dir, params,
                               cache_dir or Path(out_dir).parent / ".proposals", progress)
    timings["proposals"] = time.monotonic() - t0

    t1 = time.monotonic()
    with_embedding = params.use_embedding and any(p.embedding is not None for p in proposals.values())
    embedding_dims = max((len(p.embedding) for p in proposals.values() if p.embedding is not None), default=0)
    spec = FeatureSpec(site_classes(splits["train"] + splits["val"]), params.camera_buckets,
                       embedding_dims if with_embedding else 0)
    of = lambda split: [proposals[item.item_id] for item in splits[split]]  # noqa: E731
    rescoring = fit(of("train"), of("val") or of("train"), spec, params.proposal_threshold, params.l2,
                    params.min_ground_truth, seed, keep_recall_above=params.champion_threshold,
                    recall_slack=params.recall_slack)
    timings["fit"] = time.monotonic() - t1
    progress.step("fit", 1, 1, t1)

    t2 = time.monotonic()
    test = splits["test"]
    base_metadata = json.loads((Path(base_model_dir) / "model.json").read_text())
    candidate_name = name or base_metadata["name"]
    candidate_version = f"{base_metadata.get('version', '')}+site.{manifest.version[:8]}.s{seed}"
    candidate_served = {
        item.item_id: rescoring.apply(p.detections, item.width, item.height, item.camera_id, p.embedding)
        for item, p in ((item, proposals[item.item_id]) for item in test)}
    champion_served = champion_detections(base_model_dir, {i.item_id: proposals[i.item_id] for i in test},
                                          params.champion_threshold)
    candidate_model = f"{candidate_name}:{candidate_version}"
    champion_model = f"{base_metadata['name']}:{base_metadata.get('version', '')}"
    candidate = evaluate(candidate_model, test, candidate_served)
    champion = evaluate(champion_model, test, champion_served)
    decision = gate(candidate, champion, params.margin, params.tolerance)
    cameras = {}  # the same, camera by camera: where the stage gained or lost
    for camera in sorted({item.camera_id for item in test}):
        seen = [item for item in test if item.camera_id == camera]
        cameras[camera] = {"items": len(seen),
                           "candidate_map50": evaluate(candidate_model, seen, candidate_served).map50,
                           "champion_map50": evaluate(champion_model, seen, champion_served).map50}
    timings["evaluation"] = time.monotonic() - t2
    progress.step("evaluation", 1, 1, t2)

    lineage = {
        "parent": f"{base_metadata['name']}:{base_metadata.get('version', '')}",
        "dataset": dataset, "dataset_version": manifest.version, "code_version": code_version(),
        "params": asdict(params), "seed": seed, "split": "test",
        "items": {split: len(s) for split, s in splits.items()},
        "metrics": {"candidate_map50": candidate.map50, "champion_map50": champion.map50,
                    "eligible": decision.eligible, "cameras": cameras},
    }
    metadata = {**base_metadata, "name": candidate_name, "version": candidate_version, "rescoring": RESCORING_FILE,
                "evaluation": REPORT_FILE, "lineage": lineage,
                "metrics": {"test_map50": candidate.map50, "champion_test_map50": champion.map50,
                            "classes": {n: asdict(c) for n, c in candidate.classes.items()}}}
    report = gate_report(candidate, champion, decision, params.margin, params.tolerance, dataset=dataset,
                         dataset_version=manifest.version, split="test", seed=seed, cameras=cameras)
    write_model_dir(base_model_dir, out_dir, rescoring, metadata, report)
    timings["total"] = time.monotonic() - t0
    log.info("training finished", candidate=f"{candidate_name}:{candidate_version}", out=str(out_dir),
             candidate_map50=round(candidate.map50, 4), champion_map50=round(champion.map50, 4),
             eligible=decision.eligible, seconds=round(timings["total"], 1))
    return TrainingResult(Path(out_dir), candidate, champion, decision, lineage, timings, cameras)
