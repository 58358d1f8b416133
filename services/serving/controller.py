"""Calling the rollout controller (a Ray actor) from a route: its refusals become the 4xx they are."""

from __future__ import annotations

from typing import Any, Awaitable

from services.errors import InvalidInput, ServingError

# What the controller raises for a request that cannot be done as asked (not a failure of ours):
# a conflict with the state of the versions (409), or a request that makes no sense (400).
CONFLICTS = {"StageError": "conflict", "VersionNotAvailable": "bad_version"}
INVALID = ("ValueError", "KeyError", "ValidationError")


async def call(pending: Awaitable) -> Any:
    try:
        return await pending
    except ServingError:
        raise
    except Exception as exc:
        cause = getattr(exc, "cause", None) or exc
        kind = type(cause).__name__
        if kind in CONFLICTS or kind in INVALID:
            status, code = (409, CONFLICTS[kind]) if kind in CONFLICTS else (400, "invalid_request")
            raise InvalidInput(str(cause).splitlines()[0].strip("'\""), status=status, code=code) from None
        if type(exc).__name__ in ("ActorDiedError", "ActorUnavailableError", "RayActorError"):
            raise ServingError("the rollout controller is restarting; try again in a few seconds", status=503,
                               code="controller_unavailable", retry_after_s=2) from None
        raise
