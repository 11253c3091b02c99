"""Exceptions the harness raises on purpose; each carries a message meant for the user."""

from contextlib import contextmanager

FIGURES_ATTR = "autoport_figures"  # figures a stage had gathered when an unexpected error cut it short


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

    def __init__(self, message: str, figures: dict | None = None, cause=None):
        """``cause``: a ``kb.Cause`` found from the stage's figures; by default the message's own."""
        from .kb import likely_cause_of

        self.detail = message  # without the likely-cause line
        self.cause = cause if cause is not None else likely_cause_of(message)
        if self.cause is not None:
            message += f"\n{self.cause.line()}"
        super().__init__(message)
        self.figures = figures or {}


class TargetUnavailable(AutoportError):
    """The selected target cannot run on this machine (the stage is skipped, not failed)."""


@contextmanager
def figures_on_error(figures: dict):
    """An unexpected error inside the block carries ``figures`` (what the stage knew so far) to the
    report, so a crash in the port's own code still shows them."""
    try:
        yield
    except AutoportError:
        raise
    except Exception as exc:
        try:
            setattr(exc, FIGURES_ATTR, dict(figures))
        except (AttributeError, TypeError):  # an exception type without a __dict__
            pass
        raise
