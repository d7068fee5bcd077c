"""KServe's own Python clients (`kserve` 0.21, protocol v2), run in a process of their own:
kserve and tritonclient register the same `inference.*` protobuf messages, which cannot share
one Python process. Reads {"http": "host:port", "grpc": "host:port", "model": ..., "inputs":
{name: {"datatype", "shape", "data"}}} on stdin, writes what each client saw as JSON."""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

DTYPES = {"INT32": np.int32, "FP32": np.float32, "INT64": np.int64}


def request(spec: dict, model: str, binary: bool) -> InferRequest:
    inputs = []
    for name, tensor in spec.items():
        array = np.array(tensor["data"], dtype=DTYPES[tensor["datatype"]]).reshape(tensor["shape"])
        infer_input = InferInput(name=name, shape=list(array.shape), datatype=tensor["datatype"])
        infer_input.set_data_from_numpy(array, binary_data=binary)
        inputs.append(infer_input)
    return InferRequest(model_name=model, infer_inputs=inputs, request_id="kserve-1")


def outputs(response) -> dict:
    return {o.name: o.as_numpy().tolist() for o in response.outputs}


async def main(job: dict) -> dict:
    base = f"http://{job['http']}"
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    seen: dict = {
        "rest_health": [
            await rest.is_server_live(base),
            await rest.is_server_ready(base),
            await rest.is_model_ready(base, job["model"]),
        ]
    }
    for binary in (False, True):
        response = await rest.infer(base, request(job["inputs"], job["model"], binary), model_name=job["model"])
        seen[f"rest_{'binary' if binary else 'json'}"] = {
            "model_name": response.model_name,
            "id": response.id,
            "outputs": outputs(response),
        }
    try:
        await rest.infer(base, request(job["inputs"], job["model"], False), model_name=job["other_model"])
        seen["rest_other_model"] = {"status": 200}
    except httpx.HTTPStatusError as e:
        seen["rest_other_model"] = {"status": e.response.status_code, "body": e.response.text}
    grpc = InferenceGRPCClient(job["grpc"], timeout=30)
    try:
        seen["grpc_health"] = [
            await grpc.is_server_live(),
            await grpc.is_server_ready(),
            await grpc.is_model_ready(job["model"]),
        ]
        seen["grpc"] = {"outputs": outputs(await grpc.infer(request(job["inputs"], job["model"], True)))}
    finally:
        await grpc.close()
    return seen


if __name__ == "__main__":
    json.dump(asyncio.run(main(json.load(sys.stdin))), sys.stdout)
