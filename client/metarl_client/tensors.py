"""numpy <-> ``metarl.v1.Tensor`` (dtype + shape + little-endian bytes)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from metarl_client.proto.metarl.v1 import tensor_pb2

_TO_NUMPY: dict[tensor_pb2.Dtype, np.dtype[Any]] = {
    tensor_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DTYPE_FLOAT64: np.dtype("<f8"),
    tensor_pb2.DTYPE_INT32: np.dtype("<i4"),
    tensor_pb2.DTYPE_INT64: np.dtype("<i8"),
}
_FROM_NUMPY = {dt.str: code for code, dt in _TO_NUMPY.items()}


class TensorError(ValueError):
    """A tensor that cannot be encoded or decoded; the message says what is wrong."""


def to_tensor(array: Any) -> tensor_pb2.Tensor:
    """Encodes an array-like. Floats keep float32/float64 (others become float32); integers and
    booleans become int64."""
    if type(array) is np.ndarray and array.flags.c_contiguous:
        code = _FROM_NUMPY.get(array.dtype.str)  # (little-endian float32/64, int32/64)
        if code is not None:
            return tensor_pb2.Tensor(dtype=code, shape=array.shape, data=array.tobytes())
    arr = np.asarray(array)
    if arr.dtype.kind == "f":
        if arr.dtype.itemsize not in (4, 8):
            arr = arr.astype(np.float32)
    elif arr.dtype.kind in "iub":
        if arr.dtype.str not in ("<i4", "<i8"):
            arr = arr.astype(np.int64)
    else:
        raise TensorError(f"cannot send an array of dtype {arr.dtype}: use floats or integers")
    # (np.ascontiguousarray would turn a 0-d array into shape [1])
    arr = arr.astype(arr.dtype.newbyteorder("<"), order="C", copy=False)
    return tensor_pb2.Tensor(
        dtype=_FROM_NUMPY[arr.dtype.str], shape=list(arr.shape), data=arr.tobytes()
    )


def from_tensor(tensor: tensor_pb2.Tensor, name: str = "tensor") -> NDArray[Any]:
    """Decodes a tensor, checking that its dtype is known and that ``data`` fits ``shape``."""
    dtype = _TO_NUMPY.get(tensor.dtype)
    if dtype is None:
        known = tensor.dtype in tensor_pb2.Dtype.values()
        label = tensor_pb2.Dtype.Name(tensor.dtype) if known else str(tensor.dtype)
        raise TensorError(
            f"{name}: dtype {label} is not supported: use DTYPE_FLOAT32, DTYPE_FLOAT64, "
            "DTYPE_INT32 or DTYPE_INT64"
        )
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise TensorError(f"{name}: shape {list(shape)} has a negative dimension")
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize != len(tensor.data):
        raise TensorError(
            f"{name}: shape {list(shape)} of {dtype.name} needs {count * dtype.itemsize} bytes "
            f"of data, got {len(tensor.data)}"
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
