"""The blind A/B voting web app (Starlette): rater screens, opaque images, owner results and CSV.

Why not Streamlit: a blind study needs per-rater URLs whose token is checked on every request,
images served under random ids with their metadata stripped, HTML that carries no system name or
file path, and plain HTTP form posts that can be signed, replayed and rejected (and tested with a
test client and parallel HTTP raters). Streamlit keeps state in a websocket session, serves media
under content-hash URLs it controls and re-runs the whole script per click, which makes every one of
those guarantees indirect. A small Starlette app makes them explicit.

    python reports/vote.py [--config vote.yaml] [--db studies/votes.sqlite] [--host 127.0.0.1] [--port 8502]

The rater page is built for phones as much as desktops: both images side by side in portrait, answers as
large tap targets, the instructions open on the first screen and one tap away after.
"""
from __future__ import annotations

import argparse
import errno
import html
import ipaddress
import logging
import os
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from gentron.errors import ConfigError
from gentron.schema import parse
from reports import vote_stats, votes

log = logging.getLogger(__name__)

DEFAULT_DB = "studies/votes.sqlite"
STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1000px;margin:0 auto;padding:12px 12px 32px;
  color:#1d1d22;font-size:17px;line-height:1.45;-webkit-text-size-adjust:100%}
h2{font-size:1.3em;margin:.6em 0}
.progress{color:#666;font-size:.9em;margin:4px 0}
.prompt{font-size:1.2em;font-weight:600;margin:8px 0 12px;padding:10px 14px;background:#f1f2f8;border-radius:10px}
.pair{display:flex;gap:10px;justify-content:center}
.pair figure{flex:1 1 0;min-width:0;max-width:min(420px,42vh);margin:0;text-align:center}
.pair img{display:block;width:100%;aspect-ratio:1/1;object-fit:contain;image-rendering:pixelated;background:#fafafa;
  border:1px solid #ccc;border-radius:8px}
.pair figcaption{font-weight:600;margin-top:4px}
form{max-width:720px;margin:0 auto}
.question{border:0;margin:14px 0 0;padding:0}
.question legend{font-weight:600;padding:0;margin-bottom:6px}
.choices{display:flex;gap:8px}
.choices label{flex:1 1 0;display:flex;align-items:center;justify-content:center;gap:8px;min-height:52px;
  padding:6px 8px;border:2px solid #c9cbd6;border-radius:12px;background:#fff;cursor:pointer;font-size:1.05em;
  -webkit-tap-highlight-color:transparent;user-select:none}
.choices input{width:22px;height:22px;margin:0;accent-color:#2d5bd7}
.choices label:has(input:checked){border-color:#2d5bd7;background:#e8eefc}
button{font:inherit;font-size:1.1em;font-weight:600;cursor:pointer}
.submit{display:block;width:100%;max-width:440px;min-height:54px;margin:18px auto 0;border:0;border-radius:12px;
  background:#2d5bd7;color:#fff}
.help{background:#fff8e6;border:1px solid #f0d48a;border-radius:10px;padding:8px 14px;margin:8px 0}
.help summary{font-weight:600;cursor:pointer;min-height:32px;line-height:32px}
.help ul{margin:6px 0;padding-left:20px}.help li{margin:4px 0}
.scroll{overflow-x:auto;max-width:100%}
.rates td,.rates th{text-align:center;vertical-align:top}
.rates td:first-child{text-align:left;white-space:normal;min-width:8em}
table{border-collapse:collapse;margin:8px 0 20px;font-size:.88em}td,th{border:1px solid #ddd;padding:4px 8px;white-space:nowrap}
th{background:#f4f4f8}.rule{background:#f1f2f8;border-left:4px solid #2d5bd7;padding:8px 12px;border-radius:4px}
.muted{color:#666}.error{color:#a00}
@media (min-width:700px){.pair{gap:24px}.prompt{font-size:1.35em}}
"""
INSTRUCTIONS = """
<ul>
<li><b>Visual quality</b>: which picture looks better as a picture: clean, sharp, well-formed shapes, no noise,
smears or broken parts. Ignore the text for this question.</li>
<li><b>Matches the text</b>: which picture shows what the text says: the right objects, colours, shapes, counts
and positions. Ignore how pretty it is.</li>
<li><b>Draw is fine</b> whenever you cannot tell them apart, or both are equally good or bad. Go with your first
impression; a few pairs are easy checks.</li>
</ul>
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (problem and fix) instead of usage + error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def whole_number(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number in [minimum, maximum]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small; give a whole number of at least {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is out of range; give a whole number in {minimum}-{maximum}")
        return value
    return parse


def port_number(text: str) -> int:
    try:
        return whole_number(1, 65535)(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port; give a whole number in 1-65535") from e


@dataclass
class VoteSettings:
    db: str = DEFAULT_DB
    host: str = "127.0.0.1"
    port: int = field(default=8502, metadata={"help": "a TCP port, a whole number in 1-65535"})

    def check(self, where: str) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port {self.port!r} is not a TCP port; give a whole number in 1-65535")

    @classmethod
    def load(cls, config: str | None = None, **overrides) -> VoteSettings:
        """Defaults, then a YAML config file (keys db, host, port), then $GENTRON_VOTE_DB, then flags.
        Every problem raises ValueError naming the file, the key and the fix."""
        values = dict(_read_config(config)) if config else {}
        if os.environ.get("GENTRON_VOTE_DB"):
            values["db"] = os.environ["GENTRON_VOTE_DB"]
        values.update({k: str(v) if k == "db" else v for k, v in overrides.items() if v is not None})
        settings = parse(cls, values, source=f"--config {config}" if config else "vote settings")
        settings.db = Path(settings.db)
        return settings


def _read_config(config: str) -> dict:
    path = Path(config)
    if not path.is_file():
        raise ValueError(f"--config {config}: file not found; give a YAML file with keys {', '.join(f.name for f in fields(VoteSettings))}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise ValueError(f"--config {config} is not valid YAML{line}; fix it or give another file") from e
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise ValueError(f"--config {config}: expected a mapping of keys {', '.join(f.name for f in fields(VoteSettings))}, "
                         f"got a {type(loaded).__name__}")
    return loaded


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
            data, media_type = votes.rater_image(conn, request.path_params["token"], request.path_params["image_id"])
        return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    def bare_image(request: Request) -> Response:
        return page("Not shown", "<p class='error'>Images are shown only on a rater's own page; open the personal "
                    "link the study owner sent you.</p>", status=403)

    def results_page(request: Request) -> Response:
        study_id = request.path_params["study_id"]
        with store() as conn:
            if not is_owner(conn, request, study_id):
                return login_page(study_id)
            study = votes.study_by_id(conn, study_id)
            summary = votes.study_summary(conn, study_id)
            body = results_html(study, summary, votes.votes_frame(conn, study_id),
                                rater_progress(conn, study_id, summary))
        return page(f"Results: {study['name']}", body, wide=True)

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
              Route("/r/{token}/i/{image_id}", image), Route("/i/{image_id}", bare_image),
              Route("/s/{study_id}/results", results_page),
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


def page(title: str, body: str, status: int = 200, wide: bool = False) -> HTMLResponse:
    """A whole page; `wide` lets the owner's tables use a desktop's width."""
    width = "<style>body{max-width:1320px}</style>" if wide else ""
    return HTMLResponse(f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
                        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
                        f"<title>{html.escape(title)}</title>"
                        f"<meta name='referrer' content='no-referrer'><style>{STYLE}</style>{width}</head>"
                        f"<body>{body}</body></html>", status_code=status,
                        headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex"})


def screen_html(token: str, screen: votes.Screen) -> str:
    """One pair: progress, instructions (open on the first screen), the text, both images, two questions."""
    token = html.escape(token)
    questions = "".join(
        f"<fieldset class='question'><legend>{html.escape(text)}</legend><div class='choices'>"
        + "".join(f"<label><input type='radio' name='{q}' value='{c}' required>{c.capitalize()}</label>"
                  for c in votes.CHOICES)
        + "</div></fieldset>" for q, text in votes.QUESTIONS.items())
    opened = " open" if screen.done == 0 else ""
    return (f"<p class='progress'>Pair {screen.done + 1} of {screen.total}. You can stop any time and come back "
            f"with the same link.</p><details class='help'{opened}><summary>How to judge</summary>{INSTRUCTIONS}"
            f"</details><div class='prompt'>“{html.escape(screen.prompt)}”</div>"
            f"<div class='pair'><figure><img src='/r/{token}/i/{screen.left_image}' alt='left image'><figcaption>Left"
            f"</figcaption></figure><figure><img src='/r/{token}/i/{screen.right_image}' alt='right image'>"
            f"<figcaption>Right</figcaption></figure></div><form method='post' action='/r/{token}/vote'>"
            f"<input type='hidden' name='nonce' value='{screen.nonce}'>"
            f"<input type='hidden' name='signature' value='{screen.signature}'>{questions}"
            f"<button type='submit' class='submit'>Submit and next</button></form>")


def login_page(study_id: str, message: str = "", status: int = 401) -> HTMLResponse:
    error = f"<p class='error'>{html.escape(message)}</p>" if message else ""
    return page("Owner login", f"<h2>Study results</h2>{error}<form method='post' action='/s/{html.escape(study_id)}/login'>"
                f"<label>Owner secret <input type='password' name='secret' required></label> "
                f"<button type='submit'>Show results</button></form>", status=status)


def rater_progress(conn, study_id: str, summary: dict) -> pd.DataFrame:
    """vote_stats.rater_progress of the study's rater links: screens assigned, served and answered,
    and answers, per rater."""
    raters = pd.read_sql_query(
        "SELECT ra.name AS rater, (SELECT COUNT(*) FROM assignments a WHERE a.rater = ra.token) AS assigned, "
        "(SELECT COUNT(*) FROM screens s WHERE s.rater = ra.token) AS shown, "
        "(SELECT COUNT(DISTINCT v.pair_id) FROM votes v WHERE v.rater = ra.token) AS screens_answered, "
        "(SELECT COUNT(*) FROM votes v WHERE v.rater = ra.token) AS answers "
        "FROM raters ra WHERE ra.study_id = ? ORDER BY ra.created, ra.name", conn, params=(study_id,))
    per_rater = summary["checks"] + (summary["pairs_per_rater"] or summary["pairs"])
    return vote_stats.rater_progress(raters, per_rater)


def results_html(study, summary: dict, frame: pd.DataFrame, progress: pd.DataFrame | None = None) -> str:
    """Counts and balance, the raters' progress (started, finished; screens answered and answers, a
    screen asking every question), the exclusion rule and who it removes, then per question the win
    rates of all raters and of those who passed the checks, Bradley-Terry strengths for three or more
    systems, and each rater's agreement with the others."""
    per_rater = (f"each rater judges {summary['pairs_per_rater']} of them" if summary["pairs_per_rater"]
                 else "each rater judges all of them")
    low, high = summary["raters_per_pair"]
    spread = f"{low}" if low == high else f"{low}–{high}"
    orders = (f"; {summary['pairs_both_orders']} of the {summary['pairs_repeated']} pairs answered more than once "
              f"were seen both ways round (left/right)" if summary["pairs_repeated"] else "")
    parts = [f"<h2>{html.escape(study['name'])}</h2>",
             f"<p>Systems: {html.escape(', '.join(summary['systems']))} · {summary['pairs']} pairs ({per_rater}) and "
             f"{summary['checks']} attention checks · {summary['raters']} raters · {summary['votes']} answers recorded "
             f"({len(votes.QUESTIONS)} per screen). <a href='/s/{study['id']}/votes.csv'>Download raw votes (CSV)</a></p>",
             f"<p class='muted'>Each pair answered by {spread} raters{orders}. Rates are shares of answers with 95% "
             f"Wilson intervals.</p>", _stimulus_line(summary.get("stimulus"))]
    if progress is not None:
        parts.append(_progress_html(progress))
    if frame.empty:
        return "".join(parts) + "<p>No votes yet.</p>"
    excluded = vote_stats.excluded_raters(frame)
    voted = frame["rater"].nunique()
    groups = [(f"all {voted} raters", frame),
              (f"{voted - len(excluded)} raters who passed the checks", frame[~frame["rater"].isin(excluded)])]
    who = ("Excluded: " + "; ".join(f"{html.escape(r)} ({html.escape(why)})" for r, why in excluded.items())
           if excluded else "No rater is excluded")
    parts.append(f"<p class='rule'><b>Exclusion rule.</b> {html.escape(vote_stats.EXCLUSION_RULE)} {who}. Every table "
                 f"shows {groups[0][0]} and the {groups[1][0]}.</p>")
    for question, text in votes.QUESTIONS.items():
        parts.append(f"<h3>{html.escape(text)}</h3>")
        parts.append(_rates_table([(label, vote_stats.win_rates(group)) for label, group in groups], question))
        if len(summary["systems"]) > 2:
            for label, group in groups:
                parts.append(f"<p>Bradley-Terry log-strength, {label} (ties = half a win each), 95% bootstrap CI:</p>")
                parts.append(_table(vote_stats.bt_scores(group, question).round(3)))
    parts.append("<h3>Raters: agreement with the consensus of the others</h3>")
    parts.append(_table(vote_stats.rater_agreement(frame).round(3)))
    return "".join(parts)


def _progress_html(progress: pd.DataFrame) -> str:
    """The raters' progress: how many opened their link and how many finished, screens answered of all
    screens, answers; and a row per rater."""
    total = vote_stats.progress_summary(progress)
    line = (f"<p class='progress'><b>Rater progress.</b> {total['started']} of {total['raters']} raters started, "
            f"{total['finished']} finished · {total['screens_answered']} of {total['screens']} screens answered · "
            f"{total['answers']} answers ({len(votes.QUESTIONS)} questions per screen).</p>")
    rows = "".join(f"<tr><td>{html.escape(str(r.rater))}</td><td>{html.escape(r.state)}</td>"
                   f"<td>{r.screens_answered} of {r.screens}</td><td>{r.answers}</td></tr>"
                   for r in progress.itertuples(index=False))
    table = (f"<div class='scroll'><table class='progress'><tr><th>rater</th><th>state</th><th>screens answered</th>"
             f"<th>answers</th></tr>{rows}</table></div>")
    return line + table


def _stimulus_line(meta: dict | None) -> str:
    """How the study's images were normalised for serving (reports.study), or a warning for older studies."""
    if meta is None:
        return ("<p class='muted'>Stimuli: this study was created before images were normalised to one format; "
                "their file sizes may tell the systems apart. Create it again to serve them blind.</p>")
    return f"<p class='muted'>Stimuli: {html.escape(votes.describe_stimulus(meta))}.</p>"


def _rates_table(groups: list[tuple[str, pd.DataFrame]], question: str) -> str:
    """One row per rater group and system pair (each pair once, A before B): answers, A's wins, draws,
    B's wins and A's wins without ties, each as a rate over its 95% interval."""
    def cell(rate, low, high) -> str:
        if pd.isna(rate):
            return "<td>–</td>"
        return f"<td>{100 * rate:.1f}%<br><small class='muted'>[{100 * low:.1f}, {100 * high:.1f}]</small></td>"

    head = ("<tr><th>raters</th><th>A</th><th>B</th><th>answers</th><th>A wins</th><th>draw</th><th>B wins</th>"
            "<th>win without ties (A)</th></tr>")
    rows = []
    for label, rates in groups:
        if rates.empty or not (rates["question"] == question).any():
            rows.append(f"<tr><td>{html.escape(label)}</td><td colspan='7' class='muted'>no answers</td></tr>")
            continue
        mine = rates[(rates["question"] == question) & (rates["system"] < rates["opponent"])]
        for r in mine.itertuples(index=False):
            rows.append(f"<tr><td>{html.escape(label)}</td><td>{html.escape(r.system)}</td>"
                        f"<td>{html.escape(r.opponent)}</td><td>{r.n}</td>"
                        + cell(r.win_rate, r.win_low, r.win_high) + cell(r.draw_rate, r.draw_low, r.draw_high)
                        + cell(r.loss_rate, r.loss_low, r.loss_high)
                        + cell(r.win_rate_no_ties, r.no_ties_low, r.no_ties_high) + "</tr>")
    return f"<div class='scroll'><table class='rates'>{head}{''.join(rows)}</table></div>"


def _table(frame: pd.DataFrame) -> str:
    return f"<div class='scroll'>{frame.to_html(index=False, escape=True, border=0, na_rep='–')}</div>"


def main(argv: list[str] | None = None, prog: str = "reports/vote.py") -> int:
    """Serve until stopped; a bad argument, config or database file prints one line and returns 2."""
    parser = OneLineParser(prog=prog, description="Blind pairwise voting server for GenTron studies "
                           "(create a study first: python -m reports.study create --help)")
    parser.add_argument("--config", help="YAML with keys db, host, port")
    parser.add_argument("--db", help=f"SQLite votes file (default {DEFAULT_DB}, or $GENTRON_VOTE_DB)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=port_number, help="TCP port (default 8502)")
    parser.add_argument("--create", action="store_true",
                        help="start with an empty votes file when --db does not exist (else refused: a mistyped "
                             "path would serve no study)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = VoteSettings.load(args.config, db=args.db, host=args.host, port=args.port)
        bind(settings.host, settings.port).close()  # a clear message now rather than uvicorn's log line
        if not Path(settings.db).exists() and not args.create:
            raise ValueError(f"--db {settings.db} does not exist; create a study into it first (python -m "
                             f"reports.study --db {settings.db} create ...), check the path, or pass --create to "
                             "serve an empty votes file")
        app = create_app(settings.db)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    log.info("votes in %s; serving on http://%s:%d", settings.db, settings.host, settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0


def bind(host: str, port: int) -> socket.socket:
    """A socket listening on host:port, or ValueError saying why not (bad address, port in use)."""
    try:
        family = socket.AF_INET6 if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address) else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name: resolved by bind
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(2048)
    except (socket.gaierror, UnicodeError) as e:
        listener.close()
        raise ValueError(f"--host {host} is not an address of this machine ({e}); use 127.0.0.1 or 0.0.0.0") from e
    except OSError as e:
        listener.close()
        if e.errno == errno.EADDRINUSE:
            raise ValueError(f"port {port} is in use on {host}; stop the other server or pick another --port") from e
        raise ValueError(f"cannot listen on --host {host} --port {port} ({e.strerror or e}); give an address of "
                         f"this machine such as 127.0.0.1 or 0.0.0.0") from e
    return listener
