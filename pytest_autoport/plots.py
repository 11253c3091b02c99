"""Error plots for a failed (or suspicious) numerical comparison.

matplotlib is imported inside :func:`save_error_plots`, so importing this module is cheap. The figure is
drawn with the Agg canvas directly (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), never through
pyplot: no window can open and the user's global backend is left alone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_error_plots"]

_N_QUANTILES = 201


def _flat_f64(x: Any) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    return t.detach().to(device="cpu", dtype=torch.float64).reshape(-1)


def save_error_plots(
    path: Path,
    actual: Any,
    expected: Any,
    reference_lp: Any = None,
    title: str = "",
) -> Path:
    """Write one PNG at ``path`` and return it.

    Panel (a): histogram of the errors ``actual - expected`` with log-scale counts (and of
    ``reference_lp - expected`` on the same bins when given). Panel (b), only when ``reference_lp`` is
    given: quantile-quantile plot of ``|actual - expected|`` against ``|reference_lp - expected|`` with the
    y = x line (points above it: the port errs more than the reference's own rounding). Non-finite errors
    are left out of the plots and counted in the panel title. Parent folders are created; the file is
    written to a temporary name and renamed into place.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    a = _flat_f64(actual)
    e = _flat_f64(expected)
    if a.shape != e.shape:
        raise ValueError(f"shape mismatch: actual has {a.numel()} elements, expected has {e.numel()}")
    err = (a - e).numpy()
    ref_err = None
    if reference_lp is not None:
        r = _flat_f64(reference_lp)
        if r.shape != e.shape:
            raise ValueError(
                f"shape mismatch: reference_lp has {r.numel()} elements, expected has {e.numel()}"
            )
        ref_err = (r - e).numpy()

    finite_err = err[np.isfinite(err)]
    n_bad = err.size - finite_err.size
    finite_ref = ref_err[np.isfinite(ref_err)] if ref_err is not None else None

    n_panels = 2 if ref_err is not None else 1
    fig = Figure(figsize=(6.0 * n_panels, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]

    # (a) error histogram, log counts.
    ax = axes[0]
    pooled = finite_err if finite_ref is None else np.concatenate([finite_err, finite_ref])
    if pooled.size:
        lo, hi = float(pooled.min()), float(pooled.max())
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 101)
        ax.hist(finite_err, bins=bins, log=True, alpha=0.7, label="port: actual - expected")
        if finite_ref is not None and finite_ref.size:
            ax.hist(finite_ref, bins=bins, log=True, alpha=0.5, label="reference_lp - expected")
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no finite errors", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("error")
    ax.set_ylabel("count (log)")
    panel_title = f"(a) errors, n={err.size}"
    if n_bad:
        panel_title += f", {n_bad} non-finite left out"
    ax.set_title(panel_title, fontsize="medium")

    # (b) QQ plot of absolute errors: port vs reference rounding.
    if ref_err is not None:
        ax = axes[1]
        abs_port = np.abs(finite_err)
        abs_ref = np.abs(finite_ref)
        if abs_port.size and abs_ref.size:
            qs = np.linspace(0.0, 1.0, _N_QUANTILES)
            qp = np.quantile(abs_port, qs)
            qr = np.quantile(abs_ref, qs)
            ax.plot(qr, qp, ".", markersize=3, label="quantiles")
            top = float(max(qp.max(), qr.max())) or 1.0
            ax.plot([0.0, top], [0.0, top], "k--", linewidth=1, label="y = x")
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no finite errors", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("|reference_lp - expected| quantiles")
        ax.set_ylabel("|actual - expected| quantiles")
        ax.set_title("(b) QQ of absolute errors", fontsize="medium")

    if title:
        fig.suptitle(title)
    fig.tight_layout()

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png")
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return path
