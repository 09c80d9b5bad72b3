"""TF Serving's gRPC API (``PredictionService``, ``ModelService``) with the protos of
``tensorflow-serving-api``, so TF Serving's own Python stubs work unchanged; plus the
TensorProto <-> numpy conversion the client shares.

Served: ``Predict``, ``GetModelMetadata`` (``signature_def``), ``GetModelStatus``.
The answers are the REST ones in proto form: the metadata and status JSON that
``labquake serve`` writes is the proto's JSON mapping, parsed back with ``json_format``.
"""

import logging

import numpy as np

log = logging.getLogger(__name__)

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


def add_services(grpc_server, server):
    """Register PredictionService and ModelService for ``server`` (a ``server.Server``)."""
    import grpc
    from google.protobuf import json_format
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                         model_service_pb2_grpc, predict_pb2,
                                         prediction_service_pb2_grpc)

    from labquake_tf.serving.client import ServingError

    def where(spec):
        version = spec.version.value if spec.HasField("version") else None
        return dict(version=version, label=spec.version_label or None)

    def answer(api, model_name, context, fn):
        try:
            return server.observe(model_name, api, "GRPC", fn)
        except ServingError as e:
            context.abort(getattr(grpc.StatusCode, e.code), str(e))
        except Exception as e:  # a bug or a TF error: report it, keep serving
            log.exception("gRPC %s failed", api)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    def arrays(inputs):
        try:
            return {k: to_ndarray(v) for k, v in inputs.items()}
        except ValueError as e:
            raise ServingError(400, str(e)) from None

    class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            spec = request.model_spec

            def predict():
                inputs = arrays(request.inputs)
                name = spec.signature_name or None
                servable, outputs = server.model(spec.name).run(inputs, name, **where(spec))
                wanted = list(request.output_filter) or list(outputs)
                unknown = sorted(set(wanted) - set(outputs))
                if unknown:
                    raise ServingError(400, f"output tensor alias not found in signature: "
                                            f"{unknown[0]}")
                reply = predict_pb2.PredictResponse()
                reply.model_spec.name = spec.name
                reply.model_spec.version.value = servable.version
                reply.model_spec.signature_name = name or "serving_default"
                for k in wanted:
                    reply.outputs[k].CopyFrom(to_tensor_proto(outputs[k]))
                return reply
            return answer("Predict", spec.name, context, predict)

        def GetModelMetadata(self, request, context):
            spec = request.model_spec

            def metadata():
                if list(request.metadata_field) != ["signature_def"]:
                    raise ServingError(400, "Metadata field(s) "
                                            f"{list(request.metadata_field)} not supported; "
                                            "ask for ['signature_def']")
                meta = server.model(spec.name).metadata(**where(spec))
                reply = get_model_metadata_pb2.GetModelMetadataResponse()
                json_format.ParseDict(meta["model_spec"], reply.model_spec)
                reply.metadata["signature_def"].Pack(json_format.ParseDict(
                    meta["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap()))
                return reply
            return answer("GetModelMetadata", spec.name, context, metadata)

    class Models(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            spec = request.model_spec
            return answer("GetModelStatus", spec.name, context, lambda: json_format.ParseDict(
                server.model(spec.name).status(**where(spec)),
                get_model_status_pb2.GetModelStatusResponse()))

    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Prediction(), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(Models(), grpc_server)
