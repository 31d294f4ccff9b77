"""The sweep report: one self-contained HTML page over the cells of a sweep (:mod:`revinterp.sweep`).

For every grid axis (a field with several values, the seed aside) and every key figure (held-out accuracy per
held-out split beside chance, the forward localization's recovered fraction, the reverse total effect per split,
the training steps), a plot of the figure against the axis: each seed's value as a point, and per group of cells
that differ only by seed the mean with its Student's t interval over seeds (the method :mod:`revinterp.sweep`
states in ``summary.json``). Then the summary table (every seed's value, mean and interval) and the cells.

The page makes no network request: plotly.js is inlined (``plotly.offline.get_plotlyjs()``) and a
Content-Security-Policy forbids every fetch. Every string that comes from a configuration or a result is escaped
for its context: :func:`html.escape` in HTML text and attributes, JSON inside ``<script>`` with ``<``, ``>``,
``&``, U+2028 and U+2029 written as ``\\u`` escapes, so no value can close the script or add markup.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence

CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                           "img-src data: blob:; font-src data:; connect-src 'none'; frame-src 'none'; "
                           "base-uri 'none'; form-action 'none'")
NO_AXIS = "only the seed varies"
HELD_OUT_SPLITS = ("reverse_held_out", "forward_held_out", "chain_composed_held_out")
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin-bottom: .2em; } .caption { color: #555; font-size: .9em; }
table { border-collapse: collapse; font-size: .85em; } td, th { padding: .15em .6em; text-align: left;
vertical-align: top; border-bottom: 1px solid #eee; } .failed { color: #a00; } .block { margin: 1.5em 0; }
"""
esc = html.escape


def script_json(data) -> str:
    """``data`` as JSON safe inside ``<script>``: ``<``, ``>``, ``&``, U+2028, U+2029 as ``\\u`` escapes."""
    text = json.dumps(data, allow_nan=False)
    for char in ("<", ">", "&", "\u2028", "\u2029"):
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def inline_script(source: str) -> str:
    """A library's source in a ``<script>`` element, any ``</script`` in it written ``<\\/script``."""
    return "<script>" + source.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT") + "</script>"


def text(value) -> str:
    """A value as short text: floats to 4 significant digits, None as an empty string."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(map(text, value))
    return str(value)


def key_figures(rows: Sequence[Mapping]) -> list[tuple[str, str, str | None]]:
    """``(column, title, chance column)`` of the figures plotted against every axis, those present in the rows."""
    present = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out = []
    for split in HELD_OUT_SPLITS:
        column = f"behaviour.{split}.accuracy"
        if column in present:
            out.append((column, f"Accuracy on {split} (held out)", f"behaviour.{split}.chance_accuracy"))
    if "analysis.forward.localize_recovered" in present:
        out.append(("analysis.forward.localize_recovered",
                    "Forward localization: fraction of the clean effect recovered by the chosen sites", None))
    for column in sorted(c for c in present if c.startswith("analysis.reverse.total.")
                         and not c.endswith(("_low", "_high"))):
        split = column.rsplit(".", 1)[1]
        out.append((column, f"Reverse interventions: total effect on {split}", None))
    if "trained.steps" in present:
        out.append(("trained.steps", "Training steps to the stop", None))
    return out


def axis_label(value) -> str:
    return "none" if value is None else text(value)


def figure_against(axis: str, values: Sequence, others: Sequence[str], rows: Sequence[Mapping], column: str,
                   title: str, chance: str | None, groups: Mapping[str, Mapping]) -> dict:
    """A plotly figure (JSON data) of ``column`` against grid ``axis``: per-seed points, group means with t
    intervals; one series per combination of the ``other`` axes."""
    import plotly.graph_objects as go

    index = {json.dumps(v): i for i, v in enumerate(values)}
    series: dict[str, list[Mapping]] = {}
    for row in rows:
        if row.get("status") == "done" and isinstance(row.get(column), (int, float)):
            label = ", ".join(f"{o}={axis_label(row['_values'].get(o))}" for o in others) or "all cells"
            series.setdefault(label, []).append(row)
    fig = go.Figure()
    n_series = max(1, len(series))
    width = 0.6 / n_series
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    for k, (label, members) in enumerate(series.items()):
        color = palette[k % len(palette)]
        offset = (k - (n_series - 1) / 2) * width
        xs, ys, hover = [], [], []
        means: dict[int, Mapping] = {}
        for j, row in enumerate(members):
            i = index[json.dumps(row["_values"].get(axis))]
            xs.append(i + offset + width * 0.35 * (((j * 7919) % 11) / 10 - 0.5))  # a fixed jitter per point
            ys.append(row[column])
            hover.append(esc(f"{row['cell']}: seed {row['seed']}, {text(row[column])}"))
            figure = groups.get(row["_group"], {}).get("figures", {}).get(column)
            if figure is not None:
                means[i] = figure
        legend = esc(label)
        fig.add_scatter(x=xs, y=ys, mode="markers", name=f"{legend}: seeds", legendgroup=legend, text=hover,
                        hoverinfo="text", marker=dict(color=color, size=7, opacity=0.55))
        order = sorted(means)
        est = [means[i] for i in order]
        has_ci = [e["low"] is not None for e in est]
        fig.add_scatter(
            x=[i + offset for i in order], y=[e["mean"] for e in est], mode="markers", legendgroup=legend,
            name=f"{legend}: mean, t interval", marker=dict(color=color, size=12, symbol="diamond-wide"),
            error_y=dict(type="data", symmetric=False,
                         array=[(e["high"] - e["mean"]) if c else 0 for e, c in zip(est, has_ci)],
                         arrayminus=[(e["mean"] - e["low"]) if c else 0 for e, c in zip(est, has_ci)]),
            text=[esc(f"mean {text(e['mean'])} over {e['n']} seeds"
                      + (f", 95% t interval [{text(e['low'])}, {text(e['high'])}]" if c else ", no interval"))
                  for e, c in zip(est, has_ci)], hoverinfo="text")
    if chance is not None:
        chances = [r[chance] for r in rows if isinstance(r.get(chance), (int, float))]
        if chances:
            level = sum(chances) / len(chances)
            fig.add_hline(y=level, line_dash="dot", line_color="#888",
                          annotation_text=f"chance {level:.3g} (mean 1/M)", annotation_position="top left")
    fig.update_layout(title=esc(title), xaxis=dict(title=esc(axis), tickvals=list(range(len(values))),
                                                  ticktext=[esc(axis_label(v) if axis != NO_AXIS else "all cells")
                                                            for v in values]),
                      yaxis_title=esc(column), height=420, margin=dict(t=50, b=50))
    return json.loads(fig.to_json())


def render_sweep_report(title: str, sweep: Mapping, rows: Sequence[Mapping], summary: Mapping,
                        status: Mapping | None = None) -> str:
    """The sweep report as one HTML page.

    Args:
        title: the sweep's name (its directory).
        sweep: the content of ``sweep.json`` (``grid``, ``sweep`` settings and ``cells`` with their values).
        rows: the table (:func:`revinterp.sweep.gather`).
        summary: the summary over seeds (:func:`revinterp.sweep.summarize`).
        status: ``status.json``'s cells (seconds per cell), optional.
    """
    import plotly.offline

    status = status or {}
    grid = sweep.get("grid", {})
    axes = {k: v for k, v in grid.items() if isinstance(v, list) and len(v) > 1 and k != "seed"}
    values_of = {c["name"]: c.get("values", {}) for c in sweep.get("cells", [])}
    groups = {f"group{i}": g for i, g in enumerate(summary.get("groups", []))}
    group_of = {cell: key for key, g in groups.items() for cell in g.get("cells", [])}
    rows = [{**r, "_values": values_of.get(r["cell"], {}), "_group": group_of.get(r["cell"])} for r in rows]
    figures = key_figures(rows)
    n_done = sum(r["status"] == "done" for r in rows)
    n_failed = sum(r["status"] == "failed" for r in rows)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{CONTENT_SECURITY_POLICY}\">",
        f"<title>{esc('Sweep ' + title)}</title><style>{STYLE}</style>",
        inline_script(plotly.offline.get_plotlyjs()),
        f"</head><body><h1>{esc('Sweep ' + title)}</h1>",
        f"<p>{len(rows)} cells: {n_done} done, {n_failed} failed, {len(rows) - n_done - n_failed} not run. "
        f"Intervals over seeds: {esc(summary.get('method', ''))}.</p>",
        "<h2>Grid</h2><table><tr><th>field</th><th>values</th></tr>",
    ]
    for name, value in grid.items():
        parts.append(f"<tr><td>{esc(name)}</td><td>{esc(text(value))}</td></tr>")
    for name, value in sweep.get("sweep", {}).items():
        parts.append(f"<tr><td>{esc('[sweep] ' + name)}</td><td>{esc(text(value))}</td></tr>")
    parts.append("</table>")
    parts.append("<h2>Figures against each axis</h2>")
    if not figures:
        parts.append("<p>No finished cell has figures yet.</p>")
    plot_axes = axes or {NO_AXIS: [None]}
    n = 0
    for axis, values in plot_axes.items():
        others = [a for a in axes if a != axis]
        parts.append(f"<h3>{esc(axis)}</h3>")
        for column, figure_title, chance in figures:
            spec = figure_against(axis, values, others, rows, column, figure_title, chance, groups)
            div = f"fig-{n}"
            n += 1
            parts.append(f"<div class='block'><div id='{div}'></div><script>(function(){{var f={script_json(spec)};"
                         f"Plotly.newPlot({script_json(div)},f.data,f.layout,{{responsive:true,displaylogo:false}});"
                         "})();</script>")
            parts.append(f"<p class='caption'>{esc(figure_title)}: each small point is one seed's cell; the diamond "
                         "is the mean over the seeds of cells that differ only by seed, with its 95 % Student's t "
                         "interval over seeds (none for a single seed).</p></div>")
    parts.append("<h2>Summary over seeds</h2><table><tr><th>cells</th><th>figure</th><th>n seeds</th>"
                 "<th>mean [95% t interval]</th><th>every seed's value</th></tr>")
    columns = [c for c, _, _ in figures]
    for group in summary.get("groups", []):
        members = [r for r in rows if r["cell"] in group.get("cells", [])]
        label = ", ".join(f"{a}={axis_label(members[0]['_values'].get(a))}" for a in axes) if members else ""
        for column in columns:
            figure = group["figures"].get(column)
            if figure is None:
                continue
            interval = (f"{text(figure['mean'])} [{text(figure['low'])}, {text(figure['high'])}]"
                        if figure["low"] is not None else f"{text(figure['mean'])} (one seed)")
            seeds = "; ".join(f"{v['seed']}: {text(v['value'])}" for v in figure["values"])
            parts.append(f"<tr><td>{esc(label or 'all')}</td><td>{esc(column)}</td><td>{figure['n']}</td>"
                         f"<td>{esc(interval)}</td><td>{esc(seeds)}</td></tr>")
    parts.append("</table><h2>Cells</h2><table><tr><th>run directory</th><th>status</th><th>values</th>"
                 "<th>held-out reverse accuracy</th><th>steps</th><th>fitted</th><th>seconds</th><th>error</th></tr>")
    for row in rows:
        values = ", ".join(f"{k}={axis_label(v)}" for k, v in row["_values"].items())
        seconds = (status.get(row["cell"]) or {}).get("seconds")
        css = " class='failed'" if row["status"] == "failed" else ""
        parts.append(f"<tr{css}><td>{esc(row['run_dir'])}</td><td>{esc(row['status'])}</td><td>{esc(values)}</td>"
                     f"<td>{esc(text(row.get('behaviour.reverse_held_out.accuracy')))}</td>"
                     f"<td>{esc(text(row.get('trained.steps')))}</td><td>{esc(text(row.get('trained.fitted')))}</td>"
                     f"<td>{esc(text(seconds))}</td><td>{esc(text(row.get('error')))}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)
