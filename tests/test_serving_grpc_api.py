"""TF Serving's own gRPC stubs (tensorflow-serving-api) against the embedded server."""

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from test_serving_export import TARGETS, raw_windows, shared_export

from labquake_tf.serving.tensors import to_ndarray, to_tensor_proto
from labquake_tf.serving.server import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = shared_export(tmp_path_factory)[1].parent
    with Server(base, port=None, grpc_port=0, labels={"stable": 1}) as s:
        yield s


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_url[len("grpc://"):]) as ch:
        yield ch


def test_predict_with_tf_servings_stub(server, channel):
    x = raw_windows()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = "serving_default"
    # tf.make_tensor_proto: what TF Serving's own examples send.
    request.inputs["ae_features"].CopyFrom(tf.make_tensor_proto(x))
    reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert set(reply.outputs) == set(TARGETS)
    assert reply.model_spec.name == "tiny" and reply.model_spec.version.value == 1
    fn = tf.saved_model.load(str(server.registry.get().path)).signatures["serving_default"]
    expected = fn(ae_features=tf.constant(x))
    for name in TARGETS:
        np.testing.assert_allclose(tf.make_ndarray(reply.outputs[name]), expected[name].numpy(),
                                   rtol=1e-5, atol=1e-6)
    # output_filter and a version label, as in TF Serving.
    request.output_filter.append("ttsf")
    request.model_spec.version_label = "stable"
    reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert list(reply.outputs) == ["ttsf"]


def test_metadata_and_status_with_tf_servings_stubs(channel):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tiny"
    reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
        request, timeout=30)
    defs = get_model_metadata_pb2.SignatureDefMap()
    assert reply.metadata["signature_def"].Unpack(defs)
    sig = defs.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert [d.size for d in sig.inputs["ae_features"].tensor_shape.dim] == [-1, 16, 1]
    assert set(sig.outputs) == set(TARGETS) and reply.model_spec.version.value == 1

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "tiny"
    reply = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status, timeout=30)
    (version,) = reply.model_version_status
    assert version.version == 1
    assert version.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


@pytest.mark.parametrize("change,code,message", [
    (lambda r: setattr(r.model_spec, "name", "nope"), "NOT_FOUND", "Latest(nope)"),
    (lambda r: r.model_spec.version.__setattr__("value", 9), "NOT_FOUND", "Specific(tiny, 9)"),
    (lambda r: setattr(r.model_spec, "signature_name", "serve"), "INVALID_ARGUMENT", '"serve"'),
    (lambda r: r.inputs["ae_features"].CopyFrom(to_tensor_proto(raw_windows(1)[:, :5])),
     "INVALID_ARGUMENT", "shape"),
    (lambda r: r.inputs["other"].CopyFrom(to_tensor_proto(raw_windows(1))), "INVALID_ARGUMENT",
     "unknown ['other']"),
    (lambda r: r.output_filter.append("nope"), "INVALID_ARGUMENT", "alias not found"),
])
def test_errors_carry_tf_servings_status_codes(channel, change, code, message):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.inputs["ae_features"].CopyFrom(to_tensor_proto(raw_windows(1)))
    change(request)
    with pytest.raises(grpc.RpcError) as e:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert e.value.code().name == code and message in e.value.details()


def test_tensor_protos_round_trip_like_tensorflows():
    for array in (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5], np.float64),
                  np.arange(4, dtype=np.int64), np.array([True, False]),
                  np.array([0.5, -2], np.float16), np.array(b"text", dtype=object)):
        proto = to_tensor_proto(array)
        for decoded in (to_ndarray(proto), tf.make_ndarray(proto)):
            np.testing.assert_array_equal(decoded, array)
    # Value lists (not tensor_content), the form tf.make_tensor_proto uses for small tensors,
    # including TensorProto's rule that one value fills the shape.
    np.testing.assert_array_equal(to_ndarray(tf.make_tensor_proto([[1.0, 2.0]])), [[1.0, 2.0]])
    filled = tf.make_tensor_proto(3.0, shape=[2, 2])
    np.testing.assert_array_equal(to_ndarray(filled), np.full((2, 2), 3.0, np.float32))
    bad = to_tensor_proto(np.ones((2, 2), np.float32))
    bad.tensor_content = bad.tensor_content[:-4]
    with pytest.raises(ValueError, match="12 bytes"):
        to_ndarray(bad)
