"""Static PNG images of the library's plotly figures, drawn with matplotlib.

plotly's own image export (kaleido) needs a browser it downloads, which an offline machine cannot
do. Every ``result.plot()`` in revinterp builds its figure from heatmaps, bars and scatter lines
(with fills, error bars and horizontal reference lines), laid out with ``make_subplots``; this module
redraws exactly those on matplotlib axes placed at the plotly axis domains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from revinterp.io import atomic_write


def axis_key(ref: str | None, letter: str) -> str:
    """plotly trace axis reference ('x', 'x2') -> layout key ('xaxis', 'xaxis2')."""
    ref = ref or letter
    return f"{letter}axis{ref[1:]}"


def layout_axis(layout, key: str):
    """``layout.xaxis2`` and the like, or None where the figure has no such axis."""
    return layout[key] if key in layout else None  # noqa: SIM401 (a plotly Layout has no .get)


def text_of(title) -> str:
    if title is None:
        return ""
    return getattr(title, "text", None) or (title if isinstance(title, str) else "") or ""


def to_matplotlib(fig, *, width: float = 9.0, height: float = 4.5):
    """A matplotlib figure drawing the traces of the plotly figure ``fig``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layout = fig.layout
    out = plt.figure(figsize=(width, height), dpi=110)
    axes: dict[tuple[str, str], object] = {}

    def axes_for(xref: str | None, yref: str | None):
        key = (axis_key(xref, "x"), axis_key(yref, "y"))
        if key not in axes:
            xaxis, yaxis = layout_axis(layout, key[0]), layout_axis(layout, key[1])
            xdom = (xaxis.domain if xaxis is not None else None) or (0, 1)
            ydom = (yaxis.domain if yaxis is not None else None) or (0, 1)
            left, bottom = 0.08 + 0.84 * xdom[0], 0.22 + 0.66 * ydom[0]
            ax = out.add_axes((left, bottom, 0.84 * (xdom[1] - xdom[0]), 0.66 * (ydom[1] - ydom[0])))
            if xaxis is not None:
                ax.set_xlabel(text_of(xaxis.title), fontsize=8)
                if xaxis.type == "log":
                    ax.set_xscale("log")
            if yaxis is not None:
                ax.set_ylabel(text_of(yaxis.title), fontsize=8)
                if yaxis.range is not None:
                    ax.set_ylim(*yaxis.range)
            ax.tick_params(labelsize=7)
            axes[key] = ax
        return axes[key]

    # categorical bars: one category axis per subplot, bars of several traces side by side where they share one
    bar_traces = [t for t in fig.data if t.type == "bar" and t.orientation != "h"]
    categories: dict[tuple, list] = {}
    for t in bar_traces:
        cats = categories.setdefault((t.xaxis, t.yaxis), [])
        cats += [str(v) for v in (t.x if t.x is not None else range(len(t.y))) if str(v) not in cats]
    for trace in fig.data:
        ax = axes_for(trace.xaxis, trace.yaxis)
        name = trace.name or None
        if trace.type == "heatmap":
            z = np.array(trace.z, dtype=float)
            lim = np.nanmax(np.abs(z)) if np.isfinite(z).any() else 1.0
            diverging = trace.zmid is not None or (np.nanmin(z) < 0 < np.nanmax(z))
            image = ax.imshow(z, aspect="auto", origin="lower", cmap="RdBu_r" if diverging else "viridis",
                              vmin=-lim if diverging else trace.zmin, vmax=lim if diverging else trace.zmax)
            if trace.x is not None:
                ax.set_xticks(range(len(trace.x)), [str(v) for v in trace.x], rotation=45, ha="right", fontsize=7)
            if trace.y is not None:
                ax.set_yticks(range(len(trace.y)), [str(v) for v in trace.y], fontsize=7)
            out.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
        elif trace.type == "bar" and trace.orientation == "h":
            ax.barh([str(v) for v in trace.y], np.array(trace.x, dtype=float), label=name)
        elif trace.type == "bar":
            cats = categories[(trace.xaxis, trace.yaxis)]
            x = [str(v) for v in (trace.x if trace.x is not None else range(len(trace.y)))]
            y = np.array(trace.y, dtype=float)
            sharing = [t for t in bar_traces if (t.xaxis, t.yaxis) == (trace.xaxis, trace.yaxis)
                       and set(map(str, t.x if t.x is not None else ())) & set(x)]
            n, k = len(sharing), sharing.index(trace) if trace in sharing else 0
            width = 0.8 / max(n, 1)
            positions = np.array([cats.index(v) for v in x]) + (k - (n - 1) / 2) * width
            yerr = None
            if trace.error_y is not None and trace.error_y.array is not None:
                up = np.array(trace.error_y.array, dtype=float)
                down = np.array(trace.error_y.arrayminus, dtype=float) if trace.error_y.arrayminus is not None else up
                yerr = np.vstack([down, up])
            ax.bar(positions, y, width=width, yerr=yerr, capsize=2, label=name)
            ax.set_xticks(np.arange(len(cats)), cats, rotation=45, ha="right", fontsize=7)
        elif trace.type == "scatter":
            x = list(trace.x) if trace.x is not None else list(range(len(trace.y)))
            y = np.array([np.nan if v is None else v for v in trace.y], dtype=float)
            numeric = all(isinstance(v, (int, float, np.integer, np.floating)) for v in x)
            xs = np.array(x, dtype=float) if numeric else np.arange(len(x))
            if trace.fill == "toself":
                ax.fill(xs, y, alpha=0.2, linewidth=0)
                continue
            style = "-o" if trace.mode and "lines" in trace.mode and "markers" in trace.mode else (
                "o" if trace.mode == "markers" else "-")
            ax.plot(xs, y, style, markersize=3, label=name if trace.showlegend is not False else None)
            if not numeric:
                ax.set_xticks(xs, [str(v) for v in x], rotation=45, ha="right", fontsize=7)
    for shape in layout.shapes or ():
        if shape.type == "line" and shape.y0 == shape.y1 and str(shape.xref).endswith("domain"):
            ax = axes_for(str(shape.xref).split(" ")[0], shape.yref)
            ax.axhline(shape.y0, color="black", linestyle=":", linewidth=1)
    for note in layout.annotations or ():
        if note.xref == "paper" and note.yref == "paper" and note.text:
            out.text(0.08 + 0.84 * note.x, 0.22 + 0.66 * note.y + 0.01, note.text, ha="center", fontsize=8)
    for ax in axes.values():
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    out.suptitle(text_of(layout.title), fontsize=10)
    return out


def save_png(fig, path: str | Path, **size) -> Path:
    """Write the plotly figure ``fig`` as a PNG image at ``path`` (atomically)."""
    import matplotlib.pyplot as plt

    image = to_matplotlib(fig, **size)
    try:
        atomic_write(Path(path), lambda tmp: image.savefig(tmp, format="png"))
    finally:
        plt.close(image)
    return Path(path)
