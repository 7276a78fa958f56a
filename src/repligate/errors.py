"""The domain error tree. Every error a user can cause is one of these; ``api/errors.py``
maps each class to Replicate's problem shape and an HTTP status, in one table.

RepligateError
 ├── AuthenticationError        no key, or a key we do not know
 ├── NotFound                   prediction, model or file unknown (or not the caller's)
 │    └── ModelNotFound
 ├── InvalidVersion             version unknown or not permitted
 ├── InvalidInput               input fails the model's schema (carries invalid_fields)
 ├── InvalidRequest             the request itself is malformed or unsupported
 ├── FileTooLarge               an upload over the server's size cap
 ├── ModelUnavailable           valid request, but this server cannot run that model
 └── (ratelimit.py) Throttled, QuotaExhausted, TooManyRunning: a key's limits

Apart from that tree, PredictionFailure: a prediction that ran failed for a reason its
message explains in full (its weights are missing, ...). It ends the prediction `failed`
with that message, and the server logs it in one line: a traceback would add nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InvalidField:
    type: str
    field: str
    description: str


class RepligateError(Exception):
    """Base of every error a user of the API can cause."""

    title = "Error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AuthenticationError(RepligateError):
    title = "Unauthenticated"


class NotFound(RepligateError):
    title = "Not found"

    def __init__(self, detail: str = "The requested resource could not be found.") -> None:
        super().__init__(detail)


class ModelNotFound(NotFound):
    pass


class InvalidVersion(RepligateError):
    title = "Invalid version or not permitted"

    def __init__(self) -> None:
        super().__init__(
            "The specified version does not exist (or perhaps you don't have permission to use it?)"
        )


class InvalidInput(RepligateError):
    title = "Input validation failed"

    def __init__(self, invalid_fields: list[InvalidField]) -> None:
        self.invalid_fields = invalid_fields
        # "- input.width: Must be ...", or for the body itself "- version is required".
        lines = "".join(
            f"- {f.field}: {f.description}\n" if f.field else f"- {f.description}\n"
            for f in invalid_fields
        )
        super().__init__(lines)


class InvalidRequest(RepligateError):
    title = "Invalid request"


class FileTooLarge(RepligateError):
    title = "Request entity too large"


class ModelUnavailable(RepligateError):
    title = "Model not available"


class PredictionFailure(Exception):
    """A prediction failed for a reason its message explains in full: no traceback."""


class StorageUnavailable(RepligateError):
    """The object store (S3) did not answer, or refused: the operator's side, not the user's."""

    title = "Storage unavailable"


class QueueUnavailable(RepligateError):
    """The broker that carries predictions to the workers did not take one."""

    title = "Queue unavailable"
