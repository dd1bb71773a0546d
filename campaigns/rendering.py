"""Templates written by marketers, rendered in a Jinja2 sandbox with plain values, strict names and hard limits.

Three walls, so a template can neither reach the server nor stall a sender:

1. *At save time* ``validate_template`` parses the source and rejects, with a message a marketer can act
   on, anything outside the small language we offer: unknown variables (``settings``, ``request``,
   ``workspace``, ``cycler``…), internal attributes (``__class__``), unknown filters (``attr``,
   ``format``…), macros, imports, includes, recursive or deeply nested loops, turning autoescape off.
   It then renders the template once with sample values under the run-time limits.
2. *At render time* an ``ImmutableSandboxedEnvironment`` with ``StrictUndefined`` sees only a dict of
   plain values (strings, numbers, lists and dicts of those): there is no object to climb from.
   Methods are not callable (``'{:>99999999}'.format``), ``*``, ``**`` and ``%`` are checked before they
   run, ``range()`` is capped, loops share an iteration budget.
3. *Limits* on the size of the source, of any intermediate string and of the output, and a deadline
   checked on every attribute access, call, operator, filter, loop step and output chunk.
"""

from __future__ import annotations

import contextvars
import functools
import operator
import time
from collections import OrderedDict
from dataclasses import dataclass

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.meta import find_undeclared_variables
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

MAX_TEMPLATE_CHARS = 20_000
MAX_SUBJECT_CHARS = 300
MAX_OUTPUT_CHARS = 200_000
MAX_RENDER_SECONDS = 0.25
MAX_RANGE = 100
MAX_LOOP_ITERATIONS = 5_000
MAX_LOOP_DEPTH = 2
MAX_POWER_EXPONENT = 64

# The names a template may use; the render context carries exactly these.
CONTEXT_VARIABLES = {
    "first_name": "The customer's first name ('' when unknown).",
    "last_name": "The customer's last name.",
    "full_name": "First and last name.",
    "last_purchase": "The latest order: last_purchase.product, .date, .total (empty when none).",
    "products": "Up to three products that customers like this one also bought: p.name, p.category, p.price.",
    "reward_code": "This customer's unique reward code (reward campaigns).",
    "workspace_name": "Your business name.",
    "links": "links.unsubscribe, links.preferences.",
    "today": "Today's date (YYYY-MM-DD).",
}

SAFE_FILTERS = (
    "abs", "capitalize", "count", "d", "default", "e", "escape", "first", "float", "int", "join", "last", "length",
    "list", "lower", "max", "min", "replace", "reverse", "round", "sort", "string", "striptags", "sum", "title",
    "trim", "truncate", "unique", "upper", "urlencode", "wordcount",
)
FORBIDDEN_NODES = {
    nodes.Macro: "macros",
    nodes.CallBlock: "call blocks",
    nodes.Import: "imports",
    nodes.FromImport: "imports",
    nodes.Include: "includes",
    nodes.Extends: "extends",
    nodes.Block: "blocks",
    nodes.EvalContextModifier: "autoescape changes",
    nodes.ScopedEvalContextModifier: "autoescape changes",
    nodes.NSRef: "namespaces",
}


class TemplateRejected(ValueError):
    """A template we will not run; ``str()`` is a message for the marketer who wrote it."""


class RenderLimitExceeded(SecurityError):
    """A render went over a size, time or loop limit."""


class RenderTimedOut(RenderLimitExceeded):
    """A render went over its time limit: on a busy machine any template can, so a sender retries it."""


@dataclass
class _Budget:
    deadline: float
    iterations: int = 0


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("rapport_render_budget", default=None)


def _check_time() -> None:
    budget = _budget.get()
    if budget is not None and time.monotonic() > budget.deadline:
        raise RenderTimedOut(f"the template took longer than {MAX_RENDER_SECONDS:g} s to render")


def _check_size(value):
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_OUTPUT_CHARS:
        raise RenderLimitExceeded(f"the template built a value longer than {MAX_OUTPUT_CHARS:,} characters")
    return value


class _CountedIterator:
    """Iterates a loop's sequence while spending the render's shared iteration budget."""

    def __init__(self, iterable):
        self._iterator = iter(iterable)

    def __iter__(self):
        return self

    def __next__(self):
        budget = _budget.get()
        if budget is not None:
            budget.iterations += 1
            if budget.iterations > MAX_LOOP_ITERATIONS:
                raise RenderLimitExceeded(f"the template's loops ran more than {MAX_LOOP_ITERATIONS:,} times")
        _check_time()
        return next(self._iterator)


def _safe_range(*args):
    """range() with at most MAX_RANGE items, counted against the loop budget."""
    if not all(isinstance(arg, int) for arg in args):
        raise SecurityError("range() takes whole numbers")
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise RenderLimitExceeded(f"range() is limited to {MAX_RANGE} numbers")
    return _CountedIterator(numbers)


def _safe_replace(value, old, new, count=None):
    """The replace filter, refusing before it builds an oversized string."""
    value, old, new = str(value), str(old), str(new)
    occurrences = value.count(old) if old else len(value) + 1
    if count is not None:
        occurrences = min(occurrences, int(count))
    if len(value) + occurrences * max(len(new) - len(old), 0) > MAX_OUTPUT_CHARS:
        raise RenderLimitExceeded("replace would build a value that is too long")
    return value.replace(old, new, -1 if count is None else int(count))


# Names the compiler injects around loops and concatenations; not usable from a template (no such variable).
_LOOP_GUARD = "rapport_loop_guard"
_SIZE_GUARD = "rapport_size_guard"
_GUARDS = (_safe_range, _CountedIterator, _check_size)
# Jinja's special names and the guards: declared as far as Jinja knows, yet not for templates to use.
_RESERVED_NAMES = {"self", "loop_guard", _LOOP_GUARD, _SIZE_GUARD, "caller", "varargs", "kwargs"}


def _guard_filter(function):
    """Wrap a built-in filter so that its result is size-checked and the deadline is honoured."""

    @functools.wraps(function)
    def guarded(*args, **kwargs):
        _check_time()
        return _check_size(function(*args, **kwargs))

    if hasattr(function, "jinja_pass_arg"):
        guarded.jinja_pass_arg = function.jinja_pass_arg
    return guarded


class RapportSandbox(ImmutableSandboxedEnvironment):
    """The sandbox: no methods, no globals but a capped range(), guarded operators and filters."""

    intercepted_binops = frozenset({"*", "**", "%", "//", "+"})

    def __init__(self, *, html: bool):
        super().__init__(undefined=StrictUndefined, autoescape=html, auto_reload=False, cache_size=0)
        self.filters = {name: _guard_filter(self.filters[name]) for name in SAFE_FILTERS}
        self.filters["replace"] = _guard_filter(_safe_replace)
        self.globals = {"range": _safe_range, _LOOP_GUARD: _CountedIterator, _SIZE_GUARD: _check_size}

    def is_safe_attribute(self, obj, attr, value):
        # Plain values only: data attributes, never a method (str.format, dict.get, list.pop…).
        if callable(value):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def getattr(self, obj, attribute):
        _check_time()
        return self._no_methods(obj, attribute, super().getattr(obj, attribute))

    def getitem(self, obj, argument):
        _check_time()
        return self._no_methods(obj, argument, super().getitem(obj, argument))

    def _no_methods(self, obj, name, value):
        # Jinja hands out str.format wrapped before asking is_safe_attribute; a template never needs a method.
        if callable(value) and not isinstance(value, Undefined):
            return self.unsafe_undefined(obj, str(name))
        return value

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        _check_time()
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context, operator_name, left, right):
        _check_time()
        if operator_name == "%" and isinstance(left, str):
            raise SecurityError("'%' formatting of text is not available; write the value with {{ }}")
        if operator_name == "**" and isinstance(right, (int, float)) and abs(right) > MAX_POWER_EXPONENT:
            raise RenderLimitExceeded(f"powers are limited to an exponent of {MAX_POWER_EXPONENT}")
        if operator_name == "*":
            for sequence, count in ((left, right), (right, left)):
                if isinstance(sequence, (str, list, tuple)) and isinstance(count, int):
                    if len(sequence) * max(count, 0) > MAX_OUTPUT_CHARS:
                        raise RenderLimitExceeded("the template repeats a value too many times")
        result = {"*": operator.mul, "**": operator.pow, "%": operator.mod, "//": operator.floordiv,
                  "+": operator.add}[operator_name](left, right)
        if isinstance(result, int) and result.bit_length() > 256:
            raise RenderLimitExceeded("the template computed a number that is too large")
        return _check_size(result)

    def is_safe_callable(self, obj):
        return obj in _GUARDS


TEXT_ENV = RapportSandbox(html=False)
HTML_ENV = RapportSandbox(html=True)


def _environment(html: bool) -> RapportSandbox:
    return HTML_ENV if html else TEXT_ENV


# --- Validation at save time -------------------------------------------------------------------------


def _walk_checks(node: nodes.Node, loop_depth: int = 0) -> None:
    for forbidden, label in FORBIDDEN_NODES.items():
        if isinstance(node, forbidden):
            raise TemplateRejected(f"Line {node.lineno}: {label} are not available in message templates.")
    if isinstance(node, (nodes.Getattr, nodes.Getitem)):
        name = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(name, str) and name.startswith("_"):
            raise TemplateRejected(
                f"Line {node.lineno}: '{name}' is an internal attribute; templates can only use the values listed."
            )
    if isinstance(node, nodes.Name) and node.name in _RESERVED_NAMES:
        raise TemplateRejected(f"Line {node.lineno}: unknown variable {node.name}.")
    if isinstance(node, nodes.Assign) and isinstance(node.target, nodes.Name):
        if node.target.name in CONTEXT_VARIABLES:
            raise TemplateRejected(f"Line {node.lineno}: '{node.target.name}' is a given value and cannot be set.")
    if isinstance(node, nodes.For):
        if node.recursive:
            raise TemplateRejected(f"Line {node.lineno}: recursive loops are not available.")
        if isinstance(node.iter, nodes.Const):
            raise TemplateRejected(f"Line {node.lineno}: loop over a value such as products, not over a literal.")
        if loop_depth + 1 > MAX_LOOP_DEPTH:
            raise TemplateRejected(f"Line {node.lineno}: loops may be nested at most {MAX_LOOP_DEPTH} deep.")
        _walk_checks(node.iter, loop_depth)
        for child in (*node.body, *node.else_, *([node.test] if node.test else [])):
            _walk_checks(child, loop_depth + 1)
        return
    for child in node.iter_child_nodes():
        _walk_checks(child, loop_depth)


def _guard_loops_and_concatenations(tree: nodes.Template) -> None:
    """Rewrite the tree so every loop spends the iteration budget and every ``~`` result is size-checked."""

    def guarded(name: str, expression: nodes.Expr) -> nodes.Call:
        return nodes.Call(nodes.Name(name, "load", lineno=expression.lineno), [expression], [], None, None,
                          lineno=expression.lineno)

    every_node = [tree, *tree.find_all(nodes.Node)]  # collected first: the rewrite adds nodes
    for loop in every_node:
        if isinstance(loop, nodes.For):
            loop.iter = guarded(_LOOP_GUARD, loop.iter)
    for parent in every_node:
        for field in parent.fields:
            value = getattr(parent, field, None)
            if isinstance(value, nodes.Concat):
                setattr(parent, field, guarded(_SIZE_GUARD, value))
            elif isinstance(value, list):
                setattr(parent, field, [guarded(_SIZE_GUARD, item) if isinstance(item, nodes.Concat) else item
                                        for item in value])


def _compile(source: str, *, html: bool, limit: int = MAX_TEMPLATE_CHARS):
    """Parse, check and compile a template; raise TemplateRejected with a marketer-readable reason."""
    if len(source) > limit:
        raise TemplateRejected(f"The template is {len(source):,} characters long; the limit is {limit:,}.")
    env = _environment(html)
    try:
        tree = env.parse(source)
    except TemplateSyntaxError as error:
        raise TemplateRejected(f"Line {error.lineno}: {error.message}") from None
    _walk_checks(tree)
    try:
        declared = find_undeclared_variables(tree)
    except TemplateSyntaxError as error:  # an unknown filter or test
        raise TemplateRejected(f"Line {error.lineno}: {error.message}") from None
    unknown = sorted(declared - set(CONTEXT_VARIABLES) - {"range"})
    if unknown:
        raise TemplateRejected(
            f"Unknown variable{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}. "
            f"Available: {', '.join(CONTEXT_VARIABLES)}, range()."
        )
    _guard_loops_and_concatenations(tree)
    try:
        return env.from_string(tree)
    except TemplateError as error:
        raise TemplateRejected(_describe(error)) from None


def validate_template(source: str, *, html: bool = False, subject: bool = False) -> None:
    """Raise TemplateRejected (a message for the marketer) unless the template is safe and renders with sample values.

    Returns None when the template is acceptable. A value missing only for customers without a purchase
    (``last_purchase.product``) is accepted; the per-customer preview shows it.
    """
    compiled = _compile(source, html=html, limit=MAX_SUBJECT_CHARS if subject else MAX_TEMPLATE_CHARS)
    for context in (sample_context(), sample_context(empty=True)):
        try:
            _render_compiled(compiled, context)
        except UndefinedError as error:
            if context["last_purchase"]:
                raise TemplateRejected(_describe(error)) from None
        except (TemplateError, ArithmeticError, TypeError, ValueError, OverflowError) as error:
            raise TemplateRejected(_describe(error)) from None


def _describe(error: Exception) -> str:
    """Return a marketer-readable sentence for a template failure."""
    if isinstance(error, RenderLimitExceeded):
        return f"The template is too heavy: {str(error).rstrip('.')}."
    if isinstance(error, SecurityError):
        return f"The template tried something that is not allowed: {str(error).rstrip('.')}."
    if isinstance(error, UndefinedError):
        return f"The template uses a value that does not exist: {str(error).rstrip('.')}."
    if isinstance(error, TemplateSyntaxError):
        return f"Line {error.lineno}: {error.message}"
    message = getattr(error, "message", None) or str(error)
    return f"The template cannot be rendered: {message.rstrip('.')}."


def sample_context(*, empty: bool = False) -> dict:
    """Return the values a preview without a customer uses (and save-time validation renders with)."""
    return {
        "first_name": "Alex",
        "last_name": "Sample",
        "full_name": "Alex Sample",
        "last_purchase": None if empty else {"product": "Espresso beans 1 kg", "date": "2026-01-15", "total": "24.90"},
        "products": [] if empty else [
            {"name": "Milk frother", "category": "Accessories", "price": "39.00"},
            {"name": "Ceramic cup set", "category": "Tableware", "price": "19.50"},
        ],
        "reward_code": "RWD-SAMPLE1",
        "workspace_name": "Your shop",
        "links": {"unsubscribe": "https://example.invalid/unsubscribe", "preferences": "https://example.invalid/p"},
        "today": "2026-02-01",
    }


# --- Rendering -------------------------------------------------------------------------------------


class RenderError(ValueError):
    """A template failed to render for one customer; ``str()`` says why, for the message's error reason.

    ``timed_out`` is true when only the time limit stopped it (worth a retry, unlike a broken template).
    """

    def __init__(self, reason: str, *, timed_out: bool = False):
        super().__init__(reason)
        self.timed_out = timed_out


_compiled_cache: OrderedDict = OrderedDict()
_CACHE_SIZE = 256


def compile_template(source: str, *, html: bool = False):
    """Return the compiled sandboxed template for a source (cached); raises TemplateRejected when unsafe."""
    key = (html, source)
    compiled = _compiled_cache.get(key)
    if compiled is not None:
        _compiled_cache.move_to_end(key)
        return compiled
    compiled = _compile(source, html=html)
    _compiled_cache[key] = compiled
    if len(_compiled_cache) > _CACHE_SIZE:
        _compiled_cache.popitem(last=False)
    return compiled


def _render_compiled(compiled, context: dict) -> str:
    token = _budget.set(_Budget(deadline=time.monotonic() + MAX_RENDER_SECONDS))
    try:
        parts: list[str] = []
        size = 0
        for chunk in compiled.generate(context):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise RenderLimitExceeded(f"the message is longer than {MAX_OUTPUT_CHARS:,} characters")
            _check_time()
            parts.append(chunk)
        return "".join(parts)
    finally:
        _budget.reset(token)


def render_template(source: str, context: dict, *, html: bool = False) -> str:
    """Render a marketer's template with a context of plain values and return the text (HTML-escaped when html).

    Raises RenderError with a reason when the template fails for this context or exceeds a limit.
    """
    try:
        compiled = compile_template(source, html=html)
        output = _render_compiled(compiled, context)
    except TemplateRejected as error:
        raise RenderError(str(error)) from None
    except (TemplateError, ArithmeticError, TypeError, ValueError, OverflowError) as error:
        raise RenderError(_describe(error), timed_out=isinstance(error, RenderTimedOut)) from None
    return str(Markup(output)) if html else output


def render_subject(source: str, context: dict) -> str:
    """Render a subject line: one line of text, at most MAX_SUBJECT_CHARS characters."""
    text = render_template(source, context)
    return " ".join(text.split())[:MAX_SUBJECT_CHARS]
