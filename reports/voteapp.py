"""The blind A/B voting web app (Starlette): rater screens, opaque images, owner results and CSV.

Why not Streamlit: a blind study needs per-rater URLs whose token is checked on every request,
images served under random ids with their metadata stripped, HTML that carries no system name or
file path, and plain HTTP form posts that can be signed, replayed and rejected (and tested with a
test client and parallel HTTP raters). Streamlit keeps state in a websocket session, serves media
under content-hash URLs it controls and re-runs the whole script per click, which makes every one of
those guarantees indirect. A ~300-line Starlette app makes them explicit.

    python reports/vote.py [--config vote.yaml] [--db studies/votes.sqlite] [--host 127.0.0.1] [--port 8502]
"""
from __future__ import annotations

import argparse
import html
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from reports import vote_stats, votes

log = logging.getLogger(__name__)

DEFAULT_DB = "studies/votes.sqlite"
STYLE = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:24px auto;padding:0 16px;color:#222}
.prompt{font-size:1.35em;margin:12px 0 18px;padding:12px;background:#f4f4f8;border-radius:8px}
.pair{display:flex;gap:24px;justify-content:center}.pair figure{margin:0;text-align:center}
.pair img{width:360px;height:360px;object-fit:contain;image-rendering:pixelated;border:1px solid #ccc;border-radius:6px}
fieldset{border:1px solid #ddd;border-radius:8px;margin:16px 0;padding:10px 16px}
label{margin-right:28px;font-size:1.1em;cursor:pointer} button{font-size:1.1em;padding:8px 28px}
table{border-collapse:collapse;margin:8px 0 20px;font-size:.9em}td,th{border:1px solid #ddd;padding:4px 8px}
.muted{color:#777}.error{color:#a00}
"""


@dataclass
class VoteSettings:
    db: Path = field(default_factory=lambda: Path(DEFAULT_DB))
    host: str = "127.0.0.1"
    port: int = 8502

    @classmethod
    def load(cls, config: str | None = None, **overrides) -> "VoteSettings":
        """Defaults, then a YAML config file (keys db, host, port), then $GENTRON_VOTE_DB, then flags."""
        values = {}
        if config:
            loaded = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
            unknown = set(loaded) - {"db", "host", "port"}
            if unknown:
                raise ValueError(f"{config}: unknown keys {sorted(unknown)}; allowed: db, host, port")
            values.update(loaded)
        if os.environ.get("GENTRON_VOTE_DB"):
            values["db"] = os.environ["GENTRON_VOTE_DB"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.db = Path(settings.db)
        return settings


def create_app(db: str | Path) -> Starlette:
    """The app over one SQLite file (created if missing)."""
    db = Path(db)
    conn = votes.connect(db)
    votes.init_db(conn)
    conn.close()

    @contextmanager
    def store():
        connection = votes.connect(db)
        try:
            yield connection
        finally:
            connection.close()

    def home(request: Request) -> HTMLResponse:
        return page("GenTron study", "<p>Open the personal link the study owner sent you.</p>")

    def rater_screen(request: Request) -> Response:
        token = request.path_params["token"]
        with store() as conn:
            screen = votes.next_screen(conn, token)
        if screen is None:
            return page("Thank you", "<h2>All done — thank you!</h2><p>Every pair of this study has your vote.</p>")
        return page("Which image is better?", screen_html(token, screen))

    async def submit(request: Request) -> Response:
        token = request.path_params["token"]
        form = dict(await request.form())
        with store() as conn:
            votes.record_vote(conn, token, form)
        return RedirectResponse(f"/r/{token}", status_code=303)

    def image(request: Request) -> Response:
        with store() as conn:
            path = votes.image_path(conn, request.path_params["image_id"])
        data, media_type = votes.clean_image(path)
        return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    def results_page(request: Request) -> Response:
        study_id = request.path_params["study_id"]
        with store() as conn:
            if not is_owner(conn, request, study_id):
                return login_page(study_id)
            study = votes.study_by_id(conn, study_id)
            body = results_html(study, votes.study_summary(conn, study_id), votes.votes_frame(conn, study_id))
        return page(f"Results: {study['name']}", body)

    async def login(request: Request) -> Response:
        study_id = request.path_params["study_id"]
        secret = str((await request.form()).get("secret", ""))
        with store() as conn:
            if not votes.check_owner(conn, study_id, secret):
                return login_page(study_id, "Wrong owner secret.", status=403)
            cookie = votes.owner_cookie(conn, study_id)
        response = RedirectResponse(f"/s/{study_id}/results", status_code=303)
        response.set_cookie(f"owner_{study_id}", cookie, httponly=True, samesite="strict", path=f"/s/{study_id}")
        return response

    def csv_export(request: Request) -> Response:
        study_id = request.path_params["study_id"]
        with store() as conn:
            if not is_owner(conn, request, study_id):
                return login_page(study_id, "The vote export needs the owner secret.", status=403)
            frame = votes.votes_frame(conn, study_id)
        return Response(frame.to_csv(index=False), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="votes_{study_id}.csv"'})

    routes = [Route("/", home), Route("/r/{token}", rater_screen), Route("/r/{token}/vote", submit, methods=["POST"]),
              Route("/i/{image_id}", image), Route("/s/{study_id}/results", results_page),
              Route("/s/{study_id}/login", login, methods=["POST"]), Route("/s/{study_id}/votes.csv", csv_export)]
    return Starlette(routes=routes, exception_handlers={votes.VoteRejected: rejected})


def rejected(request: Request, exc: votes.VoteRejected) -> HTMLResponse:
    log.info("rejected %s %s: %s", request.method, request.url.path, exc)
    back = ""
    if request.url.path.startswith("/r/"):
        back = f'<p><a href="/r/{html.escape(request.path_params.get("token", ""))}">Back to voting</a></p>'
    return page("Not recorded", f'<p class="error">{html.escape(str(exc))}</p>{back}', status=exc.status)


def is_owner(conn, request: Request, study_id: str) -> bool:
    expected = votes.owner_cookie(conn, study_id)
    return request.cookies.get(f"owner_{study_id}") == expected


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                        f"<meta name='referrer' content='no-referrer'><style>{STYLE}</style></head>"
                        f"<body>{body}</body></html>", status_code=status,
                        headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex"})


def screen_html(token: str, screen: votes.Screen) -> str:
    questions = "".join(
        f"<fieldset><legend>{html.escape(text)}</legend>"
        + "".join(f"<label><input type='radio' name='{q}' value='{c}' required> {c.capitalize()}</label>"
                  for c in votes.CHOICES)
        + "</fieldset>" for q, text in votes.QUESTIONS.items())
    return (f"<p class='muted'>Pair {screen.done + 1} of {screen.total}. You can stop any time and come back "
            f"with the same link.</p><div class='prompt'>“{html.escape(screen.prompt)}”</div>"
            f"<div class='pair'><figure><img src='/i/{screen.left_image}' alt='left image'><figcaption>Left"
            f"</figcaption></figure><figure><img src='/i/{screen.right_image}' alt='right image'><figcaption>Right"
            f"</figcaption></figure></div><form method='post' action='/r/{html.escape(token)}/vote'>"
            f"<input type='hidden' name='nonce' value='{screen.nonce}'>"
            f"<input type='hidden' name='signature' value='{screen.signature}'>{questions}"
            f"<button type='submit'>Submit and next</button></form>")


def login_page(study_id: str, message: str = "", status: int = 401) -> HTMLResponse:
    error = f"<p class='error'>{html.escape(message)}</p>" if message else ""
    return page("Owner login", f"<h2>Study results</h2>{error}<form method='post' action='/s/{html.escape(study_id)}/login'>"
                f"<label>Owner secret <input type='password' name='secret' required></label> "
                f"<button type='submit'>Show results</button></form>", status=status)


def results_html(study, summary: dict, frame: pd.DataFrame) -> str:
    parts = [f"<h2>{html.escape(study['name'])}</h2>",
             f"<p>Systems: {html.escape(', '.join(summary['systems']))} · {summary['pairs']} pairs, "
             f"{summary['checks']} attention checks · {summary['raters']} raters · {summary['votes']} answers recorded. "
             f"<a href='/s/{study['id']}/votes.csv'>Download raw votes (CSV)</a></p>"]
    if frame.empty:
        return "".join(parts) + "<p>No votes yet.</p>"
    rates = vote_stats.win_rates(frame)
    for question, text in votes.QUESTIONS.items():
        parts.append(f"<h3>{html.escape(text)} ({question})</h3>")
        parts.append(_table(_rate_rows(rates[rates["question"] == question]) if not rates.empty else rates))
        if len(summary["systems"]) > 2:
            bt = vote_stats.bt_scores(frame, question)
            parts.append("<p>Bradley-Terry log-strength (ties = half a win each), 95% bootstrap CI:</p>")
            parts.append(_table(bt.round(3)))
    parts.append("<h3>Raters: agreement with the consensus of the others</h3>")
    parts.append(_table(vote_stats.rater_agreement(frame).round(3)))
    return "".join(parts)


def _rate_rows(rates: pd.DataFrame) -> pd.DataFrame:
    pct = lambda rate, low, high: f"{100 * rate:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"  # noqa: E731
    return pd.DataFrame({
        "system": rates["system"], "vs": rates["opponent"], "answers": rates["n"],
        "win": [pct(*r) for r in zip(rates["win_rate"], rates["win_low"], rates["win_high"])],
        "draw": [pct(*r) for r in zip(rates["draw_rate"], rates["draw_low"], rates["draw_high"])],
        "loss": [pct(*r) for r in zip(rates["loss_rate"], rates["loss_low"], rates["loss_high"])],
        "win without ties": ["–" if pd.isna(r[0]) else pct(*r) for r in
                             zip(rates["win_rate_no_ties"], rates["no_ties_low"], rates["no_ties_high"])]})


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, border=0, na_rep="–")


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description="Blind pairwise voting server for GenTron studies")
    parser.add_argument("--config", help="YAML with db, host, port")
    parser.add_argument("--db")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    settings = VoteSettings.load(args.config, db=args.db, host=args.host, port=args.port)
    log.info("votes in %s; serving on http://%s:%d", settings.db, settings.host, settings.port)
    uvicorn.run(create_app(settings.db), host=settings.host, port=settings.port, log_level="warning")
