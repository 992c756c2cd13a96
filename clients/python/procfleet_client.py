"""procfleet_client: submit jobs to a procfleet fleet over its HTTP API.

Standard library only (Python 3.11+). Talks to ``dispatcher serve --http``::

    from procfleet_client import Client
    c = Client("http://127.0.0.1:8080", token=os.environ.get("PROCFLEET_HTTP_TOKEN"))
    job = c.submit("render", {"page": 3}, session="user-42")
    print(c.result(job.id, wait=30))

Every error the API answers is raised as a typed exception, a subclass of
``ProcfleetError``: ``BadRequest`` (400), ``Unauthorized`` (401),
``Forbidden`` (403), ``NotFound`` (404; ``Unsupported`` when the dispatcher
has no such route at all), ``Conflict`` (409), ``TooLarge`` (413) and
``Unavailable`` (503 and connection failures: may pass, retry).
``AsyncClient`` offers the same calls as coroutines.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Optional

__all__ = [
    "Client",
    "AsyncClient",
    "Submitted",
    "Event",
    "ProcfleetError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Unsupported",
    "Conflict",
    "TooLarge",
    "Unavailable",
    "ServerError",
    "JobFailed",
]

# The server's bound on one long poll (GET /v1/results/{id}?wait=).
MAX_WAIT_PER_POLL = 30.0


class ProcfleetError(Exception):
    """An error answer of the API, or a failure to reach it."""

    def __init__(self, message: str, status: Optional[int] = None, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


class BadRequest(ProcfleetError):
    """400: the request is malformed or invalid; the message says what to fix."""


class Unauthorized(ProcfleetError):
    """401: no token, or an unknown one."""


class Forbidden(ProcfleetError):
    """403: the token lacks the right (submit, read, admin), or the request is cross-origin."""


class NotFound(ProcfleetError):
    """404: no such result (not finished, unknown or expired) or dead letter."""


class Unsupported(NotFound):
    """The dispatcher serves no such route (an older version, or a feature not built in)."""


class Conflict(ProcfleetError):
    """409: conflicts with what is stored (e.g. a job id taken by another job)."""


class TooLarge(ProcfleetError):
    """413: the body or job is over the NATS server's max payload."""


class Unavailable(ProcfleetError):
    """503, or the dispatcher cannot be reached: may pass, retry later."""

    def __init__(self, message: str, status: Optional[int] = None, body: Any = None,
                 retry_after: Optional[float] = None):
        super().__init__(message, status, body)
        self.retry_after = retry_after


class ServerError(ProcfleetError):
    """500 or another unexpected answer: a fault of the dispatcher (see its log)."""


class JobFailed(ProcfleetError):
    """Raised by ``Client.run`` for a job whose result is a failure."""

    def __init__(self, result: dict):
        err = result.get("error") or {}
        super().__init__("job %s failed (%s): %s" % (result.get("id"), err.get("kind"), err.get("message")))
        self.result = result
        self.kind = err.get("kind")


_BY_STATUS = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    503: Unavailable,
}


@dataclass(frozen=True)
class Submitted:
    """A stored job: its id, its sequence in its queue's jobs stream, and
    that queue (None: the default queue, or a dispatcher that does not say)."""

    id: str
    seq: int
    duplicate: bool = False
    queue: Optional[str] = None


def _named_queue(reply: dict) -> Optional[str]:
    """The queue a submit reply names, None for the default queue."""
    q = reply.get("queue")
    return None if not q or q == "default" else q


def _job_query(seq: Optional[int], queue: Optional[str]) -> dict:
    """The query that names one job: its sequence, and its queue but for
    the default one."""
    query = {}
    if seq:
        query["seq"] = seq
    if queue and queue != "default":
        query["queue"] = queue
    return query


@dataclass(frozen=True)
class Event:
    """One server-sent event of a progress stream: ``progress`` or ``result``."""

    event: str
    data: Any = field(default=None)


def _error_for(status: int, body: bytes, headers) -> ProcfleetError:
    text = body.decode("utf-8", "replace")
    parsed = None
    try:
        parsed = json.loads(text)
    except ValueError:
        pass
    api_error = isinstance(parsed, dict) and "error" in parsed and "status" in parsed
    message = parsed["error"] if api_error else (text.strip() or "HTTP %d" % status)
    if status in (404, 405) and not api_error:
        # The mux's own answer: no such route on this dispatcher.
        return Unsupported("the dispatcher serves no such route (HTTP %d: %s)" % (status, message), status, text)
    cls = _BY_STATUS.get(status, ServerError)
    if cls is Unavailable:
        retry = headers.get("Retry-After") if headers is not None else None
        try:
            retry_after = float(retry) if retry else None
        except ValueError:
            retry_after = None
        return Unavailable(message, status, parsed if api_error else text, retry_after)
    return cls(message, status, parsed if api_error else text)


def _seconds(wait) -> float:
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0 or math.isnan(wait):
        raise ValueError("wait must be a number of seconds >= 0, got %r" % (wait,))
    return float(wait)


class Client:
    """A client of one dispatcher's HTTP API. Safe to share between threads."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 30.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("url must be http(s)://host:port, got %r" % (url,))
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    # -- plumbing ---------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None, query: Optional[dict] = None,
                 timeout: Optional[float] = None, stream: bool = False):
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if stream:
            headers["Accept"] = "text/event-stream"
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout if timeout is None else timeout)
        except urllib.error.HTTPError as e:
            try:
                payload = e.read()
            finally:
                e.close()
            raise _error_for(e.code, payload, e.headers) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise Unavailable("cannot reach the dispatcher at %s: %s" % (self.url, reason)) from e
        if stream:
            return resp
        with resp:
            payload = resp.read()
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError as e:
            raise ServerError("answer of %s %s is not JSON: %.200r" % (method, path, payload), resp.status) from e

    @staticmethod
    def _job_path(job_id: str) -> str:
        if not isinstance(job_id, str) or not job_id:
            raise ValueError("job id must be a non-empty string, got %r" % (job_id,))
        return urllib.parse.quote(job_id, safe="")

    # -- jobs ---------------------------------------------------------------

    @staticmethod
    def _job_body(command, payload, session, queue, job_id, timeout_ms, max_attempts, meta) -> dict:
        if not isinstance(command, str) or not command:
            raise ValueError("command must be a non-empty string, got %r" % (command,))
        job: dict = {"command": command}
        if job_id is not None:
            job["id"] = job_id
        if payload is not None:
            job["payload"] = payload
        if timeout_ms is not None:
            job["timeout_ms"] = int(timeout_ms)
        if max_attempts is not None:
            job["max_attempts"] = int(max_attempts)
        if meta is not None:
            job["meta"] = meta
        body: dict = {"job": job}
        if session is not None:
            body["session"] = session
        if queue is not None:
            # Named queues: sent as the submit body's "queue" field, which a
            # dispatcher without queues refuses (400, unknown field).
            body["queue"] = queue
        return body

    def submit(self, command: str, payload: Any = None, session: Optional[str] = None,
               queue: Optional[str] = None, job_id: Optional[str] = None,
               timeout_ms: Optional[int] = None, wait: Any = False,
               max_attempts: Optional[int] = None, meta: Optional[dict] = None):
        """Submit one job. Returns a ``Submitted`` (id, seq, duplicate).

        With ``wait=True`` (or a number of seconds) waits for the job's own
        result and returns it (a dict) instead; ``NotFound`` if it does not
        come in time."""
        body = self._job_body(command, payload, session, queue, job_id, timeout_ms, max_attempts, meta)
        reply = self._request("POST", "/v1/jobs", body)
        sub = Submitted(reply["id"], int(reply.get("seq", 0)), bool(reply.get("duplicate", False)),
                        _named_queue(reply))
        if wait is False or wait is None:
            return sub
        seconds = None if wait is True else _seconds(wait)
        return self.result(sub.id, wait=seconds if seconds is not None else math.inf, seq=sub.seq,
                           queue=sub.queue)

    def submit_batch(self, jobs) -> list:
        """Submit up to 1000 jobs in one request. Each job is a dict of
        ``submit``'s arguments (``command`` required). Returns, in order, a
        ``Submitted`` for each stored job and the exception it met for each
        one that was not (nothing is raised for those)."""
        items = []
        for j in jobs:
            j = dict(j)
            command = j.pop("command", None)
            items.append(self._job_body(command, j.pop("payload", None), j.pop("session", None),
                                        j.pop("queue", None), j.pop("job_id", None), j.pop("timeout_ms", None),
                                        j.pop("max_attempts", None), j.pop("meta", None)))
            if j:
                raise TypeError("unknown job fields: %s" % ", ".join(sorted(j)))
        reply = self._request("POST", "/v1/jobs/batch", {"jobs": items})
        out = []
        for it in reply["items"]:
            if it["status"] == 200:
                out.append(Submitted(it["id"], int(it.get("seq", 0)), bool(it.get("duplicate", False)),
                                     _named_queue(it)))
            else:
                cls = _BY_STATUS.get(it["status"], ServerError)
                out.append(cls(it.get("error", ""), it["status"], it))
        return out

    def result(self, job_id: str, wait: Optional[float] = None, seq: Optional[int] = None,
               queue: Optional[str] = None) -> dict:
        """The stored result of job ``job_id`` (with ``seq``: of the job stored
        at that sequence of ``queue``'s stream, the default queue's unless
        named). With ``wait`` (seconds, ``math.inf`` for ever), long-polls
        until the result is stored; ``NotFound`` when it is not there (in
        time)."""
        path = "/v1/results/" + self._job_path(job_id)
        query = _job_query(seq, queue)
        if wait is None:
            return self._request("GET", path, query=query)
        remaining = _seconds(wait)
        deadline = time.monotonic() + remaining
        while True:
            chunk = min(MAX_WAIT_PER_POLL, max(0.0, remaining))
            q = dict(query, wait="%dms" % int(chunk * 1000))
            try:
                return self._request("GET", path, query=q, timeout=chunk + self.timeout)
            except Unsupported:
                raise
            except NotFound:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise

    def run(self, command: str, payload: Any = None, session: Optional[str] = None, **kw) -> Any:
        """Submit, wait, and return the job's result value; ``JobFailed`` for a failed job."""
        res = self.submit(command, payload, session=session, wait=True, **kw)
        if not res.get("ok"):
            raise JobFailed(res)
        return res.get("result")

    def progress(self, job_id: str, seq: Optional[int] = None, queue: Optional[str] = None) -> Iterator[Event]:
        """Iterate over the job's server-sent events: ``Event("progress", data)``
        for each report, then ``Event("result", result)`` once stored, after
        which the iteration ends. Open it before the job starts to miss no
        report: once ``progress()`` has returned, the stream is live. The
        connection's read timeout is the client's ``timeout`` (30 s), above
        the server's 15 s heartbeat: a dead dispatcher raises ``Unavailable``
        rather than hanging."""
        path = "/v1/jobs/" + self._job_path(job_id) + "/progress"
        resp = self._request("GET", path, query=_job_query(seq, queue) or None, stream=True, timeout=None)
        return _SSE(resp)

    def cancel(self, job_id: str) -> Any:
        """Cancel a job (``DELETE /v1/jobs/{id}``). ``Unsupported`` when the
        dispatcher has no cancellation, ``NotFound`` for an unknown job."""
        return self._request("DELETE", "/v1/jobs/" + self._job_path(job_id))

    # -- fleet --------------------------------------------------------------

    def status(self) -> dict:
        return self._request("GET", "/v1/status")

    def agents(self) -> list:
        return self._request("GET", "/v1/agents")["agents"]

    def queues(self) -> list:
        return self._request("GET", "/v1/queues")["queues"]

    def dead_letters(self, limit: int = 100) -> list:
        return self._request("GET", "/v1/dlq", query={"limit": limit})

    def dead_letter(self, seq: int) -> dict:
        return self._request("GET", "/v1/dlq/%d" % int(seq))

    def replay(self, *seqs: int) -> dict:
        """Replay dead letters; one sequence uses the single route."""
        if len(seqs) == 1:
            return self._request("POST", "/v1/dlq/%d/replay" % int(seqs[0]))
        return self._request("POST", "/v1/dlq/replay", {"seqs": [int(s) for s in seqs]})

    def purge_dead_letters(self, through: Optional[int] = None) -> dict:
        return self._request("DELETE", "/v1/dlq", query={"through": through} if through else None)


class _SSE:
    """An iterator over a text/event-stream response. Closing it (or leaving
    a ``with`` block) closes the connection, which ends the server's stream."""

    def __init__(self, resp):
        self._resp = resp

    def __iter__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._resp.close()

    def __next__(self) -> Event:
        event, data = None, []
        while True:
            try:
                raw = self._resp.readline()
            except (TimeoutError, OSError) as e:
                self.close()
                raise Unavailable("progress stream broke off: %s" % (e,)) from e
            if not raw:
                self.close()
                raise StopIteration
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if event is None and not data:
                    continue  # after a comment
                text = "\n".join(data)
                try:
                    value = json.loads(text) if text else None
                except ValueError:
                    value = text
                ev = Event(event or "message", value)
                if ev.event == "result":
                    self.close()
                return ev
            if line.startswith(":"):
                continue  # comment: subscribed, heartbeat
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


class AsyncClient:
    """``Client`` for asyncio: the same calls as coroutines, each run in a
    worker thread (``asyncio.to_thread``), so the event loop never blocks."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 30.0):
        self.sync = Client(url, token, timeout)

    def __getattr__(self, name):
        fn = getattr(self.sync, name)
        if not callable(fn) or name.startswith("_") or name == "progress":
            return fn

        async def call(*args, **kwargs):
            return await asyncio.to_thread(fn, *args, **kwargs)

        call.__name__ = name
        call.__doc__ = fn.__doc__
        return call

    async def progress(self, job_id: str, seq: Optional[int] = None,
                       queue: Optional[str] = None) -> AsyncIterator[Event]:
        """Async iterator over the job's events (see ``Client.progress``)."""
        it = await asyncio.to_thread(self.sync.progress, job_id, seq, queue)
        try:
            while True:
                ev = await asyncio.to_thread(next, it, None)
                if ev is None:
                    return
                yield ev
        finally:
            it.close()
