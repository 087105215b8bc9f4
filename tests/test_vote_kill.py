"""kill -9 of the vote server while 20 raters vote over HTTP: after each restart the raters carry on
with their links, and in the end every acknowledged vote (HTTP 303) is in the database exactly once,
no vote is duplicated and every rater has answered every pair once. GENTRON_VOTE_KILLS sets how many
times the server is killed (default 3)."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import requests

from reports import study
from reports.serving import free_port
from tests.support.report_fixtures import REPO, prompts, write_sample_folder

RATERS, PAIRS = 20, 6
KILLS = int(os.environ.get("GENTRON_VOTE_KILLS", "3"))


def start_server(db, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "reports/vote.py", "--db", str(db), "--port", str(port)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the vote server exited on start"
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=2)
            return process
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise TimeoutError("the vote server did not answer within 60 s")


def test_acknowledged_votes_survive_kill_9(tmp_path):
    plist = prompts(PAIRS)
    folders = {n: tmp_path / n for n in ("a", "b")}
    for name, folder in folders.items():
        write_sample_folder(folder, plist, tag=name)
    db = tmp_path / "votes.sqlite"
    created = study.create(db, "kill", folders, raters=RATERS, checks=0)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    acknowledged: list[tuple[str, str]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def rater(token: str) -> None:
        deadline = time.monotonic() + 300
        with requests.Session() as http:
            while time.monotonic() < deadline:
                try:
                    page = http.get(f"{base}/r/{token}", timeout=10).text
                    if "All done" in page:
                        return
                    nonce = re.search(r"name='nonce' value='([^']+)'", page).group(1)
                    signature = re.search(r"name='signature' value='([^']+)'", page).group(1)
                    answer = http.post(f"{base}/r/{token}/vote", timeout=10, allow_redirects=False,
                                       data={"nonce": nonce, "signature": signature, "quality": "left", "text": "draw"})
                except (requests.ConnectionError, requests.Timeout):
                    time.sleep(0.05)  # the server is down: come back with the same link
                    continue
                if answer.status_code == 303:
                    with lock:
                        acknowledged.append((token, nonce))
                elif answer.status_code != 409:  # 409: answered just before a kill, and counted once
                    failures.append(f"{answer.status_code}: {answer.text[:200]}")
                    return
        failures.append(f"rater {token[:6]} did not finish")

    server = start_server(db, port)
    threads = [threading.Thread(target=rater, args=(t,)) for t in created["raters"]]
    for t in threads:
        t.start()
    kills_during_voting = 0
    try:
        total = RATERS * PAIRS
        for k in range(KILLS):
            target = (k + 1) * total // (KILLS + 2)
            while len(acknowledged) < target and any(t.is_alive() for t in threads):
                time.sleep(0.01)
            if not any(t.is_alive() for t in threads):
                break
            server.send_signal(signal.SIGKILL)
            server.wait()
            kills_during_voting += 1
            server = start_server(db, port)
        for t in threads:
            t.join(timeout=300)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    assert not failures, failures
    assert kills_during_voting == KILLS, "every kill landed while raters were voting"
    with sqlite3.connect(db) as conn:
        lost = [n for _, n in acknowledged if conn.execute(
            "SELECT COUNT(*) FROM screens s JOIN votes v ON v.rater = s.rater AND v.pair_id = s.pair_id "
            "WHERE s.nonce = ? AND s.used IS NOT NULL", (n,)).fetchone()[0] != 2]
        rows = conn.execute("SELECT COUNT(*), COUNT(DISTINCT rater || pair_id || question) FROM votes").fetchone()
        answered = conn.execute("SELECT COUNT(*) FROM screens WHERE used IS NOT NULL").fetchone()[0]
    assert lost == [], f"{len(lost)} acknowledged votes lost"
    assert rows == (RATERS * PAIRS * 2, RATERS * PAIRS * 2), "every pair answered once by every rater, no duplicate"
    assert answered == RATERS * PAIRS, "one used screen per answered pair"
    print(f"kill -9 x{kills_during_voting} under {RATERS} raters: {len(acknowledged)} acknowledged screens, "
          f"{RATERS * PAIRS - len(acknowledged)} committed without acknowledgement, 0 lost, 0 duplicated")
