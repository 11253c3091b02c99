"""Steps several stage items share (the HF reference, the port's build and conversion, the compiled
model): each runs once. When one raises, the item that ran it fails with the error, and every later
item that needs it is skipped, naming that item, instead of raising the same error again."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import TargetUnavailable

_STATE = "_autoport_shared_steps"  # instance attribute holding a _Steps (shared by shallow copies)


@dataclass(frozen=True)
class SharedFailure:
    label: str  # what failed, in a few words ("port build and conversion")
    stage_id: str | None  # the item that ran it and failed
    error: BaseException


@dataclass
class _Steps:
    failed: dict = field(default_factory=dict)  # step name -> SharedFailure
    running: str | None = None  # the stage id now running


def _steps(obj) -> _Steps:
    return obj.__dict__.setdefault(_STATE, _Steps())


class SharedStepFailed(Exception):
    """A step this item needs already failed in another item (which shows the error)."""

    def __init__(self, failure: SharedFailure):
        self.failure = failure
        where = f"in {failure.stage_id}" if failure.stage_id else "earlier"
        super().__init__(f"{failure.label} failed {where} (shown above)")


class shared_step:  # noqa: N801 - used as a decorator, like functools.cached_property
    """``functools.cached_property`` that remembers a failure too: the first access that raises
    propagates the error; every later access raises ``SharedStepFailed``. ``TargetUnavailable`` (a
    skip, not a failure) is never remembered."""

    def __init__(self, label: str):
        self.label = label
        self.name = ""
        self.func = None

    def __call__(self, func):
        self.func = func
        self.__doc__ = func.__doc__
        return self

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        steps = _steps(obj)
        failed = steps.failed
        if self.name in failed:
            raise SharedStepFailed(failed[self.name])
        try:
            value = self.func(obj)
        except (SharedStepFailed, TargetUnavailable):
            raise
        except Exception as exc:
            # a step failing because a step it uses failed keeps that one's name
            inner = next((f for f in failed.values() if f.error is exc), None)
            failed[self.name] = inner or SharedFailure(self.label, steps.running, exc)
            raise
        obj.__dict__[self.name] = value
        return value


def running(obj, stage_id: str | None) -> None:
    """Mark ``stage_id`` as the item now using ``obj``'s shared steps."""
    _steps(obj).running = stage_id
