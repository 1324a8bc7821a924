"""A small Python client for cellforge endpoints.

    >>> import cellforge as cf
    >>> client = cf.Client("http://127.0.0.1:8000")                          # doctest: +SKIP
    >>> client.predict("digits", images[:2].tolist())["labels"]              # doctest: +SKIP
    [0, 1]
    >>> with client.session("digits") as s:                                  # doctest: +SKIP
    ...     s.step(images[0][:4].tolist()); s.step(images[0][4:].tolist())

    >>> with client.session("digits") as s, s.socket() as ws:                 # doctest: +SKIP
    ...     ws.step(images[0][:4].tolist()); ws.step(images[0][4:].tolist())   # one WebSocket
    >>> with client.session("digit-strings") as s:          # an audio model: a clip's chunks  # doctest: +SKIP
    ...     s.step(samples[:8000]); s.step(samples[8000:], end=True)["text"]
    'three one four'

Errors come back as ``RequestError`` carrying the server's JSON (``problems`` name the fields).
Session steps send their ``offset``, so a step retried after a lost replica never applies twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

RETRY_STATUS = (502, 503, 504)  # a replica or proxy that is restarting; safe to retry with an offset


class RequestError(Exception):
    """The server refused a request: ``status``, ``error`` (a code) and ``problems`` (field, message)."""

    def __init__(self, status: int, body: Any):
        self.status, self.body = status, body
        body = body if isinstance(body, dict) else {"message": str(body)}
        self.error = body.get("error", "error")
        self.problems = [(p.get("field"), p.get("message")) for p in body.get("problems", [])]
        super().__init__(f"HTTP {status} {self.error}: {body.get('message', '')}")


class Client:
    """Talk to a cellforge server at ``url`` (the base, e.g. ``http://127.0.0.1:8000``).

    Args:
        url: the server's base URL.
        api_key: sent as ``Authorization: Bearer <api_key>`` when given.
        timeout: seconds per request.
        retries: extra attempts on connection errors and 502/503/504 (sessions only retry with an offset).
    """

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0, retries: int = 3):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.retries = retries

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None, retry: bool = True,
              headers: dict[str, str] | None = None) -> Any:
        for attempt in range(self.retries + 1 if retry else 1):
            try:
                r = self._http.request(method, path, json=body, headers=headers)
            except httpx.TransportError:
                if attempt == self.retries or not retry:
                    raise
                time.sleep(0.2 * 2 ** attempt)
                continue
            if r.status_code in RETRY_STATUS and retry and attempt < self.retries:
                time.sleep(0.2 * 2 ** attempt)
                continue
            try:
                data = r.json()
            except ValueError:
                data = r.text
            if r.status_code >= 400:
                raise RequestError(r.status_code, data)
            return data
        raise AssertionError("unreachable")

    # server ----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def models(self) -> list[dict[str, Any]]:
        """Every deployed model: name, version, spec summary and input schema."""
        return self._call("GET", "/v1/models")["models"]

    def info(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/models/{name}")

    def metrics(self, name: str) -> dict[str, Any]:
        """Batch sizes formed so far and live sessions of one model."""
        return self._call("GET", f"/v1/models/{name}/metrics")

    # predictions -----------------------------------------------------------------------
    def predict(self, name: str, inputs: Any, **options: Any) -> dict[str, Any]:
        """Predictions for a batch of raw inputs (strings, or sequences of feature rows). seq2seq
        ``options``: ``strategy``, ``beam_width``, ``return_attention`` (the answer's ``texts``,
        ``attention``)."""
        if hasattr(inputs, "tolist"):
            inputs = inputs.tolist()
        return self._call("POST", f"/v1/models/{name}/predict", {"inputs": inputs, **options})

    def stream(self, name: str, inputs: list[str], **options: Any) -> Iterator[dict[str, Any]]:
        """A seq2seq model's output as it is decoded (greedy): ``{"index", "token"}`` events, then
        ``{"done": True, "texts": [...]}``. ``"".join`` of an input's tokens is its text.

            >>> for event in client.stream("fr", ["four thousand and twelve"]):   # doctest: +SKIP
            ...     print(event.get("token", ""), end="", flush=True)
        """
        with self._http.stream("POST", f"/v1/models/{name}/predict",
                               json={"inputs": inputs, **options, "stream": True}) as r:
            if r.status_code >= 400:
                r.read()
                try:
                    raise RequestError(r.status_code, r.json())
                except ValueError:
                    raise RequestError(r.status_code, r.text) from None
            kind = "message"
            for line in r.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data = json.loads(line[5:])
                    if kind == "error":
                        raise RequestError(500, data)
                    yield data
                elif not line:
                    kind = "message"

    def session(self, name: str) -> Session:
        """Start a streaming session; the server keeps the recurrent state between steps."""
        created = self._call("POST", f"/v1/models/{name}/sessions")
        return Session(self, name, created["session_id"], created["version"])


class Session:
    """A streaming session: ``step`` new time steps, read the outputs for them; ``close`` ends it."""

    def __init__(self, client: Client, name: str, session_id: str, version: str):
        self.client, self.name, self.id, self.version = client, name, session_id, version
        self.steps = 0  # steps the server has consumed, sent as the offset of the next step

    def step(self, inputs: Any, end: bool = False) -> dict[str, Any]:
        """New steps (an audio model: the clip's next chunk; ``end``: the clip ends with it)."""
        if hasattr(inputs, "tolist"):
            inputs = inputs.tolist()
        body = {"inputs": inputs, "offset": self.steps, **({"end": True} if end else {})}
        # x-session-id: with affinity, Serve routes the session's steps to one replica (its cache)
        out = self.client._call("POST", f"/v1/models/{self.name}/sessions/{self.id}/step", body,
                                headers={"x-session-id": self.id})
        self.steps = out["steps"]
        return out

    def socket(self) -> SessionSocket:
        """This session's steps over one WebSocket (``.../sessions/{id}/stream``): the same answers,
        offsets and errors as ``step``, without a request per step."""
        return SessionSocket(self)

    def close(self) -> None:
        self.client._call("DELETE", f"/v1/models/{self.name}/sessions/{self.id}")

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.close()
        except RequestError:
            pass  # already expired or ended


class SessionSocket:
    """A session's WebSocket: ``step`` sends new steps (with the session's offset) and reads their
    answer; a refused step raises ``RequestError`` and leaves the connection open."""

    def __init__(self, session: Session):
        from websockets.sync.client import connect

        http = session.client._http
        url = str(http.base_url).rstrip("/").replace("http", "ws", 1)
        headers = {"x-session-id": session.id}
        if "authorization" in http.headers:
            headers["Authorization"] = http.headers["authorization"]
        self.session, self.timeout = session, http.timeout.read
        self._ws = connect(f"{url}/v1/models/{session.name}/sessions/{session.id}/stream",
                           additional_headers=headers, open_timeout=self.timeout)

    def step(self, inputs: Any, end: bool = False) -> dict[str, Any]:
        if hasattr(inputs, "tolist"):
            inputs = inputs.tolist()
        from websockets.exceptions import ConnectionClosed

        try:
            self._ws.send(json.dumps({"inputs": inputs, "offset": self.session.steps, **({"end": True} if end else {})}))
        except ConnectionClosed:
            pass  # the server refused the session and closed: its answer is still to be read
        out = json.loads(self._ws.recv(timeout=self.timeout))
        if "error" in out:
            raise RequestError(out.get("status", 400), out)
        self.session.steps = out["steps"]
        return out

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> SessionSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
