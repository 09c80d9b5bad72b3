"""TF Serving's gRPC API (``PredictionService``, ``ModelService``) with the protos of
``tensorflow-serving-api``, so TF Serving's own Python stubs work unchanged.

Served: ``Predict``, ``GetModelMetadata`` (``signature_def``), ``GetModelStatus``.
The answers are the REST ones in proto form: the metadata and status JSON that
``labquake serve`` writes is the proto's JSON mapping, parsed back with ``json_format``.
"""

import logging

from labquake_tf.serving.status import ServingError
from labquake_tf.serving.tensors import to_ndarray, to_tensor_proto

log = logging.getLogger(__name__)

def add_services(grpc_server, server):
    """Register PredictionService and ModelService for ``server`` (a ``server.Server``)."""
    import grpc
    from google.protobuf import json_format
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                         model_service_pb2_grpc, predict_pb2,
                                         prediction_service_pb2_grpc)

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
