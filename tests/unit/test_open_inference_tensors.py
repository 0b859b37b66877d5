import struct

import numpy as np
import pytest

from protos import inference_pb2
from services.inference.adapters.open_inference_tensors import TensorError, decode_input, encode_output

Input = inference_pb2.ModelInferRequest.InferInputTensor


def test_raw_uint8_image_decodes_to_its_shape():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    decoded = decode_input(Input(name="image", datatype="UINT8", shape=[2, 3, 3]), image.tobytes())
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, image)


def test_typed_contents_decode_like_raw_ones():
    tensor = Input(name="x", datatype="FP32", shape=[2, 2])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.5, -4.0])
    np.testing.assert_array_equal(decode_input(tensor, None), np.array([[1, 2], [3.5, -4]], np.float32))


def test_raw_bytes_of_the_wrong_size_name_the_input():
    with pytest.raises(TensorError, match="input 'image'.*expected 18"):
        decode_input(Input(name="image", datatype="UINT8", shape=[2, 3, 3]), b"\x00" * 17)


def test_bytes_elements_are_length_prefixed():
    raw = b"".join(struct.pack("<I", len(v)) + v for v in (b"jpeg-1", b"", b"x"))
    decoded = decode_input(Input(name="image_bytes", datatype="BYTES", shape=[3]), raw)
    assert list(decoded) == [b"jpeg-1", b"", b"x"]


def test_a_truncated_bytes_element_is_an_error():
    with pytest.raises(TensorError, match="overruns"):
        decode_input(Input(name="b", datatype="BYTES", shape=[1]), struct.pack("<I", 10) + b"abc")


def test_unknown_datatypes_are_refused():
    with pytest.raises(TensorError, match="unsupported datatype 'COMPLEX'"):
        decode_input(Input(name="x", datatype="COMPLEX", shape=[1]), b"\x00" * 8)


def test_outputs_encode_little_endian_and_bytes_with_prefixes():
    meta, raw = encode_output("scores", np.array([0.5, 1.0], np.float32), "FP32", [2])
    assert meta.name == "scores" and list(meta.shape) == [2]
    assert raw == struct.pack("<2f", 0.5, 1.0)
    _, raw = encode_output("classes", [b"person", b"car"], "BYTES", [2])
    assert raw == struct.pack("<I", 6) + b"person" + struct.pack("<I", 3) + b"car"
