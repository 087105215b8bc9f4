"""Screenshots of the results browser for the README: starts `streamlit run reports/app.py -- --runs
<runs>`, opens each view in Debian's Chromium (Playwright, headless) and stops the app again.

    .venv/bin/python benchmarks/screenshots.py --runs runs/ --out docs/ [--grid conditioning] [--numeric-grid mfg] [--phone]

Writes results_browser.png (the table), results_plots.png, results_curves.png, results_numeric.png,
results_paper_table.png and results_samples.png at 1400x900 (the whole page); with --phone also each
one at 390x844 as results_<view>_phone.png. With --eval-during-training, results_eval_during_training.png:
the Training curves view with the training loss alone, above the validation curves of the cells that
evaluated during training (`train.eval_every`) and their validation loss by timestep, the whole page.
With --tensorboard DIR (a `python -m reports.export tensorboard` folder): tensorboard_eval_during_training.png,
TensorBoard's scalars dashboard served from DIR, narrowed to the tags matching --tb-filter.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from urllib.parse import urlencode

import sys

from reports.serving import CHROMIUM, CHROMIUM_ARGS, free_port, results_browser, serve

DESKTOP, PHONE = {"width": 1400, "height": 900}, {"width": 390, "height": 844}
TABLE = "[data-testid='stTable'], [data-testid='stDataFrame']"  # static up to STATIC_ROWS rows, else the grid
# file stem -> (view, what marks the view as drawn)
SHOTS = {"results_browser": ("Table", TABLE),
         "results_plots": ("Plots", "[data-testid='stVegaLiteChart']"),
         "results_curves": ("Training curves", "[data-testid='stVegaLiteChart']"),
         "results_numeric": ("Numeric axis", "[data-testid='stVegaLiteChart']"),
         "results_paper_table": ("Paper table", TABLE),
         "results_samples": ("Samples", "[data-testid='stImage']")}


def view_url(url: str, view: str, grids: list[str]) -> str:
    return f"{url}/?" + urlencode([("view", view), *[("grid", g) for g in grids]])


def wait_drawn(page, marker: str, timeout_ms: int = 60_000) -> None:
    """Until the view's element is there and Streamlit has finished the script run."""
    page.locator(marker).first.wait_for(timeout=timeout_ms)
    page.locator("[data-testid='stStatusWidget']").wait_for(state="detached", timeout=timeout_ms)
    page.wait_for_timeout(1200)  # charts and data grids paint after the run


def take(browser, url: str, out: Path, grids: list[str], viewport: dict, suffix: str = "",
         numeric_grid: str | None = None) -> list[Path]:
    page = browser.new_page(viewport=viewport)
    written = []
    for stem, (view, marker) in SHOTS.items():
        shown = [numeric_grid] if view == "Numeric axis" and numeric_grid else grids
        page.goto(view_url(url, view, shown), timeout=90_000)
        try:
            wait_drawn(page, marker)
        except Exception:  # a view with nothing to draw (no samples, no numeric axis) shows its message instead
            page.wait_for_timeout(1500)
        path = out / f"{stem}{suffix}.png"
        page.screenshot(path=str(path), full_page=True)
        written.append(path)
    page.close()
    return written


def eval_during_training(browser, url: str, out: Path, grids: list[str]) -> Path:
    """The Training curves view, its quantities narrowed to the training loss, grown to the page's height."""
    page = browser.new_page(viewport=DESKTOP)
    page.goto(view_url(url, "Training curves", grids), timeout=90_000)
    wait_drawn(page, "[data-testid='stVegaLiteChart']")
    quantities = page.locator("[data-testid='stMultiSelect']").filter(has_text="Quantities")
    names = quantities.locator("[data-tag]").evaluate_all("tags => tags.map(t => t.getAttribute('aria-label'))")
    for name in names:
        if name != "loss":
            quantities.get_by_role("button", name=f"Remove {name}", exact=True).click()
            page.wait_for_timeout(500)
    page.get_by_text("Evaluation during training").wait_for(timeout=60_000)
    wait_drawn(page, "[data-testid='stVegaLiteChart']")
    height = page.evaluate("() => Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))")
    page.set_viewport_size({"width": DESKTOP["width"], "height": min(int(height) + 40, 6000)})
    page.wait_for_timeout(2500)
    path = out / "results_eval_during_training.png"
    page.screenshot(path=str(path), full_page=True)
    page.close()
    return path


def tensorboard_shot(browser, logdir: Path, out: Path, tags: str) -> Path:
    """TensorBoard (the installed package, served locally) on `logdir`, its scalars filtered by `tags`."""
    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port),
               "--host", "127.0.0.1", "--reload_interval", "0"]
    with serve(command, f"http://127.0.0.1:{port}", "/data/logdir", 90.0) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 620})
        page.goto(f"{url}/#timeseries", timeout=90_000)
        page.locator("input[placeholder*='Filter tags']").first.wait_for(timeout=60_000)
        page.locator("input[placeholder*='Filter tags']").first.fill(tags)
        close = page.locator("button[aria-label='Close side pane']")
        if close.count():
            close.first.click()
        page.wait_for_timeout(8000)  # the charts fetch their points after the page draws
        path = out / "tensorboard_eval_during_training.png"
        page.screenshot(path=str(path), full_page=True)
        page.close()
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--grid", action="append", default=[], help="grid(s) to show (default: the first)")
    parser.add_argument("--numeric-grid", help="grid of the numeric-axis shot (default: mfg when the runs have it)")
    parser.add_argument("--phone", action="store_true", help="also at 390x844, as results_<view>_phone.png")
    parser.add_argument("--eval-during-training", action="store_true",
                        help="only results_eval_during_training.png (cells run with train.eval_every)")
    parser.add_argument("--tensorboard", type=Path, help="only tensorboard_eval_during_training.png, from this logdir")
    parser.add_argument("--tb-filter", default="validation/judge/color|validation/loss$",
                        help="TensorBoard's tag filter (a regular expression)")
    args = parser.parse_args(argv)
    if args.tensorboard:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as play:
            browser = play.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                print(f"wrote {tensorboard_shot(browser, args.tensorboard.resolve(), args.out, args.tb_filter)}")
            finally:
                browser.close()
        return
    numeric = args.numeric_grid or ("mfg" if (args.runs / "mfg").is_dir() else None)
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with results_browser(args.runs.resolve()) as url, sync_playwright() as play:
        browser = play.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            if args.eval_during_training:
                written = [eval_during_training(browser, url, args.out, args.grid)]
            else:
                written = take(browser, url, args.out, args.grid, DESKTOP, numeric_grid=numeric)
            if args.phone and not args.eval_during_training:
                written += take(browser, url, args.out, args.grid, PHONE, "_phone", numeric_grid=numeric)
        finally:
            browser.close()
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
