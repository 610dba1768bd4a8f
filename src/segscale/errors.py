"""Errors segscale reports to its users, each with the exit code the CLI returns for it."""

from __future__ import annotations

import re


class SegscaleError(Exception):
    """An error with a message meant for the user; the CLI prints it without a traceback."""

    exit_code = 1


class ConfigError(SegscaleError):
    """The configuration is invalid: unknown key, wrong type or impossible value."""

    exit_code = 2


class InputError(SegscaleError):
    """The input data or a command-line argument is unusable; nothing was published."""

    exit_code = 2


class ModelSkipped(InputError):
    """The data cannot support a model honestly (too few churned or retained buyers, too short a history, too few
    repeat buyers, a fit that does not converge). `segscale run` publishes without that model and says why;
    `segscale train`, whose only job is the model, stops with exit 2."""

    def __init__(self, model: str, reason: str):
        super().__init__(f"{model} model skipped: {reason}")
        self.model = model
        self.reason = reason


class DegradedRunError(SegscaleError):
    """`--strict`: the run published, but without a model the data could not support."""

    exit_code = 4


class SchemaMismatchError(SegscaleError):
    """A frame's columns or types differ from the table it is written to; nothing was committed."""

    exit_code = 2


class TableNotFoundError(SegscaleError):
    """A segscale table (or one of its versions) does not exist."""

    exit_code = 2


class WriteConflictError(SegscaleError):
    """Another writer committed a conflicting change first; the table is intact, the write can be retried."""

    exit_code = 1


class WriteFailedError(SegscaleError):
    """A write failed before its commit; the table is left at its previous version."""

    exit_code = 1


class DependencyError(SegscaleError):
    """Something segscale depends on (storage, tracking server) is unreachable."""

    exit_code = 3


class StorageError(DependencyError):
    """The warehouse storage refused a write (no space left, no permission, read-only; nothing was committed), or
    refused a read or could not be reached."""


STORAGE_REFUSALS = re.compile(r"No space left on device|Disk quota exceeded|Permission denied|"
                              r"Operation not permitted|Read-only file system", re.IGNORECASE)


def raise_if_storage_refused(exc: BaseException, uri: str, state: str) -> None:
    """StorageError (exit 3) when the storage itself refused the write: full, read-only, or no permission."""
    cause = describe_exception(exc)
    refusal = STORAGE_REFUSALS.search(cause) or STORAGE_REFUSALS.search(str(exc))
    if refusal:
        if refusal.group(0) not in cause:  # the outer error says little ("Generic LocalFileSystem error")
            cause = f"{cause} ({refusal.group(0)})"
        raise StorageError(f"the warehouse storage refused the write to {uri}, so the table is {state}: {cause}. "
                           f"Free space or fix the permissions, then re-run; `segscale vacuum` removes files the "
                           f"failed write left behind") from exc


# A read the storage refused (permission) or that could not reach it (network, endpoint), as delta-rs and the object
# stores it uses report them. A missing path ("No such file or directory", "Not a directory") is not among them:
# that table does not exist.
STORAGE_UNREACHABLE = re.compile(r"Permission denied|PermissionDenied|Operation not permitted|Access ?Denied|"
                                 r"Forbidden|Connection refused|Connection reset|tcp connect error|"
                                 r"dns error|error sending request|timed out|Network is unreachable|"
                                 r"No route to host|Could not connect|NETWORK_CONNECTION", re.IGNORECASE)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def raise_if_storage_unreachable(exc: BaseException, uri: str) -> None:
    """StorageError (exit 3) when reading `uri` failed because its storage refused the read or could not be
    reached, naming the outermost and innermost causes delta-rs reported (it nests causes, one per line)."""
    text = ANSI.sub("", str(exc))
    if not STORAGE_UNREACHABLE.search(text):
        return
    causes = [line.strip(" ↳") for line in text.splitlines() if line.strip(" ↳")] or [type(exc).__name__]
    cause = causes[0] if len(causes) == 1 else f"{causes[0]}: {causes[-1]}"
    raise StorageError(f"cannot read {uri}: the warehouse storage refused the read or could not be reached "
                       f"({cause}). Check the warehouse's location, network and credentials or permissions, then "
                       f"run again") from exc


UNREADABLE_FILE = re.compile(r"\[FAILED_READ_FILE[.\w]*\] Encountered error while reading file (\S+?)\.?\s")
FILE_CAUSES = re.compile(r"(is not a Parquet file[^\n]*|Checksum error[^\n]*|[Mm]alformed[^\n]*|EOFException[^\n]*)")


def unreadable_input(exc: BaseException) -> InputError | None:
    """The input error behind a Spark failure to read one of the input files (truncated, corrupt), or None.

    Spark reads lazily, so such a failure surfaces in whichever stage first scans the file."""
    text = str(exc)
    found = UNREADABLE_FILE.search(text)
    if found is None:
        return None
    cause = FILE_CAUSES.search(text)
    detail = f" ({cause.group(1).strip()[:200]})" if cause else ""
    return InputError(f"cannot read the input file {found.group(1)}: it is truncated or corrupt{detail}; "
                      f"replace it and run again")


def first_line(exc: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_exception(exc: BaseException) -> str:
    """The innermost Python error message of a failure, also when Spark wrapped it in a JVM stack trace."""
    text = str(exc)
    lines = text.splitlines()
    # A Python traceback ends with "Type: message" right after an indented source line.
    ends = [
        line.strip() for previous, line in zip(lines, lines[1:], strict=False)
        if previous.startswith(" ") and re.match(r"^[A-Za-z_][\w.]*: \S", line)
    ]
    if ends:
        name, _, message = ends[-1].partition(": ")
        return f"{name.rsplit('.', 1)[-1]}: {message}"
    java = getattr(exc, "java_exception", None)  # py4j's Py4JJavaError: the JVM's own message says it best
    if java is not None:
        message = " ".join(str(java.getMessage() or java.toString()).split())
        return message[:1000]
    found = re.findall(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$", text, flags=re.MULTILINE)
    if found:
        name, message = found[-1]
        return f"{name}: {message.strip()}"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
