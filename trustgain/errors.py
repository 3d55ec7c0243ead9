"""One exception tree for trustgain.

Every error a user can cause derives from :class:`TrustgainError`, carries a one-line message
and, where there is one, a ``hint`` saying what to do. The CLI turns these into a single line
on stderr and exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from enum import Enum


class TrustgainError(Exception):
    """Base of every error trustgain raises on purpose."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(TrustgainError):
    """A stage list, stage setting or trustgain.json is invalid."""


class UnknownStageError(ConfigError):
    """A stage name is not in the registry."""


class StageOrderError(ConfigError):
    """Stages are listed with phases going backwards."""


class GeneratorError(TrustgainError):
    """The wrapped generator cannot do what the stages ask (e.g. no ``latents=`` argument)."""


class StageError(TrustgainError):
    """A stage failed while running; ``stage`` names it."""

    def __init__(self, stage: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"stage '{stage}' failed: {message}", hint=hint)
        self.stage = stage


class AuditFailed(StageError):
    """An AUDIT stage rejected the outputs."""


class KeyFileError(TrustgainError):
    """A key file is missing, unreadable, foreign, truncated, or its passphrase is wrong."""


class OutputExistsError(TrustgainError):
    """Refused to overwrite an existing file."""

    def __init__(self, path: object) -> None:
        super().__init__(
            f"{path} exists", hint="choose another path, or pass overwrite=True to replace it"
        )


class OutputWriteError(TrustgainError, OSError):
    """An output could not be written (read-only folder, full disk, a file where a folder
    goes). Also an :class:`OSError`, so code that stops a batch on write failures still does."""

    def __init__(self, path: object, exc: OSError) -> None:
        self.message = f"cannot write {path}: {exc.strerror or exc}"
        TrustgainError.__init__(self, self.message)
        self.errno, self.strerror, self.filename = exc.errno, exc.strerror, str(path)

    def __str__(self) -> str:
        return self.message


class InputError(TrustgainError):
    """An input file is unreadable or of a kind trustgain does not handle."""


class Reason(str, Enum):
    """Machine-readable reasons a provenance check fails."""

    BAD_SIGNATURE = "bad_signature"
    CONTENT_HASH_MISMATCH = "content_hash_mismatch"
    UNKNOWN_KEY = "unknown_key"
    MISSING_RECORD = "missing_record"
    MALFORMED_RECORD = "malformed_record"
    INVALID_CREDENTIALS = "invalid_credentials"
    UNTRUSTED_SIGNER = "untrusted_signer"


class VerificationError(TrustgainError):
    """A provenance record does not verify; ``reason`` says why (a :class:`Reason`)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason


class SettingError(ConfigError, ValueError):
    """A stage setting has the wrong type or is out of range (also a ValueError, which is what
    dataclass validation conventionally raises)."""
