"""TensorFlow's ``TensorProto`` <-> numpy, as TF Serving's gRPC API carries tensors
(the client, the gRPC server and the warmup records share it)."""

import numpy as np

# TensorFlow's DataType enum values (types.proto), fixed by the wire format.
_NUMERIC = {1: (np.float32, "float_val"), 2: (np.float64, "double_val"),
            3: (np.int32, "int_val"), 4: (np.uint8, "int_val"), 5: (np.int16, "int_val"),
            6: (np.int8, "int_val"), 9: (np.int64, "int64_val"), 10: (np.bool_, "bool_val"),
            19: (np.float16, "half_val")}
_DT_STRING = 7
_ENUM = {np.dtype(t): code for code, (t, _) in _NUMERIC.items()}


def to_ndarray(proto):
    """A ``TensorProto`` as a numpy array (strings become an object array of bytes)."""
    shape = [d.size for d in proto.tensor_shape.dim]
    n = int(np.prod(shape, dtype=np.int64))
    if proto.dtype == _DT_STRING:
        values = list(proto.string_val)
        if len(values) == 1 and n != 1:
            values = values * n
        return np.array(values, dtype=object).reshape(shape)
    if proto.dtype not in _NUMERIC:
        raise ValueError(f"tensor dtype {proto.dtype} is not supported (use DT_FLOAT)")
    dtype, field = _NUMERIC[proto.dtype]
    if proto.tensor_content:
        if len(proto.tensor_content) != n * np.dtype(dtype).itemsize:
            raise ValueError(f"tensor_content holds {len(proto.tensor_content)} bytes, "
                             f"shape {shape} needs {n * np.dtype(dtype).itemsize}")
        return np.frombuffer(proto.tensor_content, dtype).reshape(shape)
    values = getattr(proto, field)
    if dtype == np.float16:  # half_val keeps the raw 16 bits in int32s
        values = np.asarray(values, np.uint16).view(np.float16)
    values = np.asarray(values, dtype)
    if len(values) == n:
        return values.reshape(shape)
    if len(values) <= 1:  # TensorProto's rule: the last value fills the rest
        return np.full(shape, values[0] if len(values) else 0, dtype)
    raise ValueError(f"tensor has {len(values)} values, shape {shape} needs {n}")


def to_tensor_proto(array):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    array = np.asarray(array)
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape])
    if array.dtype.kind in "OSU":
        values = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()]
        return tensor_pb2.TensorProto(dtype=_DT_STRING, tensor_shape=shape, string_val=values)
    if array.dtype not in _ENUM:
        raise ValueError(f"arrays of dtype {array.dtype} cannot be sent; use float32")
    return tensor_pb2.TensorProto(dtype=_ENUM[array.dtype], tensor_shape=shape,
                                  tensor_content=np.ascontiguousarray(array).tobytes())
