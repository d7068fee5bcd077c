#!/usr/bin/env python3
"""Step `register`: push the model folder to the registry as a new version of NAME.

    python3 register.py --model MODEL_DIR --name NAME [--tag k=v]... --version-out FILE

Runs `$NEXUS_BIN models push MODEL_DIR --name NAME --tag ...`: Nexus gives every step
NEXUS_BIN (the running nexus executable) and MLFLOW_TRACKING_URI (this server, which
`nexus models` reads), so the version lands in the registry of the server that runs the
pipeline. The run id and step are added as version tags. Writes the new version number
to FILE (the step's output parameter).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys


def nexus_bin() -> str:
    found = os.environ.get("NEXUS_BIN") or shutil.which("nexus")
    if not found:
        sys.exit("neither $NEXUS_BIN nor `nexus` on PATH: run this step under `nexus up`")
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder (model.onnx, config.pbtxt) or file")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--version-out", required=True)
    a = p.parse_args()
    tags = list(a.tag)
    if os.environ.get("NEXUS_RUN_ID"):
        tags.append(f"nexus.pipeline_run={os.environ['NEXUS_RUN_ID']}")
    cmd = [nexus_bin(), "models", "push", a.model, "--name", a.name]
    for tag in tags:
        cmd += ["--tag", tag]
    print("$", " ".join(cmd), f"(registry {os.environ.get('MLFLOW_TRACKING_URI', 'default')})", flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        sys.exit(f"nexus models push failed with exit code {done.returncode}")
    # "NAME version V registered"
    found = re.search(r"\bversion (\d+) registered", done.stdout)
    if not found:
        sys.exit(f"cannot find the version number in the push output: {done.stdout!r}")
    with open(a.version_out, "w") as f:
        f.write(found.group(1) + "\n")


if __name__ == "__main__":
    main()
