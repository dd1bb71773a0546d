"""Marketer templates run in a sandbox: the SSTI corpus is rejected at save time or renders inert, and heavy
templates hit limits instead of stalling a sender."""

import time

import pytest

from campaigns.rendering import (
    MAX_OUTPUT_CHARS,
    RenderError,
    TemplateRejected,
    render_subject,
    render_template,
    sample_context,
    validate_template,
)

# Classic server-side template injection payloads and resource bombs.
SSTI_CORPUS = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__bases__[0].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ ''|attr('__class__') }}",
    "{{ first_name|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ first_name['__class__'] }}",
    "{{ first_name['_' ~ '_class__'] }}",
    "{{ products|sort(attribute='__class__') }}",
    "{{ self }}",
    "{{ self._TemplateReference__context }}",
    "{{ config.items() }}",
    "{{ settings.SECRET_KEY }}",
    "{{ request.environ }}",
    "{{ workspace.postal_address }}",
    "{{ customer.tenant }}",
    "{{ dict(a=1) }}",
    "{{ first_name.format }}",
    "{{ '{0.__class__}'.format(first_name) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '%999999999d' % 1 }}",
    "{{ products.pop() }}",
    "{{ links.items() }}",
    "{% macro bomb(n) %}{{ bomb(n) }}{{ bomb(n) }}{% endmacro %}{{ bomb(1) }}",
    "{% include 'base.html' %}",
    "{% extends 'base.html' %}",
    "{% import 'base.html' as base %}",
    "{% set ns = namespace(s='x') %}",
    "{% autoescape false %}{{ first_name }}{% endautoescape %}",
    "{% for p in products recursive %}{{ loop(p) }}{% endfor %}",
    "{% set first_name = 'someone else' %}",
]

RESOURCE_BOMBS = [
    "{{ range(10**9) }}",
    "{{ range(10**9)|list|length }}",
    "{% for i in range(10**9) %}x{% endfor %}",
    "{{ 'x' * 10**9 }}",
    "{{ [1] * 10**8 }}",
    "{{ 9**9**9 }}",
    "{% set a = 'x' * 199999 %}{% set b = a~a~a~a~a~a~a~a~a~a %}{% set c = b~b~b~b~b~b~b~b~b~b %}{{ c }}",
    "{% set s = 'x' * 150000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "{% for a in range(100) %}{% for b in range(100) %}x{% endfor %}{% endfor %}",
    "{% for a in products %}{% for b in products %}{% for c in products %}{% endfor %}{% endfor %}{% endfor %}",
    "{{ 'a'|replace('a', 'b' * 150000)|replace('b', 'c' * 100) }}",
    "{{ 'x' * 100000 + 'y' * 100001 }}",
    "{{ first_name|center(999999999) }}",
]


@pytest.mark.parametrize("source", SSTI_CORPUS + RESOURCE_BOMBS)
def test_injection_and_resource_bombs_are_rejected_at_save_time_with_a_message(source):
    started = time.monotonic()
    with pytest.raises(TemplateRejected) as rejected:
        validate_template(source)
    assert time.monotonic() - started < 2
    message = str(rejected.value)
    assert message and "Traceback" not in message and len(message) < 400


@pytest.mark.parametrize("source", SSTI_CORPUS + RESOURCE_BOMBS)
def test_the_corpus_never_renders_anything_but_an_error_at_send_time(source):
    # A template that slipped past validation (edited in the admin, say) fails the message, not the worker.
    started = time.monotonic()
    with pytest.raises(RenderError):
        render_template(source, sample_context())
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("source", ["{{ ''.__class__ }}", "{{ cycler.__init__.__globals__ }}", "{{ ''|attr('x') }}"])
def test_html_templates_get_the_same_protection(source):
    with pytest.raises(TemplateRejected):
        validate_template(source, html=True)


def test_unknown_variable_message_lists_what_is_available():
    with pytest.raises(TemplateRejected, match=r"Unknown variable settings\. Available: first_name"):
        validate_template("Hi {{ settings.SECRET_KEY }}")


def test_internal_attribute_message_names_the_attribute():
    with pytest.raises(TemplateRejected, match="'__class__' is an internal attribute"):
        validate_template("{{ ''.__class__ }}")


def test_syntax_error_names_the_line():
    with pytest.raises(TemplateRejected, match="Line 2"):
        validate_template("Hello\n{% if first_name %}")


def test_a_marketing_template_renders_with_plain_values():
    source = (
        "Hi {{ first_name|default('there') }},\n"
        "{% if last_purchase %}thanks for buying {{ last_purchase.product }} on {{ last_purchase.date }}.{% endif %}\n"
        "{% for p in products %}- {{ p.name }} ({{ p.price }})\n{% endfor %}"
        "Your code: {{ reward_code }} · {{ workspace_name }} · {{ links.unsubscribe }} · {{ today }}\n"
        "{% for i in range(3) %}{{ loop.index }}{% endfor %}"
    )
    validate_template(source)
    text = render_template(source, sample_context())
    assert "Hi Alex," in text
    assert "thanks for buying Espresso beans 1 kg on 2026-01-15." in text
    assert "- Milk frother (39.00)" in text
    assert "Your code: RWD-SAMPLE1 · Your shop" in text
    assert text.endswith("123")


def test_templates_for_customers_without_a_purchase_are_accepted_when_guarded():
    validate_template("{% if last_purchase %}{{ last_purchase.product }}{% endif %}")
    # Unguarded use is accepted (most customers have purchases) but fails for a customer who has none.
    validate_template("{{ last_purchase.product }}")
    with pytest.raises(RenderError, match="does not exist"):
        render_template("{{ last_purchase.product }}", sample_context(empty=True))


def test_strict_undefined_fails_loudly_instead_of_printing_blanks():
    with pytest.raises(RenderError):
        render_template("{{ products[0].colour }}", sample_context())


def test_html_templates_escape_customer_values():
    context = sample_context() | {"first_name": "<script>alert(1)</script>"}
    html = render_template("<p>Hi {{ first_name }}</p>", context, html=True)
    assert html == "<p>Hi &lt;script&gt;alert(1)&lt;/script&gt;</p>"
    # Plain text is not escaped (it is never interpreted as HTML).
    assert render_template("Hi {{ first_name }}", context) == "Hi <script>alert(1)</script>"


def test_output_size_is_limited():
    with pytest.raises(RenderError, match="too heavy"):
        render_template("{% for i in range(100) %}{{ 'x' * 3000 }}{% endfor %}", sample_context())
    assert MAX_OUTPUT_CHARS <= 200_000


def test_subject_is_one_line_and_short():
    assert render_subject("Hi\n {{ first_name }} \n", sample_context()) == "Hi Alex"
    with pytest.raises(TemplateRejected, match="limit is 300"):
        validate_template("x" * 301, subject=True)


def test_template_size_is_limited():
    with pytest.raises(TemplateRejected, match="limit is 20,000"):
        validate_template("x" * 20_001)
