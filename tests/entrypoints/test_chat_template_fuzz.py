"""Chat templates under fuzzing: broken Jinja, templates that raise, and hostile
templates (huge loops, exponential recursion, huge strings/integers). render_chat
returns a string or raises ChatTemplateError (a ValueError) - nothing else, and no
render runs unbounded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcore.entrypoints.chat_template import ChatTemplateError, render_chat

FRAGMENTS = [
    "{% for m in messages %}", "{% endfor %}", "{% if add_generation_prompt %}", "{% endif %}",
    "{% else %}", "{{ m.role }}", "{{ m.content }}", "{{ m['content'] | trim }}",
    "{{ messages[0].content }}", "{{ messages[-1] }}", "{{ loop.index }}", "{{ bos_token }}",
    "{{ raise_exception('bad role') }}", "{% set x = 1 %}", "{{ x ~ 'a' }}", "{{ 1 / 0 }}",
    "{{ m.content * 3 }}", "{{ m.content | tojson }}", "{{ messages | length }}",
    "{% for i in range(100000) %}", "{{ 'a' * 99999999 }}", "{{ 10 ** 100000 }}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}", "{{ f(1) }}", "{{ m.__class__ }}",
    "{{ m.content.upper() }}", "{{ '%s' % m }}", "{{ strftime_now('%Y') }}", "{%", "}}", "{{",
    "{% endmacro %}", "{{ m.content[::-1] }}", "{{ messages | map(attribute='role') | join }}",
    "{{ undefined_name.attr }}", "{{ m.content | replace('', 'zz') }}", "{% break %}", "text",
    "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}", "{{ m.content|center(9) }}",
]
MESSAGES = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10)
_messages = st.lists(st.fixed_dictionaries({"role": st.text(max_size=10) | _json,
                                            "content": st.text(max_size=50) | _json}),
                     max_size=5)


def _render(template: str, messages: list) -> None:
    try:
        out = render_chat(template, messages)
    except ChatTemplateError:
        return
    assert isinstance(out, str)


@settings(max_examples=80, deadline=None)
@given(parts=st.lists(st.sampled_from(FRAGMENTS), max_size=8), messages=_messages)
def test_fragment_templates(parts, messages):
    _render("".join(parts), messages)


@settings(max_examples=60, deadline=None)
@given(template=st.text(alphabet=st.sampled_from(list("{}%#-+*~|()[]'\". ab0129_\n")),
                        max_size=60))
def test_random_text_templates(template):
    _render(template, MESSAGES)


TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@settings(max_examples=60, deadline=None)
@given(messages=_messages)
def test_real_template_with_odd_messages(messages):
    _render(TEMPLATE, messages)


# ---------------------------------------------------------------------- regressions
HOSTILE = {
    "nested range loops (10^10 iterations)":
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "loops over messages around range loops":
        "{% for a in messages %}{% for b in range(99999) %}{% for c in range(99999) %}"
        "{% endfor %}{% endfor %}{% endfor %}",
    "exponential macro recursion (2^60 calls)":
        "{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}"
        "{{ f(60) }}",
    "a 10 GB string": "{{ 'a' * 10**10 }}",
    "a huge integer": "{{ 3 ** 100000000 }}",
    "a printf width of 10^9": "{{ '%0999999999d' % 1 }}",
    "a printf width from the arguments": "{{ '%*d' % (999999999, 1) }}",
    "str.format width": "{{ '{:>999999999}'.format(1) }}",
    "str.format width from the arguments": "{{ '{:>{}}'.format(1, 999999999) }}",
    "center filter": "{{ 'x' | center(10**9) }}",
    "indent filter": "{{ 'x' | indent(10**9) }}",
    "slice filter": "{{ ('ab' * 1000) | slice(10**8) | list | length }}",
    "str.ljust": "{{ 'x'.ljust(10**9) }}",
    "tojson indent": "{{ messages | tojson(indent=10**9) }}",
    "doubling a namespace string in a loop":
        "{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s | length }}",
    "replace of '' by a long string": "{{ ('x' * 1000000) | replace('', 'y' * 100) }}",
}


@pytest.mark.parametrize("template", list(HOSTILE.values()), ids=list(HOSTILE))
def test_regression_hostile_template_is_stopped(template):
    """Each of these hung the renderer or tried to allocate gigabytes before the bounded
    sandbox (chat_template_sandbox.BoundedSandbox)."""
    with pytest.raises(ChatTemplateError):
        render_chat(template, MESSAGES)


@pytest.mark.parametrize("template", ["{% break %}", "{% continue %}", "x{% if 1 %}{% break %}{% endif %}"])
def test_regression_loop_control_outside_a_loop(template):
    """Jinja compiled these to Python with `break` outside a loop: a SyntaxError, not a
    TemplateError, escaped render_chat (and check_template at start-up)."""
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_chat(template, MESSAGES)


def test_budget_scales_with_the_conversation():
    """A long conversation through a normal template stays within its budget."""
    messages = [{"role": "user" if i % 2 else "assistant", "content": f"message {i}"}
                for i in range(3000)]
    out = render_chat(TEMPLATE, messages)
    assert out.count("<|user|>") == 1500 and out.endswith("<|assistant|>")
