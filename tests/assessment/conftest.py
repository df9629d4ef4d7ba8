"""The rating page's fixtures: an answers file, the page as a server, and one headless Chromium per test module
(Debian's chromium and chromium-driver: ``apt-get install chromium chromium-driver``; without them the browser
tests skip, unless ``LORA_BLACKBOX_REQUIRE_BROWSER=1`` (CI) makes them fail)."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.assessment.rating import Server, write_answers

BROWSER_REQUIRED = os.environ.get("LORA_BLACKBOX_REQUIRE_BROWSER") == "1"


@pytest.fixture
def answers_file(tmp_path: Path) -> Path:
    return write_answers(tmp_path)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        message = "no chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if BROWSER_REQUIRED:
            pytest.fail(f"{message} (LORA_BLACKBOX_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(chromedriver), options=options)  # no Selenium Manager download
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def driver(browser: Any) -> Any:
    """The module's browser, without the cookies of earlier tests (every page of them was on 127.0.0.1)."""
    browser.execute_cdp_cmd("Network.clearBrowserCookies", {})
    return browser


@pytest.fixture
def start_server(blackbox_cmd: list[str], wait_for: Any) -> Iterator[Any]:
    """``start_server(answers, db, *args)``: the page, answering; killed at the test's end if still running."""
    servers: list[Server] = []

    def start(answers: Path, db: Path, *args: str) -> Server:
        server = Server(blackbox_cmd, answers, db, args)
        servers.append(server)
        wait_for(server.answers, server.process, "the rating page to answer", timeout=60)
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)
