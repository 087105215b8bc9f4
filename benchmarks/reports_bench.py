"""Reports benchmarks: (1) the results browser's start (`streamlit run` until it answers: its start-up
reads the runs folder) and its first page in Chromium, cold (the first visitor of a freshly started
app, with a fresh browser) and warm (a reload), for the folder `make run` leaves and for a
1,000-cell grid side by side (targets: cold under 2 s and under 5 s), each from the navigation's
start to the page's last change, measured in the page; (2) vote-store latency with 20 raters voting
at once over HTTP (p50/p95).

    .venv/bin/python -m benchmarks.reports_bench [--cells 1000] [--raters 20] [--pairs 10] [--skip-votes]
    .venv/bin/python -m benchmarks.reports_bench --against /tmp/before [--rounds 5]   # side by side

Run from the checkout (as a module, like the suite): it builds its folders with tests.support.report_fixtures.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from reports import serving

try:
    from benchmarks import screenshots as shots
    from tests.support import report_fixtures as fixtures
except ModuleNotFoundError as e:  # run as a file: the checkout is not on the import path
    raise SystemExit(f"reports_bench: error: {e}; run it in the checkout as `python -m benchmarks.reports_bench`")

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("reports_bench")


# In the page, checked once per frame (an observer of every DOM change runs inside the page's own
# work, and the data grid makes many changes): the time (ms from the navigation's start) of the
# first frame with the cells table (the page's second table) in it, and of the last frame in which
# the page's element count changed. A mark taken in the page does not carry the latency of Playwright's polling, which adds
# 0.1-0.5 s to a wait measured from outside.
MARKS = """
window.__marks = {};
(() => {
  const all = document.getElementsByTagName('*');
  let count = -1;
  const frame = (now) => {
    const marks = window.__marks;
    if (all.length !== count) { count = all.length; marks.last = now; }
    if (!marks.cells && document.querySelectorAll(%s).length >= 2) marks.cells = now;
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
})();
"""


def page_load(runs: Path, grid: str, cells: int, repeats: int = 3, repo: Path = REPO) -> dict:
    """Seconds from the navigation's start to the page drawn (its cells table in a painted frame, the
    script run finished, the last change of the page), measured in the page: first on a freshly
    started app with a fresh browser (cold), then reloads (warm). `repo`: the checkout that serves it."""
    from playwright.sync_api import sync_playwright

    timings = []
    start = time.perf_counter()
    with serving.results_browser(runs, repo=repo) as url, sync_playwright() as play:
        start_s = time.perf_counter() - start  # `streamlit run` until it answers (reading the runs folder included)
        browser = play.chromium.launch(executable_path=serving.CHROMIUM, args=serving.CHROMIUM_ARGS)
        page = browser.new_page(viewport=shots.DESKTOP)
        page.add_init_script(MARKS % json.dumps(shots.TABLE))
        for _ in range(1 + repeats):
            page.goto(shots.view_url(url, "Table", [grid]), timeout=120_000)
            page.get_by_text(f"{cells} cells", exact=True).wait_for(timeout=120_000)
            page.locator(shots.TABLE).nth(1).wait_for(timeout=120_000)  # the cells table
            page.locator("[data-testid='stStatusWidget']").wait_for(state="detached", timeout=120_000)
            page.wait_for_timeout(1000)  # nothing changes any more
            marks = page.evaluate("window.__marks")
            timings.append(max(marks["cells"], marks["last"]) / 1000)
            assert not page.locator("[data-testid='stException']").count()
        browser.close()
    return {"cells": cells, "start_s": round(start_s, 2), "cold_s": round(timings[0], 2),
            "warm_s": round(statistics.median(timings[1:]), 2)}


def bench_render(root: Path, cells: int) -> dict:
    """The first page of the `make run` folder and of a `cells`-cell grid, side by side."""
    fixtures.make_run_folder(root / "make_run")
    fixtures.build_big_grid(root / "big", n_cells=cells, grid="big")
    small = page_load(root / "make_run", "conditioning", 2)
    big = page_load(root / "big", "big", cells)
    return {"make_run": {**small, "target_cold_s": 2.0, "ok": small["cold_s"] < 2.0},
            f"{cells}_cells": {**big, "target_cold_s": 5.0, "ok": big["cold_s"] < 5.0}}


def bench_against(root: Path, other: Path, rounds: int) -> dict:
    """The `make run` folder's cold first page served by this checkout and by `other` (another checkout,
    e.g. `git worktree add /tmp/before HEAD~1`), alternating, `rounds` times each: a ratio measured side
    by side, which a shared machine's noise does not fake."""
    fixtures.make_run_folder(root / "make_run")
    times: dict[str, list[float]] = {"this": [], "other": []}
    for _ in range(rounds):
        for name, checkout in (("this", REPO), ("other", other)):
            times[name].append(page_load(root / "make_run", "conditioning", 2, repeats=1, repo=checkout)["cold_s"])
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"other": str(other), "cold_s": times, "median_cold_s": median,
            "ratio_this_over_other": round(median["this"] / median["other"], 2)}


def bench_votes(root: Path, raters: int, pairs: int) -> dict:
    from reports import study

    plist = fixtures.prompts(pairs)
    folders = {name: root / name for name in ("a", "b")}
    for name, folder in folders.items():
        fixtures.write_sample_folder(folder, plist, tag=name)
    db = root / "votes.sqlite"
    created = study.create(db, "bench", folders, raters=raters, checks=0)
    latencies: list[float] = []
    lock = threading.Lock()
    with serving.vote_app(db) as base:
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
    parser.add_argument("--skip-votes", action="store_true", help="only the results browser")
    parser.add_argument("--against", type=Path, help="another checkout: its cold first page beside this one's")
    parser.add_argument("--rounds", type=int, default=5, help="with --against: cold loads of each, alternating")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.against:
            print(json.dumps(bench_against(Path(tmp) / "against", args.against.resolve(), args.rounds),
                             indent=2))
            return
        report = {"page_load": bench_render(Path(tmp) / "runs", args.cells)}
        if not args.skip_votes:
            report["votes"] = bench_votes(Path(tmp) / "votes", args.raters, args.pairs)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
