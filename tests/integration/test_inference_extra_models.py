"""The SSDLite person detector and the CenterFace face detector served by the real inference service from a
model repository dir holding their built model dirs: over gRPC through tritonclient (a client nobody here wrote)
and over Kafka for cameras routed to them.

tritonclient registers its own copy of the `inference` protos in the global descriptor pool, which clashes with
ours, so the client side runs in a process of its own: this very module, run as
`python -m tests.integration.test_inference_extra_models URL FOOTAGE PHOTO`, prints what it saw as JSON."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration
PERSON_MODEL, FACE_MODEL = "ssdlite-person", "centerface"
CAMERA_MODELS = {"cam-street": PERSON_MODEL, "cam-faces": FACE_MODEL}
FRAMES_PER_CAMERA = 4
FOOTAGE_FRAME = 200  # a frame of vtest.avi with several pedestrians


@pytest.fixture(scope="module")
def extra_stack(tmp_path_factory):
    from libs.common.cache_dir import default_cache_dir
    from tools.extra_models import ensure_face_model, ensure_person_model
    from tests.integration.test_inference_grpc import inference_stack

    repository = tmp_path_factory.mktemp("model-repository")
    for model_dir in (ensure_person_model(default_cache_dir()), ensure_face_model(default_cache_dir())):
        shutil.copytree(model_dir, repository / model_dir.parent.name)
    env = {"VIGIL_INFERENCE_MODEL_REPOSITORY": str(repository),
           "VIGIL_INFERENCE_CAMERA_MODELS": json.dumps(CAMERA_MODELS)}
    with inference_stack(tmp_path_factory.mktemp("inference-extra-models"), env) as stack:
        yield stack


@pytest.fixture(scope="module")
def media(extra_stack):
    from cli.stack.camera import fetch_footage
    from libs.common.cache_dir import default_cache_dir
    from tools.fetch_assets import fetch_opencv_samples

    return fetch_footage(default_cache_dir()), fetch_opencv_samples(default_cache_dir()) / "messi5.jpg"


@pytest.fixture(scope="module")
def seen(extra_stack, media) -> dict:
    footage, photo = media
    probe = subprocess.run([sys.executable, "-m", "tests.integration.test_inference_extra_models",
                            f"127.0.0.1:{extra_stack.config.ports.grpc}", str(footage), str(photo)],
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    return json.loads(probe.stdout)


def test_the_repository_index_lists_both_models_ready(seen):
    index = {m["name"]: m for m in seen["index"]["models"]}
    assert index[PERSON_MODEL]["state"] == "READY" and index[FACE_MODEL]["state"] == "READY"
    assert index[PERSON_MODEL]["version"] == "1" and index[FACE_MODEL]["version"] == "1"
    assert index["yolov3-tiny"]["state"] == "READY"


def test_ssdlite_person_finds_persons_on_a_real_frame_through_tritonclient(seen):
    person = seen[PERSON_MODEL]
    assert person["model_ready"] and person["metadata"]["name"] == PERSON_MODEL
    assert len(person["classes"]) >= 3 and set(person["classes"]) == {"person"}
    assert person["boxes_shape"] == [len(person["classes"]), 4]


def test_centerface_finds_the_face_on_a_real_photo_through_tritonclient(seen):
    face = seen[FACE_MODEL]
    assert face["model_ready"] and face["classes"] and set(face["classes"]) == {"face"}
    # Messi's head in this 548x342 photo is around x 220..265, y 85..140 (boxes come back in photo pixels).
    x1, y1, x2, y2 = face["boxes"][0]
    assert 200 < (x1 + x2) / 2 < 280 and 80 < (y1 + y2) / 2 < 150, face["boxes"]
    # Reloading it (RepositoryModelLoad) works and it keeps answering.
    assert face["reload"] == "OK" and face["after_reload"] == face["classes"]


def test_cameras_routed_to_the_extra_models_get_their_detections_over_kafka(extra_stack, media):
    import cv2

    from libs.common.topics import FRAMES, INFERENCE
    from protos import events_pb2
    from tests.integration.conftest import wait_for
    from tests.integration.kafka_tools import end_offsets, produce, read_range
    from tests.integration.test_inference_kafka import frame_event

    footage, photo = media
    capture = cv2.VideoCapture(str(footage))
    capture.set(cv2.CAP_PROP_POS_FRAMES, FOOTAGE_FRAME)
    street = []
    for _ in range(FRAMES_PER_CAMERA):
        ok, image = capture.read()
        assert ok
        street.append(cv2.imencode(".jpg", image)[1].tobytes())
    capture.release()
    portrait = cv2.imencode(".jpg", cv2.imread(str(photo)))[1].tobytes()
    frames = [frame_event("cam-street", i, street[i]) for i in range(FRAMES_PER_CAMERA)]
    frames += [frame_event("cam-faces", i, portrait) for i in range(FRAMES_PER_CAMERA)]

    bootstrap = extra_stack.config.kafka_bootstrap
    start = end_offsets(bootstrap, INFERENCE)
    produce(bootstrap, FRAMES, [(f.camera_id.encode(), f.SerializeToString()) for f in frames])
    frame_ids = {f.envelope.event_id for f in frames}

    def results():
        found = [events_pb2.InferenceResult.FromString(m.value())
                 for m in read_range(bootstrap, INFERENCE, start, end_offsets(bootstrap, INFERENCE))]
        found = [r for r in found if r.frame_event_id in frame_ids]
        return found if {r.frame_event_id for r in found} == frame_ids else None

    by_camera: dict[str, list] = {}
    for result in wait_for(results, 120, what="a result per frame on vigil.inference"):
        by_camera.setdefault(result.camera_id, []).append(result)
    street_results, face_results = by_camera["cam-street"], by_camera["cam-faces"]
    assert {(r.model.name, r.model.version) for r in street_results} == {(PERSON_MODEL, "1")}
    assert {d.label for r in street_results for d in r.detections} == {"person"}
    assert all(len(r.detections) >= 2 for r in street_results), [len(r.detections) for r in street_results]
    assert {(r.model.name, r.model.version) for r in face_results} == {(FACE_MODEL, "1")}
    assert all([d.label for d in r.detections] and {d.label for d in r.detections} == {"face"}
               for r in face_results)
    assert all((r.width, r.height) == (548, 342) for r in face_results)
    assert all(r.model.precision for r in street_results + face_results)


# -- the client process -------------------------------------------------------------------------------------

def probe(url: str, footage: str, photo: str) -> dict:
    import cv2
    import tritonclient.grpc as triton

    from tests.integration.triton_client_probe import status_of

    def pixels_input(image):
        tensor = triton.InferInput("image", list(image.shape), "UINT8")
        tensor.set_data_from_numpy(image)
        return tensor

    def classes(result) -> list[str]:
        return [c.decode() for c in result.as_numpy("classes")]

    capture = cv2.VideoCapture(footage)
    capture.set(cv2.CAP_PROP_POS_FRAMES, FOOTAGE_FRAME)
    ok, frame = capture.read()
    assert ok, f"cannot read frame {FOOTAGE_FRAME} of {footage}"
    portrait = cv2.imread(photo)
    assert portrait is not None, photo

    client = triton.InferenceServerClient(url=url)
    persons = client.infer(PERSON_MODEL, [pixels_input(frame)])
    faces = client.infer(FACE_MODEL, [pixels_input(portrait)])
    seen = {
        "index": client.get_model_repository_index(as_json=True),
        PERSON_MODEL: {
            "model_ready": client.is_model_ready(PERSON_MODEL),
            "metadata": client.get_model_metadata(PERSON_MODEL, as_json=True),
            "classes": classes(persons), "boxes_shape": list(persons.as_numpy("boxes").shape),
        },
        FACE_MODEL: {
            "model_ready": client.is_model_ready(FACE_MODEL),
            "classes": classes(faces), "boxes": faces.as_numpy("boxes").tolist(),
            "reload": status_of(lambda: client.load_model(FACE_MODEL)),
        },
    }
    seen[FACE_MODEL]["after_reload"] = classes(client.infer(FACE_MODEL, [pixels_input(portrait)]))
    client.close()
    return seen


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], sys.argv[2], sys.argv[3])))
