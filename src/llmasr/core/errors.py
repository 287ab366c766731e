"""Errors users see. Each names the input and the problem, so a batch can report and go on."""

from __future__ import annotations


class LlmasrError(Exception):
    """Base class: every error the CLI turns into a clean message and a non-zero exit."""


class AudioError(LlmasrError):
    """An audio input that cannot be used (missing, not audio, empty, silent, too long).

    `kind` says which, for callers that answer differently (the server's HTTP status): one of
    "missing", "unreadable", "empty", "silent", "too_long", "invalid".
    """

    def __init__(self, source: str, problem: str, kind: str = "invalid") -> None:
        self.source = source
        self.problem = problem
        self.kind = kind
        super().__init__(f"{source}: {problem}")


def internal_error(source: object, exc: BaseException) -> str:
    """One line for an unexpected failure (a bug) on one input: its name, the exception, where to report
    it. Batch paths (CLI, eval, data builders, batch, server) catch per input with this, so one input never
    stops the others and never prints a traceback."""
    import os

    name = os.fsdecode(source) if isinstance(source, (str, bytes, os.PathLike)) else str(source)
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return f"{name}: internal error ({type(exc).__name__}: {detail}); please report it"


class ModelError(LlmasrError):
    """A model name or path that cannot be resolved or loaded."""


class ManifestError(LlmasrError):
    """A manifest line that cannot be used; carries the line number."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        super().__init__(f"{path}:{line}: {problem}")
