#!/usr/bin/env python3
"""Write the Triton model repository benches/compare.sh serves with the real `tritonserver`.

    .venv-bench/triton/bin/python benches/runtimes/triton_repo.py --models benches/models --out DIR MODEL...

Run it with the Python of the venv tritonserver's Python backend will use: its stub is picked
for that version. DIR/backends/python is the wheel's Python backend (libtriton_python.so and
triton_python_backend_utils.py) plus the wheel's `python_backend_stubs/<version>/` stub: the
backend looks for the stub only in its own folder, and the wheel ships none there (PyTriton
copies one in at run time), so tritonserver gets `--backend-directory DIR/backends`.
For each MODEL, DIR/models/MODEL gets:
  config.pbtxt              Nexus's benches/models/MODEL/config.pbtxt, byte for byte, except that
                            `platform: "onnxruntime_onnx"` becomes `backend: "python"` (the
                            nvidia-pytriton build has no ONNX Runtime backend). max_batch_size,
                            dynamic_batching, instance_group and the intra_op_thread_count
                            parameter stay identical.
  1/model.py                benches/runtimes/triton/model.py (onnxruntime in the Python backend).
  1/model.onnx              a link to the very ONNX file Nexus serves.
Standard library plus the installed nvidia-pytriton; rewrites DIR from scratch each run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pytriton

HERE = Path(__file__).resolve().parent
PLATFORM = 'platform: "onnxruntime_onnx"\n'


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, required=True, help="Nexus's model repository (benches/models)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("names", nargs="+", metavar="MODEL")
    a = p.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    wheel = Path(pytriton.__file__).resolve().parent / "tritonserver"
    backend = a.out / "backends" / "python"
    shutil.copytree(wheel / "backends" / "python", backend, ignore=shutil.ignore_patterns("__pycache__"))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy2(wheel / "python_backend_stubs" / version / "triton_python_backend_stub", backend)
    print(f"{backend}: the wheel's Python backend, stub for Python {version}")
    for name in a.names:
        source = a.models / name
        config = (source / "config.pbtxt").read_text()
        if config.count(PLATFORM) != 1:
            raise SystemExit(f"{source}/config.pbtxt: expected one line {PLATFORM.strip()}")
        dest = a.out / "models" / name
        (dest / "1").mkdir(parents=True)
        (dest / "config.pbtxt").write_text(config.replace(PLATFORM, 'backend: "python"\n'))
        shutil.copyfile(HERE / "triton" / "model.py", dest / "1" / "model.py")
        (dest / "1" / "model.onnx").symlink_to((source / "1" / "model.onnx").resolve())
        print(f"{dest}: config.pbtxt from {source}, backend python")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
