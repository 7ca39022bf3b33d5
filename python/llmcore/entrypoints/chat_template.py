"""Chat templates: loading (`--chat-template` file or inline) and sandboxed rendering.

Templates are Jinja, rendered in an immutable sandbox with work and size bounds
(chat_template_sandbox.BoundedSandbox) and the helpers Hugging Face templates expect
(`raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII text). A template
can therefore read the messages but cannot reach Python internals, mutate its inputs,
hang the server or exhaust its memory.
"""

from __future__ import annotations

import codecs
import datetime
import functools
import json
import os
from typing import Any, Optional

import jinja2

from llmcore.entrypoints.chat_template_sandbox import (MAX_CHARS, MAX_WIDTH, BoundedSandbox,
                                                       RenderBudget, TemplateLimitError)


class ChatTemplateError(ValueError):
    """The template is missing, malformed, or raised while rendering."""


def load_chat_template(value: Optional[str]) -> Optional[str]:
    """`--chat-template`: a path to a file, or the template itself (vLLM semantics).

    Raises ChatTemplateError when the value looks like a path that does not exist.
    """
    if value is None:
        return None
    if os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            raise ChatTemplateError(f"--chat-template: cannot read {value!r}: {e}") from None
    if not any(c in value for c in "{}") :
        raise ChatTemplateError(f"--chat-template: {value!r} is neither a readable file nor a "
                                "Jinja template")
    # Inline templates may be written with escapes ("\n") on the command line.
    try:
        return codecs.decode(value, "unicode_escape")
    except UnicodeDecodeError:
        return value


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    if isinstance(indent, int) and not isinstance(indent, bool) and abs(indent) > MAX_WIDTH:
        raise TemplateLimitError(f"tojson: indent {indent} is larger than {MAX_WIDTH}")
    if isinstance(indent, str) and len(indent) > MAX_WIDTH:
        raise TemplateLimitError(f"tojson: indent is longer than {MAX_WIDTH}")
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


@functools.lru_cache(maxsize=64)
def _compile(template: str) -> jinja2.Template:
    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True,
                         extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except TemplateLimitError as e:  # a constant expression folded at compile time
        raise ChatTemplateError(f"chat template does not compile: {e}") from None
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"chat template does not compile: {e}") from None
    except (SyntaxError, RecursionError, MemoryError, ValueError, TypeError,
            OverflowError) as e:  # SyntaxError: Jinja emitted invalid Python ({% break %})
        raise ChatTemplateError(f"chat template does not compile: {type(e).__name__}: {e}"
                                ) from None


def _render_bounded(compiled: jinja2.Template, variables: dict, n_messages: int) -> str:
    """Render piece by piece, refusing an output longer than MAX_CHARS."""
    parts, total = [], 0
    with RenderBudget(n_messages):
        for piece in compiled.generate(**variables):
            total += len(piece)
            if total > MAX_CHARS:
                raise TemplateLimitError(f"chat template output is longer than {MAX_CHARS} "
                                         "characters")
            parts.append(piece)
    return "".join(parts)


def check_template(template: str) -> None:
    """Compile once (raises ChatTemplateError) - used at start-up for --chat-template."""
    _compile(template)


def render_chat(template: str, messages: list[dict], *, add_generation_prompt: bool = True,
                continue_final_message: bool = False, bos_token: str = "", eos_token: str = "",
                **kwargs: Any) -> str:
    """Render `messages` with `template` in the sandbox.

    continue_final_message: the result ends with the last message's content (open for the
    model to continue it), as in transformers' apply_chat_template.
    """
    if add_generation_prompt and continue_final_message:
        raise ChatTemplateError("add_generation_prompt and continue_final_message cannot both be "
                                "true")
    compiled = _compile(template)
    try:
        rendered = _render_bounded(compiled, dict(
            kwargs, messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=bos_token, eos_token=eos_token), len(messages) if messages else 0)
    except TemplateLimitError as e:
        raise ChatTemplateError(f"chat template stopped: {e}") from None
    except jinja2.exceptions.SecurityError as e:
        raise ChatTemplateError(f"chat template tried an unsafe operation: {e}") from None
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"chat template error: {e}") from None
    except RecursionError:
        raise ChatTemplateError("chat template error: recursion too deep") from None
    except MemoryError:
        raise ChatTemplateError("chat template error: out of memory") from None
    except (TypeError, KeyError, AttributeError, IndexError, ValueError, ZeroDivisionError,
            OverflowError) as e:
        raise ChatTemplateError(f"chat template error: {type(e).__name__}: {e}") from None
    if continue_final_message:
        if not messages:
            raise ChatTemplateError("continue_final_message needs at least one message")
        final = messages[-1].get("content")
        if not isinstance(final, str):
            raise ChatTemplateError("continue_final_message needs the final message's content as "
                                    "text")
        stripped = final.strip()
        if final and final in rendered:
            rendered = rendered[: rendered.rindex(final) + len(final)]
        elif stripped and stripped in rendered:
            rendered = rendered[: rendered.rindex(stripped) + len(stripped)]
        else:
            raise ChatTemplateError("continue_final_message: the final message does not appear in "
                                    "the rendered chat")
    return rendered


def render_chat_and_encode(tokenizer: Any, template: str, messages: list[dict],
                           add_special_tokens: bool, add_generation_prompt: bool,
                           continue_final_message: bool,
                           template_kwargs: dict) -> tuple[str, list[int]]:
    """The prompt text of `messages` and its token ids, in one call: the unit of work the
    servers hand to the tokenizer pool (tokenizer/pool.py), so a long conversation is
    rendered and tokenized off the event loop."""
    text = render_chat(template, messages, add_generation_prompt=add_generation_prompt,
                       continue_final_message=continue_final_message,
                       bos_token=getattr(tokenizer, "bos_token", None) or "",
                       eos_token=getattr(tokenizer, "eos_token", None) or "", **template_kwargs)
    return text, [int(t) for t in tokenizer.encode(text, add_special_tokens=add_special_tokens)]
