"""The one exception tree of Tether.

Every error a caller may want to catch has its own class. Each carries a
message that says what happened and, where there is one, a ``hint`` that says
what to do about it. The CLI prints both and exits non-zero; it never shows a
traceback for a ``TetherError``.
"""

from __future__ import annotations


class TetherError(Exception):
    """Root of every error Tether raises on purpose."""

    #: A short machine-readable code, used by ``--json`` output and the REST API.
    code = "tether_error"
    #: The HTTP status the REST API answers with.
    http_status = 400

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message

    def to_dict(self) -> dict[str, str | None]:
        return {"error": self.code, "message": self.message, "hint": self.hint}


class InvalidReference(TetherError):
    """A model reference (``name@selector``) could not be parsed."""

    code = "invalid_reference"


class NotFound(TetherError):
    """A model, version, alias or file does not exist."""

    code = "not_found"
    http_status = 404


class UnknownName(NotFound):
    """No model (or dataset) has that name; ``names`` are some that exist, for the hint.

    Who asks decides which of them it may show: a caller with a role on one model was
    told every model's and dataset's name (a review; ``access.redacted``)."""

    def __init__(self, message: str, *, kind: str, names: list[str],
                 hint_tail: str = "", shown_as: str = "in this registry") -> None:
        self.kind, self.names, self.hint_tail = kind, list(names), hint_tail
        listing = ", ".join(self.names[:20]) or ("none yet" if shown_as == "in this registry"
                                                 else "none")
        super().__init__(message, hint=f"{kind} {shown_as}: {listing}{hint_tail}")

    def only(self, visible: set[str]) -> UnknownName:
        """The same refusal, listing only ``visible`` names ("none yet" read as if the
        registry were empty: a review)."""
        return UnknownName(self.message, kind=self.kind,
                           names=[n for n in self.names if n in visible],
                           hint_tail=self.hint_tail, shown_as="you may read")


class RegistryNotFound(NotFound):
    """No registry at the given location, or the folder is not a registry."""

    code = "registry_not_found"


class AmbiguousReference(InvalidReference):
    """A digest prefix matches more than one version."""

    code = "ambiguous_reference"


class Conflict(TetherError):
    """The change conflicts with what is stored (a duplicate, a race lost)."""

    code = "conflict"
    http_status = 409


class InvalidInput(TetherError):
    """An argument or a file given by the caller is not acceptable."""

    code = "invalid_input"


class RangeNotSatisfiable(InvalidInput):
    """A byte range no byte of the object satisfies (it starts past the end)."""

    code = "range_not_satisfiable"
    http_status = 416


class InvalidPath(InvalidInput):
    """A file path or store key leaves where it must stay (``..``, absolute, unknown kind)."""

    code = "invalid_path"


class UnknownField(InvalidInput):
    """A request or record names a field that is not accepted (a typo, an older client)."""

    code = "unknown_field"


class TooDeep(InvalidInput):
    """A JSON body is nested deeper than the server reads."""

    code = "too_deep"


class PayloadTooLarge(InvalidInput):
    """A request body is over the server's size limit."""

    code = "payload_too_large"
    http_status = 413


class IncompatibleBump(InvalidInput):
    """The requested semantic-version bump is smaller than the change needs."""

    code = "incompatible_bump"


class IntegrityError(TetherError):
    """Stored bytes or records do not match their digests."""

    code = "integrity_error"
    http_status = 500


class MissingChunks(IntegrityError):
    """A commit names chunks the store does not hold: the client's to upload first (409),
    not the server's fault."""

    code = "missing_chunks"
    http_status = 409


class EnvironmentMismatch(TetherError):
    """The current environment differs from the recorded one beyond the policy."""

    code = "environment_mismatch"
    http_status = 409


class PolicyViolation(TetherError):
    """A governance rule refuses the action."""

    code = "policy_violation"
    http_status = 403


class PermissionDenied(TetherError):
    """The caller lacks the role the action needs."""

    code = "permission_denied"
    http_status = 403


class UnsafeArtifact(TetherError):
    """An artifact would run code that is not on the allow-list when loaded."""

    code = "unsafe_artifact"
    http_status = 409


class LoadFailed(TetherError):
    """A version's bytes, checked against its digests, did not load with its framework."""

    code = "load_failed"
    http_status = 422


class SchemaMismatch(TetherError):
    """The database schema is older or newer than this version of Tether."""

    code = "schema_mismatch"
    http_status = 500


class StoreError(TetherError):
    """The artifact store failed (I/O, network, permissions)."""

    code = "store_error"
    http_status = 502


class Unavailable(StoreError):
    """A dependency (the database, the object store, the server) is down for now: retry.

    A server answers it as 503 with ``Retry-After``; the client retries what is
    safe to retry and raises it, naming what is unreachable, when time runs out.
    """

    code = "unavailable"
    http_status = 503

    def __init__(self, message: str, *, hint: str | None = None, retry_after: float = 2.0) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after
