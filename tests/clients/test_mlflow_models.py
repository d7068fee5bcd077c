"""Real models through the MLflow 3 model API: an ONNX model logged with
`mlflow.onnx.log_model(..., registered_model_name=...)`, resolved through the registry (alias,
version, logged-model id) and loaded back with `mlflow.pyfunc` / `mlflow.onnx`, its predictions
checked against onnxruntime on the same model bytes."""

from __future__ import annotations

import mlflow
import mlflow.onnx
import mlflow.pyfunc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlflow_support import unique

PROVIDERS = ["CPUExecutionProvider"]


def make_model(seed: int) -> onnx.ModelProto:
    """Y = Sigmoid(X @ W + B): X float[N, 4] -> Y float[N, 3], weights from `seed`."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["XW"]),
            helper.make_node("Add", ["XW", "B"], ["Z"]),
            helper.make_node("Sigmoid", ["Z"], ["Y"]),
        ],
        f"dense_sigmoid_{seed}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="nexus-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def ort_predict(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=PROVIDERS)
    return sess.run(["Y"], {"X": x})[0]


X = np.array([[0.0, 1.0, 2.0, 3.0], [-1.0, 0.5, 0.25, -2.0], [10.0, -10.0, 3.0, 0.0]], dtype=np.float32)


def _log(model, name, registered_model_name=None):
    # Explicit requirements: inferring them runs a slow subprocess and is no concern of the server.
    return mlflow.onnx.log_model(
        model,
        name=name,
        registered_model_name=registered_model_name,
        onnx_execution_providers=PROVIDERS,
        pip_requirements=["onnx", "onnxruntime"],
    )


@pytest.fixture
def onnx_registered(tracking_uri):
    """One ONNX model logged in a run and registered as version 1 of a fresh name."""
    mlflow.set_experiment(unique("onnx"))
    model = make_model(seed=1)
    name = unique("onnx-model")
    with mlflow.start_run() as run:
        info = _log(model, "model", registered_model_name=name)
    return name, model, info, run.info.run_id


def test_log_model_registers_version(mlflow_client, onnx_registered):
    name, _, info, run_id = onnx_registered
    assert str(info.registered_model_version) == "1"
    assert info.model_uri.startswith("models:/")  # MLflow 3: models:/<model_id>
    assert info.run_id == run_id
    mv = mlflow_client.get_model_version(name, "1")
    assert mv.status == "READY"
    assert mv.run_id == run_id
    assert mlflow_client.get_registered_model(name).latest_versions[0].version == "1"
    logged = mlflow.get_logged_model(info.model_id)
    assert logged.model_id == info.model_id
    assert str(logged.status).endswith("READY")
    assert logged.source_run_id == run_id


def test_pyfunc_load_by_alias_predicts_like_onnxruntime(mlflow_client, onnx_registered):
    name, model, _, _ = onnx_registered
    mlflow_client.set_registered_model_alias(name, "champion", "1")
    pyfunc_model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    got = pyfunc_model.predict({"X": X})
    want = ort_predict(model, X)
    np.testing.assert_allclose(np.asarray(got["Y"]), want, rtol=1e-6, atol=1e-6)
    assert pyfunc_model.metadata.flavors.keys() >= {"onnx", "python_function"}


def test_onnx_load_model_round_trip(onnx_registered):
    name, model, _, _ = onnx_registered
    loaded = mlflow.onnx.load_model(f"models:/{name}/1")
    assert isinstance(loaded, onnx.ModelProto)
    assert [n.op_type for n in loaded.graph.node] == ["MatMul", "Add", "Sigmoid"]
    want = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    np.testing.assert_array_equal(ort_predict(loaded, X), ort_predict(model, X))


def test_load_by_logged_model_uri(onnx_registered):
    _, model, info, _ = onnx_registered
    pyfunc_model = mlflow.pyfunc.load_model(info.model_uri)
    np.testing.assert_allclose(np.asarray(pyfunc_model.predict({"X": X})["Y"]), ort_predict(model, X), rtol=1e-6, atol=1e-6)


def test_alias_moves_to_new_version(mlflow_client, onnx_registered):
    name, model_v1, _, _ = onnx_registered
    model_v2 = make_model(seed=2)
    with mlflow.start_run():
        info2 = _log(model_v2, "model", registered_model_name=name)
    assert str(info2.registered_model_version) == "2"

    mlflow_client.set_registered_model_alias(name, "prod", "1")
    p1 = mlflow.pyfunc.load_model(f"models:/{name}@prod").predict({"X": X})["Y"]
    np.testing.assert_allclose(np.asarray(p1), ort_predict(model_v1, X), rtol=1e-6, atol=1e-6)

    mlflow_client.set_registered_model_alias(name, "prod", "2")
    p2 = mlflow.pyfunc.load_model(f"models:/{name}@prod").predict({"X": X})["Y"]
    np.testing.assert_allclose(np.asarray(p2), ort_predict(model_v2, X), rtol=1e-6, atol=1e-6)
    assert not np.allclose(p1, p2)

    latest = mlflow.onnx.load_model(f"models:/{name}/2")
    np.testing.assert_array_equal(ort_predict(latest, X), ort_predict(model_v2, X))


def test_register_logged_model_afterwards(mlflow_client, tracking_uri):
    """Log without registering, then `mlflow.register_model(model_info.model_uri, name)`."""
    mlflow.set_experiment(unique("onnx-late"))
    model = make_model(seed=3)
    with mlflow.start_run():
        info = _log(model, "clf")
    name = unique("late")
    mv = mlflow.register_model(info.model_uri, name)
    assert (mv.name, mv.version) == (name, "1")
    loaded = mlflow.onnx.load_model(f"models:/{name}/1")
    np.testing.assert_array_equal(ort_predict(loaded, X), ort_predict(model, X))


def test_sigmoid_dataset_model(mlflow_client, tracking_uri):
    """onnxruntime's shipped sigmoid.onnx (float[3, 4, 5]) through the same path."""
    from onnxruntime import datasets
    from pathlib import Path

    model = onnx.load(str(Path(datasets.__file__).parent / "sigmoid.onnx"))
    mlflow.set_experiment(unique("onnx-sigmoid"))
    name = unique("sigmoid")
    with mlflow.start_run():
        _log(model, "model", registered_model_name=name)
    mlflow_client.set_registered_model_alias(name, "live", "1")
    x = np.linspace(-3, 3, 60, dtype=np.float32).reshape(3, 4, 5)
    in_name = model.graph.input[0].name
    out_name = model.graph.output[0].name
    got = mlflow.pyfunc.load_model(f"models:/{name}@live").predict({in_name: x})[out_name]
    want = ort.InferenceSession(model.SerializeToString(), providers=PROVIDERS).run([out_name], {in_name: x})[0]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
