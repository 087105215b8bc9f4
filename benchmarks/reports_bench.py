"""Reports benchmarks: (1) the results browser rendering a 1,000-cell grid after caching (AppTest,
target < 2 s), (2) vote-store latency with 20 raters voting at once over HTTP (p50/p95).

    .venv/bin/python benchmarks/reports_bench.py [--cells 1000] [--raters 20] [--pairs 10]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("reports_bench")


def load_fixtures():
    """tests/report_fixtures.py builds run and sample folders to DESIGN.md's contract."""
    spec = importlib.util.spec_from_file_location("report_fixtures", REPO / "tests" / "report_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_render(fixtures, root: Path, cells: int, repeats: int = 3) -> dict:
    from streamlit.testing.v1 import AppTest

    fixtures.build_big_grid(root, n_cells=cells, grid="big")
    os.environ["GENTRON_RUNS"] = str(root)
    at = AppTest.from_file(str(REPO / "reports" / "app.py"), default_timeout=300)
    start = time.perf_counter()
    at.run()
    cold = time.perf_counter() - start
    rows = len(at.dataframe[0].value)
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        at.run()
        warm.append(time.perf_counter() - start)
    assert not at.exception and rows == cells, (rows, [e.message for e in at.exception])
    return {"cells": rows, "cold_s": round(cold, 3), "cached_s": round(statistics.median(warm), 3),
            "cached_runs_s": [round(w, 3) for w in warm], "target_s": 2.0, "ok": statistics.median(warm) < 2.0}


def bench_votes(fixtures, root: Path, raters: int, pairs: int) -> dict:
    from reports import study

    plist = fixtures.prompts(pairs)
    folders = {name: root / name for name in ("a", "b")}
    for name, folder in folders.items():
        fixtures.write_sample_folder(folder, plist, tag=name)
    db = root / "votes.sqlite"
    created = study.create(db, "bench", folders, raters=raters, checks=0)
    latencies: list[float] = []
    lock = threading.Lock()
    with fixtures.serve_votes(db) as base:
        def rater(token: str) -> None:
            with requests.Session() as http:
                while "All done" not in (page := http.get(f"{base}/r/{token}").text):
                    nonce = re.search(r"name='nonce' value='([^']+)'", page).group(1)
                    signature = re.search(r"name='signature' value='([^']+)'", page).group(1)
                    start = time.perf_counter()
                    answer = http.post(f"{base}/r/{token}/vote", allow_redirects=False,
                                       data={"nonce": nonce, "signature": signature, "quality": "left", "text": "draw"})
                    elapsed = time.perf_counter() - start
                    assert answer.status_code == 303, answer.text
                    with lock:
                        latencies.append(elapsed)
        threads = [threading.Thread(target=rater, args=(t,)) for t in created["raters"]]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"raters": raters, "votes": len(latencies), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "max_ms": round(float(ms.max()), 1),
            "votes_per_s": round(len(latencies) / wall, 1), "complete": len(latencies) == raters * pairs}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--raters", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=10)
    args = parser.parse_args()
    fixtures = load_fixtures()
    with tempfile.TemporaryDirectory() as tmp:
        report = {"render": bench_render(fixtures, Path(tmp) / "runs", args.cells),
                  "votes": bench_votes(fixtures, Path(tmp) / "votes", args.raters, args.pairs)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
