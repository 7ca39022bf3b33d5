"""What a request's output must match, in the canonical form a backend compiles and the
compile cache keys on; plus the backend-independent checks every front end runs first.

Checks are cheap and bounded (no compilation): a JSON schema must be a JSON object that is
a valid schema (`jsonschema`'s meta-schema check); a regex must parse (Python's `re`
parser) and its expanded size (repetition counts multiplied out) must stay under a limit,
so a pattern like `(a{1000}){1000}` is refused before an automaton is built; an EBNF
grammar must parse (xgrammar's parser, which does not need the tokenizer). Every error
is a ValueError whose message starts with `guided_decoding.<kind>`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

try:  # Python 3.11+
    from re import _parser as sre_parse  # type: ignore[attr-defined]
    from re._constants import MAXREPEAT  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - older Pythons
    import sre_parse  # type: ignore[no-redef]
    from sre_constants import MAXREPEAT  # type: ignore[no-redef]

# Bounds on what one request may ask to compile (size of the spec's text, expanded size
# of a regex, repetition counts in a JSON schema): beyond them automata grow too large.
MAX_SPEC_CHARS = 100_000
MAX_REGEX_SIZE = 20_000
MAX_SCHEMA_REPEAT = 4096
_REPEAT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties",
                    "maxProperties", "minContains", "maxContains")


@dataclass(frozen=True)
class GrammarSpec:
    kind: str                        # json | regex | choice | grammar | json_object
    value: Any                       # canonical JSON text / regex / EBNF / tuple of choices
    whitespace_pattern: Optional[str] = None

    @property
    def key(self) -> tuple:
        return (self.kind, self.value, self.whitespace_pattern)

    @property
    def schema(self) -> Optional[dict]:
        return json.loads(self.value) if self.kind == "json" else None


def spec_from_params(guided: Any) -> GrammarSpec:
    """The canonical, checked spec of a `GuidedDecodingParams`; ValueError naming the field."""
    kind = guided.kind
    ws = guided.whitespace_pattern
    if ws is not None:
        _checked(_check_regex, ws, "guided_decoding.whitespace_pattern")
    if kind == "json":
        schema = guided.json
        if isinstance(schema, str):
            _check_size(schema, "guided_decoding.json")
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise ValueError(f"guided_decoding.json is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise ValueError("guided_decoding.json must be a JSON schema object, got "
                             f"{type(schema).__name__}")
        text = json.dumps(schema, separators=(",", ":"))  # key order matters: fields come in it
        _check_size(text, "guided_decoding.json")
        _checked(_check_schema_text, text)
        return GrammarSpec("json", text, ws)
    if kind == "regex":
        _check_size(guided.regex, "guided_decoding.regex")
        _checked(_check_regex, guided.regex, "guided_decoding.regex")
        return GrammarSpec("regex", guided.regex, ws)
    if kind == "choice":
        choices = tuple(guided.choice)
        _check_size("".join(choices), "guided_decoding.choice")
        if any(c == "" for c in choices):
            raise ValueError("guided_decoding.choice must not contain an empty string")
        return GrammarSpec("choice", choices, ws)
    if kind == "grammar":
        _check_size(guided.grammar, "guided_decoding.grammar")
        _checked(_check_ebnf, guided.grammar)
        return GrammarSpec("grammar", guided.grammar, ws)
    return GrammarSpec("json_object", "", ws)


@functools.lru_cache(maxsize=512)
def _check_result(check: Callable, *args) -> Optional[str]:
    """The message of the ValueError `check(*args)` raises, None if it passes. Checking a
    JSON schema against its meta-schema takes ~10 ms of Python: a schema every request
    repeats (the usual case) is checked once."""
    try:
        check(*args)
    except ValueError as e:
        return str(e)
    return None


def _checked(check: Callable, *args) -> None:
    msg = _check_result(check, *args)
    if msg is not None:
        raise ValueError(msg)


def _check_schema_text(text: str) -> None:
    _check_schema(json.loads(text))


def choice_regex(choices) -> str:
    """A regex matching exactly one of the choices."""
    import re
    return "(" + "|".join(re.escape(c) for c in choices) + ")"


def _check_size(text: str, field: str) -> None:
    if len(text) > MAX_SPEC_CHARS:
        raise ValueError(f"{field} is too large: {len(text)} characters (at most "
                         f"{MAX_SPEC_CHARS})")


def _check_schema(schema: dict) -> None:
    import jsonschema
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        raise ValueError(f"guided_decoding.json is not a valid JSON schema"
                         f"{' at ' + where if where else ''}: {e.message}") from None
    except Exception as e:  # noqa: BLE001 - jsonschema raises others on odd $schema values
        raise ValueError(f"guided_decoding.json is not a valid JSON schema: {e}") from None
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if k in _REPEAT_KEYWORDS and isinstance(v, int) and v > MAX_SCHEMA_REPEAT:
                    raise ValueError(f"guided_decoding.json is too large to compile: {k} = {v} "
                                     f"(at most {MAX_SCHEMA_REPEAT})")
                stack.append(v)
        elif isinstance(node, list):
            stack.extend(node)


def _check_regex(pattern: str, field: str) -> None:
    try:
        parsed = sre_parse.parse(pattern)
    except Exception as e:  # noqa: BLE001 - re.error, RecursionError, OverflowError
        raise ValueError(f"{field} is not a valid regular expression: {e}") from None
    size = _regex_size(parsed, MAX_REGEX_SIZE)
    if size > MAX_REGEX_SIZE:
        raise ValueError(f"{field} is too large to compile: its expanded size exceeds "
                         f"{MAX_REGEX_SIZE} (repetition counts multiply)")


def _regex_size(items, limit: int) -> int:
    """Expanded size of a parsed pattern: a bounded repeat counts its body `max` times (an
    unbounded one `max(min, 1)` times). Stops early once past `limit`."""
    total = 0
    for op, av in items:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, hi, body = av
            times = lo if hi == MAXREPEAT else hi
            total += _regex_size(body, limit) * max(int(times), 1)
        elif name == "SUBPATTERN":
            total += _regex_size(av[-1], limit)
        elif name == "BRANCH":
            total += sum(_regex_size(b, limit) for b in av[1])
        elif name in ("ASSERT", "ASSERT_NOT"):
            total += _regex_size(av[1], limit)
        elif name == "GROUPREF_EXISTS":
            total += sum(_regex_size(b, limit) for b in av[1:] if b is not None)
        elif name == "ATOMIC_GROUP":
            total += _regex_size(av, limit)
        else:
            total += 1
        if total > limit:
            return total
    return total


def _check_ebnf(grammar: str) -> None:
    import xgrammar
    try:
        xgrammar.Grammar.from_ebnf(grammar)
    except Exception as e:  # noqa: BLE001 - xgrammar raises RuntimeError on parse errors
        msg = str(e).strip().splitlines()
        raise ValueError("guided_decoding.grammar is not a valid EBNF grammar: "
                         f"{msg[-1] if msg else type(e).__name__}") from None
