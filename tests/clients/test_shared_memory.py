"""Triton's system shared-memory extension through tritonclient (HTTP and gRPC): inputs read
from, and outputs written to, regions the client registers; status and unregistering; and
hostile registrations and references refused without harming the server."""

import os
import uuid

import numpy as np
import pytest
import requests
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from support import INVALID_ARGUMENT, NOT_FOUND

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)
NBYTES = A.nbytes


@pytest.fixture
def regions(client):
    """Creates shared-memory objects (removed afterwards) and registers them on the server."""
    handles = []

    def create(tag: str, size: int, register: bool = True):
        name = f"nexus_{tag}_{uuid.uuid4().hex[:12]}"
        key = f"/{name}"
        handle = shm.create_shared_memory_region(name, key, size)
        handles.append(handle)
        if register:
            client.api.register_system_shared_memory(name, key, size)
        return name, key, handle

    yield create
    for handle in handles:
        client.api.unregister_system_shared_memory(handle._triton_shm_name)
        shm.destroy_shared_memory_region(handle)


def status(client, name: str = "") -> dict:
    """Region name -> (key, offset, byte_size), whatever the protocol."""
    answer = client.api.get_system_shared_memory_status(name)
    if client.protocol == "http":
        return {r["name"]: (r["key"], int(r["offset"]), int(r["byte_size"])) for r in answer}
    regions = client.as_dict(answer)["regions"]
    return {n: (r["key"], int(r["offset"]), int(r["byte_size"])) for n, r in regions.items()}


def plain_infer(client, model: str, feeds: dict, outputs: list[str]) -> dict:
    inputs = []
    for name, value in feeds.items():
        datatype = "BYTES" if value.dtype == np.object_ else "INT32"
        tensor = client.module.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    requested = [client.module.InferRequestedOutput(n) for n in outputs]
    result = client.api.infer(model, inputs, outputs=requested)
    return {n: result.as_numpy(n) for n in outputs}


def simple_request(client, region: str, out_region: str, *, in_offset: int = 0, out_size: int = NBYTES):
    inputs = [
        client.module.InferInput("INPUT0", [1, 16], "INT32"),
        client.module.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_shared_memory(region, NBYTES, offset=in_offset)
    inputs[1].set_shared_memory(region, NBYTES, offset=NBYTES)
    outputs = [client.module.InferRequestedOutput("OUTPUT0"), client.module.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory(out_region, out_size)
    # An offset into the output region, with a gap before it.
    outputs[1].set_shared_memory(out_region, NBYTES, offset=NBYTES + 8)
    return inputs, outputs


def shared_parameters(client, result, name: str) -> dict:
    output = result.get_output(name)
    if client.protocol == "http":
        # As Triton's C++ client expects: neither data nor parameters (it would read any
        # output parameters as binary-data ones).
        assert "data" not in output and "parameters" not in output, output
        return None
    params = {k: v.string_param or v.int64_param for k, v in output.parameters.items()}
    assert result.get_response().raw_output_contents[
        [o.name for o in result.get_response().outputs].index(name)
    ] == b""
    return params


def assert_refused(client, call, status: dict, text: str):
    with pytest.raises(InferenceServerException) as refused:
        call()
    assert refused.value.status() == status[client.protocol], refused.value
    assert text in refused.value.message(), refused.value.message()


def test_server_lists_the_extension(client):
    metadata = client.as_dict(client.api.get_server_metadata())
    assert "system_shared_memory" in metadata["extensions"]


def test_infer_reads_and_writes_shared_memory(client, regions):
    name, key, handle = regions("in", 2 * NBYTES)
    out_name, out_key, out_handle = regions("out", 2 * NBYTES + 8)
    shm.set_shared_memory_region(handle, [A, B])
    inputs, outputs = simple_request(client, name, out_name)
    result = client.api.infer("simple", inputs, outputs=outputs)

    want = plain_infer(client, "simple", {"INPUT0": A, "INPUT1": B}, ["OUTPUT0", "OUTPUT1"])
    got0 = shm.get_contents_as_numpy(out_handle, np.int32, [1, 16])
    got1 = shm.get_contents_as_numpy(out_handle, np.int32, [1, 16], offset=NBYTES + 8)
    np.testing.assert_array_equal(got0, want["OUTPUT0"])
    np.testing.assert_array_equal(got1, want["OUTPUT1"])
    np.testing.assert_array_equal(got0, A + B)

    if client.protocol == "http":
        assert shared_parameters(client, result, "OUTPUT0") is None
        assert shared_parameters(client, result, "OUTPUT1") is None
    else:
        assert shared_parameters(client, result, "OUTPUT0") == {
            "shared_memory_region": out_name,
            "shared_memory_byte_size": NBYTES,
        }
        assert shared_parameters(client, result, "OUTPUT1") == {
            "shared_memory_region": out_name,
            "shared_memory_byte_size": NBYTES,
            "shared_memory_offset": NBYTES + 8,
        }

    # The client changes its input in place; the next inference sees the change.
    shm.set_shared_memory_region(handle, [B], offset=0)
    client.api.infer("simple", inputs, outputs=outputs)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [1, 16]), B + B)


def test_bytes_tensors_use_the_serialized_form(client, regions):
    words = np.array([[b"shared", b"", "mémoire".encode()]], dtype=np.object_)
    serialized = serialize_byte_tensor(words)
    size = len(serialized.item())
    name, _, handle = regions("words", size)
    out_name, _, out_handle = regions("words_out", size)
    shm.set_shared_memory_region(handle, [serialized])
    tensor = client.module.InferInput("INPUT0", [1, 3], "BYTES")
    tensor.set_shared_memory(name, size)
    output = client.module.InferRequestedOutput("OUTPUT0")
    output.set_shared_memory(out_name, size)
    client.api.infer("identity_bytes", [tensor], outputs=[output])
    got = shm.get_contents_as_numpy(out_handle, np.object_, [1, 3])
    assert got.tolist() == words.tolist()

    # A byte size that is not the serialized length is refused.
    tensor.set_shared_memory(name, size - 1)
    assert_refused(
        client, lambda: client.api.infer("identity_bytes", [tensor], outputs=[output]), INVALID_ARGUMENT, "INPUT0"
    )


def test_status_and_unregister(client, regions):
    name, key, _ = regions("status", 64)
    other, other_key, _ = regions("status_other", 32)
    listed = status(client)
    assert listed[name] == (key, 0, 64)
    assert listed[other] == (other_key, 0, 32)
    assert status(client, name) == {name: (key, 0, 64)}

    client.api.unregister_system_shared_memory(name)
    assert name not in status(client)
    assert_refused(client, lambda: status(client, name), NOT_FOUND, name)
    # Unregistering a name that is not registered succeeds, as in Triton.
    client.api.unregister_system_shared_memory(name)
    # With no name, every region goes.
    client.api.unregister_system_shared_memory()
    assert other not in status(client)


def test_hostile_registrations_are_refused(client, regions, server):
    name, key, _ = regions("hostile", 64, register=False)
    register = client.api.register_system_shared_memory
    for bad_key in ["../etc/passwd", "/etc/passwd", "/..", "//" + key.lstrip("/"), "/nexus_no_such_object"]:
        assert_refused(client, lambda: register(name, bad_key, 8), INVALID_ARGUMENT, bad_key)
    assert_refused(client, lambda: register(name, key, 64, offset=8), INVALID_ARGUMENT, "past the end")
    assert_refused(client, lambda: register(name, key, 2, offset=2**64 - 1), INVALID_ARGUMENT, "past the end")

    # A link planted in /dev/shm is not followed to the file it names.
    link = f"/dev/shm/nexus_link_{uuid.uuid4().hex[:12]}"
    os.symlink(f"/dev/shm{key}", link)
    try:
        assert_refused(client, lambda: register(name, link[len("/dev/shm") :], 8), INVALID_ARGUMENT, "unable to open")
    finally:
        os.unlink(link)

    register(name, key, 64)
    already = {"http": "400", "grpc": "StatusCode.ALREADY_EXISTS"}
    assert_refused(client, lambda: register(name, key, 64), already, "already in manager")
    assert status(client, name) == {name: (key, 0, 64)}

    body = requests.post(f"{server.base}/v2/systemsharedmemory/region/x/register", data=b"{not json")
    assert body.status_code == 400 and "register request" in body.json()["error"]


def test_hostile_references_are_refused(client, regions):
    name, _, handle = regions("refs", 2 * NBYTES)
    out_name, _, _ = regions("refs_out", 2 * NBYTES + 8)
    shm.set_shared_memory_region(handle, [A, B])
    infer = client.api.infer

    inputs, outputs = simple_request(client, name, out_name, in_offset=2 * NBYTES)
    assert_refused(client, lambda: infer("simple", inputs, outputs=outputs), INVALID_ARGUMENT, "past its end")

    inputs, outputs = simple_request(client, name, out_name, in_offset=2**63 - 1)
    assert_refused(client, lambda: infer("simple", inputs, outputs=outputs), INVALID_ARGUMENT, "past its end")

    inputs, outputs = simple_request(client, name, out_name, out_size=NBYTES - 4)
    assert_refused(client, lambda: infer("simple", inputs, outputs=outputs), INVALID_ARGUMENT, "is not enough")

    inputs, outputs = simple_request(client, "nexus_never_registered", out_name)
    assert_refused(client, lambda: infer("simple", inputs, outputs=outputs), INVALID_ARGUMENT, "Unable to find")

    # A byte size that is not shape x datatype.
    inputs, outputs = simple_request(client, name, out_name)
    inputs[0].set_shared_memory(name, NBYTES - 4)
    assert_refused(client, lambda: infer("simple", inputs, outputs=outputs), INVALID_ARGUMENT, "needs 64 bytes")

    # The server keeps serving, shared memory and plain requests alike.
    inputs, outputs = simple_request(client, name, out_name)
    infer("simple", inputs, outputs=outputs)
    assert client.api.is_server_live()
    want = plain_infer(client, "simple", {"INPUT0": A, "INPUT1": B}, ["OUTPUT0"])
    np.testing.assert_array_equal(want["OUTPUT0"], A + B)


def test_cuda_shared_memory_without_a_gpu_is_unavailable_with_the_reason(client):
    answer = client.api.get_cuda_shared_memory_status()
    regions = answer if client.protocol == "http" else client.as_dict(answer)["regions"]
    assert len(regions) == 0
    handle = "eA=="  # base64, as both clients take it
    unavailable = {"http": "503", "grpc": "StatusCode.UNAVAILABLE"}
    assert_refused(
        client,
        lambda: client.api.register_cuda_shared_memory("gpu", handle, 0, 64),
        unavailable,
        "CUDA shared memory needs a usable GPU, and this server has none: no NVIDIA driver found",
    )
    client.api.unregister_cuda_shared_memory("gpu")
    client.api.unregister_cuda_shared_memory()
    assert client.api.is_server_live()
