"""A judge behind an OpenAI-compatible endpoint: a local vLLM or ``transformers serve``, or a hosted model. The
one module that imports the ``openai`` package, an optional dependency (``pip install 'lora-blackbox[judge]'``).

Each prompt is one chat completion (the judge's system prompt, then the prompt), answered greedily
(temperature 0). The API key comes from an environment variable and goes to the endpoint only: never into a log,
a vote, a file, an error message or an exception's chain (the openai client's errors carry the request, headers
included: ours are raised ``from None``). It crosses a network over HTTPS only, unless ``allow_http`` (plain HTTP
to a loopback address stays on this machine). Retries with exponential backoff are the openai client's own
(connection errors, timeouts, 408, 409, 429 and 5xx answers; it honours Retry-After); ``requests_per_minute``
spaces the requests evenly (0: no limit); ``concurrency`` requests are in flight at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

from blackbox.assessment.compare.addresses import is_loopback
from blackbox.core.errors import OptionError, SetupError
from blackbox.core.extras import require

logger = logging.getLogger(__name__)

NO_KEY = "none"
"""The key sent when the environment has none: local servers take any, and the client insists on one."""


class RateLimit:
    """At most ``per_minute`` request starts a minute, evenly spaced (0: no limit); shared by threads."""

    def __init__(
        self,
        per_minute: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval_s = 60 / per_minute if per_minute > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = -float("inf")
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Return when the next request may start."""
        if self.interval_s == 0:
            return
        with self._lock:  # each caller takes the next free slot, then waits for it outside the lock
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval_s
        if start > now:
            self._sleep(start - now)


class Endpoint:
    """A chat model behind an OpenAI-compatible endpoint; :meth:`ask` is a judge's ``Ask``. Use it in a
    ``with`` block (its threads and connections end with it).

    Raises:
        SetupError: the openai package is missing.
        OptionError: a key would go over plain HTTP to another machine without ``allow_http``.
    """

    def __init__(
        self,
        model: str,
        *,
        url: str | None,
        api_key_env: str,
        system: str,
        max_new_tokens: int,
        concurrency: int = 8,
        requests_per_minute: float = 0,
        retries: int = 6,
        timeout_s: float = 600,
        allow_http: bool = False,
    ) -> None:
        require("openai", purpose="a judge behind an endpoint (--judge openai:MODEL)")
        import openai

        self._openai = openai
        self.model = model
        self._system = system
        self._max_new_tokens = max_new_tokens
        self._key = os.environ.get(api_key_env, "")
        if not self._key:
            logger.info("no API key in $%s: the requests carry none", api_key_env)
        self._client = openai.OpenAI(api_key=self._key or NO_KEY, base_url=url, max_retries=retries, timeout=timeout_s)
        base = self._client.base_url
        self.url = str(base)
        if self._key and not allow_http and base.scheme != "https" and not is_loopback(base.host):
            self._client.close()
            raise OptionError(
                f"the judge endpoint {self.url} is plain HTTP on another machine: the API key in ${api_key_env} "
                "would cross the network readable. Use an https:// URL, or say --judge-allow-http"
            )
        self._limit = RateLimit(requests_per_minute)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="judge")

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        # After an error (a failed request, Ctrl-C) the queued requests are dropped; the ones in flight end with
        # their answer or their timeout before the connections close. (Python waits for them at exit anyway, and
        # closing the client under a request in flight left that request blocked in its read until the timeout.)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def ask(self, prompts: Sequence[str]) -> list[str]:
        """The model's reply to each prompt, in order.

        Raises:
            SetupError: a request failed after its retries (the reason, without the key).
        """
        return list(self._pool.map(self._reply, prompts))

    def _reply(self, prompt: str) -> str:
        openai = self._openai
        messages: Any = [{"role": "system", "content": self._system}, {"role": "user", "content": prompt}]
        self._limit.wait()
        try:
            completion = self._client.chat.completions.create(
                model=self.model, messages=messages, temperature=0, max_tokens=self._max_new_tokens
            )
        except openai.APIStatusError as e:
            message = f"the judge endpoint {self.url} answered {e.status_code}: {e.message}"
            # from None: the openai error holds the request and its Authorization header, which --debug would print
            raise SetupError(self._redact(message)) from None
        except openai.APIError as e:  # connection errors and timeouts, after the retries
            raise SetupError(self._redact(f"the judge endpoint {self.url} failed: {e.message}")) from None
        if not completion.choices:
            return ""
        return completion.choices[0].message.content or ""

    def _redact(self, message: str) -> str:
        return message.replace(self._key, "[API key]") if self._key else message
