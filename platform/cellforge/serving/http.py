"""FastAPI pieces shared by the model and index apps: error handlers, body limit, bearer auth."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from cellforge.errors import SpecError
from cellforge.serving.schema import ApiError, ErrorBody, InputError, Problem, validation_problems

CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 409: "conflict",
         413: "too_large", 415: "unsupported_media_type", 422: "invalid_input"}


def problems_body(status: int, problems: list[Problem], code: str | None = None) -> dict:
    what = "; ".join(f"{p.field}: {p.message}" for p in problems)
    return ErrorBody(error=code or CODES.get(status, "error"), message=what, problems=problems).model_dump()


def problems_response(status: int, problems: list[Problem], code: str | None = None,
                      headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(problems_body(status, problems, code), status_code=status, headers=headers)


def error_answer(e: Exception) -> tuple[int, dict] | None:
    """The status and ``ErrorBody`` of a refusal (ApiError, InputError, SpecError); None for anything else."""
    if isinstance(e, ApiError):
        return e.status, e.body()
    if isinstance(e, InputError):
        problems = e.problems
    elif isinstance(e, SpecError):
        problems = [Problem(field=f or "body", message=m) for f, m in e.problems]
    else:
        return None
    return 422, problems_body(422, problems)


def refusal(e: Exception) -> JSONResponse | None:
    """The response to a refusal (``error_answer``'s status and body, the error's headers); None for
    anything else."""
    answer = error_answer(e)
    return None if answer is None else JSONResponse(answer[1], status_code=answer[0],
                                                    headers=getattr(e, "headers", None))


def install_errors(api: FastAPI, unknown_model: bool = False) -> None:
    """Every error becomes ``ErrorBody`` JSON. ``unknown_model``: the index app answers 404 for any
    model route, whatever the body, since it only sees names no deployed app has claimed."""

    @api.exception_handler(ApiError)
    @api.exception_handler(InputError)
    @api.exception_handler(SpecError)
    async def _api(request: Request, e: Exception):
        return refusal(e)

    @api.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        if unknown_model and request.path_params.get("name"):
            return await _api(request, unknown(request.path_params["name"]))
        return problems_response(422, validation_problems(e.errors()))

    @api.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        if e.status_code == 400 and e.detail == "There was an error parsing the body":  # FastAPI's, for bad bytes
            if unknown_model and request.path_params.get("name"):
                return await _api(request, unknown(request.path_params["name"]))
            return problems_response(422, [Problem(field="body", message="the body is not valid JSON in UTF-8")])
        return http_problem(e)


def http_problem(e: HTTPException) -> JSONResponse:
    """An HTTPException's ``ErrorBody`` (the body limit's 413, a 404 or 405 of a path)."""
    field = "path" if e.status_code in (404, 405) else "body"
    return problems_response(e.status_code, [Problem(field=field, message=str(e.detail))],
                             headers=getattr(e, "headers", None))


def unknown(name: str, known: list[str] | None = None) -> ApiError:
    tail = f"; deployed models: {sorted(known)}" if known is not None else ""
    return ApiError(404, "not_found", "name", f"unknown model {name!r}{tail}")


class BodyLimit:
    """ASGI middleware: bodies larger than ``max_bytes`` get 413, whether or not they declare a length."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises an HTTPException met while reading the body; our handler formats it
                    raise HTTPException(413, f"the request body is larger than {self.max_bytes} bytes")
            return message

        return await self.app(scope, limited, send)

    async def _refuse(self, scope, send):
        response = problems_response(413, [Problem(field="body", message=f"the request body is larger than "
                                                                         f"{self.max_bytes} bytes")])
        await response(scope, None, send)


def bearer_check(api_key: str | None):
    """A FastAPI dependency that requires ``Authorization: Bearer <api_key>`` when a key is set."""

    async def check(conn: HTTPConnection) -> None:  # a request or a WebSocket's handshake
        if api_key is None:
            return
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), api_key.encode()):
            reason = "missing" if not token else "incorrect"
            raise ApiError(401, "unauthorized", "Authorization",
                           f"{reason} bearer token: send the header 'Authorization: Bearer <api_key>'",
                           headers={"WWW-Authenticate": "Bearer"})

    return check
