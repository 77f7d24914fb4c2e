"""Load test of a deployment against the in-process batched predictor on the same inputs (the limit), in one run.

    .venv/bin/python bench/serving.py [--model sentiment-finetune] [--requests 400] [--home workspace]

Deploys MODEL (a registered NAME[:VERSION]; default: `sentiment-finetune`, which `make demo` trains, registered here
if missing) in a temporary deployment, serves it on 127.0.0.1, and sends one-text requests of real review snippets from
a second process at concurrency 1, 8 and 32. Reports requests/s and p50/p99 latency per level beside the predictor's
texts/s in batches of 32. Target (issue 6), at concurrency 32: service throughput >= 0.6x the limit, p99 < 1 s."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from demo_model import demo_model  # noqa: E402  (bench/, beside this script)

LOAD = r'''
import http.client, json, sys, threading, time, urllib.parse
from concurrent.futures import ThreadPoolExecutor
url, key, concurrency, texts = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.stdin.read())
target = urllib.parse.urlsplit(url)
local = threading.local()  # one kept-alive connection per client thread, as HTTP clients pool them
def call(text):
    if not hasattr(local, "connection"):
        local.connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
    body = json.dumps({"texts": [text]})
    start = time.perf_counter()
    local.connection.request("POST", target.path, body, {"Content-Type": "application/json",
                                                          "Authorization": f"Bearer {key}"})
    response = local.connection.getresponse()
    answer = response.read()
    if response.status != 200:
        raise SystemExit(f"HTTP {response.status}: {answer[:500]}")
    return time.perf_counter() - start
with ThreadPoolExecutor(concurrency) as pool:
    list(pool.map(call, texts[:concurrency]))  # warm-up
    start = time.perf_counter()
    latencies = list(pool.map(call, texts))
    wall = time.perf_counter() - start
print(json.dumps({"wall": wall, "latencies": latencies}))
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sentiment-finetune")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--home", default=os.environ.get("HEADSMITH_HOME", "workspace"))
    args = parser.parse_args()
    os.environ["HEADSMITH_HOME"] = str(Path(args.home).resolve())

    import numpy as np
    import pandas as pd

    from headsmith.data.examples import rotten_tomatoes
    from headsmith.predictor import open_predictor
    from headsmith.serving.deploy import (create_deployment, create_key, delete_deployment, serve_deployment,
                                          use_bentoml_home)
    from headsmith.workspace import Workspace

    workspace = Workspace()
    use_bentoml_home(workspace)
    texts = pd.read_csv(rotten_tomatoes(workspace.root / "bench-reviews.csv"))["text"].sample(
        args.requests, random_state=0).tolist()

    predictor = open_predictor(workspace, demo_model(workspace, args.model))
    predictor.scores(texts[:32])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(texts), 32):
        predictor.scores(texts[i:i + 32])
    limit = len(texts) / (time.perf_counter() - start)
    del predictor

    name = f"bench-{os.getpid()}"
    create_deployment(workspace, name, args.model)
    try:
        key, _ = create_key(workspace, name)
        url = serve_deployment(workspace, name, port=3999)["url"] + "/v1/classify/text"
        results = {}
        for concurrency in (1, 8, 32):
            out = subprocess.run([sys.executable, "-c", LOAD, url, key, str(concurrency)], input=json.dumps(texts),
                                 capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"the load at concurrency {concurrency} failed:\n{out.stderr[-3000:]}")
            run = json.loads(out.stdout)
            latencies = np.array(run["latencies"]) * 1000
            results[concurrency] = (len(texts) / run["wall"], np.percentile(latencies, 50),
                                    np.percentile(latencies, 99))
    finally:
        delete_deployment(workspace, name)

    print(f"model {args.model}, {len(texts)} one-text requests of real reviews, 2-core CPU figures vary by machine")
    print(f"in-process predictor, batches of 32: {limit:7.1f} texts/s (the limit)")
    for concurrency, (rps, p50, p99) in results.items():
        print(f"service, concurrency {concurrency:2d}: {rps:7.1f} requests/s ({rps / limit:4.2f}x the limit), "
              f"p50 {p50:6.1f} ms, p99 {p99:6.1f} ms")
    rps, _, p99 = results[32]
    met = rps >= 0.6 * limit and p99 < 1000
    print(f"target at concurrency 32: >= 0.6x the limit and p99 < 1000 ms: {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
