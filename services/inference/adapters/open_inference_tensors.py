"""Open Inference Protocol tensors to and from numpy (pure: used by the gRPC adapter, tested alone).

Raw contents are little-endian and row-major; a BYTES element in raw form is a 4-byte little-endian
length followed by the bytes, as Triton and KServe define it."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from protos import inference_pb2

NUMPY_DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
# Which InferTensorContents field carries each datatype when not sent raw.
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


class TensorError(ValueError):
    """The request's tensor is not what was declared or expected; the message names the input."""


@dataclass(frozen=True)
class SharedMemoryPlace:
    """Where a tensor's bytes are in a registered system shared memory region (Triton's parameters)."""
    region: str
    byte_size: int
    offset: int = 0


def shared_memory_place(parameters: Mapping[str, inference_pb2.InferParameter], what: str
                        ) -> SharedMemoryPlace | None:
    """The region a tensor's parameters name (shared_memory_region, shared_memory_byte_size, optional
    shared_memory_offset), or None when its bytes come with the request. what: "input 'image'", for messages."""
    if "shared_memory_region" not in parameters:
        return None
    region = parameters["shared_memory_region"]
    if region.WhichOneof("parameter_choice") != "string_param" or not region.string_param:
        raise TensorError(f"{what}: shared_memory_region must be a region's name")
    if "shared_memory_byte_size" not in parameters:
        raise TensorError(f"{what}: shared_memory_region needs shared_memory_byte_size")
    byte_size = _integer_parameter(parameters["shared_memory_byte_size"], what, "shared_memory_byte_size")
    offset = (_integer_parameter(parameters["shared_memory_offset"], what, "shared_memory_offset")
              if "shared_memory_offset" in parameters else 0)
    return SharedMemoryPlace(region.string_param, byte_size, offset)


def _integer_parameter(parameter: inference_pb2.InferParameter, what: str, key: str) -> int:
    # tritonclient sends int64; other clients may send uint64.
    choice = parameter.WhichOneof("parameter_choice")
    if choice not in ("int64_param", "uint64_param"):
        raise TensorError(f"{what}: {key} must be an integer")
    value = getattr(parameter, choice)
    if value < 0:
        raise TensorError(f"{what}: {key} must not be negative, got {value}")
    return value


def decode_input(tensor: inference_pb2.ModelInferRequest.InferInputTensor, raw: bytes | memoryview | None
                 ) -> np.ndarray:
    """raw: the raw contents, or a view of shared memory (np.frombuffer then reads it in place); None: the
    tensor's typed contents."""
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if any(d < 0 for d in shape):
        raise TensorError(f"input '{name}': shape {shape} has a negative dimension")
    count = int(np.prod(shape)) if shape else 1
    if datatype == "BYTES":
        values = _unpack_bytes(raw, name) if raw is not None else list(tensor.contents.bytes_contents)
        if len(values) != count:
            raise TensorError(f"input '{name}': {len(values)} BYTES elements for shape {shape}")
        return np.array(values, dtype=object).reshape(shape)
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise TensorError(f"input '{name}': unsupported datatype '{datatype}'")
    if raw is not None:
        expected = count * np.dtype(dtype).itemsize
        if len(raw) != expected:
            raise TensorError(f"input '{name}': {len(raw)} bytes, expected {expected} for {datatype} {shape}")
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    values = getattr(tensor.contents, CONTENTS_FIELD[datatype])
    if len(values) != count:
        raise TensorError(f"input '{name}': {len(values)} values in contents for shape {shape}")
    return np.asarray(values, dtype=dtype).reshape(shape)


def _unpack_bytes(raw: bytes, name: str) -> list[bytes]:
    values, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise TensorError(f"input '{name}': truncated BYTES length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise TensorError(f"input '{name}': BYTES element overruns the buffer")
        values.append(bytes(raw[offset:offset + length]))  # a copy when raw is shared memory: small, and stable
        offset += length
    return values


def encode_output(name: str, value: np.ndarray | Sequence[bytes], datatype: str,
                  shape: Sequence[int]) -> tuple[inference_pb2.ModelInferResponse.InferOutputTensor, bytes]:
    """The output's metadata and its raw bytes (for raw_output_contents)."""
    meta = inference_pb2.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=list(shape))
    if datatype == "BYTES":
        raw = b"".join(struct.pack("<I", len(v)) + v for v in value)
    else:
        raw = np.ascontiguousarray(value, dtype=np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")).tobytes()
    return meta, raw
