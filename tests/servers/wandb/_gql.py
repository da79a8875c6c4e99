"""A tiny GraphQL executor over graphql-core's parser.

Why: the W&B SDK sends real GraphQL documents with fragments, aliases, variables and
introspection, but we only need to answer the operations it uses. Writing the full W&B
schema would be large and brittle, so we parse the document with graphql-core and project
plain Python values (dicts, lists, callables taking field arguments) onto the selection
set.  Any top-level field without a resolver raises ``UnknownOperation`` so gaps are loud.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

from graphql import GraphQLError, OperationType, Undefined, parse
from graphql.language import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from graphql.utilities import value_from_ast_untyped


class UnknownOperation(Exception):
    """The document asked for a top-level field the server does not implement."""


class GqlFieldError(Exception):
    """A resolver failure reported as a GraphQL error (with HTTP status and code)."""

    def __init__(self, message: str, *, status: int = 200, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class Request:
    """One parsed GraphQL request: the chosen operation plus resolved variables."""

    operation: OperationDefinitionNode
    fragments: dict[str, FragmentDefinitionNode]
    variables: dict[str, Any]
    name: str

    @property
    def kind(self) -> str:
        return "mutation" if self.operation.operation == OperationType.MUTATION else "query"


@functools.lru_cache(maxsize=512)
def _parse_document(query: str):
    """The SDK sends the same few documents over and over; parse each once."""
    return parse(query)


def parse_request(query: str, variables: dict | None, operation_name: str | None) -> Request:
    """Parse ``query`` and pick the operation; raises GraphQLError on syntax errors."""
    document = _parse_document(query)
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    if operation_name:
        chosen = [op for op in operations if op.name and op.name.value == operation_name]
    else:
        chosen = operations[:1]
    if not chosen:
        raise GraphQLError(f"operation {operation_name!r} not found in document")
    operation = chosen[0]
    resolved = dict(variables or {})
    for definition in operation.variable_definitions or ():
        var_name = definition.variable.name.value
        if var_name not in resolved and definition.default_value is not None:
            resolved[var_name] = value_from_ast_untyped(definition.default_value, resolved)
    name = operation.name.value if operation.name else "<anonymous>"
    return Request(operation, fragments, resolved, name)


Resolver = Callable[[dict[str, Any]], Any]


@dataclass
class Executor:
    """Projects resolver results onto a request's selection sets."""

    request: Request
    root_resolvers: dict[str, Resolver]
    errors: list[dict[str, Any]] = field(default_factory=list)

    def run(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for node in self._fields(self.request.operation.selection_set, None):
            name = node.name.value
            key = node.alias.value if node.alias else name
            if name == "__typename":
                data[key] = "Mutation" if self.request.kind == "mutation" else "Query"
                continue
            resolver = self.root_resolvers.get(name)
            if resolver is None:
                raise UnknownOperation(
                    f"runferry W&B test server does not implement {self.request.kind} field "
                    f"{name!r} (operation {self.request.name!r})"
                )
            value = resolver(self._args(node))
            data[key] = self.project(value, node.selection_set, [key])
        return data

    def _args(self, node: FieldNode) -> dict[str, Any]:
        args = {
            arg.name.value: _defined(value_from_ast_untyped(arg.value, self.request.variables))
            for arg in node.arguments or ()
        }
        return {k: v for k, v in args.items() if v is not Undefined}

    def _included(self, node: Any) -> bool:
        for directive in getattr(node, "directives", None) or ():
            args = {
                a.name.value: value_from_ast_untyped(a.value, self.request.variables)
                for a in directive.arguments or ()
            }
            if directive.name.value == "skip" and args.get("if"):
                return False
            if directive.name.value == "include" and not args.get("if"):
                return False
        return True

    def _fields(self, selection_set: SelectionSetNode | None, value: Any):
        if selection_set is None:
            return
        typename = value.get("__typename") if isinstance(value, dict) else None
        for selection in selection_set.selections:
            if not self._included(selection):
                continue
            if isinstance(selection, FieldNode):
                yield selection
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition.name.value if selection.type_condition else None
                if _matches(condition, typename, value):
                    yield from self._fields(selection.selection_set, value)
            elif isinstance(selection, FragmentSpreadNode):
                fragment = self.request.fragments[selection.name.value]
                if _matches(fragment.type_condition.name.value, typename, value):
                    yield from self._fields(fragment.selection_set, value)

    def project(self, value: Any, selection_set: SelectionSetNode | None, path: list) -> Any:
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            return [self.project(v, selection_set, path + [i]) for i, v in enumerate(value)]
        if selection_set is None:
            return value
        out: dict[str, Any] = {}
        for node in self._fields(selection_set, value):
            name = node.name.value
            key = node.alias.value if node.alias else name
            if name == "__typename":
                out[key] = value.get("__typename") if isinstance(value, dict) else None
                continue
            raw = value.get(name) if isinstance(value, dict) else getattr(value, name, None)
            if callable(raw):
                try:
                    raw = raw(self._args(node))
                except GqlFieldError as exc:
                    self.errors.append(error_entry(str(exc), path + [key], exc.code))
                    raw = None
            out[key] = self.project(raw, node.selection_set, path + [key])
        return out


def _defined(value: Any) -> Any:
    """Drop input-object fields bound to variables the client did not send."""
    if isinstance(value, dict):
        return {k: _defined(v) for k, v in value.items() if v is not Undefined}
    if isinstance(value, list):
        return [None if v is Undefined else _defined(v) for v in value]
    return value


def _matches(condition: str | None, typename: str | None, value: Any) -> bool:
    if condition is None or typename is None:
        return True
    if condition == typename:
        return True
    interfaces = value.get("__interfaces", ()) if isinstance(value, dict) else ()
    return condition in interfaces


def error_entry(message: str, path: list | None = None, code: str | None = None) -> dict:
    entry: dict[str, Any] = {"message": message}
    if path:
        entry["path"] = path
    if code:
        entry["extensions"] = {"code": code}
    return entry
