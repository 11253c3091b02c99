"""Importing a port's class from its file (``path/to/file.py:Class``) under its package's dotted
name, so the port's relative imports and shared packages resolve as they do for its author."""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

from .errors import SpecError


def import_from_file(file: Path, attr: str, spec_path: Path, field_name: str):
    if not file.is_file():
        raise SpecError(spec_path, field_name, f"file not found: {file}")
    module_name = _module_name_for(file)
    module = sys.modules.get(module_name)
    if module is None or getattr(module, "__file__", None) != str(file):
        _ensure_packages_importable(file)
        spec_obj = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec_obj)
        sys.modules[module_name] = module
        try:
            spec_obj.loader.exec_module(module)
        except Exception as exc:  # the port's own import error, shown in one line
            del sys.modules[module_name]
            raise SpecError(
                spec_path,
                field_name,
                f"importing {file} failed{_line_at_fault(exc, file)}: {type(exc).__name__}: {exc}",
            ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SpecError(spec_path, field_name, f"{file} defines no {attr!r}") from None


def _line_at_fault(exc: BaseException, file: Path) -> str:
    """`` at path:line`` of the port's own code that raised (a syntax error's own position, else the
    innermost frame under the port's project folder, else the innermost frame)."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f" at {exc.filename}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    root = _package_root(file).resolve()
    own = [f for f in frames if Path(f.filename).resolve().is_relative_to(root)]
    frame = (own or frames or [None])[-1]
    return f" at {frame.filename}:{frame.lineno}" if frame else ""


def _package_root(file: Path) -> Path:
    """The folder above the port file's outermost package."""
    folder = file.parent
    while (folder / "__init__.py").is_file():
        folder = folder.parent
    return folder


def _module_name_for(file: Path) -> str:
    """Dotted name from the outermost folder that is a package (has __init__.py)."""
    parts = [file.stem]
    folder = file.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts)


def _ensure_packages_importable(file: Path) -> None:
    """Put the port's package root first on sys.path, and forget a same-named package imported from
    another folder (another checkout), so the port's own shared modules are the ones imported."""
    folder = _package_root(file)
    if str(folder) in sys.path:
        sys.path.remove(str(folder))
    sys.path.insert(0, str(folder))
    top = _module_name_for(file).split(".")[0]
    loaded = sys.modules.get(top)
    if loaded is not None and not str(getattr(loaded, "__file__", "") or "").startswith(str(folder)):
        for name in [name for name in sys.modules if name == top or name.startswith(top + ".")]:
            del sys.modules[name]
