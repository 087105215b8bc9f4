"""Study design on the rater's side: instructions and a phone-ready page, `--pairs-per-rater` spreads
pairs evenly (every pair and prompt judged by about as many raters, every pair in both left/right
orders), and results with and without the raters who failed an attention check."""
from __future__ import annotations

import html
import re
import sqlite3
from collections import Counter

import pytest
from starlette.testclient import TestClient

from reports import study, vote_stats, votes
from reports.voteapp import create_app
from tests.support.report_fixtures import prompts, write_sample_folder


def make_study(tmp_path, systems=("xattn", "adaln"), n_prompts=10, raters=8, checks=0, pairs_per_rater=None,
               seeds=(42,)):
    plist = prompts(n_prompts)
    folders = {}
    for name in systems:
        folders[name] = tmp_path / name
        write_sample_folder(folders[name], plist, seeds=seeds, tag=name)
    db = tmp_path / "votes.sqlite"
    created = study.create(db, "design", folders, raters=raters, checks=checks, pairs_per_rater=pairs_per_rater)
    return db, created


def screen_form(page: str) -> dict:
    return {"nonce": re.search(r"name='nonce' value='([^']+)'", page).group(1),
            "signature": re.search(r"name='signature' value='([^']+)'", page).group(1)}


def vote_through(client, db, token, pick) -> int:
    """Answer every screen of a rater; `pick(pair_row, a_on_left) -> (quality, text)` sees the truth."""
    screens = 0
    while "All done" not in (page := client.get(f"/r/{token}").text):
        form = screen_form(page)
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT p.*, s.a_on_left FROM screens s JOIN pairs p ON p.id = s.pair_id "
                               "WHERE s.nonce = ?", (form["nonce"],)).fetchone()
        quality, text = pick(row, row["a_on_left"])
        assert client.post(f"/r/{token}/vote", data={**form, "quality": quality, "text": text}).status_code == 200
        screens += 1
    return screens


def side_of(system: str):
    """A rater who always picks `system` (and on a check, the image of the shown text)."""
    def pick(row, a_on_left):
        a_wins = row["kind"] == votes.CHECK or row["system_a"] == system
        side = "left" if a_wins == bool(a_on_left) else "right"
        return side, side
    return pick


def careless(row, a_on_left):
    """Always the right-hand image: fails a check whenever the check's matching image sits left."""
    return "right", "right"


def assignment_counts(db):
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT v.pair_id, p.prompt, v.rater, v.a_on_left FROM votes v JOIN pairs p "
                            "ON p.id = v.pair_id WHERE p.kind = 'compare' AND v.question = 'quality'").fetchall()
        pairs = [r[0] for r in conn.execute("SELECT id FROM pairs WHERE kind = 'compare'")]
    return rows, pairs


@pytest.mark.parametrize("systems, n_prompts, raters, per_rater", [
    (("xattn", "adaln"), 10, 8, 5),       # 40 answers over 10 pairs: exactly 4 raters each
    (("xattn", "adaln"), 10, 7, 3),       # 21 over 10: 2 or 3 each
    (("xattn", "adaln", "dit"), 6, 5, 4),  # 18 pairs (3 per prompt), 20 answers: 1 or 2 each
])
def test_pairs_per_rater_is_balanced(tmp_path, systems, n_prompts, raters, per_rater):
    db, created = make_study(tmp_path, systems, n_prompts, raters, checks=1, pairs_per_rater=per_rater)
    client = TestClient(create_app(db))
    for token in created["raters"]:
        assert f"Pair 1 of {per_rater + 1}" in client.get(f"/r/{token}").text
        assert vote_through(client, db, token, careless) == per_rater + 1
    rows, pairs = assignment_counts(db)
    per_pair = Counter(r[0] for r in rows)
    assert sum(per_pair.values()) == raters * per_rater
    counts = [per_pair.get(p, 0) for p in pairs]
    assert max(counts) - min(counts) <= 1, counts
    per_prompt = Counter(r[1] for r in rows)
    assert len(per_prompt) == n_prompts and max(per_prompt.values()) - min(per_prompt.values()) <= 1, per_prompt
    orders = {}
    for pair_id, _, _, a_on_left in rows:
        orders.setdefault(pair_id, Counter())[a_on_left] += 1
    for pair_id, seen in orders.items():
        assert abs(seen[0] - seen[1]) <= 1, ("left/right balanced per pair", seen)
        if per_pair[pair_id] >= 2:
            assert seen[0] and seen[1], "a pair judged twice is seen in both orders"
    by_rater = Counter((r[2], r[1]) for r in rows)
    assert max(by_rater.values()) == 1, "no rater judges one prompt twice while others remain"


def test_raters_added_later_keep_the_balance(tmp_path):
    db, created = make_study(tmp_path, n_prompts=6, raters=2, pairs_per_rater=4)
    conn = votes.connect(db)
    more = votes.add_raters(conn, created["study_id"], 4)
    conn.close()
    client = TestClient(create_app(db))
    for token in created["raters"] + more:
        vote_through(client, db, token, careless)
    rows, pairs = assignment_counts(db)
    counts = Counter(r[0] for r in rows)
    assert sorted(counts.values()) == [4] * 6


def test_full_study_shows_every_pair_in_both_orders(tmp_path):
    db, created = make_study(tmp_path, n_prompts=5, raters=4)
    client = TestClient(create_app(db))
    for token in created["raters"]:
        assert vote_through(client, db, token, careless) == 5
    rows, _ = assignment_counts(db)
    for pair_id in {r[0] for r in rows}:
        assert Counter(r[3] for r in rows if r[0] == pair_id) == Counter({0: 2, 1: 2})


def test_first_screen_explains_the_questions_and_fits_a_phone(tmp_path):
    db, created = make_study(tmp_path, n_prompts=3, raters=1)
    client = TestClient(create_app(db))
    token = created["raters"][0]
    first = client.get(f"/r/{token}").text
    assert re.search(r"<meta name=.viewport. content=.width=device-width, initial-scale=1", first)
    text = re.sub(r"<[^>]+>", " ", first)
    for words in ("Visual quality", "Matches the text", "Draw", "fine"):
        assert words in text, words
    assert "<details class='help' open>" in first, "the instructions are open on the first screen"
    vote_through_one = screen_form(first)
    client.post(f"/r/{token}/vote", data={**vote_through_one, "quality": "left", "text": "draw"})
    second = client.get(f"/r/{token}").text
    assert "<details class='help'>" in second, "later screens keep them one tap away"
    assert "Pair 2 of 3" in second


def test_results_with_and_without_raters_who_failed_a_check(tmp_path):
    db, created = make_study(tmp_path, n_prompts=6, raters=4, checks=2)
    client = TestClient(create_app(db))
    good, bad = created["raters"][:3], created["raters"][3]
    for token in good:
        vote_through(client, db, token, side_of("xattn"))
    vote_through(client, db, bad, side_of("adaln"))

    def wrong_check(row, a_on_left):  # the bad rater also picks the other prompt's image on checks
        side = "right" if a_on_left else "left"
        return side, side
    more = votes.add_raters(votes.connect(db), created["study_id"], 1)[0]
    vote_through(client, db, more, lambda row, a: wrong_check(row, a) if row["kind"] == votes.CHECK
                 else side_of("adaln")(row, a))

    conn = votes.connect(db)
    frame = votes.votes_frame(conn, created["study_id"])
    conn.close()
    excluded = vote_stats.excluded_raters(frame)
    assert list(excluded) == ["rater-05"] and "failed 2 of 2 attention checks" in excluded["rater-05"]
    kept = vote_stats.win_rates(frame[~frame["rater"].isin(excluded)]).set_index(["question", "system"])
    everyone = vote_stats.win_rates(frame).set_index(["question", "system"])
    assert kept.loc[("quality", "xattn"), "win_rate"] == pytest.approx(3 / 4)
    assert everyone.loc[("quality", "xattn"), "win_rate"] == pytest.approx(3 / 5)

    client.post(f"/s/{created['study_id']}/login", data={"secret": created["owner_secret"]})
    page = client.get(f"/s/{created['study_id']}/results").text
    text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))
    assert vote_stats.EXCLUSION_RULE in text
    assert "rater-05" in text and "failed 2 of 2 attention checks" in text
    assert "all 5 raters" in text and "4 raters who passed the checks" in text
    assert "75.0%" in text and "60.0%" in text
