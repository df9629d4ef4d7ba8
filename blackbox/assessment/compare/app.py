"""The rating page: a Starlette application served by uvicorn, server-rendered HTML without external assets.

Routes: ``/`` (the start: a name field, or how to get a link), ``/r/TOKEN`` (a rater's link: keeps the token in a
cookie and goes on to ``/rate``), ``/rate`` (the next pair: one question, two unlabelled answers, A/B/tie/both bad
as buttons and keys 1-4 or a, b, t, x), ``POST /vote`` (stores the vote, then back to ``/rate``). ``/results``
and ``/votes.csv`` answer 403: the results are the organiser's, on the command line.

Who rates: while the votes file holds rater links (:func:`~blackbox.assessment.compare.votes.links_required`),
the rater is the one whose valid link the request carries (the cookie ``rater_link``, set by ``/r/TOKEN``):
anything else is refused; the votes file is read at every request, so a new or revoked link counts at once. A
link opened in a browser that rates under another valid link asks first (a form), so a link sent by someone else
never silently takes over a rater's browser, and a bad link leaves the cookie as it was. Without links (the open
mode) a rater gives any name (``/rate?rater=NAME``); a page in the open mode that is not open to anyone
(``open_to_anyone``) refuses requests that came through a proxy, which would otherwise open a page on 127.0.0.1
to the network.

Before a route reads anything, :class:`~blackbox.assessment.compare.guard.Guard` checks the Host, the origin of
a POST and the body's size; a route identifies the rater (the link's cookie) before it reads a body. Every form
carries a token bound to the visitor (their link, or in the open mode a visitor cookie) and signed with the
study's secret, which also decides the sides (:func:`~blackbox.assessment.compare.pairs.a_shown_first`).

Answers are model output: the templates escape every text (Jinja2's autoescape), and the page's policy
(Content-Security-Policy) runs only its own inline script, by nonce, and loads nothing from elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from blackbox.assessment.compare.guard import Guard
from blackbox.assessment.compare.pairs import Answers, a_shown_first, next_pair, pair_index
from blackbox.assessment.compare.votes import (
    add_vote,
    is_rater_name,
    links_required,
    name_rule,
    normal_name,
    rated,
    rater_of_link,
    study_secret,
    votes_db,
)
from blackbox.reports.votes import Verdict, Vote, fetch_votes

logger = logging.getLogger(__name__)

CHOICES = ("left", "right", "tie", "both_bad")
LINK_COOKIE = "rater_link"
LINK_COOKIE_MAX_AGE_S = 30 * 24 * 3600
VISITOR_COOKIE = "visitor"  # the open mode: whom a form's token was made for
_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
LINKS_ONLY = "This page takes votes through personal links only: ask the study's organiser for yours."
BAD_LINK = "This link is not valid: it was revoked, or mistyped. Ask the study's organiser for a new one."
LOCAL_ONLY = (
    "This page has no rater links and is open to this machine only: its organiser creates links "
    "(lora-blackbox compare ANSWERS --raters NAME,...) to open it to others."
)
STALE_FORM = "This form is not valid here (it is old, or came from elsewhere): reload the page and vote again."
OWNER_ONLY = (
    "The results and the votes are for the study's organiser: lora-blackbox compare ANSWERS --results "
    "(or --csv FILE) where the votes file is."
)

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # every {{ value }} is escaped: answers cannot inject markup
    undefined=jinja2.StrictUndefined,
)


def build_app(
    answers: Answers,
    db: Path,
    *,
    hosts: frozenset[str],
    origins: frozenset[str] = frozenset(),
    open_to_anyone: bool = False,
) -> Starlette:
    """The application rating ``answers`` into the votes file ``db``.

    Args:
        hosts: the Host headers that name the page (:func:`~blackbox.assessment.compare.addresses.page_hosts`).
        origins: origins whose POSTs the page takes besides a request's own (``--url``'s, behind a proxy).
        open_to_anyone: in the open mode (no rater links), take requests that came through a proxy too.
    """
    with votes_db(db) as connection:
        secret = study_secret(connection)

    def page(template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        text = _TEMPLATES.get_template(template).render(nonce=nonce, **values)
        headers = {
            "Content-Security-Policy": f"default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
            "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            # A Referer goes to this page only (which links to nothing else): a rater's link never leaves in one.
            # Not no-referrer: browsers then send "Origin: null" with the page's own forms.
            "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store",
        }
        return HTMLResponse(text, status_code=status_code, headers=headers)

    def refused(message: str, status_code: int = 403) -> HTMLResponse:
        return page("refused.html", status_code, message=message)

    def form_token(session: str) -> str:
        """The token of the forms shown to the visitor ``session`` (their link's token, or visitor cookie)."""
        return hmac.new(secret, b"form\0" + session.encode(), hashlib.sha256).hexdigest()

    def token_matches(form: Any, session: str) -> bool:
        given = str(form.get("token", "")).encode()  # bytes: compare_digest refuses str beyond ASCII
        return bool(session) and hmac.compare_digest(given, form_token(session).encode())

    def identify(request: Request, claimed: str) -> _Rater:
        """Who makes this request: the rater of its link, or the name it gives in the open mode."""
        with votes_db(db) as connection:
            if links_required(connection):
                token = request.cookies.get(LINK_COOKIE, "")
                rater = rater_of_link(connection, token) if token else None
                return _Rater(rater, by_link=True, refusal="" if rater else LINKS_ONLY, session=token)
        if not open_to_anyone and any(h in request.headers for h in _PROXY_HEADERS):
            return _Rater(None, by_link=False, refusal=LOCAL_ONLY, session="")
        name = normal_name(claimed) or None
        return _Rater(name, by_link=False, refusal="", session=request.cookies.get(VISITOR_COOKIE, ""))

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

    def keep_link(request: Request, token: str) -> Response:
        # The token moves to a cookie: the address bar, the history and later requests show /rate, not the token.
        response = RedirectResponse("/rate", status_code=303)
        response.set_cookie(
            LINK_COOKIE,
            token,
            max_age=LINK_COOKIE_MAX_AGE_S,
            path="/",
            secure=request.url.scheme == "https",  # behind a TLS proxy that says so (X-Forwarded-Proto)
            httponly=True,
            samesite="lax",  # not sent with another site's POST (and other origins' POSTs are refused)
        )
        return response

    async def link(request: Request) -> Response:
        token, current = str(request.path_params["token"]), request.cookies.get(LINK_COOKIE, "")
        with votes_db(db) as connection:
            rater = rater_of_link(connection, token)
            current_rater = rater_of_link(connection, current) if current and current != token else None
        if rater is None:
            return refused(BAD_LINK)  # the cookie stays: a bad link logs nobody out
        if current_rater is not None:  # another rater's valid link: switch only when they say so
            return page("switch.html", current=current_rater, rater=rater, token=form_token(current))
        return keep_link(request, token)

    async def switch(request: Request) -> Response:
        who = identify(request, "")  # the link this browser rates under now, checked before reading the form
        if who.refusal:
            return refused(who.refusal)
        if not token_matches(await request.form(), who.session):
            return refused(STALE_FORM)
        token = str(request.path_params["token"])
        with votes_db(db) as connection:
            rater = rater_of_link(connection, token)
        return refused(BAD_LINK) if rater is None else keep_link(request, token)

    async def rate(request: Request) -> Response:
        who = identify(request, request.query_params.get("rater", ""))
        if who.refusal:
            return refused(who.refusal)
        rater = who.name or ""
        if not is_rater_name(rater):
            start = {"by_link": False, "rater": "", "raters": {}, "total": len(answers.pairs)}
            return page("index.html", 400, error=name_rule(rater) + ".", **start)
        with votes_db(db) as connection:
            done = rated(connection, rater)
        index = next_pair(answers, done)
        session = who.session or secrets.token_urlsafe(16)  # the open mode's first form: a new visitor
        shown: dict[str, Any] = {"rater": rater, "by_link": who.by_link, "done": len(done), "total": len(answers.pairs)}
        if index is None:
            response = page("rate.html", pair=None, **shown)
        else:
            pair = answers.pairs[index]
            shown_first = a_shown_first(secret, rater, pair)
            first, second = (pair.model_a, pair.model_b) if shown_first else (pair.model_b, pair.model_a)
            response = page(
                "rate.html",
                pair=index,
                token=form_token(session),
                question=answers.questions[pair.question_id],
                left=answers.texts[(pair.question_id, first)],
                right=answers.texts[(pair.question_id, second)],
                **shown,
            )
        if not who.by_link and session != who.session:
            secure = request.url.scheme == "https"
            response.set_cookie(VISITOR_COOKIE, session, path="/", secure=secure, httponly=True, samesite="strict")
        return response

    async def vote(request: Request) -> Response:
        who = identify(request, "")  # links: the cookie's rater, checked before the body is read
        if who.refusal:
            return Response(who.refusal, 403, headers={"Connection": "close"})  # its body stays unread
        form = await request.form()  # at most guard.MAX_BODY_BYTES
        if not token_matches(form, who.session):
            return Response(STALE_FORM, 403)
        rater = who.name if who.by_link else normal_name(str(form.get("rater", "")))
        choice = str(form.get("verdict", ""))
        index = pair_index(str(form.get("pair", "")), len(answers.pairs))
        if not rater or not is_rater_name(rater) or choice not in CHOICES or index is None:
            return Response(f"a vote needs a rater's name, a pair below {len(answers.pairs)} and one of {CHOICES}", 400)
        pair = answers.pairs[index]
        first = a_shown_first(secret, rater, pair)
        verdict: Verdict = {"tie": "tie", "both_bad": "both_bad"}.get(choice) or (  # type: ignore[assignment]
            "a" if (choice == "left") == first else "b"
        )
        with votes_db(db) as connection:
            stored = add_vote(connection, Vote(rater, pair.question_id, pair.model_a, pair.model_b, verdict, first))
        if not stored:
            logger.info("%s had rated pair %s already: vote ignored", rater, index)
        return RedirectResponse("/rate" if who.by_link else f"/rate?rater={quote(rater)}", status_code=303)

    async def owner_only(request: Request) -> Response:
        return refused(OWNER_ONLY)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/r/{token}", link),
            Route("/r/{token}", switch, methods=["POST"]),
            Route("/rate", rate),
            Route("/vote", vote, methods=["POST"]),
            Route("/results", owner_only),
            Route("/votes.csv", owner_only),
        ],
        middleware=[Middleware(Guard, hosts=hosts, origins=origins)],
    )


@dataclass(frozen=True)
class _Rater:
    name: str | None  # None: nobody (refused), or no name given yet
    by_link: bool  # the page takes votes through links only
    refusal: str  # why the request is refused; "" when it is not
    session: str  # what the forms' tokens are bound to: the link's token, or the open mode's visitor cookie


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (port 0: a free port).

    Raises:
        OSError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    return sock


def serve(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` on the listening ``sock`` until Ctrl-C or SIGTERM."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
