"""The blind voting app: study creation, blind screens, one vote per rater/pair/question, replay and
forgery rejection, owner-only results, concurrent raters, and the vote statistics."""
from __future__ import annotations

import io
import re
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image
from starlette.testclient import TestClient

from reports import study, vote_stats, votes
from reports.serving import vote_app
from reports.voteapp import create_app
from tests.support.report_fixtures import prompts, write_sample_folder

SYSTEMS = {"xattn_ours": 0.9, "adaln_baseline": 0.4}
N_PROMPTS = 5
CHECKS = 2


@pytest.fixture
def made(tmp_path):
    plist = prompts(N_PROMPTS)
    folders = {}
    for name, quality in SYSTEMS.items():
        folders[name] = tmp_path / f"samples_{name}"
        write_sample_folder(folders[name], plist, quality=quality, tag=name)
    db = tmp_path / "votes.sqlite"
    created = study.create(db, "blind", folders, raters=3, checks=CHECKS)
    return {"db": db, "folders": folders, **created}


def parse_screen(text: str) -> dict:
    nonce = re.search(r"name='nonce' value='([^']+)'", text).group(1)
    signature = re.search(r"name='signature' value='([^']+)'", text).group(1)
    images = re.findall(r"src='/r/[^/']+/i/([0-9a-f]+)'", text)
    return {"nonce": nonce, "signature": signature, "images": images}


def vote_all(client, token: str, choice=("left", "left")) -> int:
    screens = 0
    while True:
        page = client.get(f"/r/{token}")
        if "All done" in page.text:
            return screens
        form = parse_screen(page.text)
        answer = client.post(f"/r/{token}/vote", data={"nonce": form["nonce"], "signature": form["signature"],
                                                        "quality": choice[0], "text": choice[1]})
        assert answer.status_code == 200, answer.text
        screens += 1


def count_votes(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0]


def test_rater_sees_every_pair_once_and_can_come_back(made):
    token = made["raters"][0]
    total = N_PROMPTS + CHECKS
    client = TestClient(create_app(made["db"]))
    first = client.get(f"/r/{token}").text
    assert "Pair 1 of 7" in first
    assert parse_screen(client.get(f"/r/{token}").text)["nonce"] == parse_screen(first)["nonce"], "reload keeps the screen"
    form = parse_screen(first)
    client.post(f"/r/{token}/vote", data={"nonce": form["nonce"], "signature": form["signature"],
                                           "quality": "left", "text": "draw"})
    again = TestClient(create_app(made["db"]))  # a new server process: progress comes from the database
    assert "Pair 2 of 7" in again.get(f"/r/{token}").text
    assert vote_all(again, token) == total - 1
    with sqlite3.connect(made["db"]) as conn:
        pairs = [r[0] for r in conn.execute("SELECT pair_id FROM votes WHERE rater = ? AND question = 'text'", (token,))]
    assert len(pairs) == len(set(pairs)) == total
    assert count_votes(made["db"]) == 2 * total


def test_page_html_and_images_reveal_no_identity(made):
    client = TestClient(create_app(made["db"]))
    page = client.get(f"/r/{made['raters'][0]}")
    for secret in [*SYSTEMS, str(made["folders"]["xattn_ours"]), "samples_", ".png", "color/"]:
        assert secret not in page.text
        assert secret not in str(page.headers)
    image_ids = parse_screen(page.text)["images"]
    assert len(image_ids) == 2
    for image_id in image_ids:
        response = client.get(f"/r/{made['raters'][0]}/i/{image_id}")
        assert response.headers["content-type"] == "image/png"
        assert not any(name.encode() in response.content for name in SYSTEMS)
        assert "system" not in Image.open(io.BytesIO(response.content)).info
    assert client.get(f"/r/{made['raters'][0]}/i/" + "0" * 32).status_code == 404
    assert client.get("/r/not-a-token").status_code == 404


def test_replayed_forged_and_malformed_submissions_are_rejected(made):
    token = made["raters"][1]
    client = TestClient(create_app(made["db"]))
    form = parse_screen(client.get(f"/r/{token}").text)
    good = {"nonce": form["nonce"], "signature": form["signature"], "quality": "right", "text": "left"}
    assert client.post(f"/r/{token}/vote", data=good).status_code == 200
    replay = client.post(f"/r/{token}/vote", data=good, follow_redirects=False)
    assert replay.status_code == 409 and "already answered" in replay.text
    fresh = parse_screen(client.get(f"/r/{token}").text)
    cases = [
        ({**good, "nonce": fresh["nonce"], "signature": "0" * 64}, 403, "signature"),
        ({"nonce": fresh["nonce"], "signature": fresh["signature"], "quality": "left"}, 400, "text"),
        ({"nonce": fresh["nonce"], "signature": fresh["signature"], "quality": "up", "text": "left"}, 400, "quality"),
        ({"quality": "left", "text": "left"}, 400, "screen id"),
    ]
    for data, status, words in cases:
        response = client.post(f"/r/{token}/vote", data=data, follow_redirects=False)
        assert response.status_code == status and words in response.text, (data, response.text)
    other = made["raters"][2]  # another rater's signed screen cannot be used with this token
    foreign = parse_screen(client.get(f"/r/{other}").text)
    stolen = client.post(f"/r/{token}/vote", data={**good, **{k: foreign[k] for k in ("nonce", "signature")}})
    assert stolen.status_code == 403
    assert count_votes(made["db"]) == 2


def test_unique_constraint_holds_even_with_two_open_screens(made):
    """Two screens for the same pair (e.g. two tabs racing) still record one vote per question."""
    token = made["raters"][0]
    conn = votes.connect(made["db"])
    screen = votes.next_screen(conn, token)
    pair_id = conn.execute("SELECT pair_id FROM screens WHERE nonce = ?", (screen.nonce,)).fetchone()[0]
    conn.execute("INSERT INTO screens VALUES ('second', ?, ?, 1, 0, NULL)", (token, pair_id))
    votes.record_vote(conn, token, {"nonce": screen.nonce, "signature": screen.signature, "quality": "left", "text": "left"})
    rater = votes.rater_study(conn, token)
    with pytest.raises(votes.VoteRejected, match="already voted"):
        votes.record_vote(conn, token, {"nonce": "second", "signature": votes.sign(rater["sign_key"], token, "second"),
                                        "quality": "right", "text": "right"})
    assert conn.execute("SELECT used FROM screens WHERE nonce = 'second'").fetchone()[0] is None, "rolled back"
    assert count_votes(made["db"]) == 2


def test_results_and_csv_need_the_owner_secret(made):
    client = TestClient(create_app(made["db"]))
    for token in made["raters"]:
        vote_all(client, token, choice=("left", "draw"))
    sid = made["study_id"]
    assert client.get(f"/s/{sid}/results").status_code == 401
    assert client.get(f"/s/{sid}/votes.csv").status_code == 403
    assert client.post(f"/s/{sid}/login", data={"secret": "guess"}).status_code == 403
    page = client.post(f"/s/{sid}/login", data={"secret": made["owner_secret"]})
    assert page.status_code == 200
    assert "xattn_ours" in page.text and "win without ties" in page.text and "agreement" in page.text
    frame = pd.read_csv(io.StringIO(client.get(f"/s/{sid}/votes.csv").text))
    assert len(frame) == 3 * 2 * (N_PROMPTS + CHECKS)
    assert set(frame["question"]) == {"quality", "text"}
    assert made["owner_secret"] not in str(client.cookies.values())


def test_owner_page_shows_rater_progress_screens_and_answers(made):
    """Who opened their link and who finished, screens answered against screens, and answers (a
    screen asks every question, so answers are twice the screens here)."""
    client = TestClient(create_app(made["db"]))
    total = N_PROMPTS + CHECKS
    first, second, _ = made["raters"]
    vote_all(client, first)
    form = parse_screen(client.get(f"/r/{second}").text)  # one screen answered, then the rater left
    client.post(f"/r/{second}/vote", data={"nonce": form["nonce"], "signature": form["signature"],
                                            "quality": "left", "text": "left"})
    page = client.post(f"/s/{made['study_id']}/login", data={"secret": made["owner_secret"]}).text
    assert (f"2 of 3 raters started, 1 finished · {total + 1} of {3 * total} screens answered · "
            f"{2 * (total + 1)} answers (2 questions per screen)") in page
    assert f"{2 * (total + 1)} answers recorded (2 per screen)" in page
    rows = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td><td>(\d+) of (\d+)</td><td>(\d+)</td></tr>", page)
    assert [(state, int(done), int(of), int(answers)) for _, state, done, of, answers in rows] == [
        ("finished", total, total, 2 * total), ("started", 1, total, 2), ("not started", 0, total, 0)]
    assert "No votes yet" not in page


def test_rater_progress_counts_links_never_opened():
    raters = pd.DataFrame({"rater": ["a", "b", "c", "d"], "assigned": [4, 4, 0, 5], "shown": [4, 1, 0, 5],
                           "screens_answered": [4, 0, 0, 5], "answers": [8, 0, 0, 10]})
    progress = vote_stats.rater_progress(raters, screens_per_rater=4)
    assert progress["state"].tolist() == ["finished", "started", "not started", "finished"]
    assert progress["screens"].tolist() == [4, 4, 4, 5]  # a link never opened has the study's share ahead
    assert vote_stats.progress_summary(progress) == {"raters": 4, "started": 3, "finished": 2,
                                                     "screens_answered": 9, "screens": 17, "answers": 18}
    empty = vote_stats.rater_progress(raters.iloc[0:0], 4)
    assert empty.empty and vote_stats.progress_summary(empty)["raters"] == 0


def test_concurrent_raters_lose_and_duplicate_nothing(tmp_path):
    """20 raters vote at once over real HTTP, each also replaying one submission."""
    plist = prompts(6)
    folders = {n: tmp_path / n for n in ("a", "b")}
    for n, folder in folders.items():
        write_sample_folder(folder, plist, tag=n)
    db = tmp_path / "votes.sqlite"
    created = study.create(db, "load", folders, raters=20, checks=0)
    errors = []
    with vote_app(db) as base:
        def rater(token):
            try:
                with requests.Session() as http:
                    while "All done" not in (page := http.get(f"{base}/r/{token}").text):
                        form = parse_screen(page)
                        data = {"nonce": form["nonce"], "signature": form["signature"], "quality": "left", "text": "right"}
                        assert http.post(f"{base}/r/{token}/vote", data=data).status_code == 200
                        assert http.post(f"{base}/r/{token}/vote", data=data, allow_redirects=False).status_code == 409
            except Exception as e:  # collected and asserted on in the main thread
                errors.append(e)
        threads = [threading.Thread(target=rater, args=(t,)) for t in created["raters"]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 20 * 6 * 2
        assert conn.execute("SELECT COUNT(*) FROM (SELECT DISTINCT rater, pair_id, question FROM votes)").fetchone()[0] == 240


def test_study_needs_matching_prompts(tmp_path):
    write_sample_folder(tmp_path / "a", prompts(3))
    write_sample_folder(tmp_path / "b", prompts(6)[3:])
    code = study.main(["--db", str(tmp_path / "v.sqlite"), "create", "--name", "x",
                       "--system", f"a={tmp_path / 'a'}", "--system", f"b={tmp_path / 'b'}"])
    assert code == 2
    with pytest.raises(ValueError, match="at least two"):
        study.parse_systems([f"a={tmp_path / 'a'}"])


# ---------------------------------------------------------------- statistics


def test_wilson_interval_matches_known_values():
    low, high = vote_stats.wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert vote_stats.wilson(0, 10)[0] == 0.0


def _simulated_votes(strengths, n, tie_rate, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"s{k}" for k in range(len(strengths))]
    rows = []
    for k in range(n):
        a, b = rng.choice(len(names), 2, replace=False)
        p = 1 / (1 + np.exp(strengths[b] - strengths[a]))
        choice = "draw" if rng.random() < tie_rate else ("a" if rng.random() < p else "b")
        rows.append({"rater": f"r{k % 10}", "pair_id": f"p{k}", "kind": "compare", "question": "quality",
                     "system_a": names[a], "system_b": names[b], "choice": choice})
    return pd.DataFrame(rows)


def test_bradley_terry_recovers_known_strengths():
    truth = np.array([-0.9, -0.2, 0.3, 0.8])
    frame = _simulated_votes(truth, 6000, tie_rate=0.0)
    bt = vote_stats.bt_scores(frame, "quality", n_boot=50).set_index("system").loc[["s0", "s1", "s2", "s3"]]
    np.testing.assert_allclose(bt["score"], truth - truth.mean(), atol=0.12)
    assert ((bt["ci_low"] <= bt["score"]) & (bt["score"] <= bt["ci_high"])).all()
    with_ties = vote_stats.bt_scores(_simulated_votes(truth, 6000, tie_rate=0.3), "quality", n_boot=20)
    assert list(with_ties["system"]) == ["s3", "s2", "s1", "s0"], "ties as half wins keep the order"


def test_win_rates_with_and_without_ties():
    frame = pd.DataFrame({"rater": ["r"] * 10, "pair_id": [f"p{k}" for k in range(10)], "kind": "compare",
                          "question": "text", "system_a": "A", "system_b": "B",
                          "choice": ["a"] * 5 + ["draw"] * 3 + ["b"] * 2})
    row = vote_stats.win_rates(frame).set_index(["system", "opponent"]).loc[("A", "B")]
    assert (row["wins"], row["draws"], row["losses"]) == (5, 3, 2)
    assert row["win_rate"] == 0.5 and row["win_rate_no_ties"] == pytest.approx(5 / 7)
    assert row["win_low"] < 0.5 < row["win_high"]


def test_contrarian_rater_is_flagged():
    rows = []
    for pair in range(12):
        for rater in range(6):
            choice = "b" if rater == 5 else ("a" if (pair + rater) % 5 else "draw")
            rows.append({"rater": f"r{rater}", "pair_id": f"p{pair}", "kind": "compare", "question": "quality",
                         "system_a": "A", "system_b": "B", "choice": choice})
    rows.append({"rater": "r1", "pair_id": "check", "kind": "check", "question": "text",
                 "system_a": "A", "system_b": "A (other prompt)", "choice": "b"})
    table = vote_stats.rater_agreement(pd.DataFrame(rows)).set_index("rater")
    assert table.loc["r5", "outlier"] and "agreement" in table.loc["r5", "reason"]
    assert table.loc["r1", "outlier"] and "attention" in table.loc["r1", "reason"]
    assert not table.loc["r0", "outlier"]
