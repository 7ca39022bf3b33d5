"""The Jinja environment chat templates render in: immutable sandbox plus work bounds.

Jinja's sandbox keeps a template away from Python internals but not from unbounded
work: nested `range` loops, exponential macro recursion, `"x" * 10**10`, `2 ** 10**10`,
`"%0999999999d"`, `center(10**9)` or doubling a string in a loop would hang the server
or exhaust its memory. BoundedSandbox charges a per-render step budget on every loop
iteration, call, attribute/item access, operator and concatenation, and refuses any
single operation whose result would exceed the size bounds below. Exceeding either
raises TemplateLimitError.
"""

from __future__ import annotations

import contextvars
import re
from typing import Any, Iterator, Optional

from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_STEPS = 200_000          # per render, plus STEPS_PER_MESSAGE for each message
STEPS_PER_MESSAGE = 2_000    # real templates take ~10-100 per message
MAX_CHARS = 1 << 24          # longest string/list one operation, or the whole output, may make
MAX_INT_BITS = 1 << 16       # largest integer one operation may make
MAX_WIDTH = 1 << 16          # largest width/count argument of a padding or grouping helper

_steps_left: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar(
    "llmcore_chat_template_steps", default=None)
# Padding/grouping helpers whose integer arguments size their result.
_WIDTH_FILTERS = ("center", "indent", "batch", "slice", "wordwrap")
_WIDTH_STR_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
# A printf width/precision (or a `*` taking one from the arguments) in a % format.
_PRINTF_WIDTH = re.compile(r"%[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_WIDTH = re.compile(r"\d{6,}")
_FORMAT_NESTED = re.compile(r"\{[^{}]*:[^{}]*\{")  # a width taken from the arguments


class TemplateLimitError(SecurityError):
    """A render exceeded a work or size bound."""


class RenderBudget:
    """`with RenderBudget(): ...` - the step budget of one render (context-local, so
    concurrent renders in threads or tasks each have their own)."""

    def __init__(self, n_messages: int = 0):
        self.steps = MAX_STEPS + STEPS_PER_MESSAGE * n_messages

    def __enter__(self) -> "RenderBudget":
        self._token = _steps_left.set([self.steps])
        return self

    def __exit__(self, *exc: Any) -> None:
        _steps_left.reset(self._token)


def charge(n: int = 1) -> None:
    left = _steps_left.get()
    if left is None:  # compile-time constant folding: no budget, the size bounds still hold
        return
    left[0] -= n
    if left[0] < 0:
        raise TemplateLimitError("chat template exceeded its work budget (too many loop "
                                 "iterations, calls or operations for this many messages)")


def _check_len(n: int, what: str) -> None:
    if n > MAX_CHARS:
        raise TemplateLimitError(f"chat template {what} would make {n} items (limit {MAX_CHARS})")


def _check_width(args: tuple, kwargs: dict, what: str) -> None:
    for v in (*args, *kwargs.values()):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_WIDTH:
            raise TemplateLimitError(f"chat template {what}: argument {v} is larger than "
                                     f"{MAX_WIDTH}")


def _is_seq(v: Any) -> bool:
    return isinstance(v, (str, list, tuple, bytes))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_binop(op: str, left: Any, right: Any) -> None:
    if op == "*":
        if _is_seq(left) and _is_int(right):
            _check_len(len(left) * max(right, 0), "'*'")
        elif _is_seq(right) and _is_int(left):
            _check_len(len(right) * max(left, 0), "'*'")
        elif _is_int(left) and _is_int(right) and (
                left.bit_length() + right.bit_length() > MAX_INT_BITS):
            raise TemplateLimitError("chat template '*': integer result too large")
    elif op == "**":
        if _is_int(left) and _is_int(right) and abs(left) > 1 and right > 0 and (
                right * left.bit_length() > MAX_INT_BITS):
            raise TemplateLimitError("chat template '**': integer result too large")
    elif op == "+":
        if _is_seq(left) and _is_seq(right):
            _check_len(len(left) + len(right), "'+'")
        elif _is_int(left) and _is_int(right) and max(left.bit_length(),
                                                       right.bit_length()) > MAX_INT_BITS:
            raise TemplateLimitError("chat template '+': integer result too large")
    elif op == "%" and isinstance(left, str):
        _check_printf(left, right)


def _check_printf(fmt: str, args: Any) -> None:
    for m in _PRINTF_WIDTH.finditer(fmt):
        for g in m.groups():
            if g == "*" or (g and int(g) > MAX_WIDTH):
                raise TemplateLimitError("chat template '%' format: width or precision too "
                                         "large (or taken from the arguments)")
    values = args if isinstance(args, tuple) else (args,)
    _check_len(len(fmt) + sum(len(str(v)) for v in values if isinstance(v, (str, int))), "'%'")


def _check_replace(s: Any, old: Any, new: Any) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        hits = s.count(old) if old else len(s) + 1
        _check_len(len(s) + hits * len(new), "replace")


def _bounded_iter(value: Any) -> Iterator[Any]:
    for item in value:
        charge()
        yield item


def _bounded_concat(parts: tuple) -> str:
    charge()
    strs = [str(p) for p in parts]
    _check_len(sum(len(s) for s in strs), "'~'")
    return "".join(strs)


class _BoundedCodeGenerator(CodeGenerator):
    """Routes every for-loop's iterable and every `~` through the budget."""

    def visit_For(self, node: nodes.For, frame: Any) -> None:
        node.iter = nodes.Call(nodes.EnvironmentAttribute("bounded_iter"), [node.iter], [],
                               None, None, lineno=node.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _width_checked(name: str, f: Any) -> Any:
    def filt(*args: Any, **kwargs: Any) -> Any:
        charge()
        _check_width(args[1:], kwargs, f"filter {name}")
        return f(*args, **kwargs)

    for attr in ("jinja_pass_arg",):  # keep pass_context / pass_eval_context markers
        if hasattr(f, attr):
            setattr(filt, attr, getattr(f, attr))
    return filt


class BoundedSandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%", "//", "-", "/"})

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        for name in _WIDTH_FILTERS:
            self.filters[name] = _width_checked(name, self.filters[name])
        fmt, replace = self.filters["format"], self.filters["replace"]

        def replace_filter(eval_ctx: Any, s: Any, old: Any, new: Any, *rest: Any) -> Any:
            charge()
            _check_replace(s, old, new)
            return replace(eval_ctx, s, old, new, *rest)
        replace_filter.jinja_pass_arg = replace.jinja_pass_arg  # type: ignore[attr-defined]
        self.filters["replace"] = replace_filter

        def format_filter(value: Any, *args: Any, **kwargs: Any) -> Any:
            charge()
            if isinstance(value, str):
                _check_printf(value, args or tuple(kwargs.values()))
            return fmt(value, *args, **kwargs)
        self.filters["format"] = format_filter

    bounded_concat = staticmethod(_bounded_concat)
    bounded_iter = staticmethod(_bounded_iter)

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        charge()
        _check_binop(op, left, right)
        return self.binop_table[op](left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        charge()
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str) and name in _WIDTH_STR_METHODS:
            _check_width(args, kwargs, f"str.{name}")
        if isinstance(owner, str) and name == "replace" and len(args) >= 2:
            _check_replace(owner, args[0], args[1])
        if isinstance(owner, (str, list)) and name == "join" and args:
            charge(len(args[0]) if hasattr(args[0], "__len__") else 1)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__
        if _FORMAT_WIDTH.search(fmt):
            raise TemplateLimitError("chat template str.format: width or precision too large")
        if not _FORMAT_NESTED.search(fmt):
            return wrapped

        def checked(*args: Any, **kwargs: Any) -> str:
            _check_width(args, kwargs, "str.format (a width from the arguments)")
            return wrapped(*args, **kwargs)
        return checked

    def getattr(self, obj: Any, attribute: str) -> Any:
        charge()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        charge()
        return super().getitem(obj, argument)

