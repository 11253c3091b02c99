"""A few lines for an unexpected exception in a stage: the error, its root cause, and the frames in
the user's own files. The full traceback goes to the results JSON (and to the terminal with --tb=long)."""

from __future__ import annotations

import linecache
import sysconfig
import traceback
from pathlib import Path

_LIBRARY_DIRS = tuple(
    Path(p).resolve()
    for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
)
_HARNESS_DIR = Path(__file__).resolve().parent
MAX_USER_FRAMES = 4
MAX_MESSAGE_LINES = 12  # some errors (torch.export's) carry a whole report in their message


def short_failure(exc: BaseException, rootdir: Path) -> str:
    """``Type: message``, the last ``MAX_USER_FRAMES`` frames in the user's files, where it was raised
    when that is library or harness code, and ``root cause: Type: message`` for a chained exception."""
    message = headline(exc).splitlines()
    lines = message[:MAX_MESSAGE_LINES]
    if len(message) > MAX_MESSAGE_LINES:
        lines.append(f"  ... ({len(message) - MAX_MESSAGE_LINES} more lines of the message)")
    frames = _user_frames(exc)
    chain = _chain(exc)
    if len(chain) > 1:
        frames += [f for f in _user_frames(chain[-1]) if f not in frames]
    for frame in frames[-MAX_USER_FRAMES:]:
        lines.append(f"  {_where(frame, rootdir)}")
        code = linecache.getline(frame[0], frame[1]).strip()
        if code:
            lines.append(f"      {code}")
    innermost = traceback.extract_tb(chain[-1].__traceback__)[-1:] if chain[-1].__traceback__ else []
    for f in innermost:
        if not _is_user_file(f.filename):  # raised inside a library or the harness: say where
            lines.append(f"  raised in {_where((f.filename, f.lineno, f.name), rootdir)}")
    if len(chain) > 1:
        lines.append(f"root cause: {headline(chain[-1]).splitlines()[0]}")
    lines.append("(full traceback: the stage's 'traceback' in the results JSON, or --tb=long)")
    return "\n".join(lines)


def headline(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    if isinstance(exc, KeyError) and exc.args:
        text = repr(exc.args[0])
    return f"{name}: {text}" if text else name


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during, outermost first."""
    seen = [exc]
    while True:
        nxt = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if nxt is None or nxt in seen:
            return seen
        seen.append(nxt)
        exc = nxt


def _user_frames(exc: BaseException) -> list[tuple[str, int, str]]:
    return [
        (f.filename, f.lineno, f.name)
        for f in traceback.extract_tb(exc.__traceback__)
        if _is_user_file(f.filename)
    ]


def _is_user_file(filename: str) -> bool:
    if filename.startswith("<"):
        return False
    path = Path(filename).resolve()
    if path.is_relative_to(_HARNESS_DIR):
        return False
    return not any(path.is_relative_to(d) for d in _LIBRARY_DIRS)


def _where(frame: tuple[str, int, str], rootdir: Path) -> str:
    filename, lineno, name = frame
    path = Path(filename)
    try:
        shown = path.resolve().relative_to(rootdir.resolve()).as_posix()
    except ValueError:
        shown = str(path)
    return f"{shown}:{lineno} in {name}"
