"""The voting page in Debian's Chromium (Playwright) on a phone in portrait (390x844, touch) and on a
desktop (1400x900): legible, both images side by side, large touch targets, instructions on the first
screen; the owner's results page with and without excluded raters. Screenshots go to test-artifacts/."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from reports import study
from reports.serving import vote_app
from tests.support.report_fixtures import ARTIFACTS, chromium, prompts, write_sample_folder

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
DESKTOP = {"viewport": {"width": 1400, "height": 900}}
TOUCH_PX = 44  # the smallest comfortable touch target (Apple HIG 44 pt, Material 48 dp)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("vote_browser")
    plist = prompts(8)
    folders = {"gentron_xattn": root / "xattn", "gentron_adaln": root / "adaln"}
    write_sample_folder(folders["gentron_xattn"], plist, quality=0.95, tag="gentron_xattn")
    write_sample_folder(folders["gentron_adaln"], plist, quality=0.35, tag="gentron_adaln")
    db = root / "votes.sqlite"
    created = study.create(db, "cross-attention vs adaLN", folders, raters=6, checks=2, pairs_per_rater=4)
    with vote_app(db) as url:
        yield {"url": url, "db": db, **created}


def answer(db: Path, nonce: str, careless: bool, k: int) -> str:
    """A rater who mostly prefers cross-attention (and passes checks), or a careless one who picks the
    other prompt's image on checks and adaLN otherwise. The page never names a system: look it up."""
    with sqlite3.connect(db) as conn:
        kind, system_a, a_on_left = conn.execute(
            "SELECT p.kind, p.system_a, s.a_on_left FROM screens s JOIN pairs p ON p.id = s.pair_id "
            "WHERE s.nonce = ?", (nonce,)).fetchone()
    a_wins = (kind == "check" or system_a == "gentron_xattn") != careless
    if k == 3 and not careless and kind != "check":
        a_wins = not a_wins  # one answer in six goes the other way
    return "left" if a_wins == bool(a_on_left) else "right"


def check_layout(page, width: int) -> None:
    left, right = (page.locator(f"img[alt='{side} image']").bounding_box() for side in ("left", "right"))
    assert abs(left["y"] - right["y"]) < 1, "side by side"
    assert left["x"] + left["width"] <= right["x"] and right["x"] + right["width"] <= width, (left, right)
    assert left["width"] >= 0.4 * min(width, 900), ("images use the width", left)
    assert page.evaluate("document.documentElement.scrollWidth") <= width, "no sideways scrolling"
    prompt_px = float(page.locator(".prompt").evaluate("e => getComputedStyle(e).fontSize").rstrip("px"))
    assert prompt_px >= 18
    for target in page.locator("form label").all() + [page.get_by_role("button", name="Submit and next")]:
        box = target.bounding_box()
        assert box["height"] >= TOUCH_PX and box["width"] >= TOUCH_PX, (target.inner_text(), box)


def test_phone_portrait_page(browser, served):
    context = browser.new_context(**PHONE)
    page = context.new_page()
    token = served["raters"][0]
    page.goto(f"{served['url']}/r/{token}")
    page.get_by_text("Pair 1 of 6").wait_for()
    assert page.get_by_text("Visual quality", exact=False).first.is_visible()
    assert page.get_by_text("Draw is fine", exact=False).is_visible()
    check_layout(page, 390)
    page.screenshot(path=str(ARTIFACTS / "vote_page_phone.png"), full_page=True)
    html = page.content()
    assert "gentron_xattn" not in html and "gentron_adaln" not in html
    for k in range(6):  # vote by tapping the labels
        page.locator("label:has(input[name='quality'][value='left'])").tap()
        page.locator("label:has(input[name='text'][value='draw'])").tap()
        page.get_by_role("button", name="Submit and next").tap()
        page.wait_for_load_state()
        if k == 0:
            page.get_by_text("Pair 2 of 6").wait_for()
            assert not page.get_by_text("Draw is fine", exact=False).is_visible(), "instructions fold after the first"
            check_layout(page, 390)
    page.get_by_text("All done").wait_for()
    page.screenshot(path=str(ARTIFACTS / "vote_done_phone.png"), full_page=True)
    context.close()
    with sqlite3.connect(served["db"]) as conn:
        assert conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 12


def test_desktop_page_and_results(browser, served):
    context = browser.new_context(**DESKTOP)
    page = context.new_page()
    for token in served["raters"][1:]:
        page.goto(f"{served['url']}/r/{token}")
        page.get_by_text("Pair 1 of 6").wait_for()
        if token == served["raters"][1]:
            check_layout(page, 1400)
            page.screenshot(path=str(ARTIFACTS / "vote_page_desktop.png"), full_page=True)
        careless = token == served["raters"][-1]
        for k in range(6):
            side = answer(served["db"], page.locator("input[name='nonce']").get_attribute("value"), careless, k)
            page.locator(f"input[name='quality'][value='{side}']").check()
            page.locator(f"input[name='text'][value='{side}']").check()
            page.get_by_role("button", name="Submit and next").click()
            page.wait_for_load_state()
        page.get_by_text("All done").wait_for()
    page.goto(f"{served['url']}/s/{served['study_id']}/results")
    page.fill("input[name='secret']", served["owner_secret"])
    page.get_by_role("button", name="Show results").click()
    page.get_by_text("Exclusion rule").wait_for()
    body = page.inner_text("body")
    assert "raters who passed the checks" in body and "all 6 raters" in body
    page.screenshot(path=str(ARTIFACTS / "vote_results.png"), full_page=True)
    context.close()
    phone = browser.new_context(**PHONE)
    page = phone.new_page()
    page.goto(f"{served['url']}/s/{served['study_id']}/results")
    page.fill("input[name='secret']", served["owner_secret"])
    page.get_by_role("button", name="Show results").tap()
    page.get_by_text("Exclusion rule").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "tables scroll inside their box"
    page.screenshot(path=str(ARTIFACTS / "vote_results_phone.png"), full_page=True)
    phone.close()
