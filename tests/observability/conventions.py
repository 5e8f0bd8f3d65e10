"""Checks of a span against the OpenTelemetry messaging conventions, as the installed semconv package lists them.

The attribute names come from ``opentelemetry-semantic-conventions`` (a dependency of the SDK): the
stable ``server.*`` and ``error.*`` attributes and the ``messaging.*`` registry, without the ones
its docstrings mark deprecated. Everything else a span carries must be under ``asyncjobs.``.
"""

from __future__ import annotations

import ast
import inspect
from functools import cache
from types import ModuleType

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.semconv._incubating.attributes import messaging_attributes
from opentelemetry.semconv.attributes import error_attributes, server_attributes
from opentelemetry.trace import SpanKind, StatusCode

OPERATION_TYPES = {"create", "send", "receive", "process", "settle"}
KINDS = {"send": SpanKind.PRODUCER, "process": SpanKind.CONSUMER}


def _documented(module: ModuleType) -> dict[str, str]:
    """Each ``NAME: Final = "value"`` of a semconv module, with the docstring that follows it."""
    tree = ast.parse(inspect.getsource(module))
    found: dict[str, str] = {}
    body = tree.body
    for node, after in zip(body, [*body[1:], None], strict=True):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            doc = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) else ""
            found[node.value.value] = str(doc)
    return found


@cache
def known_attributes() -> frozenset[str]:
    """Attribute names a messaging span may carry by the conventions (deprecated ones left out)."""
    names = {name for module in (server_attributes, error_attributes) for name in _documented(module)}
    names |= {name for name, doc in _documented(messaging_attributes).items() if "Deprecated" not in doc}
    return frozenset(names)


def check_messaging_span(span: ReadableSpan, operation: str) -> dict[str, object]:
    """Assert ``span`` follows the conventions for ``operation`` (``send`` or ``process``); its attributes."""
    attrs = dict(span.attributes or {})
    foreign = sorted(k for k in attrs if not k.startswith("asyncjobs.") and k not in known_attributes())
    assert not foreign, f"attributes outside the conventions (or deprecated): {foreign}"
    for required in ("messaging.system", "messaging.operation.name", "messaging.destination.name"):
        assert isinstance(attrs.get(required), str) and attrs[required], f"{required} missing on {span.name!r}"
    assert attrs["messaging.operation.type"] == operation in OPERATION_TYPES, attrs["messaging.operation.type"]
    wanted = f"{attrs['messaging.operation.name']} {attrs['messaging.destination.name']}"
    assert span.name == wanted, f"span.name {span.name!r} is not {{operation}} {{destination}}: {wanted!r}"
    assert span.kind == KINDS[operation], f"span kind {span.kind} for {operation}"
    if attrs["messaging.system"] in ("redis", "rabbitmq"):  # reached over the network
        assert isinstance(attrs.get("server.address"), str) and attrs["server.address"], "server.address missing"
        assert isinstance(attrs.get("server.port"), int), "server.port missing"
    failed = span.status.status_code == StatusCode.ERROR
    assert ("error.type" in attrs) == failed, "error.type is set if and only if the operation failed"
    if operation == "process" and span.parent is not None:  # the creation context is linked, not only the parent
        linked = {(link.context.trace_id, link.context.span_id) for link in span.links}
        assert (span.parent.trace_id, span.parent.span_id) in linked, "no link to the creation context"
    return attrs
