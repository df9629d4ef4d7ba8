"""The rating page: a Starlette application served by uvicorn, server-rendered HTML without external assets.

Routes: ``/`` (a rater gives their name; who rated how much), ``/rate?rater=NAME`` (the next pair: one
question, two unlabelled answers, A/B/tie/both bad as buttons and keys 1-4 or a, b, t, x), ``POST /vote`` (stores
the vote, then back to ``/rate``), ``/results`` (the results tables) and ``/votes.csv``.

Answers are model output: the templates escape every text (Jinja2's autoescape), and the page's policy
(Content-Security-Policy) runs only its own inline script, by nonce, and loads nothing from elsewhere.
"""

from __future__ import annotations

import logging
import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from blackbox.assessment.compare.pairs import Answers, a_shown_first, next_pair
from blackbox.core.votes import Verdict, Vote, add_vote, fetch_votes, rated, votes_db
from blackbox.reports.preferences import group_preferences, results_html, votes_csv

logger = logging.getLogger(__name__)

RATER_NAME = re.compile(r"^[\w][\w .@-]{0,39}$")
"""A rater's name: up to 40 letters, digits, spaces and ``._@-`` (no ``:``: ``judge:`` names judge models)."""
CHOICES = ("left", "right", "tie", "both_bad")

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # every {{ value }} is escaped: answers cannot inject markup
    undefined=jinja2.StrictUndefined,
)


def build_app(answers: Answers, db: Path) -> Starlette:
    """The application rating ``answers`` into the votes file ``db``."""

    def page(template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        text = _TEMPLATES.get_template(template).render(nonce=nonce, **values)
        headers = {
            "Content-Security-Policy": f"default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
            "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        }
        return HTMLResponse(text, status_code=status_code, headers=headers)

    async def index(request: Request) -> Response:
        with votes_db(db) as connection:
            votes = fetch_votes(connection)
        people: dict[str, int] = {}
        for vote in votes:
            if not vote.is_judge:
                people[vote.rater] = people.get(vote.rater, 0) + 1
        return page("index.html", raters=people, total=len(answers.pairs), error="")

    async def rate(request: Request) -> Response:
        rater = request.query_params.get("rater", "").strip()
        if not RATER_NAME.match(rater):
            return page("index.html", 400, raters={}, total=len(answers.pairs), error=_name_rule(rater))
        with votes_db(db) as connection:
            done = rated(connection, rater)
        index = next_pair(answers, done)
        if index is None:
            return page("rate.html", rater=rater, pair=None, done=len(done), total=len(answers.pairs))
        pair = answers.pairs[index]
        first, second = (pair.model_a, pair.model_b) if a_shown_first(rater, pair) else (pair.model_b, pair.model_a)
        return page(
            "rate.html",
            rater=rater,
            pair=index,
            question=answers.questions[pair.question_id],
            left=answers.texts[(pair.question_id, first)],
            right=answers.texts[(pair.question_id, second)],
            done=len(done),
            total=len(answers.pairs),
        )

    async def vote(request: Request) -> Response:
        form = await request.form()
        rater, choice, index = (str(form.get(k, "")).strip() for k in ("rater", "verdict", "pair"))
        if not RATER_NAME.match(rater) or choice not in CHOICES or not index.isdigit():
            return Response("a vote needs a rater's name, a pair and one of " + ", ".join(CHOICES), 400)
        if int(index) >= len(answers.pairs):
            return Response(f"no pair {index}", 400)
        pair = answers.pairs[int(index)]
        first = a_shown_first(rater, pair)
        verdict: Verdict = {"tie": "tie", "both_bad": "both_bad"}.get(choice) or (  # type: ignore[assignment]
            "a" if (choice == "left") == first else "b"
        )
        with votes_db(db) as connection:
            stored = add_vote(connection, Vote(rater, pair.question_id, pair.model_a, pair.model_b, verdict, first))
        if not stored:
            logger.info("%s had rated pair %s already: vote ignored", rater, index)
        return RedirectResponse(f"/rate?rater={quote(rater)}", status_code=303)

    async def results(request: Request) -> Response:
        with votes_db(db) as connection:
            votes = fetch_votes(connection)
        return page("results.html", results=Markup(results_html(group_preferences(votes))))

    async def csv_export(request: Request) -> Response:
        with votes_db(db) as connection:
            votes = fetch_votes(connection)
        headers = {"Content-Disposition": 'attachment; filename="votes.csv"'}
        return Response(votes_csv(votes), media_type="text/csv", headers=headers)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/rate", rate),
            Route("/vote", vote, methods=["POST"]),
            Route("/results", results),
            Route("/votes.csv", csv_export),
        ]
    )


def _name_rule(name: str) -> str:
    return f"{name!r} is not a rater's name: up to 40 letters, digits, spaces, '.', '_', '@' or '-'."


def serve(app: Starlette, *, host: str, port: int, ready: Callable[[str], None]) -> None:
    """Serve ``app`` until Ctrl-C or SIGTERM; ``ready(url)`` once it listens (port 0: a free port)."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    ready(f"http://{shown}:{sock.getsockname()[1]}/")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
