#!/usr/bin/env python3
"""CUDA shared memory against a running Nexus, for scripts/gpu-check.sh on a GPU machine.

A client keeps an FP32 model's input and output in its own GPU buffer (a torch tensor),
registers it by its CUDA IPC handle as tritonclient's cuda_shared_memory module does (base64 of
cudaIpcGetMemHandle's 64 bytes, the device, the size), and infers with both tensors in it: the
output must appear in the client's buffer, equal to the answer to the same input sent as JSON,
and the region must be listed and then gone. Uses only torch and the standard library (the GPU
image has no tritonclient). Exits 0 on success, 1 with the reason on failure.

    python3 scripts/gpu_check_cuda_shm.py --url http://127.0.0.1:8000 --model mlp_cpu \
        --input input --input-shape 2,16 --output output --output-shape 2,8
"""

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request

import torch


def call(url: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            text = reply.read()
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{url}: {e.code} {e.read().decode(errors='replace')}")
    return json.loads(text) if text else None


def register(base: str, name: str, buffer: torch.Tensor) -> int:
    """Registers the CUDA allocation holding `buffer` as `name`; returns where `buffer` starts
    in it. (The caching allocator may put several tensors in one allocation, and a process may
    open an IPC handle only once, so the check keeps every tensor in one buffer.)"""
    device, handle, size, offset = buffer.untyped_storage()._share_cuda_()[:4]
    call(
        f"{base}/v2/cudasharedmemory/region/{name}/register",
        {"raw_handle": {"b64": base64.b64encode(handle).decode()}, "device_id": device, "byte_size": offset + size},
    )
    return offset


def params(name: str, start: int, tensor: torch.Tensor) -> dict:
    """`tensor`'s shared-memory parameters in region `name`, whose buffer starts at `start`."""
    return {
        "shared_memory_region": name,
        "shared_memory_offset": start + tensor.storage_offset() * tensor.element_size(),
        "shared_memory_byte_size": tensor.numel() * tensor.element_size(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--input-shape", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--output-shape", required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: torch.cuda.is_available() is False")
        return 1
    in_shape = [int(d) for d in args.input_shape.split(",")]
    out_shape = [int(d) for d in args.output_shape.split(",")]
    values = torch.linspace(-1.0, 1.0, steps=int(torch.tensor(in_shape).prod()))
    reference = call(
        f"{args.url}/v2/models/{args.model}/infer",
        {"inputs": [{"name": args.input, "datatype": "FP32", "shape": in_shape, "data": values.tolist()}]},
    )
    expected = torch.tensor(reference["outputs"][0]["data"], dtype=torch.float32).view(out_shape)

    buffer = torch.zeros(values.numel() + expected.numel(), dtype=torch.float32, device="cuda")
    x = buffer[: values.numel()].view(in_shape)
    y = buffer[values.numel() :].view(out_shape)
    x.copy_(values.view(in_shape))
    torch.cuda.synchronize()
    start = register(args.url, "tensors", buffer)
    listed = [(r["name"], r["device_id"]) for r in call(f"{args.url}/v2/cudasharedmemory/status")]
    if listed != [("tensors", buffer.device.index)]:
        print(f"status lists {listed}")
        return 1
    request = {
        "inputs": [{"name": args.input, "datatype": "FP32", "shape": in_shape, "parameters": params("tensors", start, x)}],
        "outputs": [{"name": args.output, "parameters": params("tensors", start, y)}],
    }
    reply = call(f"{args.url}/v2/models/{args.model}/infer", request)
    torch.cuda.synchronize()
    diff = (y.cpu() - expected).abs().max().item()
    if diff > 1e-6:
        print(f"{args.output} in the client's GPU buffer differs from the JSON answer by {diff:.2e}; reply {reply}")
        return 1
    call(f"{args.url}/v2/cudasharedmemory/unregister", {})
    left = call(f"{args.url}/v2/cudasharedmemory/status")
    if left:
        print(f"regions left after unregister: {left}")
        return 1
    print(
        f"PASS {args.model} read {args.input} from and wrote {args.output} to the client's GPU buffer "
        f"({buffer.device}); equal to the JSON answer"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
