"""Exceptions the harness raises on purpose; each carries a message meant for the user."""


class AutoportError(Exception):
    """Base class: the message is complete and shown without a traceback."""


class SpecError(AutoportError):
    """A port spec is invalid. The message names the file and the field."""

    def __init__(self, path, field: str | None, problem: str):
        self.path = path
        self.field = field
        self.problem = problem
        where = f"{path}" + (f": field '{field}'" if field else "")
        super().__init__(f"{where}: {problem}")


class StageFailure(AutoportError):
    """A stage ran and the port failed its check. ``figures`` travel to the report."""

    def __init__(self, message: str, figures: dict | None = None):
        from .kb import likely_cause

        self.detail = message  # without the likely-cause line
        cause = likely_cause(message)
        if cause is not None:
            message += f"\nlikely cause: {cause.title} ({cause.file})"
        super().__init__(message)
        self.figures = figures or {}


class TargetUnavailable(AutoportError):
    """The selected target cannot run on this machine (the stage is skipped, not failed)."""
