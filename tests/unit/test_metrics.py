"""Prometheus answers to node metrics: parsing, matching to nodes, units, and errors."""

import asyncio
import json
import math
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler

from deskhub.spawner.metrics import (
    GPU_MEMORY_FREE,
    GPU_MEMORY_USED,
    GPU_UTILISATION,
    LOAD,
    MEMORY_USED,
    GpuMetrics,
    MetricsUnavailable,
    NodeMetrics,
    PrometheusSource,
    metrics_by_node,
    parse_vector,
    queries,
)

MiB = 1024**2

# Answers as Prometheus 2.42 sends them for queries(): one known node (10.0.0.5:9100), one
# instance no node declares, a NaN, and a GPU no node declares.
LOAD_JSON = """{"status":"success","data":{"resultType":"vector","result":[
{"metric":{"instance":"10.0.0.5:9100"},"value":[1795627362.837,"3.029424166666664"]},
{"metric":{"instance":"10.0.0.99:9100"},"value":[1795627362.837,"12.5"]},
{"metric":{"instance":"10.0.0.6:9100"},"value":[1795627362.837,"NaN"]}]}}"""
MEMORY_JSON = """{"status":"success","data":{"resultType":"vector","result":[
{"metric":{"instance":"10.0.0.5:9100"},"value":[1795627362.851,"889647104"]},
{"metric":{"instance":"10.0.0.6:9100"},"value":[1795627362.851,"17179869184"]}]}}"""
GPU_UTIL_JSON = """{"status":"success","data":{"resultType":"vector","result":[
{"metric":{"UUID":"GPU-aaaa"},"value":[1795627362.877,"37"]},
{"metric":{"UUID":"GPU-bbbb"},"value":[1795627362.877,"NaN"]},
{"metric":{"UUID":"GPU-zzzz"},"value":[1795627362.877,"99"]}]}}"""
GPU_USED_JSON = """{"status":"success","data":{"resultType":"vector","result":[
{"metric":{"UUID":"GPU-aaaa"},"value":[1795627362.877,"1536"]},
{"metric":{"UUID":"GPU-bbbb"},"value":[1795627362.877,"0"]},
{"metric":{"UUID":"GPU-zzzz"},"value":[1795627362.877,"10"]}]}}"""
GPU_FREE_JSON = """{"status":"success","data":{"resultType":"vector","result":[
{"metric":{"UUID":"GPU-aaaa"},"value":[1795627362.877,"44068"]},
{"metric":{"UUID":"GPU-bbbb"},"value":[1795627362.877,"45604"]},
{"metric":{"UUID":"GPU-zzzz"},"value":[1795627362.877,"10"]}]}}"""
# the raw DCGM series (without max by (UUID)), with all the labels dcgm-exporter adds
DCGM_RAW_JSON = """{"status":"success","data":{"resultType":"vector","result":[
{"metric":{"Hostname":"node-c","UUID":"GPU-aaaa","__name__":"DCGM_FI_DEV_GPU_UTIL",
"device":"nvidia0","gpu":"0","instance":"10.9.9.9:9100","job":"node",
"modelName":"NVIDIA A40"},"value":[1795627362.863,"37"]}]}}"""
ERROR_JSON = """{"status":"error","errorType":"bad_data",
"error":"invalid parameter \\"query\\": 1:6: parse error: unclosed left parenthesis"}"""
MATRIX_JSON = """{"status":"success","data":{"resultType":"matrix","result":[
{"metric":{"instance":"a"},"values":[[1795627362.8,"1"],[1795627363.8,"2"]]}]}}"""
SCALAR_JSON = """{"status":"success","data":{"resultType":"scalar","result":[1795627362.8,"1"]}}"""

RESULTS = {
    LOAD: parse_vector(LOAD_JSON),
    MEMORY_USED: parse_vector(MEMORY_JSON),
    GPU_UTILISATION: parse_vector(GPU_UTIL_JSON),
    GPU_MEMORY_USED: parse_vector(GPU_USED_JSON),
    GPU_MEMORY_FREE: parse_vector(GPU_FREE_JSON),
}
INSTANCES = {"node-a": "10.0.0.5:9100", "node-b": "10.0.0.6:9100", "node-c": ""}
GPU_IDS = {"node-a": ["GPU-aaaa", "GPU-bbbb"], "node-c": ["GPU-cccc"]}


# -- parse_vector ---------------------------------------------------------------------------
def test_parse_vector_reads_labels_and_values():
    assert parse_vector(MEMORY_JSON) == [
        ({"instance": "10.0.0.5:9100"}, 889647104.0),
        ({"instance": "10.0.0.6:9100"}, 17179869184.0),
    ]
    [(labels, value)] = parse_vector(json.loads(DCGM_RAW_JSON))  # decoded works too
    assert labels["UUID"] == "GPU-aaaa" and labels["__name__"] == "DCGM_FI_DEV_GPU_UTIL"
    assert value == 37.0


def test_parse_vector_keeps_nan_and_infinities_as_floats():
    values = [v for _, v in parse_vector(LOAD_JSON)]
    assert math.isnan(values[2])
    result = [{"metric": {}, "value": [1.0, "+Inf"]}, {"metric": {}, "value": [1.0, "-Inf"]}]
    body = {"status": "success", "data": {"resultType": "vector", "result": result}}
    assert [v for _, v in parse_vector(body)] == [math.inf, -math.inf]


def test_parse_vector_of_an_empty_answer():
    body = '{"status":"success","data":{"resultType":"vector","result":[]}}'
    assert parse_vector(body) == []
    assert parse_vector(body.encode()) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (ERROR_JSON, "bad_data: invalid parameter"),
        ('{"status":"error"}', "status 'error'"),
        (MATRIX_JSON, "'matrix', not an instant vector"),
        (SCALAR_JSON, "'scalar', not an instant vector"),
        ("<html><body>Node Exporter</body></html>", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"status":"success"}', "no data"),
        ('{"status":"success","data":{"resultType":"vector"}}', "no result list"),
        (
            '{"status":"success","data":{"resultType":"vector","result":[{"metric":{}}]}}',
            "malformed series",
        ),
        (
            '{"status":"success","data":{"resultType":"vector",'
            '"result":[{"metric":{},"value":[1, "many"]}]}}',
            "malformed series",
        ),
    ],
)
def test_parse_vector_rejects_errors_and_other_shapes(body, message):
    with pytest.raises(ValueError, match="Prometheus") as caught:
        parse_vector(body)
    assert message in str(caught.value)


# -- metrics_by_node ------------------------------------------------------------------------
def test_metrics_by_node_matches_instances_and_gpu_uuids():
    nodes = metrics_by_node(RESULTS, INSTANCES, GPU_IDS)
    assert set(nodes) == {"node-a", "node-b", "node-c"}
    a = nodes["node-a"]
    assert a.load == pytest.approx(3.029424166666664)
    assert a.memory_used == 889647104
    # GPU-bbbb's utilisation is NaN: without all three metrics the GPU is left out
    assert a.gpus == {"GPU-aaaa": GpuMetrics(37.0, 1536 * MiB, 44068 * MiB)}


def test_gpu_memory_is_converted_from_mib_to_bytes():
    gpu = metrics_by_node(RESULTS, INSTANCES, GPU_IDS)["node-a"].gpus["GPU-aaaa"]
    assert gpu.memory_used == 1_610_612_736
    assert gpu.memory_free == 46_208_647_168
    assert isinstance(gpu.memory_used, int) and isinstance(gpu.memory_free, int)


def test_nan_and_missing_data_give_none_not_a_crash():
    nodes = metrics_by_node(RESULTS, INSTANCES, GPU_IDS)
    assert nodes["node-b"] == NodeMetrics(load=None, memory_used=17179869184, gpus={})
    # no instance label and a GPU Prometheus does not know
    assert nodes["node-c"] == NodeMetrics(load=None, memory_used=None, gpus={})
    assert metrics_by_node({}, INSTANCES, GPU_IDS)["node-a"] == NodeMetrics()


def test_series_of_unknown_instances_and_gpus_are_ignored():
    nodes = metrics_by_node(RESULTS, {"node-a": "10.0.0.5:9100"}, {"node-a": ["GPU-aaaa"]})
    assert list(nodes) == ["node-a"]
    assert "GPU-zzzz" not in nodes["node-a"].gpus


def test_nodes_named_only_for_gpus_get_an_entry():
    nodes = metrics_by_node(RESULTS, {}, {"gpu-box": ["GPU-aaaa"]})
    assert nodes == {
        "gpu-box": NodeMetrics(None, None, {"GPU-aaaa": GpuMetrics(37.0, 1536 * MiB, 44068 * MiB)})
    }


def test_duplicate_series_of_one_instance_take_the_largest_value():
    results = {
        LOAD: [({"instance": "i:9100", "job": "a"}, 1.5), ({"instance": "i:9100", "job": "b"}, 2.0)]
    }
    assert metrics_by_node(results, {"n": "i:9100"}, {})["n"].load == 2.0


def test_absurd_gpu_memory_values_do_not_overflow():
    results = {
        GPU_UTILISATION: [({"UUID": "g"}, 1.0)],
        GPU_MEMORY_USED: [({"UUID": "g"}, 1e308)],
        GPU_MEMORY_FREE: [({"UUID": "g"}, -5.0)],
    }
    gpu = metrics_by_node(results, {}, {"n": ["g"]})["n"].gpus["g"]
    assert gpu.memory_used > 0 and gpu.memory_free == 0


label_values = st.sampled_from(["10.0.0.5:9100", "GPU-aaaa", "", "x"])
series = st.lists(
    st.tuples(
        st.dictionaries(st.sampled_from(["instance", "UUID", "job"]), label_values),
        st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308])),
    ),
    max_size=6,
)


@given(st.dictionaries(st.sampled_from(list(queries())), series))
def test_metrics_by_node_never_fails_and_gives_finite_values(results):
    nodes = metrics_by_node(results, {"a": "10.0.0.5:9100", "b": ""}, {"a": ["GPU-aaaa"]})
    assert set(nodes) == {"a", "b"}
    for metrics in nodes.values():
        assert metrics.load is None or (math.isfinite(metrics.load) and metrics.load >= 0)
        assert metrics.memory_used is None or metrics.memory_used >= 0
        for gpu in metrics.gpus.values():
            assert math.isfinite(gpu.utilisation)
            assert gpu.memory_used >= 0 and gpu.memory_free >= 0


# -- queries ----------------------------------------------------------------------------------
def test_queries_use_the_exporters_metric_names():
    q = queries()
    assert set(q) == {LOAD, MEMORY_USED, GPU_UTILISATION, GPU_MEMORY_USED, GPU_MEMORY_FREE}
    assert 'node_cpu_seconds_total{mode!~"idle|iowait"}[1m]' in q[LOAD]
    assert "node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes" in q[MEMORY_USED]
    assert "DCGM_FI_DEV_GPU_UTIL" in q[GPU_UTILISATION]
    assert "DCGM_FI_DEV_FB_USED" in q[GPU_MEMORY_USED]
    assert "DCGM_FI_DEV_FB_FREE" in q[GPU_MEMORY_FREE]
    assert "[2m]" in queries("2m")[LOAD]


# -- PrometheusSource against a stand-in HTTP server ---------------------------------------
ANSWERS = {
    queries()[LOAD]: (200, LOAD_JSON),
    queries()[MEMORY_USED]: (200, MEMORY_JSON),
    queries()[GPU_UTILISATION]: (200, GPU_UTIL_JSON),
    queries()[GPU_MEMORY_USED]: (200, GPU_USED_JSON),
    queries()[GPU_MEMORY_FREE]: (200, GPU_FREE_JSON),
}


def serve_and_fetch(answer, timeout=5.0):
    """Run a stand-in Prometheus whose ``answer(query)`` gives (status, body), and fetch."""
    seen = []

    class Query(RequestHandler):
        async def get(self):
            query = self.get_argument("query")
            seen.append((query, self.get_argument("timeout")))
            code, body = answer(query)
            if code is None:  # hold the request past the client's timeout
                await asyncio.sleep(body)
                return
            self.set_status(code)
            self.write(body)

    async def main():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        server = HTTPServer(Application([(r"/prefix/api/v1/query", Query)]))
        server.add_sockets([sock])
        try:
            url = f"http://127.0.0.1:{sock.getsockname()[1]}/prefix/"
            source = PrometheusSource(url, timeout=timeout)
            return await source.fetch(INSTANCES, GPU_IDS)
        finally:
            server.stop()

    # a fresh loop in its own thread: Playwright (browser tests) leaves one on this thread
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result(), seen


def test_fetch_runs_each_query_once_for_all_nodes():
    nodes, seen = serve_and_fetch(lambda query: ANSWERS[query])
    assert nodes == metrics_by_node(RESULTS, INSTANCES, GPU_IDS)
    assert sorted(seen) == sorted((q, "5") for q in queries().values())


def test_fetch_reports_an_error_answer():
    def answer(query):
        return (400, ERROR_JSON) if query == queries()[MEMORY_USED] else ANSWERS[query]

    with pytest.raises(MetricsUnavailable, match=r"query memory_used: .*HTTP 400: .*bad_data"):
        serve_and_fetch(answer)


def test_fetch_reports_an_answer_that_is_not_prometheus():
    with pytest.raises(MetricsUnavailable, match=r"HTTP 503: Prometheus answer is not JSON"):
        serve_and_fetch(lambda query: (503, "Service Unavailable"))


def test_fetch_gives_up_after_its_timeout():
    started = time.monotonic()
    with pytest.raises(MetricsUnavailable, match="HTTPTimeoutError"):
        serve_and_fetch(lambda query: (None, 3.0), timeout=0.3)
    assert time.monotonic() - started < 2.9
