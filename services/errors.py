"""Errors a user sees. Each carries the HTTP status and a sentence that says what was wrong.

They cross Ray process boundaries (a Preprocess replica raises, the ingress answers), so they
pickle with all their fields.
"""

from __future__ import annotations


class ServingError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.status, self.code, self.retry_after_s))

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


def _rebuild(cls, message, status, code, retry_after_s):
    return cls(message, status=status, code=code, retry_after_s=retry_after_s)


class InvalidInput(ServingError):
    """The request is well-formed HTTP but its content cannot be used (400/422)."""

    status = 400
    code = "invalid_input"


class PayloadTooLarge(ServingError):
    status = 413
    code = "payload_too_large"


class RequestTimeout(ServingError):
    """The request body did not arrive in time (a stalled or trickling client)."""

    status = 408
    code = "body_timeout"


class UnknownModel(ServingError):
    status = 404
    code = "unknown_model"


class UpstreamUnavailable(ServingError):
    """Triton (or another backend) cannot be reached; the client should retry later."""

    status = 503
    code = "upstream_unavailable"

    def __init__(self, message: str, **kwargs) -> None:
        kwargs.setdefault("retry_after_s", 2)
        super().__init__(message, **kwargs)


def validation_problems(exc: Exception, root: str) -> list[str]:
    """What a pydantic ValidationError says, one ``where.it.is: what is wrong`` each (`root` names the top)."""
    return [f"{'.'.join(map(str, e['loc'])) or root}: {e['msg']}" for e in exc.errors()]
