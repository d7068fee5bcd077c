#!/usr/bin/env python3
"""Step `promote`: point ALIAS of model NAME at VERSION, so servers following it swap.

    python3 promote.py --name NAME --alias champion --version V [--previous-out FILE]

Runs `$NEXUS_BIN models alias set NAME ALIAS VERSION` against $MLFLOW_TRACKING_URI (this
server), then reads the alias back with MLflow's REST API
(GET /api/2.0/mlflow/registered-models/alias) to confirm it. A server started with
`--model models:/NAME@ALIAS` picks the new version up at its next registry poll.
Writes the version the alias named before (or "none") to --previous-out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request


def alias_version(url: str, name: str, alias: str) -> str | None:
    query = urllib.parse.urlencode({"name": name, "alias": alias})
    try:
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/registered-models/alias?{query}", timeout=30) as r:
            return json.load(r)["model_version"]["version"]
    except urllib.error.HTTPError as e:
        # As MLflow: unknown model -> 404; unknown alias -> 400 "Registered model alias ... not found."
        body = e.read().decode(errors="replace")
        if e.code == 404 or (e.code == 400 and "not found" in body):
            return None
        raise RuntimeError(f"GET alias {name}@{alias}: HTTP {e.code} {body}") from None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--alias", default="champion")
    p.add_argument("--version", required=True)
    p.add_argument("--previous-out")
    a = p.parse_args()
    url = os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:8000").rstrip("/")
    nexus = os.environ.get("NEXUS_BIN") or shutil.which("nexus")
    if not nexus:
        sys.exit("neither $NEXUS_BIN nor `nexus` on PATH: run this step under `nexus up`")
    previous = alias_version(url, a.name, a.alias)
    cmd = [nexus, "models", "alias", "set", a.name, a.alias, a.version]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    now = alias_version(url, a.name, a.alias)
    if now != a.version:
        sys.exit(f"{a.name}@{a.alias} names version {now} after the update, not {a.version}")
    print(f"{a.name}@{a.alias}: {previous or 'none'} -> {now}")
    if a.previous_out:
        with open(a.previous_out, "w") as f:
            f.write(f"{previous or 'none'}\n")


if __name__ == "__main__":
    main()
