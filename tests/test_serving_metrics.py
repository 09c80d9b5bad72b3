import re

from labquake_tf.serving.metrics import BUCKETS, Metrics


def test_prometheus_text_with_tf_servings_names_and_buckets():
    m = Metrics()
    m.observe("p4581", "Predict", "REST", "OK", 0.000005)      # 5 us: first bucket (<= 10)
    m.observe("p4581", "Predict", "REST", "OK", 0.002)         # 2 ms
    m.observe("p4581", "Predict", "GRPC", "NOT_FOUND", 1e4)  # beyond the last bucket (1474 s)
    m.observe('a"b', "GetModelStatus", "REST", "OK", 0.001)
    text = m.render()
    assert ':tensorflow:serving:request_count{model_name="p4581",status="OK"} 2' in text
    assert ':tensorflow:serving:request_count{model_name="p4581",status="NOT_FOUND"} 1' in text
    assert 'model_name="a\\"b"' in text  # label values escaped as Prometheus wants
    rest = 'model_name="p4581",API="Predict",entrypoint="REST"'
    buckets = [(float(le), int(n)) for le, n in re.findall(
        rf':tensorflow:serving:request_latency_bucket{{{re.escape(rest)},le="([^"]+)"}} (\d+)',
        text)]
    assert [le for le, _ in buckets] == [float(f"{b:g}") for b in BUCKETS] + [float("inf")]
    counts = [n for _, n in buckets]
    assert counts == sorted(counts) and counts[0] == 1 and counts[-1] == 2  # cumulative
    first_2ms = next(le for le, n in buckets if n == 2)
    assert first_2ms >= 2000 > first_2ms / 1.8 - 1e-6  # 2 ms lands in its own bucket (us)
    assert f":tensorflow:serving:request_latency_sum{{{rest}}} 2005" in text
    assert f":tensorflow:serving:request_latency_count{{{rest}}} 2" in text
    grpc = 'model_name="p4581",API="Predict",entrypoint="GRPC"'
    assert f':tensorflow:serving:request_latency_bucket{{{grpc},le="+Inf"}} 1' in text
    assert f':tensorflow:serving:request_latency_bucket{{{grpc},le="{BUCKETS[-1]:g}"}} 0' in text
