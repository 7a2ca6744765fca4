"""Decorators that describe an operation for the OpenAPI document, on the view that serves it.

Like flask-smorest's, each decorator records a part of the operation on the view function, and
identity/openapi.py assembles the document by walking the app's routes. The body and query
decorators also validate, so the schema the document shows is the schema the service enforces.
"""

import functools
from dataclasses import dataclass

from flask import request


@dataclass(frozen=True)
class ErrorExample:
    """One error an operation may answer with, exactly as the service words it."""

    status: int
    name: str
    summary: str
    code: str
    message: str
    fields: dict | None = None
    headers: tuple = ()

    def value(self):
        """The error's body in the one error shape."""
        detail = {"code": self.code, "message": self.message}
        return {"error": detail if self.fields is None else {**detail, "fields": self.fields}}


def description_of(view):
    """The operation described on view so far (the decorators below fill it in)."""
    if not hasattr(view, "openapi"):
        view.openapi = {"errors": [], "parameters": {}}
    return view.openapi


def recording(**parts):
    """A decorator that records parts of the operation on the view and leaves it as it is."""

    def record(view):
        description_of(view).update(parts)
        return view

    return record


def operation(operation_id, summary, tags, description=None, **path_parameters):
    """Name and summarise the operation; path_parameters give a path parameter's example or schema."""
    return recording(
        operationId=operation_id,
        summary=summary,
        tags=tags,
        description=description,
        parameters=path_parameters,
    )


def answers(description, schema, examples=None, media_type="application/json", links=None):
    """The 200 answer: its schema (or a schema name), with named examples of real answers."""
    return recording(answer=(description, schema, examples, media_type, links))


def errors(*examples):
    """The errors the operation itself may answer with; those every route shares are added for it."""

    def record(view):
        description_of(view)["errors"].extend(examples)
        return view

    return record


def loading(schema, source, **parts):
    """A decorator that passes the view what schema loads from source(request), and records parts."""

    def decorate(view):
        @functools.wraps(view)
        def validated(*args, **kwargs):
            return view(schema.load(source(request)), *args, **kwargs)

        description_of(validated).update(parts)
        return validated

    return decorate


def json_body(schema, examples):
    """Validate the JSON body with schema and pass the view what it loads; document the body."""
    return loading(schema, lambda req: req.get_json(), body=(schema, examples))


def query(schema):
    """Validate the query string with schema and pass the view what it loads; document the keys."""
    return loading(schema, lambda req: req.args, query=schema)
