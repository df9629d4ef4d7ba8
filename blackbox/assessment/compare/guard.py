"""What the rating page checks before any of its routes sees a request: an ASGI middleware (:class:`Guard`).

- **The Host** must name the page (``addresses.page_hosts``: the address it listens on, and ``--url``'s), or
  the request is refused with 421: a web site whose name was made to point at this machine (DNS rebinding) cannot
  read or post through its visitors' browsers, and a browser that reaches the page through a forwarder names
  the forwarder's address.
- **A POST** must come from the page's own origin (:func:`same_origin`: the ``Origin`` header, else
  ``Sec-Fetch-Site``), or it is refused with 403 before its body is read: no other site, another port of this
  host included, can post a vote through a rater's browser. The routes check each form's token too.
- **A body** is at most :data:`MAX_BODY_BYTES`: a longer declared ``Content-Length`` is refused with 413 before
  any byte is read, and a body that grows past it while the route reads it (chunked) ends with 413 there. The
  routes identify the rater (the link's cookie) before they read a body.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 64 * 1024
"""The largest request body the page reads; a vote's form is about 200 bytes."""
# A refused body is never read: the connection ends. nosniff: a refusal that quotes a Host is shown as text.
_CLOSE = {"Connection": "close", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class Guard:
    """The checks of this module in front of ``app``: ``hosts``, the Host headers that name the page
    (:func:`~blackbox.assessment.compare.addresses.page_hosts`), and ``origins``, the origins whose POSTs it takes
    besides the request's own (``--url``'s)."""

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str], origins: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "").lower()
        refusal: PlainTextResponse | None = None
        if host not in self.hosts:  # the answer names none of the page's addresses: they may be private
            message = f"This page does not answer to {host!r}: open it at the address its organiser gave."
            refusal = PlainTextResponse(message, 421, headers=_CLOSE)
        elif scope["method"] not in ("GET", "HEAD") and not same_origin(headers, scope["scheme"], self.origins):
            message = "Refused: this page takes votes from its own forms only, and this request came from another site."
            refusal = PlainTextResponse(message, 403, headers=_CLOSE)
        elif _too_long(headers.get("content-length")):
            refusal = PlainTextResponse(f"A request body is {MAX_BODY_BYTES} bytes at most.", 413, headers=_CLOSE)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        received = 0

        async def capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:  # Starlette answers 413 (the route has not answered yet)
                    raise HTTPException(413, f"A request body is {MAX_BODY_BYTES} bytes at most.", headers=_CLOSE)
            return message

        await self.app(scope, capped, send)


def _too_long(content_length: str | None) -> bool:
    if content_length is None:
        return False
    return not (content_length.isascii() and content_length.isdigit()) or int(content_length) > MAX_BODY_BYTES


def same_origin(headers: Headers, scheme: str, origins: frozenset[str]) -> bool:
    """Whether a request comes from the page's own origin: its ``Origin`` header is the request's own origin
    (``scheme://Host``, the Host checked already) or one of ``origins``; without ``Origin`` (or with ``null``,
    which a browser sends for a page whose origin it hides), ``Sec-Fetch-Site`` says ``same-origin``. A request
    with neither header comes from no browser (a script): no browser of a rater was made to send it, and the form
    token still applies."""
    origin = headers.get("origin")
    fetch_site = headers.get("sec-fetch-site")
    if origin is not None and origin != "null":
        return origin.lower() in origins | {f"{scheme}://{headers.get('host', '').lower()}"}
    if fetch_site is not None:
        return fetch_site == "same-origin"
    return origin is None
