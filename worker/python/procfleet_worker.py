"""procfleet worker SDK for Python (protocol v1), standard library only.

A procfleet agent runs this program as a long-lived subprocess and sends it
jobs over stdin; results go back over stdout. A minimal worker::

    import procfleet_worker as pw

    @pw.handler("echo")
    def echo(payload, session):
        return payload

    if __name__ == "__main__":
        pw.run()

A handler receives the job's decoded JSON ``payload`` and a :class:`Session`.
Whatever it returns (any JSON-serialisable value) is the job's result. If it
raises, the job fails with the exception's class name and message; raise
:class:`RetryableError` (or any exception whose ``retryable`` attribute is
true) to ask the agent to retry the job later. ``session.state`` is a dict
that lives in this process for as long as the agent keeps the session bound
to it, so a handler can keep loaded programs, history or caches there.
``session.progress(data)`` (or :func:`progress`) reports progress while a job
runs, and :func:`current_call` gives the job's id, attempt and deadline.

Importing this module claims the process's stdin and stdout for the frame
stream: file descriptor 1 is pointed at stderr and ``sys.stdout`` becomes
``sys.stderr``, so ``print()`` anywhere (user code, libraries, child
processes inheriting fd 1) lands in the worker's log instead of corrupting
the frames; fd 0 is pointed at /dev/null so that nothing else can consume
the agent's frames. This happens at import rather than in :func:`run` so that
module-level prints between ``import procfleet_worker`` and ``run()`` (model
loading chatter, say) are safe too.

Wire format: every frame is a 4-byte big-endian length N followed by N bytes
of UTF-8 JSON holding one object, 1 <= N <= max frame. The max frame is the
``max_frame`` argument of :class:`Worker`, else the ``PROCFLEET_MAX_FRAME``
environment variable, else 16 MiB. An incoming frame that breaks the
protocol (too large, empty, truncated, not UTF-8, not JSON, not a JSON
object) is logged and the worker exits with status 2: after such a frame the
stream cannot be trusted.

A well-framed call whose JSON is valid but that Python's ``json`` cannot
decode (an integer beyond ``sys.get_int_max_str_digits()``, nesting deeper
than the recursion limit) is not a broken stream: the frame is checked again
by a non-recursive scanner that recovers the call's id, and the call fails
with error type ``UndecodablePayload`` (``retryable: false``) while the
worker keeps serving. Likewise a result that ``json`` cannot encode (a set,
NaN, a huge integer, deep nesting) fails that call only.
The worker exits 0 on ``shutdown`` or at EOF on stdin.

Cancellation: the ready frame lists ``"features": ["cancel"]``, so the agent
sends ``{"type": "cancel", "id": N}`` when the job of call N is canceled. The
handler then gets :class:`Canceled` raised

- at its next :func:`progress` or :func:`check_canceled` call, and
- at once if it is blocked in a sleep, a read or a wait: SIGUSR1 reaches the
  main thread, whose signal handler raises Canceled there (this needs
  :meth:`Worker.serve` to run in the main thread, as :func:`run` does; the
  SDK owns SIGUSR1 while it serves).

How the cancel frame is read while the handler runs: when the agent started
this process itself (its pid is in ``PROCFLEET_AGENT_PID`` and is our
parent's), the ready frame also lists ``"cancel_signal"``. The main thread
then reads every frame itself, and the agent sends SIGUSR1 to the main
thread after each cancel frame (and every 50 ms until the call answers);
the signal handler reads the frame. :func:`check_canceled` and
:func:`progress` also read the pipe, at most every 10 ms, so a thread of the
handler sees the cancel even while the main thread is stuck in C code that
runs no Python signal handler. Otherwise (a wrapper process between agent
and worker, serve outside the main thread, or ``PROCFLEET_READER_THREAD``
set) a reader thread takes every frame off stdin and signals the main
thread on a cancel: the same behaviour at the cost of a hand-off between
threads per call, about 30–35 µs of CPU per call here.

The call then fails with error type ``Canceled`` and the worker, with all its
sessions, keeps serving. Canceled derives from BaseException, so a handler's
``except Exception`` does not swallow it; a handler that must clean up uses
``finally``. A cancel for a call that has already answered is ignored, and a
handler that catches Canceled and returns normally answers its call as usual
(the agent keeps a successful answer). A worker that does not answer within
the agent's cancel grace (default 2 s) is killed.
"""

import collections
import contextvars
import json
import struct
import os
import queue
import re
import signal
import sys
import threading
import time
import traceback

try:  # Unix: the main thread reads its own frames (see "Cancellation")
    import fcntl as _fcntl
    from termios import FIONREAD as _FIONREAD
except ImportError:  # elsewhere a reader thread does; _readable is not used
    _fcntl = _FIONREAD = None
_INT = struct.Struct("i")
_MAIN_THREAD = threading.main_thread().ident

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_FRAME",
    "EXIT_PROTOCOL_ERROR",
    "Worker",
    "Session",
    "Call",
    "RetryableError",
    "Canceled",
    "FrameTooLarge",
    "UNDECODABLE_PAYLOAD",
    "default_worker",
    "handler",
    "on_session_end",
    "progress",
    "check_canceled",
    "current_call",
    "run",
]

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 16 << 20
MAX_FRAME_ENV = "PROCFLEET_MAX_FRAME"
# Exit status after the agent sent something that is not protocol v1.
EXIT_PROTOCOL_ERROR = 2

# ensure_ascii keeps the output valid UTF-8 even for strings holding lone
# surrogates, and takes the C encoder's fastest path. allow_nan=False turns a
# NaN result into a job error instead of a frame the agent cannot parse.
_json_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_encode_ascii = getattr(json.encoder, "c_encode_basestring_ascii", None)
if _c_make_encoder is not None and _encode_ascii is not None:

    def _encode(o):
        # What _json_encoder.encode does, without its two Python frames and
        # the closure it builds per call: a fresh C encoder (its own
        # circular-reference markers) with the same settings.
        return "".join(
            _c_make_encoder(
                {}, _json_encoder.default, _encode_ascii, None, ":", ",", False, False, False
            )(o, 0)
        )

else:  # no C accelerator (not CPython)
    _encode = _json_encoder.encode

_decode_str = json.JSONDecoder().decode


def _decode(b):
    """json.loads(b), without its encoding detection for what can only be
    UTF-8 (a frame starting with "{" then not a NUL byte)."""
    if b[:1] == b"{" and b[1:2] != b"\0":
        return _decode_str(b.decode("utf-8", "surrogatepass"))
    return json.loads(b)

# The error type of a call whose frame is valid JSON that json cannot decode.
UNDECODABLE_PAYLOAD = "UndecodablePayload"


class RetryableError(Exception):
    """Raise from a handler to fail the job with ``retryable: true``.

    The agent then naks the job so that it runs again later (until its
    attempts are exhausted). Any exception class with a true ``retryable``
    attribute is treated the same way.
    """

    retryable = True


class Canceled(BaseException):
    """Raised in a handler whose job was canceled: see "Cancellation" above.

    A BaseException, like KeyboardInterrupt, so that ``except Exception``
    in user code does not swallow it. Letting it propagate fails the call
    with error type ``Canceled``.
    """


# Features this SDK announces in its ready frame.
FEATURES = ("cancel",)
# Also announced when the main thread reads its own frames: the agent then
# sends CANCEL_SIGNAL after each cancel frame (see "Cancellation").
FEATURE_CANCEL_SIGNAL = "cancel_signal"
# The signal that interrupts the main thread on a cancel.
CANCEL_SIGNAL = signal.SIGUSR1
# Set by the agent in each worker's environment: the agent's pid.
AGENT_PID_ENV = "PROCFLEET_AGENT_PID"
# Set (to anything) to read frames on a thread even where the agent would
# signal: the older way, one more thread hand-off per call.
READER_THREAD_ENV = "PROCFLEET_READER_THREAD"


# How often check_canceled (and so progress) reads the pipe itself while the
# main thread reads the frames; and how long the main thread waits for the
# pump lock before it takes it to be lost.
_CHECK_READS_EVERY = 0.01
_PUMP_LOCK_WAIT = 10
# With a reader thread, the main thread is signaled again this often after
# a cancel until the call ends, for at most _RESIGNAL_FOR seconds.
_RESIGNAL_EVERY = 0.05
_RESIGNAL_FOR = 60.0

# The call whose handler runs in this context (its key: see
# Worker._handle_call), so that progress() from the handler, and from code
# that runs in a copy of its context (asyncio.to_thread,
# contextvars.copy_context().run), reports for that call and no other.
_call_key = contextvars.ContextVar("procfleet_call", default=None)


def _agent_signals():
    """Whether the agent will signal this process after a cancel frame: it
    does so for a worker that announces FEATURE_CANCEL_SIGNAL and whose
    ready frame's pid is the process it started, i.e. this one when the
    agent is its parent."""
    if os.environ.get(READER_THREAD_ENV):
        return False
    try:
        return int(os.environ.get(AGENT_PID_ENV, "")) == os.getppid()
    except ValueError:
        return False


class FrameTooLarge(ValueError):
    """An outgoing frame would exceed the max frame size.

    Raised by :meth:`Worker.progress`; a result that is too large is turned
    into a failed job with this error type instead.
    """


class _ProtocolViolation(Exception):
    """The agent sent a frame that is not protocol v1."""


class _AgentGone(BaseException):
    # A BaseException so that a handler's ``except Exception`` around a
    # progress() call cannot swallow it and carry on talking to nobody.
    """The agent closed our stdout."""


def _log(msg):
    try:
        sys.stderr.write("procfleet_worker: %s\n" % msg)
        sys.stderr.flush()
    except Exception:
        pass


# --- stdio guard -----------------------------------------------------------

_frame_in_fd = None
_frame_out_fd = None
_stdio_claimed = False


def _claim_stdio():
    """Move the frame stream to private fds and point fd 0/1 elsewhere.

    Idempotent. The private fds are non-inheritable, so child processes a
    handler starts neither hold the agent's pipes open (which would hide our
    death from the agent) nor read or write frames.
    """
    global _frame_in_fd, _frame_out_fd, _stdio_claimed
    if _stdio_claimed:
        return
    _stdio_claimed = True
    try:
        _frame_out_fd = os.dup(1)
    except OSError:
        _frame_out_fd = None
    try:
        os.dup2(2, 1)
    except OSError:
        # No stderr either: discard stray output rather than corrupt frames.
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    # Anything printed before the import is still in the old buffer; it now
    # drains to fd 1, which is stderr.
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except Exception:
        pass
    sys.stdout = sys.stderr
    try:
        _frame_in_fd = os.dup(0)
    except OSError:
        _frame_in_fd = None
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


_claim_stdio()


def _max_frame_from_env():
    raw = os.environ.get(MAX_FRAME_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_FRAME
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0 or value > 0xFFFFFFFF:
        raise ValueError(
            "%s must be an integer in 1..4294967295, got %r" % (MAX_FRAME_ENV, raw)
        )
    return value


# --- fallback frame scanner -------------------------------------------------
#
# json.loads refuses some valid JSON: integers longer than the interpreter's
# int max str digits, and nesting deeper than the recursion limit. Such a
# frame is well-framed and well-formed, so the stream is intact; only the
# call's content is out of reach. _scan_members checks the whole frame with
# an explicit stack (no recursion, no int conversion beyond top-level
# scalars) and returns the top-level members, so that the call's id can be
# answered.


class _Undecoded:
    """Stands for a member the fallback scanner validated but did not decode."""

    __slots__ = ()

    def __repr__(self):
        return "<undecoded>"


_UNDECODED = _Undecoded()

_WS = " \t\n\r"
# One token per match. Runs of brackets and the common '{"key":' and
# ',"key":' count as one token, so that deep nesting costs few iterations.
_TOKEN = re.compile(
    r"""[ \t\n\r]*(?:
      (?P<okey>\{[ \t\n\r]*"(?P<k1>[^"\\\x00-\x1f]*)"[ \t\n\r]*:)
    | (?P<ckey>,[ \t\n\r]*"(?P<k2>[^"\\\x00-\x1f]*)"[ \t\n\r]*:)
    | (?P<opens>\[[\[ \t\n\r]*)
    | (?P<closes>[\]}][\]} \t\n\r]*)
    | (?P<open>\{)
    | (?P<comma>,)
    | (?P<colon>:)
    | (?P<str>")
    | (?P<lit>true|false|null|NaN|-?Infinity)
    | (?P<num>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)
    )""",
    re.VERBOSE,
)
_LITERALS = {
    "true": True,
    "false": False,
    "null": None,
    "NaN": float("nan"),
    "Infinity": float("inf"),
    "-Infinity": float("-inf"),
}
_scanstring = json.decoder.scanstring
# A run of closing brackets, whitespace dropped, as the openers it closes.
_CLOSERS = str.maketrans({"]": "[", "}": "{", " ": None, "\t": None, "\n": None, "\r": None})

# Scanner states: what may come next.
_S_VALUE, _S_VALUE_OR_CLOSE, _S_KEY, _S_KEY_OR_CLOSE, _S_COLON, _S_NEXT = range(6)


def _scan_members(text):
    """Validate text as one JSON object and return its top-level members.

    Top-level scalars are decoded (an integer json cannot convert becomes
    _UNDECODED); arrays and objects become _UNDECODED. Raises ValueError
    when text is not JSON or not an object. Never recurses.
    """
    match = _TOKEN.match
    members = {}
    stack = bytearray()  # b"[" or b"{" per open container
    state = _S_VALUE
    key = None
    pos = 0
    while True:
        if state == _S_NEXT and not stack:
            if text[pos:].strip(_WS):
                raise ValueError("extra data at offset %d" % pos)
            return members
        m = match(text, pos)
        if m is None:
            raise ValueError("invalid JSON at offset %d" % pos)
        tok = m.lastgroup
        at = m.start(tok)
        pos = m.end()
        if tok == "okey" or tok == "open":
            if state != _S_VALUE and state != _S_VALUE_OR_CLOSE:
                raise ValueError("unexpected '{' at offset %d" % at)
            if len(stack) == 1:
                members[key] = _UNDECODED
            stack.append(0x7B)
            if tok == "open":
                state = _S_KEY_OR_CLOSE
                continue
            if len(stack) == 1:
                key = m.group("k1")
            state = _S_VALUE
        elif tok == "ckey":
            if state != _S_NEXT or not stack or stack[-1] != 0x7B:
                raise ValueError("unexpected ',' at offset %d" % at)
            if len(stack) == 1:
                key = m.group("k2")
            state = _S_VALUE
        elif tok == "opens":
            if state != _S_VALUE and state != _S_VALUE_OR_CLOSE:
                raise ValueError("unexpected '[' at offset %d" % at)
            if not stack:
                raise ValueError("frame is not a JSON object")
            if len(stack) == 1:
                members[key] = _UNDECODED
            stack.extend(b"[" * m.group(tok).count("["))
            state = _S_VALUE_OR_CLOSE
        elif tok == "closes":
            raw = m.group(tok)
            first = raw[0]
            if not (
                state == _S_NEXT
                or (state == _S_VALUE_OR_CLOSE and first == "]")
                or (state == _S_KEY_OR_CLOSE and first == "}")
            ):
                raise ValueError("unexpected %r at offset %d" % (first, at))
            openers = raw.translate(_CLOSERS)[::-1].encode()
            if not stack.endswith(openers):
                raise ValueError("unbalanced %r at offset %d" % (raw.strip(_WS), at))
            del stack[-len(openers) :]
            state = _S_NEXT
        elif tok == "comma":
            if state != _S_NEXT or not stack:
                raise ValueError("unexpected ',' at offset %d" % at)
            state = _S_KEY if stack[-1] == 0x7B else _S_VALUE
        elif tok == "colon":
            if state != _S_COLON:
                raise ValueError("unexpected ':' at offset %d" % at)
            state = _S_VALUE
        else:  # a string, number or literal
            if tok == "str":
                value, pos = _scanstring(text, pos, True)
                if state == _S_KEY or state == _S_KEY_OR_CLOSE:
                    if len(stack) == 1:
                        key = value
                    state = _S_COLON
                    continue
            elif tok == "lit":
                value = _LITERALS[m.group(tok)]
            else:
                raw = m.group(tok)
                if "." in raw or "e" in raw or "E" in raw:
                    value = float(raw)
                else:
                    try:
                        value = int(raw)
                    except ValueError:  # beyond the int max str digits
                        value = _UNDECODED
            if state != _S_VALUE and state != _S_VALUE_OR_CLOSE:
                raise ValueError("unexpected value at offset %d" % at)
            if not stack:
                raise ValueError("frame is not a JSON object")
            if len(stack) == 1:
                members[key] = value
            state = _S_NEXT


def _decode_fallback(body, err):
    """The members of a frame json.loads refused with err, or _ProtocolViolation.

    Only errors that json raises for valid JSON (int digit limit, recursion)
    get a second look; a syntax or encoding error means a broken frame.
    """
    if isinstance(err, (json.JSONDecodeError, UnicodeDecodeError)):
        raise _ProtocolViolation("frame is not JSON: %s" % err) from None
    try:
        # As json.loads reads bytes.
        text = body.decode(json.detect_encoding(body), "surrogatepass")
        return _scan_members(text)
    except ValueError as e:  # incl. UnicodeDecodeError, JSONDecodeError
        raise _ProtocolViolation("frame is not JSON: %s (%s)" % (e, err)) from None


# --- per-job objects -------------------------------------------------------


class Session:
    """Per-session state handed to every handler call.

    Attributes:
        id: the session id, or None for an anonymous job (whose Session is
            thrown away after the call).
        state: a dict kept in memory for this session id until the agent
            ends the session or a later call marks it ``new_session``.
        is_new: True on the call that created this state: the agent sent
            ``new_session: true``, or this worker had never seen the id.
            False on later calls of the same session. Always True for
            anonymous jobs.
        calls: how many calls this session has received on this worker,
            counting the current one.
    """

    __slots__ = ("id", "state", "is_new", "calls", "_worker")

    def __init__(self, session_id, worker):
        self.id = session_id
        self.state = {}
        self.is_new = True
        self.calls = 0
        self._worker = worker

    def progress(self, data):
        """Send a progress report for the call now running (see Worker.progress)."""
        self._worker.progress(data)

    @property
    def call(self):
        """The :class:`Call` now running, or None outside a call."""
        return self._worker.current_call()

    def __repr__(self):
        return "Session(id=%r, is_new=%r, calls=%d, keys=%r)" % (
            self.id,
            self.is_new,
            self.calls,
            list(self.state),
        )


class Call:
    """The context of the job now running: see :func:`current_call`.

    Attributes:
        id: the frame id the result answers.
        command: the command name.
        session: the session id, or None.
        new_session: the raw ``new_session`` flag the agent sent.
        job_id: the job's id, or None if the agent sent none.
        attempt: the delivery attempt (1 for the first run), or None.
        deadline_ms: the job's deadline as Unix time in milliseconds, or
            None when it has none.
    """

    __slots__ = (
        "id",
        "command",
        "session",
        "new_session",
        "job_id",
        "attempt",
        "deadline_ms",
    )

    def __init__(self, msg):
        self.id = msg.get("id")
        self.command = msg.get("command")
        self.session = msg.get("session") or None
        self.new_session = msg.get("new_session") is True
        self.job_id = msg.get("job_id")
        self.attempt = msg.get("attempt")
        deadline = msg.get("deadline_ms")
        self.deadline_ms = deadline if deadline else None

    @property
    def deadline(self):
        """The deadline as Unix time in seconds (float), or None."""
        if self.deadline_ms is None:
            return None
        return self.deadline_ms / 1000.0

    def remaining(self):
        """Seconds left until the deadline (negative once past), or None."""
        if self.deadline_ms is None:
            return None
        return self.deadline_ms / 1000.0 - time.time()

    def __repr__(self):
        return "Call(id=%r, command=%r, session=%r, job_id=%r, attempt=%r)" % (
            self.id,
            self.command,
            self.session,
            self.job_id,
            self.attempt,
        )


# --- the worker ------------------------------------------------------------


def _readable(fd):
    """The bytes the pipe holds now (FIONREAD)."""
    return _INT.unpack(_fcntl.ioctl(fd, _FIONREAD, b"\0\0\0\0"))[0]


class _Frames:
    """The frames of the agent's pipe, decoded and handed to put in order.

    Cancel frames are not handed on: they are noted on the worker (and
    notify, if given, is called for one that matters). The stream's end is
    handed on as None, a broken stream as a _ProtocolViolation; after
    either, ended is true and nothing more is read. One reader at a time.
    """

    def __init__(self, fd, limit, worker, put, notify):
        self._fd = fd
        self._limit = limit
        self._worker = worker
        self.put = put
        self._notify = notify
        self._buf = bytearray()
        self._need = 4  # bytes the frame at the start of _buf needs
        self.ended = False

    def pump(self, block):
        """Hand on the frames buffered, then read. When block, read (waiting
        for data) until a frame is whole, unless one was buffered; else
        read only what the pipe holds now, never waiting."""
        if self.ended:
            return
        try:
            if self._parse() and block:
                return
            while not self.ended:
                if block:
                    size = max(1 << 16, self._need - len(self._buf))
                else:
                    size = _readable(self._fd)
                    if size <= 0:
                        return
                chunk = os.read(self._fd, size)
                if not chunk:
                    self._eof()
                    return
                self._buf += chunk
                if self._parse() and block:
                    return
        except _ProtocolViolation as e:
            self._end(e)
        except OSError as e:
            _log("reading stdin failed: %s" % e)
            self._end(None)

    def _end(self, item):
        self.ended = True
        self.put(item)

    def _eof(self):
        have = len(self._buf)
        if have == 0:
            self._end(None)
        elif have < 4:
            raise _ProtocolViolation("stdin ended inside a frame header")
        else:
            raise _ProtocolViolation(
                "stdin ended inside a frame (%d of %d bytes)" % (have - 4, self._need - 4)
            )

    def _parse(self):
        """Hand on every whole frame in the buffer; the number handed on."""
        buf = self._buf
        limit = self._limit
        worker = self._worker
        pos = handed = 0
        try:
            while True:
                have = len(buf) - pos
                if have < 4:
                    self._need = 4
                    return handed
                n = int.from_bytes(buf[pos : pos + 4], "big")
                if n == 0:
                    raise _ProtocolViolation("zero-length frame")
                if n > limit:
                    raise _ProtocolViolation(
                        "incoming frame of %d bytes exceeds max frame %d" % (n, limit)
                    )
                if have < 4 + n:
                    self._need = 4 + n
                    return handed
                body = bytes(buf[pos + 4 : pos + 4 + n])
                pos += 4 + n
                try:
                    msg = _decode(body)
                    undecodable = None
                except (ValueError, RecursionError) as e:  # incl. JSONDecodeError, UnicodeDecodeError
                    # Valid JSON that json cannot decode leaves the stream
                    # intact: recover the members and fail just this call.
                    msg = _decode_fallback(body, e)
                    undecodable = _message(e)
                    _log("frame of %d bytes is valid JSON that json cannot decode: %s" % (n, undecodable))
                if type(msg) is not dict:
                    raise _ProtocolViolation("frame is not a JSON object")
                kind = msg.get("type")
                if kind == "cancel":
                    if worker._queued_cancel(msg) and self._notify is not None:
                        try:
                            self._notify()
                        except (OSError, ValueError):
                            pass
                    continue
                if kind == "call":
                    worker._queued_call(msg)
                self.put((msg, undecodable))
                handed += 1
        finally:
            if pos:
                del buf[:pos]


class Worker:
    """A set of command handlers plus the loop that serves them.

    Args:
        max_frame: the largest frame body, in bytes, read or written.
            Default: the PROCFLEET_MAX_FRAME environment variable, else
            DEFAULT_MAX_FRAME (16 MiB). Must be in 1..2**32-1.
        log_tracebacks: log the traceback of every exception a handler
            raises to stderr. Default True.
    """

    def __init__(self, max_frame=None, log_tracebacks=True):
        if max_frame is not None and (
            not isinstance(max_frame, int) or not 0 < max_frame <= 0xFFFFFFFF
        ):
            raise ValueError("max_frame must be an integer in 1..4294967295")
        self._max_frame = max_frame
        self._log_tracebacks = log_tracebacks
        self._handlers = {}
        self._session_end_hook = None
        self._sessions = {}
        self._out_fd = None
        self._limit = DEFAULT_MAX_FRAME
        # The call now running; the protocol runs one call at a time.
        # _cur_key is a fresh object per call that progress() binds to (see
        # progress); it and _cur_id are cleared under _write_lock before the
        # result is written, so that no progress frame follows the result.
        self._cur_id = None
        self._cur_key = None
        self._cur_msg = None
        self._cur_call = None
        # Cancellation (see the module docs). _last_call is the id of the
        # last call queued, _cancel_id the last call the agent canceled
        # (both written only by whoever reads the frames: the reader thread,
        # or the main thread and its signal handler); _armed is the id of
        # the call whose handler may be interrupted by the signal now, None
        # outside the handler (written by the main thread only).
        self._last_call = None
        self._cancel_id = None
        self._armed = None
        self._signals = False
        # Reading in the main thread (see "Cancellation" in the module
        # docs): _io is true while it serves so, _io_armed while a handler
        # runs, _io_signaled after a signal outside a handler; _pump_lock is
        # held by whoever reads (a pump that finds it taken asks the holder
        # to read again through _pump_again), _pumped_at is when
        # check_canceled last read.
        self._io = False
        self._frames = None
        self._io_armed = False
        self._io_signaled = False
        self._pump_lock = threading.Lock()
        self._pump_again = False
        self._pid = None  # the serving process, which alone reads frames
        self._serving = None  # the thread that serves, and runs the handlers
        # Per thread, the key of the call its first progress() reported
        # for; and the key of the last ended call whose progress was
        # dropped, so that a thread reporting on logs once, not per frame.
        self._threads = threading.local()
        self._drop_logged = None
        # Held while a frame is written: threads of a handler may report
        # progress at once, and a frame larger than the pipe takes several
        # writes, which must not interleave with another frame's.
        self._write_lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            # A child forked while another thread wrote holds a copy of the
            # taken lock: its own progress() would wait for ever.
            os.register_at_fork(after_in_child=self._reset_write_lock)
        self._pumped_at = 0.0

    # Registration.

    def handler(self, name=None):
        """Register a handler for a command: ``@worker.handler("name")``.

        Bare ``@worker.handler`` uses the function's name. The handler is
        called as ``fn(payload, session)`` and returns the job's result.
        """
        if callable(name):
            self._register(name.__name__, name)
            return name

        def decorate(fn):
            self._register(name if name is not None else fn.__name__, fn)
            return fn

        return decorate

    def _register(self, name, fn):
        if not isinstance(name, str) or not name:
            raise ValueError("handler name must be a non-empty string, got %r" % (name,))
        if name in self._handlers:
            raise ValueError("handler %r is already registered" % name)
        self._handlers[name] = fn

    def on_session_end(self, fn):
        """Register ``fn(session)``, called whenever a session's state is dropped.

        That is on ``session_end`` from the agent, and when a call marked
        ``new_session`` replaces stale state kept under the same id. Use it to
        release what the state holds (files, subprocesses). Exceptions are
        logged and ignored. Usable as a decorator.
        """
        self._session_end_hook = fn
        return fn

    @property
    def commands(self):
        """The registered command names, in registration order."""
        return list(self._handlers)

    # Calls in progress.

    def current_call(self):
        """The :class:`Call` now running, or None outside a handler."""
        if self._cur_id is None:
            return None
        call = self._cur_call
        if call is None:
            # Built lazily: most handlers never ask.
            call = self._cur_call = Call(self._cur_msg)
        return call

    def progress(self, data):
        """Send ``{"type":"progress","id":<call>,"data":data}`` now.

        The call is the one whose handler the caller belongs to, not
        whichever runs now: a thread a handler started and did not join
        may still report after that call has answered, and its data must
        not become another job's (maybe another session's) progress, nor
        follow the call's result. So a report is bound to

        - the call of the handler whose context it runs in: the handler
          itself, and code run in a copy of its context
          (``asyncio.to_thread``, ``contextvars.copy_context().run``);
        - else, on another thread, the call that was running at that
          thread's first progress() (a plain thread has no context of the
          handler's, so its first report is the only tie to one).

        A report for a call that has ended is dropped (and logged once per
        call). A thread kept across calls (an executor in
        ``session.state``) therefore reports for later calls only through
        the handler's context:
        ``executor.submit(contextvars.copy_context().run, fn)``.

        Raises RuntimeError outside a handler, TypeError/ValueError if data is
        not JSON-serialisable, FrameTooLarge if it exceeds the max frame.
        """
        key = self._progress_key()
        if key is not self._cur_key:
            self._drop_progress(key)
            return
        self.check_canceled()
        body = _encode({"type": "progress", "id": key[0], "data": data}).encode()
        if len(body) > self._limit:
            raise FrameTooLarge(
                "progress frame of %d bytes exceeds max frame %d" % (len(body), self._limit)
            )
        if threading.get_ident() == _MAIN_THREAD:
            # No Canceled from the signal in the middle of a frame: disarm
            # while writing, then look again. Only the main thread, which
            # the signal interrupts, touches _armed: a handler's other
            # thread that saved and restored it too could restore the None
            # the main thread had set meanwhile, and disarm the handler
            # for good.
            armed, self._armed = self._armed, None
            try:
                written = self._write(body, key)
            finally:
                self._armed = armed
        else:
            written = self._write(body, key)
        if not written:
            # The call answered while this frame was being encoded.
            self._drop_progress(key)
            return
        self.check_canceled()

    def _progress_key(self):
        """The key of the call progress() reports for (see progress)."""
        key = _call_key.get()
        if key is not None:
            return key
        if threading.get_ident() == self._serving:
            # Whatever the serving thread runs is the running call's, also
            # in a context of its own (contextvars.Context().run).
            key = self._cur_key
        else:
            bound = self._threads
            key = getattr(bound, "key", None)
            if key is None:
                key = bound.key = self._cur_key
        if key is None:
            raise RuntimeError("progress() called outside a running call")
        return key

    def _drop_progress(self, key):
        if key is not self._drop_logged:
            self._drop_logged = key
            _log(
                "progress for call %d dropped: that call has answered. The "
                "reporting thread is tied to it (the call running at the "
                "thread's first report): a thread its handler left running, "
                "or a thread pool's thread that served it first; for a pool, "
                "submit each call's work as "
                "executor.submit(contextvars.copy_context().run, fn) so that "
                "it reports for its own call. Further reports for call %d are "
                "dropped silently" % (key[0], key[0])
            )

    def check_canceled(self):
        """Raise :class:`Canceled` if the running call's job was canceled.

        Outside a call it does nothing.
        """
        cid = self._cur_id
        if cid is None:
            return
        if self._io_armed:
            # The main thread may be stuck in C code that runs no signal
            # handler: read the pipe from here too, now and then.
            now = time.monotonic()
            if now - self._pumped_at >= _CHECK_READS_EVERY:
                self._pumped_at = now
                # Not from a forked child of the handler: it would take
                # frames meant for this process off the shared pipe.
                if os.getpid() == self._pid:
                    self._pump_io()
        if cid == self._cancel_id:
            if threading.get_ident() == _MAIN_THREAD:
                # Raised once: the agent's repeated signals must not raise
                # it again in the handler's clean-up.
                self._armed = None
            raise Canceled("job %s was canceled" % (self._cur_msg or {}).get("job_id"))

    def _on_cancel_signal(self, signum, frame):
        # Runs in the main thread, between two bytecodes of whatever it
        # runs. When the main thread reads its own frames, the agent sent
        # it after a cancel frame: read that first (outside a handler the
        # main thread reads it itself; _io_arm looks). Raise only inside the
        # handler of the canceled call.
        if self._io:
            if not self._io_armed:
                self._io_signaled = True
            elif not self._pump_io():
                return  # a pump this signal interrupted reads on, and checks
        armed = self._armed
        if armed is not None and armed == self._cancel_id:
            self._armed = None
            raise Canceled("job %s was canceled" % (self._cur_msg or {}).get("job_id"))

    # Serving.

    def run(self):
        """Serve the agent until shutdown or EOF, then exit the process.

        Exits 0 on ``shutdown``, EOF on stdin or a closed stdout; 2
        (EXIT_PROTOCOL_ERROR) after a frame that breaks the protocol; 130 on
        SIGINT. Never returns.
        """
        try:
            code = self.serve()
        except KeyboardInterrupt:
            code = 130
        sys.exit(code)

    def serve(self, in_fd=None, out_fd=None):
        """Serve frames from in_fd to out_fd; return the exit status.

        Both default to the stdin/stdout claimed at import. The ready frame
        is sent first.
        """
        global _active_worker
        _claim_stdio()
        if in_fd is None:
            in_fd = _frame_in_fd
        if out_fd is None:
            out_fd = _frame_out_fd
        if in_fd is None or out_fd is None:
            _log("stdin or stdout was not open at startup; cannot serve")
            return EXIT_PROTOCOL_ERROR
        try:
            limit = self._max_frame or _max_frame_from_env()
        except ValueError as e:
            _log(str(e))
            return EXIT_PROTOCOL_ERROR
        self._limit = limit
        self._out_fd = out_fd
        self._serving = threading.get_ident()
        _active_worker = self
        if not self._handlers:
            _log("no handlers registered; every call will fail with UnknownCommand")
        self._last_call = self._cancel_id = self._armed = None
        previous = None
        self._signals = threading.current_thread() is threading.main_thread()
        if self._signals:
            previous = signal.signal(CANCEL_SIGNAL, self._on_cancel_signal)
            # The main thread reads its own frames when the agent will
            # signal it after each cancel; else a reader thread reads them.
            self._io = _agent_signals()
            self._pid = os.getpid()
        reader = None
        features = list(FEATURES)
        if self._io:
            features.append(FEATURE_CANCEL_SIGNAL)
            self._io_armed = self._io_signaled = False
            pending = collections.deque()
            frames = self._frames = _Frames(in_fd, limit, self, pending.append, None)

            def get():
                while not pending and not frames.ended:
                    self._idle_pump(pending)
                return pending.popleft() if pending else None

        else:
            queued = queue.SimpleQueue()
            notify = None
            if self._signals:
                notify = self._resignal

            frames = _Frames(in_fd, limit, self, queued.put, notify)
            get = queued.get
            reader = threading.Thread(
                target=self._read_frames,
                args=(frames,),
                name="procfleet-frame-reader",
                daemon=True,
            )
        try:
            self._write(
                _encode(
                    {
                        "type": "ready",
                        "protocol": PROTOCOL_VERSION,
                        "pid": os.getpid(),
                        "commands": list(self._handlers),
                        "features": features,
                    }
                ).encode()
            )
            if reader is not None:
                reader.start()
            return self._loop(get)
        except _AgentGone:
            _log("stdout closed by the agent; exiting")
            return 0
        except _ProtocolViolation as e:
            _log("protocol error: %s; exiting" % e)
            return EXIT_PROTOCOL_ERROR
        finally:
            self._armed = None
            self._io = self._io_armed = False
            self._frames = None
            self._serving = None
            if self._signals:
                # First: a re-signal thread checks it before each signal.
                self._signals = False
                signal.signal(CANCEL_SIGNAL, previous if previous is not None else signal.SIG_DFL)

    def _read_frames(self, frames):
        """The reader thread (when the agent will not signal the main
        thread): frames onto the main loop's queue until the stream ends."""
        try:
            while not frames.ended:
                frames.pump(True)
        except BaseException as e:  # never die silently: the main loop would wait forever
            frames.put(_ProtocolViolation("frame reader failed: %r" % (e,)))

    def _reset_write_lock(self):
        self._write_lock = threading.Lock()

    def _resignal(self):
        """Signal the main thread for the cancel the reader thread just
        queued, and again every _RESIGNAL_EVERY until that call has ended,
        as an agent does for a worker that reads on its main thread: a
        signal that lands just before a blocking call, or while a handler
        ignores it, raises nothing there."""
        cid = self._cancel_id
        signal.pthread_kill(_MAIN_THREAD, CANCEL_SIGNAL)

        def again():
            started = False
            deadline = time.monotonic() + _RESIGNAL_FOR
            while time.monotonic() < deadline and self._cancel_id == cid and self._last_call == cid:
                running = self._cur_id == cid
                if started and not running:
                    return  # answered
                started = started or running
                time.sleep(_RESIGNAL_EVERY)
                if self._cur_id == cid and self._signals:
                    try:
                        signal.pthread_kill(_MAIN_THREAD, CANCEL_SIGNAL)
                    except (OSError, ValueError):
                        return

        threading.Thread(target=again, name="procfleet-cancel-resignal", daemon=True).start()

    def _queued_call(self, msg):
        # A call frame was queued: only the last call queued can be running
        # or about to, so a cancel for any other has been answered already.
        cid = msg.get("id")
        if type(cid) is int:
            self._last_call = cid

    def _queued_cancel(self, msg):
        """A cancel frame: note it if it is for the last call queued. True
        if it is."""
        cid = msg.get("id")
        if type(cid) is int and cid == self._last_call:
            self._cancel_id = cid
            return True
        return False

    # Reading in the main thread (see "Cancellation" in the module docs).

    def _io_arm(self):
        if not self._io:
            return
        self._io_armed = True
        if self._io_signaled:
            # A signal came before the handler: its cancel may be unread.
            self._io_signaled = False
            self._pump_io()

    def _io_disarm(self):
        self._io_armed = False

    def _pump_io(self):
        """While a handler runs, read and queue what the pipe holds, without
        waiting: from _io_arm, the signal handler, or check_canceled on any
        thread. One pump reads at a time. A pump that finds another running
        (a signal in the middle of the main thread's own pump, or another
        thread's) leaves the reading to it, which reads once more, and
        returns False."""
        self._pump_again = True
        lock = self._pump_lock
        while self._pump_again:
            if not lock.acquire(False):
                return False
            try:
                self._pump_again = False
                if self._io_armed:
                    self._frames.pump(False)
            finally:
                lock.release()
        return True

    def _idle_pump(self, pending):
        """The main thread's wait for frames between calls, holding the
        pump lock so that no other thread reads meanwhile. A thread of the
        last handler may have read (and queued) frames just before: then
        there is nothing to wait for."""
        lock = self._pump_lock
        if not lock.acquire(timeout=_PUMP_LOCK_WAIT):
            # Pumps never wait, so only one cut short between its acquire
            # and its try (an exception from a user's own signal handler)
            # holds the lock this long.
            _log("frame pump lock held for %ds; taking a new one" % _PUMP_LOCK_WAIT)
            lock = self._pump_lock = threading.Lock()
            lock.acquire()
        try:
            if not pending:
                self._frames.pump(True)
        finally:
            lock.release()

    def _loop(self, get):
        handle_call = self._handle_call
        while True:
            item = get()
            if item is None:
                return 0
            if isinstance(item, _ProtocolViolation):
                raise item
            msg, undecodable = item
            kind = msg.get("type")
            if kind == "call":
                handle_call(msg, undecodable)
            elif kind == "ping":
                self._write(_encode({"type": "pong", "id": msg.get("id")}).encode())
            elif kind == "session_end":
                sid = msg.get("session")
                sess = self._sessions.pop(sid, None) if type(sid) is str else None
                if sess is not None:
                    self._ended(sess)
            elif kind == "shutdown":
                return 0
            elif not isinstance(kind, str):
                raise _ProtocolViolation("message has no type")
            else:
                # A newer agent may send messages this SDK does not know.
                _log("ignoring message of unknown type %r" % kind)

    def _handle_call(self, msg, undecodable=None):
        cid = msg.get("id")
        if type(cid) is not int:
            raise _ProtocolViolation("call without an integer id")
        sid = msg.get("session")
        if sid:
            if type(sid) is not str:
                raise _ProtocolViolation("call with a non-string session id")
            sessions = self._sessions
            sess = sessions.get(sid)
            if sess is None or msg.get("new_session") is True:
                if sess is not None:
                    self._ended(sess)
                sess = sessions[sid] = Session(sid, self)
            else:
                sess.is_new = False
        else:
            sess = Session(None, self)
        sess.calls += 1

        if undecodable is not None:
            self._write_error(
                cid,
                UNDECODABLE_PAYLOAD,
                "the call's payload is valid JSON that this worker's json module "
                "cannot decode: %s" % undecodable,
                False,
            )
            return

        fn = self._handlers.get(msg.get("command"))
        if fn is None:
            self._write_error(
                cid,
                "UnknownCommand",
                "unknown command %r; this worker serves %s"
                % (msg.get("command"), ", ".join(self._handlers) or "nothing"),
                False,
            )
            return

        # A fresh object per call, compared by identity: a call that
        # repeats an earlier call's id is still another call.
        key = (cid,)
        self._cur_id = cid
        self._cur_key = key
        self._cur_msg = msg
        self._cur_call = None
        # Set before arming: a Canceled from the signal cannot come between
        # this and the try whose finally resets it.
        context = _call_key.set(key)
        try:
            # Armed first, then checked: a cancel that came before the
            # handler started is seen here, and one that comes later
            # raises through the signal.
            self._armed = cid
            try:
                self._io_arm()
                if cid == self._cancel_id:
                    raise Canceled("job %s was canceled" % msg.get("job_id"))
                result = fn(msg.get("payload"), sess)
            finally:
                self._armed = None
                self._io_disarm()
        except Canceled as e:
            _log("command %r (id %d) canceled" % (msg.get("command"), cid))
            self._write_error(cid, "Canceled", _message(e), False)
            return
        except Exception as e:
            if self._log_tracebacks:
                _log(
                    "command %r (id %d) failed:\n%s"
                    % (msg.get("command"), cid, traceback.format_exc().rstrip())
                )
            self._write_error(
                cid, type(e).__name__, _message(e), bool(getattr(e, "retryable", False))
            )
            return
        finally:
            # Also here: a signal may raise Canceled between arming and the
            # inner try, leaving _armed set.
            self._armed = None
            self._io_disarm()
            _call_key.reset(context)
            # Under the lock: a thread's progress frame for this call is
            # either written before the result or dropped (see _write).
            with self._write_lock:
                self._cur_id = None
                self._cur_key = None
            self._cur_msg = None
            self._cur_call = None

        try:
            body = _encode({"type": "result", "id": cid, "ok": True, "result": result}).encode()
        except Exception as e:
            self._write_error(
                cid, type(e).__name__, "result is not JSON-serialisable: %s" % _message(e), False
            )
            return
        if len(body) > self._limit:
            self._write_error(
                cid,
                "FrameTooLarge",
                "result frame of %d bytes exceeds max frame %d" % (len(body), self._limit),
                False,
            )
            return
        self._write(body)

    def _write_error(self, cid, etype, message, retryable):
        err = {"type": etype, "message": message, "retryable": retryable}
        body = _encode({"type": "result", "id": cid, "ok": False, "error": err}).encode()
        if len(body) > self._limit:
            # A huge exception message must not cost us the worker.
            err["message"] = message[: max(0, self._limit // 2)]
            body = _encode({"type": "result", "id": cid, "ok": False, "error": err}).encode()
            if len(body) > self._limit:
                err["message"] = "error message too large"
                body = _encode({"type": "result", "id": cid, "ok": False, "error": err}).encode()
        self._write(body)

    def _write(self, body, key=None):
        """Write one frame. With key (a progress frame's call), only while
        that call is running: False, writing nothing, once it has ended."""
        # One write per frame where the pipe allows: header and body go out
        # together, and os.write bypasses any userspace buffer, so there is
        # nothing to flush.
        data = len(body).to_bytes(4, "big") + body
        fd = self._out_fd
        try:
            with self._write_lock:
                if key is not None and key is not self._cur_key:
                    return False
                n = os.write(fd, data)
                if n != len(data):
                    view = memoryview(data)
                    while n < len(view):
                        n += os.write(fd, view[n:])
        except BrokenPipeError:
            raise _AgentGone() from None
        return True

    def _ended(self, sess):
        hook = self._session_end_hook
        if hook is None:
            return
        try:
            hook(sess)
        except Exception:
            _log("on_session_end hook failed:\n%s" % traceback.format_exc().rstrip())


def _message(exc):
    try:
        return str(exc)
    except Exception:
        return "<unprintable %s>" % type(exc).__name__


# --- module-level default worker ---------------------------------------------

default_worker = Worker()
"""The Worker that the module-level handler/on_session_end/run register on and serve."""

# The Worker now serving, so that progress() and current_call() also work
# for handlers registered on a Worker of the user's own.
_active_worker = None


def handler(name=None):
    """Register a handler on the default worker (see Worker.handler)."""
    return default_worker.handler(name)


def on_session_end(fn):
    """Register the default worker's session-end hook (see Worker.on_session_end)."""
    return default_worker.on_session_end(fn)


def progress(data):
    """Report progress for the running call (see Worker.progress)."""
    (_active_worker or default_worker).progress(data)


def check_canceled():
    """Raise :class:`Canceled` if the running call's job was canceled."""
    (_active_worker or default_worker).check_canceled()


def current_call():
    """The running :class:`Call`, or None outside a handler."""
    return (_active_worker or default_worker).current_call()


def run():
    """Serve the default worker until shutdown or EOF, then exit (see Worker.run)."""
    default_worker.run()
