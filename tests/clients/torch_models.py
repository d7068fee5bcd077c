"""TorchScript models made the way PyTorch users make them (torch.jit.trace / torch.jit.script),
with Triton-style config.pbtxt files, and PyTorch's own answers for fixed inputs. Run with the
cached torch venv's Python (scripts/install-torch-python.sh):

    python torch_models.py OUT_DIR

writes OUT_DIR/<model>/{config.pbtxt,1/model.pt} and OUT_DIR/<model>/reference.npz holding the
inputs (in__<name>) and what the module returns for them in-process (out__<name>).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch
from torch import Tensor, nn

torch.manual_seed(0)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


class Gate(nn.Module):
    """Data-dependent control flow: only torch.jit.script keeps both branches."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Linear(8, 8)

    def forward(self, x: Tensor, threshold: Tensor) -> Tuple[Tensor, Tensor]:
        y = self.scale(x)
        total = torch.zeros_like(threshold)
        for i in range(y.size(0)):
            if bool(y[i].sum() > threshold[i]):
                total[i] = y[i].sum()
            else:
                total[i] = -y[i].abs().sum()
        return torch.tanh(y), total


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.gru = nn.GRU(32, 24, batch_first=True)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        y, _ = self.lstm(x)
        z, h = self.gru(y)
        return z, h[-1]


class Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, features: Tensor) -> Dict[str, Tensor]:
        logits = self.linear(features)
        return {"logits": logits, "probs": torch.softmax(logits, dim=-1)}


class Types(nn.Module):
    def forward(self, half: Tensor, count: Tensor, flag: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        return half * 2, count + 1, torch.logical_not(flag)


def write(out: Path, name: str, module, config: str, inputs: Dict[str, np.ndarray], call):
    folder = out / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    module.save(str(folder / "1" / "model.pt"))
    (folder / "config.pbtxt").write_text(config)
    loaded = torch.jit.load(str(folder / "1" / "model.pt")).eval()
    with torch.inference_mode():
        outputs = call(loaded, {k: torch.from_numpy(v) for k, v in inputs.items()})
    arrays = {f"in__{k}": v for k, v in inputs.items()}
    arrays.update({f"out__{k}": v.numpy() for k, v in outputs.items()})
    np.savez(folder / "reference.npz", **arrays)


def main(out: Path):
    rng = np.random.default_rng(0)

    mlp = Mlp().eval()
    traced = torch.jit.trace(mlp, torch.randn(2, 64))
    write(out, "mlp_traced", traced, """
platform: "pytorch_libtorch"
max_batch_size: 16
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 10 ] } ]
dynamic_batching { max_queue_delay_microseconds: 2000 }
parameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "1" } }
""", {"INPUT__0": rng.standard_normal((3, 64), dtype=np.float32)},
        lambda m, x: {"OUTPUT__0": m(x["INPUT__0"])})

    gate = torch.jit.script(Gate().eval())
    write(out, "gate_scripted", gate, """
backend: "pytorch"
max_batch_size: 8
input [
  { name: "threshold" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } },
  { name: "x" data_type: TYPE_FP32 dims: [ 8 ] }
]
output [
  { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 8 ] },
  { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } }
]
""", {"x": rng.standard_normal((4, 8), dtype=np.float32), "threshold": np.array([0.0, 10.0, -10.0, 0.5], dtype=np.float32)},
        lambda m, x: dict(zip(["OUTPUT__0", "OUTPUT__1"], m(x["x"], x["threshold"]))))

    recurrent = torch.jit.script(Recurrent().eval())
    write(out, "recurrent", recurrent, """
platform: "pytorch_libtorch"
max_batch_size: 4
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ -1, 16 ] } ]
output [
  { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ -1, 24 ] },
  { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ 24 ] }
]
""", {"INPUT__0": rng.standard_normal((2, 5, 16), dtype=np.float32)},
        lambda m, x: dict(zip(["OUTPUT__0", "OUTPUT__1"], m(x["INPUT__0"]))))

    heads = torch.jit.trace(Heads().eval(), torch.randn(1, 4), strict=False)
    write(out, "heads_dict", heads, """
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "probs" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "logits" data_type: TYPE_FP32 dims: [ 3 ] }
]
""", {"INPUT__0": rng.standard_normal((2, 4), dtype=np.float32)},
        lambda m, x: m(x["INPUT__0"]))

    types = torch.jit.script(Types().eval())
    write(out, "types", types, """
platform: "pytorch_libtorch"
max_batch_size: 0
input [
  { name: "INPUT__0" data_type: TYPE_FP16 dims: [ 2, 3 ] },
  { name: "INPUT__1" data_type: TYPE_INT64 dims: [ 4 ] },
  { name: "INPUT__2" data_type: TYPE_BOOL dims: [ 3 ] }
]
output [
  { name: "OUTPUT__0" data_type: TYPE_FP16 dims: [ 2, 3 ] },
  { name: "OUTPUT__1" data_type: TYPE_INT64 dims: [ 4 ] },
  { name: "OUTPUT__2" data_type: TYPE_BOOL dims: [ 3 ] }
]
""", {
        "INPUT__0": rng.standard_normal((2, 3)).astype(np.float16),
        "INPUT__1": np.array([1, -5, 2**40, 0], dtype=np.int64),
        "INPUT__2": np.array([True, False, True]),
    }, lambda m, x: dict(zip(["OUTPUT__0", "OUTPUT__1", "OUTPUT__2"], m(x["INPUT__0"], x["INPUT__1"], x["INPUT__2"]))))

    # The same traced MLP with no config.pbtxt: TorchScript does not record its inputs.
    bare = out / "mlp_no_config" / "1"
    bare.mkdir(parents=True, exist_ok=True)
    traced.save(str(bare / "model.pt"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
