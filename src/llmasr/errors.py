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


class ModelError(LlmasrError):
    """A model name or path that cannot be resolved or loaded."""


class ManifestError(LlmasrError):
    """A manifest line that cannot be used; carries the line number."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        super().__init__(f"{path}:{line}: {problem}")
