"""The rating page: a Starlette application served by uvicorn, server-rendered HTML without external assets.

Routes: ``/`` (the start: a name field, or how to get a link), ``/r/TOKEN`` (a rater's link: keeps the token in a
cookie and goes on to ``/rate``), ``/rate`` (the next pair: one question, two unlabelled answers, A/B/tie/both bad
as buttons and keys 1-4 or a, b, t, x), ``POST /vote`` (stores the vote, then back to ``/rate``), ``/results``
(the results tables) and ``/votes.csv``.

Who rates: while the votes file holds rater links (:func:`blackbox.core.votes.links_required`), the rater is
the one whose valid link the request carries (the cookie ``rater_link``, set by ``/r/TOKEN``): anything else is
refused, results and votes included; the votes file is read at every request, so a new or revoked link counts at
once. Without links (the open mode) a rater gives any name (``/rate?rater=NAME``); a page in the open mode that
is not open to anyone (``open_to_anyone``) refuses requests that came through a proxy, which would otherwise open
a page on 127.0.0.1 to the network.

Answers are model output: the templates escape every text (Jinja2's autoescape), and the page's policy
(Content-Security-Policy) runs only its own inline script, by nonce, and loads nothing from elsewhere.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
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
from blackbox.core.votes import (
    RATER_NAME,
    Verdict,
    Vote,
    add_vote,
    fetch_votes,
    links_required,
    name_rule,
    rated,
    rater_of_link,
    votes_db,
)
from blackbox.reports.preferences import group_preferences, results_html, votes_csv

logger = logging.getLogger(__name__)

CHOICES = ("left", "right", "tie", "both_bad")
LINK_COOKIE = "rater_link"
LINK_COOKIE_MAX_AGE_S = 30 * 24 * 3600
_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
LINKS_ONLY = "This page takes votes through personal links only: ask the study's organiser for yours."
BAD_LINK = "This link is not valid: it was revoked, or mistyped. Ask the study's organiser for a new one."
LOCAL_ONLY = (
    "This page has no rater links and is open to this machine only: its organiser creates links "
    "(lora-blackbox compare ANSWERS --raters NAME,...) to open it to others."
)

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # every {{ value }} is escaped: answers cannot inject markup
    undefined=jinja2.StrictUndefined,
)


def build_app(answers: Answers, db: Path, *, open_to_anyone: bool = False) -> Starlette:
    """The application rating ``answers`` into the votes file ``db``.

    Args:
        open_to_anyone: in the open mode (no rater links), take requests that came through a proxy too.
    """

    def page(template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        text = _TEMPLATES.get_template(template).render(nonce=nonce, **values)
        headers = {
            "Content-Security-Policy": f"default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
            "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",  # a rater's link never leaves in a Referer header
            "Cache-Control": "no-store",
        }
        return HTMLResponse(text, status_code=status_code, headers=headers)

    def refused(message: str, status_code: int = 403) -> HTMLResponse:
        return page("refused.html", status_code, message=message)

    def identify(request: Request, claimed: str) -> _Rater:
        """Who makes this request: the rater of its link, or the name it gives in the open mode."""
        with votes_db(db) as connection:
            if links_required(connection):
                token = request.cookies.get(LINK_COOKIE, "")
                rater = rater_of_link(connection, token) if token else None
                return _Rater(rater, by_link=True, refusal="" if rater else LINKS_ONLY)
        if not open_to_anyone and any(h in request.headers for h in _PROXY_HEADERS):
            return _Rater(None, by_link=False, refusal=LOCAL_ONLY)
        return _Rater(claimed or None, by_link=False, refusal="")

    async def index(request: Request) -> Response:
        who = identify(request, "")
        if who.by_link:
            return page("index.html", by_link=True, rater=who.name or "", raters={}, total=len(answers.pairs), error="")
        if who.refusal:
            return refused(who.refusal)
        with votes_db(db) as connection:
            votes = fetch_votes(connection)
        people: dict[str, int] = {}
        for vote in votes:
            if not vote.is_judge:
                people[vote.rater] = people.get(vote.rater, 0) + 1
        return page("index.html", by_link=False, rater="", raters=people, total=len(answers.pairs), error="")

    async def link(request: Request) -> Response:
        token = str(request.path_params["token"])
        with votes_db(db) as connection:
            rater = rater_of_link(connection, token)
        if rater is None:
            response: Response = refused(BAD_LINK)
            response.delete_cookie(LINK_COOKIE, path="/")
            return response
        # The token moves to a cookie: the address bar, the history and later requests show /rate, not the token.
        response = RedirectResponse("/rate", status_code=303)
        response.set_cookie(
            LINK_COOKIE,
            token,
            max_age=LINK_COOKIE_MAX_AGE_S,
            path="/",
            secure=request.url.scheme == "https",  # behind a TLS proxy that says so (X-Forwarded-Proto)
            httponly=True,
            samesite="lax",  # not sent with another site's POST: no vote cast from elsewhere
        )
        return response

    async def rate(request: Request) -> Response:
        who = identify(request, request.query_params.get("rater", "").strip())
        if who.refusal:
            return refused(who.refusal)
        rater = who.name or ""
        if not RATER_NAME.match(rater):
            start = {"by_link": False, "rater": "", "raters": {}, "total": len(answers.pairs)}
            return page("index.html", 400, error=name_rule(rater) + ".", **start)
        with votes_db(db) as connection:
            done = rated(connection, rater)
        index = next_pair(answers, done)
        shown: dict[str, Any] = {"rater": rater, "by_link": who.by_link, "done": len(done), "total": len(answers.pairs)}
        if index is None:
            return page("rate.html", pair=None, **shown)
        pair = answers.pairs[index]
        first, second = (pair.model_a, pair.model_b) if a_shown_first(rater, pair) else (pair.model_b, pair.model_a)
        return page(
            "rate.html",
            pair=index,
            question=answers.questions[pair.question_id],
            left=answers.texts[(pair.question_id, first)],
            right=answers.texts[(pair.question_id, second)],
            **shown,
        )

    async def vote(request: Request) -> Response:
        form = await request.form()
        claimed, choice, index = (str(form.get(k, "")).strip() for k in ("rater", "verdict", "pair"))
        who = identify(request, claimed)
        if who.refusal:
            return Response(who.refusal, 403)
        rater = who.name or ""
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
        return RedirectResponse("/rate" if who.by_link else f"/rate?rater={quote(rater)}", status_code=303)

    async def results(request: Request) -> Response:
        who = identify(request, "")
        if who.refusal:
            return refused(who.refusal)
        with votes_db(db) as connection:
            votes = fetch_votes(connection)
        return page("results.html", results=Markup(results_html(group_preferences(votes))))

    async def csv_export(request: Request) -> Response:
        who = identify(request, "")
        if who.refusal:
            return Response(who.refusal, 403)
        with votes_db(db) as connection:
            votes = fetch_votes(connection)
        headers = {"Content-Disposition": 'attachment; filename="votes.csv"'}
        return Response(votes_csv(votes), media_type="text/csv", headers=headers)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/r/{token}", link),
            Route("/rate", rate),
            Route("/vote", vote, methods=["POST"]),
            Route("/results", results),
            Route("/votes.csv", csv_export),
        ]
    )


@dataclass(frozen=True)
class _Rater:
    name: str | None  # None: nobody (refused), or no name given yet
    by_link: bool  # the page takes votes through links only
    refusal: str  # why the request is refused; "" when it is not


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
