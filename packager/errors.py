"""The one exception root of edgepack.

Every error a user can cause or meet carries a one-line ``message`` and an optional ``hint``;
the CLI prints both and exits with the class's ``exit_code``. Exit codes are documented in
README.md ("Exit codes") and asserted in tests.
"""
from __future__ import annotations


class EdgepackError(Exception):
    """Base class: a failure that edgepack explains instead of crashing."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = " ".join(str(message).split())  # always one line
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # keep message and hint across process boundaries
        return (self.__class__, (self.message, self.hint))


class UsageError(EdgepackError):
    """The user's input is wrong: a missing/unreadable model, a bad flag, bad calibration data."""

    exit_code = 2


class ConversionError(EdgepackError):
    """No conversion path produced a TFLite model (or none that computes what the model does)."""

    exit_code = 3


class VerificationError(EdgepackError):
    """The bundle does not compute what the original model computes, or a runtime cannot run it."""

    exit_code = 4

    def __init__(self, message: str, hint: str | None = None, report=None):
        super().__init__(message, hint)
        self.report = report


class Unverified(VerificationError):
    """Nothing was compared: no runtime could load or run the bundle (the verdict is UNVERIFIED, not MISMATCH)."""

    exit_code = 7


class EnvironmentProblem(EdgepackError):
    """Something on the host is missing: pip, a runtime environment, ssh, adb, qemu."""

    exit_code = 5


class DeployError(EdgepackError):
    """A deploy, run, rollback or status call on a device failed; the device was left unchanged."""

    exit_code = 6


def disk_full(exc: BaseException) -> "EnvironmentProblem | None":
    """An OSError for a full disk or an exhausted quota, as an EnvironmentProblem (exit 5)."""
    import errno
    if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return None
    where = f" writing {exc.filename}" if exc.filename else ""
    return EnvironmentProblem(f"no space left on the disk{where} ({exc.strerror or 'ENOSPC'})",
                              hint="free some space, or write elsewhere (-o, TMPDIR, EDGEPACK_CACHE_DIR)")


EXIT_CODES = {
    0: "success (for verify/build: every runtime matched within the recipe's tolerance)",
    1: "unexpected internal error (a bug: please report it)",
    UsageError.exit_code: "bad input: model file, flag, target, recipe or calibration data",
    ConversionError.exit_code: "conversion failed on every path",
    VerificationError.exit_code: "verification failed: outputs differ or a runtime cannot run the model",
    EnvironmentProblem.exit_code: "host environment problem (runtime env, pip, ssh, adb, qemu missing)",
    DeployError.exit_code: "deploy/run/rollback on the device failed",
    Unverified.exit_code: "unverified: no runtime could load or run the bundle, so nothing was compared",
}
