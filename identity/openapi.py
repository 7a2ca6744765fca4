"""The OpenAPI 3.0 document, assembled from the operations described on the views, and the docs page.

Every route of the app is walked (app.url_map), so a route without a description stops the app at
start. What every route shares is added here: the 405 and 500 every route may give, and the key
(401) and rate limit (429) that identity.api_keys and identity.rate_limit apply to most paths.
Swagger UI's files come from the swagger-ui-bundle package, so /docs works with no internet.
"""

import re
from importlib.metadata import version

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, current_app, render_template, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from identity import apidoc, schemas
from identity.api_keys import MISSING_ADMIN_KEY, MISSING_KEY, OPEN_PATHS, needs_admin_key
from identity.errors import METHOD_NOT_ALLOWED, ROUTE_NOT_FOUND, UNEXPECTED
from identity.rate_limit import RATE_LIMITED, UNLIMITED_PATHS
from identity.serving import REQUEST_LINE_TOO_LONG

# Swagger UI 4 renders OpenAPI 3.0 only, so null is `nullable`, not a type.
OPENAPI_VERSION = "3.0.3"
RULE_VARIABLE = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
UNDOCUMENTED_METHODS = {"HEAD", "OPTIONS"}
# The only files of the bundle that /docs loads; nothing else of it is served.
DOCS_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
SCHEMAS = (
    "IdentifyRequest",
    "Contact",
    "Customer",
    "ErrorDetail",
    "Error",
    "Status",
    "BlockedValueEntry",
    "BlockedValueAnswer",
    "BlockedValueList",
    "Event",
    "History",
    "PathStep",
    "Path",
    "Audit",
    "CustomerErased",
    "ValueErased",
)
HEADERS = {
    "Retry-After": ("Seconds to wait before trying again.", {"type": "integer", "minimum": 0}),
    "Allow": ("The methods the route answers.", {"type": "string"}),
    "WWW-Authenticate": ("`Bearer`.", {"type": "string"}),
}
TAGS = [
    {"name": "customers", "description": "Link checkout contacts into customers, and look customers up."},
    {
        "name": "operations",
        "description": "Health, readiness and metrics, for load balancers and monitoring.",
    },
    {"name": "documentation", "description": "This document and its Swagger UI page."},
    {
        "name": "admin",
        "description": "What operators decide: the values that never link customers, and erasure.",
    },
]
# A key, or none when IDENTITY_API_KEYS is unset.
KEY_WHEN_SET = [{"apiKey": []}, {}]
SECURITY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "One of IDENTITY_API_KEYS; needed only when that setting is not empty.",
}
ADMIN_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "One of IDENTITY_ADMIN_KEYS; admin routes are closed while that setting is empty.",
}
INFO = {
    "description": (
        "Links a shop's checkout contacts into customers: contacts that share an email or a phone number "
        "belong to one customer, whose oldest contact is its primary.\n\n"
        "**Keys.** When the service runs with `IDENTITY_API_KEYS` set, every operation that lists the "
        "`apiKey` scheme needs `Authorization: Bearer <key>` with one of those keys, and answers 401 "
        "without one; unset, nothing needs a key. The health checks never do. The admin routes need an "
        "admin key (`adminKey`, one of `IDENTITY_ADMIN_KEYS`) and are closed while none is set.\n\n"
        '**Errors.** Every error has one shape, `{"error": {"code", "message", "fields"?}}`; `fields` maps '
        "each invalid field (or `_schema`) to its messages and appears on validation errors only. 429 "
        "and 503 say when to try again in `Retry-After`."
    ),
    "license": {"name": "Proprietary"},
}

bp = Blueprint("openapi", __name__, template_folder="templates")


class UndocumentedRoute(Exception):
    """A route whose view describes no operation: every route must be in the document."""


def build_document(app):
    """The OpenAPI document of every route of app."""
    plugin = MarshmallowPlugin()
    spec = APISpec("identity", version("identity"), OPENAPI_VERSION, plugins=[plugin], info=INFO)
    spec.options.update(
        servers=[{"url": "/", "description": "The server this document came from."}], tags=TAGS
    )
    plugin.converter.add_attribute_function(field_property)
    spec.components.security_scheme("apiKey", SECURITY_SCHEME)
    spec.components.security_scheme("adminKey", ADMIN_SCHEME)
    for name in SCHEMAS:
        spec.components.schema(name, schema=getattr(schemas, name))
    for name, (description, schema) in HEADERS.items():
        spec.components.header(name, {"description": description, "required": True, "schema": schema})
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        spec.path(openapi_path(rule.rule), operations=operations(app, rule))
    return spec.to_dict()


def field_property(converter, field, ret):
    """What a field of ours says of itself in the document (schemas.py: Email, PhoneNumber)."""
    return field.openapi_property(ret) if hasattr(field, "openapi_property") else {}


def openapi_path(rule):
    """A Flask rule as an OpenAPI path: `/contacts/<contact_id:contact_id>` is `/contacts/{contact_id}`."""
    return RULE_VARIABLE.sub(r"{\2}", rule)


def operations(app, rule):
    """{method: operation} for one rule, from the description on its view."""
    described = getattr(app.view_functions[rule.endpoint], "openapi", None)
    if described is None:
        raise UndocumentedRoute(
            f"{rule.rule} has no OpenAPI description: decorate its view (identity/apidoc.py)"
        )
    methods = sorted(rule.methods - UNDOCUMENTED_METHODS)
    return {method.lower(): operation(app, rule, described) for method in methods}


def operation(app, rule, described):
    """One operation: its description on the view, with what every route of its path shares."""
    result = {name: described[name] for name in ("operationId", "summary", "tags") if described.get(name)}
    if described.get("description"):
        result["description"] = described["description"]
    parameters = path_parameters(app, rule, described["parameters"])
    view = app.view_functions[rule.endpoint]
    errors = [*described["errors"], METHOD_NOT_ALLOWED, UNEXPECTED, *guard(rule.rule, view, result)]
    if "query" in described:
        parameters.append({"in": "query", "schema": described["query"]})
        errors.append(REQUEST_LINE_TOO_LONG)  # gunicorn's refusal, not the app's
    if parameters:
        result["parameters"] = parameters
    if "body" in described:
        result["requestBody"] = request_body(*described["body"])
    result["responses"] = {"200": answer(*described["answer"]), **error_responses(errors)}
    return result


def path_parameters(app, rule, overrides):
    """The rule's variables, typed by their converters unless the view says otherwise."""
    parameters = []
    for converter, name in RULE_VARIABLE.findall(rule.rule):
        schema = getattr(app.url_map.converters[converter or "default"], "openapi_schema", {"type": "string"})
        parameters.append(
            {"name": name, "in": "path", "required": True, "schema": schema, **overrides.get(name, {})}
        )
    return parameters


def guard(path, view, result):
    """The key (api_keys) and rate-limit (rate_limit) errors view's path may give; set its security."""
    is_open, is_admin = path in OPEN_PATHS, needs_admin_key(path, view)
    result["security"] = [] if is_open else [{"adminKey": []}] if is_admin else KEY_WHEN_SET
    errors = [] if is_open else [MISSING_ADMIN_KEY] if is_admin else [MISSING_KEY]
    return errors if path in UNLIMITED_PATHS else [*errors, RATE_LIMITED]


def request_body(schema, examples):
    """A required JSON body with named examples."""
    return {"required": True, "content": {"application/json": media(type(schema), examples)}}


def answer(description, schema, examples, media_type, links):
    """The 200 response."""
    response = {"description": description, "content": {media_type: media(schema, examples)}}
    return {**response, "links": links} if links else response


def media(schema, examples):
    """A media type object: the schema and named examples of it."""
    named = {
        name: {"summary": summary, "value": value} for name, (summary, value) in (examples or {}).items()
    }
    return {"schema": schema, "examples": named} if named else {"schema": schema}


def error_responses(errors):
    """One response per status, in the Error shape, with an example of each error of that status."""
    by_status = {}
    for error in errors:
        by_status.setdefault(str(error.status), []).append(error)
    return {status: error_response(same) for status, same in sorted(by_status.items())}


def error_response(errors):
    """The response for errors of one status: when each happens, an example of each, their headers."""
    examples = {error.name: (error.summary, error.value()) for error in errors}
    response = {
        "description": "".join(f"{error.summary}. " for error in errors).strip(),
        "content": {"application/json": media("Error", examples)},
    }
    headers = {header: header for error in errors for header in error.headers}  # names of components
    return {**response, "headers": headers} if headers else response


@bp.get("/openapi.json")
@apidoc.operation("openapi", "This document", ["documentation"])
@apidoc.answers("OpenAPI 3.0.", {"type": "object"})
def document():
    """The OpenAPI document."""
    return current_app.extensions["openapi"]


@bp.get("/docs")
@apidoc.operation("docs", "Swagger UI for this document; needs no internet", ["documentation"])
@apidoc.answers("The page.", {"type": "string"}, media_type="text/html")
def docs():
    """Swagger UI, reading /openapi.json, with every asset served from this app."""
    return render_template("docs.html")


@bp.get(f"/docs/assets/<any({', '.join(map(repr, DOCS_ASSETS))}):filename>")
@apidoc.operation(
    "docsAsset",
    "The files of Swagger UI that /docs loads, from the swagger-ui-bundle package",
    ["documentation"],
    filename={"schema": {"type": "string", "enum": list(DOCS_ASSETS)}, "example": "swagger-ui.css"},
)
@apidoc.answers("The file.", {"type": "string", "format": "binary"}, media_type="*/*")
@apidoc.errors(ROUTE_NOT_FOUND)
def docs_asset(filename):
    """One of the files /docs loads."""
    return send_from_directory(swagger_ui_path, filename)


def init_app(app):
    """Serve the document and the docs page; built now, so an undocumented route stops the start."""
    app.register_blueprint(bp)
    app.extensions["openapi"] = build_document(app)
