"""Both pages in a real browser (Debian's Chromium through Playwright): the results browser renders a
grid, and a rater votes through the blind page whose votes then show on the owner's results page.
Screenshots go to test-artifacts/."""
from __future__ import annotations

import re
import sqlite3

import pytest

from reports import study
from reports.serving import results_browser, vote_app
from tests.support.report_fixtures import (ARTIFACTS, build_grid, build_planned_grid, chromium, prompts,
                                           write_sample_folder)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def test_results_browser_renders_table_and_paper_view(browser, tmp_path):
    build_grid(tmp_path, "conditioning")
    with results_browser(tmp_path) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, timeout=60_000)
        page.get_by_text("4 cells").wait_for(timeout=60_000)
        page.locator("[data-testid='stTable']").first.wait_for(timeout=30_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "results_table.png"), full_page=True)
        first = page.locator("[data-testid='stTable']").nth(1).get_by_role("link", name="details").first
        with page.context.expect_page() as opened:  # a cell's details link (Markdown in the static table)
            first.click()                          # opens its run detail in a new tab, as the grid's links do
        detail = opened.value
        detail.get_by_text(re.compile(r"^conditioning/\S+ · status: done$")).wait_for(timeout=60_000)
        assert "view=Run+detail&cell=conditioning/" in detail.url
        detail.close()
        page.goto(url + "/?view=Paper+table", timeout=60_000)
        page.get_by_text("Paper table (T2I-CompBench").wait_for(timeout=60_000)
        page.get_by_role("button", name="Download LaTeX").wait_for(timeout=30_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "results_paper_table.png"), full_page=True)
        page.goto(url + "/?view=Samples", timeout=60_000)
        page.get_by_text(re.compile("picked cells have samples in")).wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "results_samples.png"), full_page=True)
        assert not page.locator("[data-testid='stException']").count()
        page.close()


def test_verdicts_view_and_paper_comparisons_render(browser, tmp_path):
    """The verdicts view (each arm against the control) and the paper table's comparisons with
    Table 2's directions draw in Chromium, verdicts coloured; screenshots in test-artifacts/."""
    build_grid(tmp_path, "conditioning", {"conditioning": ["adaln", "cross_attn"], "seed": [0]}, n_prompts=120,
               images=False)
    with results_browser(tmp_path) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url + "/?view=Verdicts", timeout=60_000)
        page.get_by_text(re.compile("after Holm over 6 comparisons")).wait_for(timeout=60_000)
        _drawn(page, "[data-testid='stTable']")
        table = page.locator("[data-testid='stTable']").first
        assert table.get_by_text("conditioning=cross_attn").count() == 6
        better = table.get_by_text("better", exact=True)
        assert better.count() == 6
        assert better.first.evaluate("e => getComputedStyle(e.closest('td')).color") == "rgb(46, 125, 50)"
        page.screenshot(path=str(ARTIFACTS / "results_verdicts.png"), full_page=True)
        page.goto(url + "/?view=Paper+table", timeout=60_000)
        page.get_by_text("Our verdicts beside Table 2's directions").wait_for(timeout=60_000)
        _drawn(page, "[data-testid='stTable']")
        comparisons = page.locator("[data-testid='stTable']").nth(1)
        assert comparisons.get_by_text("agrees", exact=True).count() == 6
        page.screenshot(path=str(ARTIFACTS / "results_paper_verdicts.png"), full_page=True)
        assert not page.locator("[data-testid='stException']").count()
        page.close()


VIEWPORTS = {"desktop": {"width": 1400, "height": 900}, "phone": {"width": 390, "height": 844}}


def _drawn(page, marker: str) -> None:
    page.locator(marker).first.wait_for(timeout=60_000)
    page.locator("[data-testid='stStatusWidget']").wait_for(state="detached", timeout=60_000)
    page.wait_for_timeout(1000)


@pytest.mark.parametrize("size", VIEWPORTS)
def test_results_views_without_deploy_menu_with_legends_at_both_sizes(browser, tmp_path, size):
    """No developer menu (Deploy, Rerun) for viewers; the table, the plots and curves with legends and
    the paper table draw at 1400x900 and 390x844 (screenshots in test-artifacts/ to look at)."""
    build_grid(tmp_path, "conditioning")
    with results_browser(tmp_path) as url:
        page = browser.new_page(viewport=VIEWPORTS[size])
        page.goto(url, timeout=60_000)
        page.get_by_text("4 cells").wait_for(timeout=60_000)
        _drawn(page, "[data-testid='stTable']")
        assert page.locator("[data-testid='stAppDeployButton']").count() == 0
        assert page.get_by_role("button", name="Deploy").count() == 0
        page.screenshot(path=str(ARTIFACTS / f"results_table_{size}.png"))
        for view in ("Plots", "Training curves"):
            page.goto(f"{url}/?view={view.replace(' ', '+')}", timeout=60_000)
            _drawn(page, "[data-testid='stVegaLiteChart']")
            charts = page.locator("[data-testid='stVegaLiteChart']")
            assert charts.count() >= 6 if view == "Plots" else charts.count() >= 4
            assert page.locator("[data-testid='stVegaLiteChart'] .role-legend").count() == charts.count()
            page.screenshot(path=str(ARTIFACTS / f"results_{view.split()[-1].lower()}_{size}.png"))
        page.goto(url + "/?view=Paper+table", timeout=60_000)
        _drawn(page, "[data-testid='stTable']")
        page.screenshot(path=str(ARTIFACTS / f"results_paper_{size}.png"))
        table = page.locator("[data-testid='stTable']").first
        # the entries (columns after source and variant, which may wrap) keep to one line each
        heights = table.locator("tbody td:not(.col0):not(.col1) p").evaluate_all(
            "entries => entries.map(p => p.getBoundingClientRect().height)")
        assert len(heights) >= 7 * 6 and max(heights) - min(heights) < 2, "a '46.05 [44.0, 48.1]' entry wrapped"
        if size == "phone":  # wider than the screen: the table scrolls sideways, nothing is cut off
            scroller = table.locator("xpath=.//table/..")
            width, shown = scroller.evaluate("e => [e.scrollWidth, e.clientWidth]")
            assert width > shown and scroller.evaluate("e => getComputedStyle(e).overflowX") == "auto"
        assert not page.locator("[data-testid='stException']").count()
        page.close()


FOUR = ["conditioning", "text_encoder", "scale", "mfg"]


def _whole_page(page, path) -> None:
    """A screenshot of the whole page: Streamlit scrolls its main block, not the document, so the
    viewport is grown to the content's height first."""
    width = page.viewport_size["width"]
    height = page.evaluate("() => Math.max(document.body.scrollHeight, ...[...document.querySelectorAll('*')]"
                           ".filter(e => e.scrollHeight > e.clientHeight + 5 && getComputedStyle(e).overflowY !== "
                           "'visible').map(e => e.scrollHeight))")
    page.set_viewport_size({"width": width, "height": min(int(height) + 20, 12_000)})
    page.wait_for_timeout(1500)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": width, "height": VIEWPORTS["desktop"]["height"]})


def test_four_grids_read_cleanly_at_both_sizes(browser, tmp_path):
    """The runs folder of all four ablations (three seeds; mfg's prompts its own set): one table per
    grid that fits a 1400 px page beside the sidebar, a forest plot per grid, samples drawn pixel for
    pixel; whole-page screenshots at 1400 and 390 px in test-artifacts/ (docs/results_browser.md
    shows them)."""
    for grid in FOUR:
        build_planned_grid(tmp_path, [f"grid={grid}", "seeds=[0,1,2]", "train.steps=20"],
                           n_prompts=60 if grid == "mfg" else 120, log_steps=40)
    query = "&".join(f"grid={g}" for g in FOUR)
    with results_browser(tmp_path) as url:
        for size, viewport in VIEWPORTS.items():
            page = browser.new_page(viewport=viewport)
            page.goto(f"{url}/?{query}", timeout=90_000)
            page.get_by_text("36 cells in 4 grids").wait_for(timeout=90_000)
            _drawn(page, "[data-testid='stTable']")
            tables = page.locator("[data-testid='stTable']")
            assert tables.count() == 8
            if size == "desktop":  # every grid's metric table fits: nothing scrolls sideways
                for i in range(4):
                    scroller = tables.nth(i).locator("xpath=.//table/..")
                    width, shown = scroller.evaluate("e => [e.scrollWidth, e.clientWidth]")
                    assert width <= shown + 1, f"the metric table of {FOUR[i]} is wider than the page"
            text = page.inner_text("body")
            assert "=none" not in text and "nan" not in text.split()
            assert not page.locator("[data-testid='stException']").count()
            _whole_page(page, ARTIFACTS / f"results_four_grids_{size}.png")
            page.goto(f"{url}/?view=Verdicts&{query}", timeout=90_000)
            page.get_by_text(re.compile("after Holm over 24 comparisons")).wait_for(timeout=90_000)
            _drawn(page, "[data-testid='stVegaLiteChart']")
            assert page.locator("[data-testid='stVegaLiteChart']").count() == 4
            _whole_page(page, ARTIFACTS / f"results_four_grids_verdicts_{size}.png")
            page.goto(f"{url}/?view=Samples&{query}", timeout=90_000)
            page.get_by_text(re.compile("picked cells have samples in")).wait_for(timeout=90_000)
            _drawn(page, "[data-testid='stImage']")
            assert page.get_by_text(re.compile("no samples in compshapes_mini")).count() == 5
            images = page.locator("[data-testid='stImage'] img")
            assert images.count() == 7 * 4
            for rendering, natural, drawn in images.evaluate_all(
                    "imgs => imgs.map(i => [getComputedStyle(i).imageRendering, i.naturalWidth, "
                    "i.getBoundingClientRect().width])"):
                assert rendering == "pixelated" and natural and drawn % natural == 0 and drawn >= natural
            _whole_page(page, ARTIFACTS / f"results_four_grids_samples_{size}.png")
            assert not page.locator("[data-testid='stException']").count()
            page.close()


def test_rater_votes_in_browser_and_owner_sees_them(browser, tmp_path):
    plist = prompts(3)
    folders = {"gentron_xattn": tmp_path / "ours", "sdxl_baseline": tmp_path / "baseline"}
    write_sample_folder(folders["gentron_xattn"], plist, quality=0.95, tag="gentron_xattn")
    write_sample_folder(folders["sdxl_baseline"], plist, quality=0.3, tag="sdxl_baseline")
    db = tmp_path / "votes.sqlite"
    created = study.create(db, "browser study", folders, raters=2, checks=1)
    with vote_app(db) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(f"{url}/r/{created['raters'][0]}")
        page.get_by_text("Pair 1 of 4").wait_for()
        page.screenshot(path=str(ARTIFACTS / "vote_screen.png"), full_page=True)
        html = page.content()
        assert "gentron_xattn" not in html and "sdxl_baseline" not in html and str(tmp_path) not in html
        for _ in range(4):
            page.locator("input[name='quality'][value='left']").check()
            page.locator("input[name='text'][value='draw']").check()
            page.get_by_role("button", name="Submit and next").click()
            page.wait_for_load_state()
        page.get_by_text("All done").wait_for()
        page.goto(f"{url}/s/{created['study_id']}/results")
        page.fill("input[name='secret']", created["owner_secret"])
        page.get_by_role("button", name="Show results").click()
        page.get_by_text("win without ties").first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "vote_results.png"), full_page=True)
        body = page.inner_text("body")
        assert re.search(r"8 answers recorded", body)
        assert "1 of 2 raters started, 1 finished · 4 of 8 screens answered · 8 answers" in body
        page.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 8


def test_evaluation_during_training_draws_beside_the_training_curves(browser, tmp_path):
    """The Training curves view of cells with validation.jsonl: the training quantities, then a chart
    per validation metric and the loss by timestep, each with its legend of arms, in Chromium."""
    from tests.test_reports_progress import write_validation

    write_validation(build_grid(tmp_path, "conditioning", images=False))
    with results_browser(tmp_path) as url:
        page = browser.new_page(viewport=VIEWPORTS["desktop"])
        page.goto(url + "/?view=Training+curves", timeout=60_000)
        page.get_by_text("Evaluation during training").wait_for(timeout=60_000)
        _drawn(page, "[data-testid='stVegaLiteChart']")
        page.get_by_text("validation loss by timestep at step 300").wait_for(timeout=30_000)
        charts = page.locator("[data-testid='stVegaLiteChart']")
        titles = charts.locator(".role-title-text").evaluate_all("titles => titles.map(t => t.textContent)")
        assert {"validation loss", "judge mean", "judge color", "judge shape",
                "validation loss by timestep at step 300"} <= set(titles)
        assert page.locator("[data-testid='stVegaLiteChart'] .role-legend").count() == charts.count()
        _whole_page(page, ARTIFACTS / "results_eval_during_training.png")
        assert not page.locator("[data-testid='stException']").count()
        page.close()
