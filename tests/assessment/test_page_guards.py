"""The rating page's checks (``lora-blackbox compare``), by plain HTTP as a script or an attacker sends requests
to the real page on 127.0.0.1: bodies refused before they are read, Hosts that do not name the page (DNS
rebinding, a forwarder), form tokens, strict pair numbers, names in their normal form, results for the organiser
only. The same checks in a browser (other sites' forms, rater links): test_compare.py.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from blackbox.reports.votes import read_votes
from tests.assessment.rating import Server, form_token, get, make_links, request, write_answers

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def links_page(
    blackbox_cmd: list[str], wait_for: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, dict[str, str], Path]]:
    """The page with rater links for ann and bob: the server, their tokens and the votes file."""
    folder = tmp_path_factory.mktemp("links-page")
    answers, db = write_answers(folder), folder / "votes.sqlite"
    tokens = make_links(answers, db, "ann,bob")
    with _serving(Server(blackbox_cmd, answers, db), wait_for) as server:
        yield server, tokens, db


@pytest.fixture(scope="module")
def open_page(blackbox_cmd: list[str], wait_for: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The page in the open mode (no links: a name is all it asks), on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("open-page")
    with _serving(Server(blackbox_cmd, write_answers(folder), folder / "votes.sqlite"), wait_for) as server:
        yield server


@contextlib.contextmanager
def _serving(server: Server, wait_for: Any) -> Iterator[Server]:
    try:
        wait_for(server.answers, server.process, "the rating page to answer", timeout=60)
        yield server
    finally:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)


def _peak_memory_kib(pid: int) -> int:
    """A process's peak resident memory (VmHWM): a body buffered and freed again still shows in it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def _post_by_hand(port: int, headers: dict[str, str], *, stream: int = 0) -> int:
    """``POST /vote`` over a socket: the headers, then up to ``stream`` bytes of chunked body, sent only while the
    server reads them and has not answered; the status of its answer."""
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"127.0.0.1:{port}", **FORM, **headers}.items())
    chunk = b"%x\r\n%s\r\n" % (2**16, b"x" * 2**16)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /vote HTTP/1.1\r\n{head}\r\n".encode())
        sent = 0
        while sent < stream:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:  # the server answered: stop sending
                break
            assert writable, "the server neither read the body nor answered in 30 s"
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):  # it answered and closed meanwhile
                break
            sent += 2**16
        else:
            if stream:
                sock.sendall(b"0\r\n\r\n")  # the whole body was read: its end
        answer = b""
        while b"\r\n" not in answer:  # a server waiting for a body it should not read times out here
            part = sock.recv(4096)
            assert part, f"the connection ended without an answer: {answer!r}"
            answer += part
    return int(answer.split(b" ", 2)[1])


def test_a_large_body_is_refused_before_it_is_read(links_page: tuple[Server, dict[str, str], Path]) -> None:
    server, tokens, db = links_page
    size = 32 * 2**20
    peak = _peak_memory_kib(server.process.pid)
    # 32 MiB announced, no link: 413 at once, before a byte of the body was even sent.
    assert _post_by_hand(server.port, {"Content-Length": str(size)}) == 413
    # A chunked body (no length announced) without a link: refused for the link, the body left unread.
    assert _post_by_hand(server.port, {"Transfer-Encoding": "chunked"}, stream=size) == 403
    # With ann's link: read up to the page's limit (64 KiB), then 413.
    cookie = {"Cookie": f"rater_link={tokens['ann']}"}
    assert _post_by_hand(server.port, {"Transfer-Encoding": "chunked", **cookie}, stream=size) == 413
    assert _post_by_hand(server.port, {"Content-Length": str(size), **cookie}) == 413
    assert _peak_memory_kib(server.process.pid) - peak < 8 * 1024  # nothing near a 32 MiB body was held
    assert read_votes(db) == []


class _Forwarder:
    """A plain TCP forwarder (what ``ssh -L`` or socat do) on a free port of 127.0.0.1, to ``port``."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        for sock in self.sockets:
            sock.close()


def test_a_host_that_does_not_name_the_page_is_refused(open_page: Server) -> None:
    url, port = open_page.url, open_page.port
    assert get(url, "")[0] == 200 and get(url, "", host=f"localhost:{port}")[0] == 200
    # DNS rebinding: another site's name made to point at 127.0.0.1, the page's port included.
    for path in ("", "rate?rater=ann", "votes.csv"):
        status, text = get(url, path, host=f"rebind.evil.example:{port}")
        assert status == 421 and f"does not answer to 'rebind.evil.example:{port}'" in text, (path, status)
    status, _ = request(url, "vote", method="POST", headers={"Host": f"rebind.evil.example:{port}", **FORM})
    assert status == 421
    forwarder = _Forwarder(port)
    try:
        # A browser on the network through a forwarder names the forwarder's address: refused.
        assert get(forwarder.url, "")[0] == 421
        # A script that names the page's own address gets through it: the open mode trusts whoever reaches its
        # port (docs/human-study.md, "What each mode protects"); links are for pages that others reach.
        assert get(forwarder.url, "", host=f"127.0.0.1:{port}")[0] == 200
    finally:
        forwarder.close()
    assert get(url, "", host=f"127.0.0.1:{port + 1}")[0] == 421  # another port of the same host
    assert request(url, "", headers={"X-Forwarded-For": "192.0.2.1"})[0] == 403  # a proxy that says so


def test_the_open_mode_takes_names_in_their_normal_form(open_page: Server) -> None:
    status, page = get(open_page.url, "rate?rater=" + quote("\uff41\uff4e\uff4e"))  # full-width letters
    assert status == 200 and '<strong id="rater-name">ann</strong>' in page
    status, page = get(open_page.url, "rate?rater=" + quote("\u0430lice"))  # a Cyrillic a: not alice
    assert status == 400 and "1 to 40 ASCII letters" in page


def test_a_vote_needs_its_form_token_and_a_pair_in_ascii_digits(
    links_page: tuple[Server, dict[str, str], Path],
) -> None:
    from blackbox.assessment.compare.pairs import pair_index

    numbers = ("0", "5", "6", "\u00b2", "\u2460", "\u0663", "-1", "+1", " 1", "1.0", "", "0" * 10)
    assert [pair_index(text, 6) for text in numbers] == [0, 5, *[None] * 10]
    server, tokens, db = links_page
    cookies = {name: f"rater_link={token}" for name, token in tokens.items()}
    tokens_shown = {name: form_token(get(server.url, "rate", cookie=cookie)[1]) for name, cookie in cookies.items()}

    def post(fields: dict[str, str]) -> int:
        headers = {"Cookie": cookies["bob"], **FORM}
        return request(server.url, "vote", method="POST", headers=headers, body=urlencode(fields).encode())[0]

    for pair in ("\u00b2", "\u2460", "\u0663", "6", "-1", "0x1"):  # superscript 2, circled 1, Arabic-Indic 3, ...
        assert post({"pair": pair, "verdict": "left", "token": tokens_shown["bob"]}) == 400, pair
    assert post({"pair": "0", "verdict": "left"}) == 403  # no form token
    assert post({"pair": "0", "verdict": "left", "token": "\u00e9" * 64}) == 403  # not even hexadecimal
    assert post({"pair": "0", "verdict": "left", "token": tokens_shown["ann"]}) == 403  # ann's form, not bob's
    assert read_votes(db) == []


def test_a_rater_sees_neither_the_results_nor_anyone_elses_votes(
    links_page: tuple[Server, dict[str, str], Path],
) -> None:
    server, tokens, _ = links_page
    for path in ("results", "votes.csv"):
        status, text = get(server.url, path, cookie=f"rater_link={tokens['ann']}")
        assert status == 403 and "organiser: lora-blackbox compare ANSWERS --results" in text, path


def test_which_hosts_and_origins_name_the_page() -> None:
    from starlette.datastructures import Headers

    from blackbox.assessment.compare.addresses import is_loopback, page_hosts, page_origin
    from blackbox.assessment.compare.guard import same_origin

    hosts = page_hosts("127.0.0.1", 8000, "https://Rate.Example.org/")
    assert {"127.0.0.1:8000", "localhost:8000", "rate.example.org", "rate.example.org:443"} <= hosts
    assert not hosts & {"rate.example.org:8000", "127.0.0.1:8001", "evil.example:8000", "127.0.0.1"}
    assert page_hosts("10.1.2.3", 8000, "http://10.1.2.3:8000/") == {"10.1.2.3:8000"}
    assert {"[::1]:8000", "localhost:8000"} <= page_hosts("::1", 8000, None)
    assert {f"{socket.gethostname().lower()}:8000", "127.0.0.1:8000"} <= page_hosts("0.0.0.0", 8000, None)
    assert page_origin("https://Rate.example.org:443/x") == "https://rate.example.org"
    assert page_origin("http://[::1]:8000/") == "http://[::1]:8000"

    def same(**headers: str) -> bool:
        given = Headers({"host": "127.0.0.1:8000", **{k.replace("_", "-"): v for k, v in headers.items()}})
        return same_origin(given, "http", frozenset({"https://rate.example.org"}))

    assert same(origin="http://127.0.0.1:8000") and same(origin="https://rate.example.org")
    assert not any(same(origin=o) for o in ("http://127.0.0.1:9000", "http://localhost:8000", "null", ""))
    assert same(sec_fetch_site="same-origin") and not same(sec_fetch_site="same-site")
    assert not same(sec_fetch_site="cross-site") and not same(sec_fetch_site="none")
    assert same(origin="null", sec_fetch_site="same-origin") and not same(origin="null")
    assert not same(origin="null", sec_fetch_site="cross-site")
    assert same()  # no browser sent it: the form token decides
    assert all(is_loopback(h) for h in ("127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("10.0.0.1", "0.0.0.0", "localhost.evil.example", "example.org"))
