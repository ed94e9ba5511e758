"""The OpenAPI document, completed: every error status an operation can answer is declared, each
as `application/problem+json` with the `Problem` schema (errors.py), and FastAPI's own 422 shape
(which this API never sends) is replaced.

Which statuses: from how the operation is guarded and what it takes (401 and 429 for any
authenticated operation, 403 for admin-only ones, 413/415/422 for a JSON body, 422 for path or
query parameters, 500 for all), plus the ones only some handlers raise, listed in `SPECIFIC` by
route name. tests/integration/test_admin_openapi.py checks that every status the API really
answered in its tests is declared for that operation.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from . import auth
from .errors import ERROR_DESCRIPTIONS, PROBLEM_JSON, Problem

PEER = (502, 503)  # operations that call another service (CAPF, the CTL Provider) or a router (SRST)

SPECIFIC: dict[str, tuple[int, ...]] = {
    "login": (401, 429),
    "account.create": (409,),
    "device.create": (409, 503),  # 503: the CTL Provider never answered (MODE-5 needs its state)
    "device.show": (404,),
    "device.delete": (404,),
    "device.update": (404, 409, 503),
    "device.set_pool": (404, 409),
    "device.reset": (404, 503),
    "device.reset_many": (404, 503),  # 404: a server the cluster does not run (RST-9)
    "reset.progress": (404, 503),
    "line.create": (404, 409),
    "pool.create": (409,),
    "pool.update": (404,),
    "srst.show": (404,),
    "srst.create": (409,),
    "srst.delete": (404, 409),
    "srst.security": (404, 409, *PEER),
    "capf.schedule": (403, 404, 409, *PEER),
    "capf.operations": (404, *PEER),
    "capf.log": (404, *PEER),
    "capf.activate": (409, *PEER),
    "cluster.show": PEER,  # the mode and the CTL are the CTL Provider's (issue 9 §5)
    "call.list": (503,),
    "call.events": (503,),
}


def _dependencies(route: APIRoute) -> set:
    seen, stack = set(), [route.dependant]
    while stack:
        dependant = stack.pop()
        for dep in dependant.dependencies:
            if dep.call is not None:
                seen.add(dep.call)
            stack.append(dep)
    return seen


def error_statuses(route: APIRoute) -> set[int]:
    calls = _dependencies(route)
    statuses = {500} | set(SPECIFIC.get(route.name, ()))
    if auth.authenticate in calls:
        statuses |= {401, 429}
    if auth.require_admin in calls:
        statuses.add(403)
    methods = route.methods or set()
    if (route.openapi_extra or {}).get("requestBody") or methods & {"POST", "PUT", "PATCH"}:
        statuses |= {413, 415, 422}
    if route.dependant.path_params or route.dependant.query_params:
        statuses.add(422)
    return statuses


def api_routes(routes) -> list[APIRoute]:
    """Every APIRoute, also inside included routers (FastAPI wraps those)."""
    found = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += api_routes(route.original_router.routes)
    return found


def complete_openapi(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, routes=app.routes,
                           description="HTTPS administration API of the ccmsec callmanager. Errors are "
                                       "RFC 9457 problem details (application/problem+json) naming "
                                       "the rule ID that refused, where one applies. Lists page "
                                       "with `limit` and `cursor` (`next_cursor` in each answer).")
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        problem = {"$ref": "#/components/schemas/Problem"}
        for route in api_routes(app.routes):
            if not route.include_in_schema:
                continue
            for method in route.methods or ():
                operation = spec["paths"][route.path_format].get(method.lower())
                if operation is None:
                    continue
                responses = operation.setdefault("responses", {})
                for answer in responses.values():  # the typed answer only, not FastAPI's `dict`
                    content = answer.get("content", {})
                    schema = content.get("application/json", {}).get("schema")
                    if schema is not None and "$ref" in schema:
                        content["application/json"]["schema"] = {"$ref": schema["$ref"]}
                    elif schema == {} and len(content) > 1:  # a stream declared with its own type
                        del content["application/json"]
                for status in sorted(error_statuses(route)):
                    responses[str(status)] = {"description": ERROR_DESCRIPTIONS[status],
                                              "content": {PROBLEM_JSON: {"schema": problem}}}
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
