#!/usr/bin/env python3
"""A stateful procfleet worker: each session keeps its own programs in memory.

A "program" is one arithmetic expression over the input ``x``, written in
Python syntax but compiled by a small whitelist evaluator (never ``eval``):
numbers, ``x``, ``+ - * / // % **``, unary ``+``/``-``, parentheses and the
functions ``abs``, ``min``, ``max`` and ``round``. Programs live in
``session.state``, so they exist only on the worker the session is bound to;
a session that moves to a fresh worker (``new_session``) starts empty.

Commands:

- ``create_program`` ``{"name": "double", "source": "x * 2"}`` (``"code"`` is
  accepted for ``"source"``) -> ``{"name": …, "replaced": bool, "total_count": N}``
- ``execute_program`` ``{"name": "double", "input": 21}``
  -> ``{"name": …, "input": …, "output": 42, "runs": 1}``
- ``list_programs`` -> ``{"programs": ["double", …], "total_count": N}``
  (names in creation order)
- ``echo`` -> the payload unchanged
- ``session_info`` -> ``{"pid": …, "session": …, "new_session": …,
  "is_new": …, "count": calls this session has made on this worker}``, so
  that a client can check that a session's jobs all reach one process.
"""

import ast
import math
import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "worker", "python")
)

import procfleet_worker as pw  # noqa: E402  (needs the path above)

MAX_SOURCE = 4096
MAX_NAME = 128
# Bounds the size of integers a program may build, so that "x ** 99 ** 99"
# fails fast instead of eating the worker.
MAX_INT_BITS = 4096
MAX_EXPONENT = 1024


# --- the evaluator -----------------------------------------------------------


def _num(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError("operands must be numbers, got %s" % type(v).__name__)
    return v


def _checked(v):
    if isinstance(v, int):
        if v.bit_length() > MAX_INT_BITS:
            raise OverflowError("integer result exceeds %d bits" % MAX_INT_BITS)
    elif not math.isfinite(v):
        raise OverflowError("result is not a finite number")
    return v


def _pow(a, b):
    if abs(b) > MAX_EXPONENT:
        raise OverflowError("exponent %r exceeds %d" % (b, MAX_EXPONENT))
    if isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and b > 0:
        if a.bit_length() * b > MAX_INT_BITS:
            raise OverflowError("integer result exceeds %d bits" % MAX_INT_BITS)
    return a**b


_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: _pow,
}
_UNARY = {ast.UAdd: lambda a: +a, ast.USub: lambda a: -a}
_FUNCS = {"abs": abs, "min": min, "max": max, "round": round}


def compile_program(source):
    """Compile an expression into a function of x, or raise ValueError."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError("program source must be a non-empty string")
    if len(source) > MAX_SOURCE:
        raise ValueError("program source exceeds %d characters" % MAX_SOURCE)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError("program is not an expression: %s" % e.msg) from None
    return _build(tree.body)


def _build(node):
    # Each node becomes a closure once, at create time, so executing a
    # program costs no parsing.
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("only numeric constants are allowed, got %r" % (value,))
        return lambda x: value
    if isinstance(node, ast.Name):
        if node.id != "x":
            raise ValueError("unknown name %r (the input is x)" % node.id)
        return lambda x: x
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        op, left, right = _BINOPS[type(node.op)], _build(node.left), _build(node.right)
        return lambda x: _checked(op(_num(left(x)), _num(right(x))))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        op, operand = _UNARY[type(node.op)], _build(node.operand)
        return lambda x: op(_num(operand(x)))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCS
        and not node.keywords
        and node.args
    ):
        fn, args = _FUNCS[node.func.id], [_build(a) for a in node.args]
        return lambda x: _checked(fn(*[_num(a(x)) for a in args]))
    raise ValueError("unsupported syntax: %s" % type(node).__name__)


# --- handlers ------------------------------------------------------------------


class ProgramNotFound(LookupError):
    """execute_program named a program this session has not created."""


def _programs(session):
    return session.state.setdefault("programs", {})


def _name(payload):
    if not isinstance(payload, dict):
        raise TypeError("payload must be an object")
    name = payload.get("name")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise ValueError("payload field 'name' must be a string of 1..%d characters" % MAX_NAME)
    return name


@pw.handler("create_program")
def create_program(payload, session):
    name = _name(payload)
    source = payload.get("source", payload.get("code"))
    fn = compile_program(source)
    programs = _programs(session)
    replaced = name in programs
    programs.pop(name, None)  # a replaced program moves to the end of the list
    programs[name] = {"source": source, "fn": fn, "runs": 0}
    return {"name": name, "replaced": replaced, "total_count": len(programs)}


@pw.handler("execute_program")
def execute_program(payload, session):
    name = _name(payload)
    program = _programs(session).get(name)
    if program is None:
        raise ProgramNotFound("no program %r in session %r" % (name, session.id))
    value = payload.get("input")
    output = program["fn"](value)
    program["runs"] += 1
    return {"name": name, "input": value, "output": output, "runs": program["runs"]}


@pw.handler("list_programs")
def list_programs(payload, session):
    programs = _programs(session)
    return {"programs": list(programs), "total_count": len(programs)}


@pw.handler("echo")
def echo(payload, session):
    return payload


@pw.handler("session_info")
def session_info(payload, session):
    call = pw.current_call()
    return {
        "pid": os.getpid(),
        "session": session.id,
        "new_session": call.new_session,
        "is_new": session.is_new,
        "count": session.calls,
    }


if __name__ == "__main__":
    pw.run()
