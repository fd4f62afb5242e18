"""Charts as SVG pictures, rendered on the server.

The console's Content-Security-Policy allows no scripts and no inline styles, so a chart is an
inline <svg> element drawn with presentation attributes (fill, stroke, font-size): no style=""
and no JavaScript. Every chart has a <title> and a <desc> (named by aria-labelledby) and each
bar or point its own <title>, so screen readers and hovering both tell the numbers. The
palette keeps a contrast of at least 4.5:1 against white.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

# Dark enough for text and thin lines on white (each >= 4.5:1).
PALETTE = ("#0b5cad", "#a4161a", "#1e6b34", "#7a4a00", "#5b2a86", "#00626b", "#4a5560")
INK = "#1b1f24"
MUTED = "#4a5560"
GRID = "#d5dbe1"
THRESHOLD = "#a4161a"
FONT = "system-ui, -apple-system, Segoe UI, Roboto, sans-serif"

_ids = itertools.count(1)


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float]
    color: str | None = None


@dataclass(frozen=True)
class Threshold:
    value: float
    label: str
    color: str = THRESHOLD


def number(value: float) -> str:
    """12, 1,234, 0.5: integers without decimals, others with up to two."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def percent(value: float) -> str:
    """A rate as a percentage with enough digits for thresholds like 0.1%."""
    text = f"{value * 100:.2f}".rstrip("0").rstrip(".")
    return f"{text}%"


def nice_ticks(top: float, count: int = 4, *, integer: bool = False) -> list[float]:
    """0 and round steps (1, 2 or 5 times a power of ten) up to at least `top`; whole steps
    only when `integer` (counts)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    if integer:
        step = max(1, math.ceil(step))
    ticks = [0.0]
    while ticks[-1] < top - 1e-12:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _frame(chart_id: str, width: int, height: int, title: str, description: str,
           body: list[str]) -> Markup:
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'aria-labelledby="{chart_id}-t {chart_id}-d" font-family="{FONT}" '
            f'font-size="12" fill="{INK}">'
            f'<title id="{chart_id}-t">{escape(title)}</title>'
            f'<desc id="{chart_id}-d">{escape(description)}</desc>')
    return Markup(head + "".join(body) + "</svg>")


def _text(x: float, y: float, text: str, *, anchor: str = "start", fill: str = INK,
          size: int | None = None, weight: str | None = None) -> str:
    extra = (f' font-size="{size}"' if size else "") + (f' font-weight="{weight}"'
                                                         if weight else "")
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{fill}"{extra}>'
            f"{escape(text)}</text>")


def bar_chart(data: Sequence[tuple[str, float]], *, title: str, description: str = "",
              value_format: Callable[[float], str] = number, width: int = 640,
              colors: Sequence[str] | None = None, empty: str = "Nothing to show yet.") -> Markup:
    """Horizontal bars, one per (label, value), with a value axis and the value at each bar."""
    chart_id = f"chart{next(_ids)}"
    bar, gap, top_pad, bottom_pad = 22, 10, 10, 34
    rows = list(data)
    if not rows:
        return _frame(chart_id, width, 60, title, description or empty,
                      [_text(10, 34, empty, fill=MUTED)])
    label_w = min(220, max(60, 7 * max(len(label) for label, _ in rows) + 12))
    plot_w = width - label_w - 70
    height = top_pad + len(rows) * (bar + gap) + bottom_pad
    ticks = nice_ticks(max(v for _, v in rows),
                       integer=all(isinstance(v, int) for _, v in rows))
    scale = plot_w / ticks[-1]
    axis_y = top_pad + len(rows) * (bar + gap)
    body: list[str] = []
    for tick in ticks:
        x = label_w + tick * scale
        body.append(f'<line x1="{x:.1f}" y1="{top_pad - 4}" x2="{x:.1f}" y2="{axis_y}" '
                    f'stroke="{GRID}" stroke-width="1"/>')
        body.append(_text(x, axis_y + 16, value_format(tick), anchor="middle", fill=MUTED,
                          size=11))
    body.append(f'<line x1="{label_w}" y1="{top_pad - 4}" x2="{label_w}" y2="{axis_y}" '
                f'stroke="{INK}" stroke-width="1"/>')
    palette = colors or PALETTE
    for i, (label, value) in enumerate(rows):
        y = top_pad + i * (bar + gap)
        w = max(value * scale, 1 if value else 0)
        color = palette[i % len(palette)] if colors else palette[0]
        body.append(f'<g><title>{escape(label)}: {escape(value_format(value))}</title>'
                    f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar}" '
                    f'fill="{color}"/></g>')
        body.append(_text(label_w - 8, y + bar / 2 + 4, label, anchor="end"))
        body.append(_text(label_w + w + 6, y + bar / 2 + 4, value_format(value),
                          weight="600"))
    return _frame(chart_id, width, height, title, description or _describe_bars(rows,
                                                                             value_format),
                  body)


def _describe_bars(rows: Sequence[tuple[str, float]],
                   value_format: Callable[[float], str]) -> str:
    return "; ".join(f"{label}: {value_format(value)}" for label, value in rows)


def line_chart(labels: Sequence[str], series: Sequence[Series], *, title: str,
               description: str = "", value_format: Callable[[float], str] = number,
               thresholds: Sequence[Threshold] = (), area: bool = False, width: int = 640,
               height: int = 240, empty: str = "Nothing to show yet.") -> Markup:
    """A time series: x = `labels` (days), one line (or filled area) per series, dashed
    threshold lines with their labels, y axis with round ticks, a legend."""
    chart_id = f"chart{next(_ids)}"
    if not labels or not series:
        return _frame(chart_id, width, 60, title, description or empty,
                      [_text(10, 34, empty, fill=MUTED)])
    left, right, top, bottom = 56, 16, 14, 54
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([max(s.values, default=0) for s in series] + [t.value for t in thresholds]
               + [0])
    integer = all(isinstance(v, int) for s in series for v in s.values) and not thresholds
    ticks = nice_ticks(peak * 1.05 if peak else 1, integer=integer)
    y_max = ticks[-1]
    n = len(labels)

    def x_at(i: int) -> float:
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y_at(v: float) -> float:
        return top + plot_h - plot_h * v / y_max

    body: list[str] = []
    for tick in ticks:
        y = y_at(tick)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                    f'stroke="{GRID}" stroke-width="1"/>')
        body.append(_text(left - 6, y + 4, value_format(tick), anchor="end", fill=MUTED,
                          size=11))
    body.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
                f'y2="{top + plot_h}" stroke="{INK}" stroke-width="1"/>')
    every = max(1, math.ceil(n / 8))
    for i, label in enumerate(labels):
        if (n - 1 - i) % every == 0:  # the last day always labelled
            body.append(_text(x_at(i), top + plot_h + 16, label, anchor="middle", fill=MUTED,
                              size=11))
    for s_index, s in enumerate(series):
        color = s.color or PALETTE[s_index % len(PALETTE)]
        points = [(x_at(i), y_at(v)) for i, v in enumerate(s.values)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        if area and points:
            base = top + plot_h
            body.append(f'<polygon points="{points[0][0]:.1f},{base} {path} '
                        f'{points[-1][0]:.1f},{base}" fill="{color}" fill-opacity="0.15"/>')
        body.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                    f'stroke-width="2" stroke-linejoin="round"/>')
        for (x, y), label, v in zip(points, labels, s.values, strict=False):
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}">'
                        f"<title>{escape(s.name)}, {escape(label)}: "
                        f"{escape(value_format(v))}</title></circle>")
    for t in thresholds:
        y = y_at(t.value)
        body.append(f'<g><title>{escape(t.label)}: {escape(value_format(t.value))}</title>'
                    f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                    f'stroke="{t.color}" stroke-width="1.5" stroke-dasharray="6 4"/></g>')
        body.append(_text(left + plot_w - 4, y - 5, f"{t.label} {value_format(t.value)}",
                          anchor="end", fill=t.color, size=11))
    legend_x = left
    for s_index, s in enumerate(series):
        color = s.color or PALETTE[s_index % len(PALETTE)]
        y = height - 14
        body.append(f'<rect x="{legend_x}" y="{y - 9}" width="12" height="12" '
                    f'fill="{color}"/>')
        body.append(_text(legend_x + 17, y + 1, s.name))
        legend_x += 30 + 7 * len(s.name)
    return _frame(chart_id, width, height, title,
                  description or _describe_series(labels, series, value_format), body)


def _describe_series(labels: Sequence[str], series: Sequence[Series],
                     value_format: Callable[[float], str]) -> str:
    parts = []
    for s in series:
        total = sum(s.values)
        peak = max(s.values, default=0)
        parts.append(f"{s.name}: total {value_format(total)}, highest {value_format(peak)}")
    return f"From {labels[0]} to {labels[-1]}. " + "; ".join(parts)


def progress_bar(parts: Sequence[tuple[str, float, str]], total: float, *, title: str,
                 width: int = 640) -> Markup:
    """One stacked bar: each (label, value, color) part of `total`, with a legend."""
    chart_id = f"chart{next(_ids)}"
    height, bar_y, bar_h = 70, 8, 26
    body: list[str] = [f'<rect x="0" y="{bar_y}" width="{width}" height="{bar_h}" '
                       f'fill="#eef1f4" stroke="{GRID}"/>']
    x = 0.0
    for label, value, color in parts:
        w = width * value / total if total else 0
        if w > 0:
            body.append(f'<g><title>{escape(label)}: {escape(number(value))}</title>'
                        f'<rect x="{x:.1f}" y="{bar_y}" width="{w:.1f}" height="{bar_h}" '
                        f'fill="{color}"/></g>')
        x += w
    legend_x = 0
    for label, value, color in parts:
        body.append(f'<rect x="{legend_x}" y="{height - 20}" width="12" height="12" '
                    f'fill="{color}"/>')
        text = f"{label} {number(value)}"
        body.append(_text(legend_x + 17, height - 10, text))
        legend_x += 34 + 7 * len(text)
    description = f"{number(sum(v for _, v, _ in parts))} of {number(total)}: " + ", ".join(
        f"{label} {number(value)}" for label, value, _ in parts)
    return _frame(chart_id, width, height, title, description, body)


def rate_bars(rates: Sequence[tuple[str, float, float]], *, title: str,
              width: int = 640) -> Markup:
    """One bar per (label, rate, threshold), on a scale reaching past the threshold, with the
    threshold as a dashed line: the bar crossing it is drawn red."""
    chart_id = f"chart{next(_ids)}"
    label_w, bar, gap, top = 130, 22, 26, 10
    plot_w = width - label_w - 150
    height = top + len(rates) * (bar + gap) + 10
    body: list[str] = []
    for i, (label, value, threshold) in enumerate(rates):
        y = top + i * (bar + gap)
        scale_max = max(value, threshold) * 1.5 or 1.0
        w = plot_w * value / scale_max
        tx = label_w + plot_w * threshold / scale_max
        over = value >= threshold and value > 0
        color = THRESHOLD if over else PALETTE[2]
        body.append(f'<rect x="{label_w}" y="{y}" width="{plot_w}" height="{bar}" '
                    f'fill="#eef1f4"/>')
        body.append(f'<g><title>{escape(label)}: {escape(percent(value))}</title>'
                    f'<rect x="{label_w}" y="{y}" width="{max(w, 1 if value else 0):.1f}" '
                    f'height="{bar}" fill="{color}"/></g>')
        body.append(f'<g><title>alert threshold: {escape(percent(threshold))}</title>'
                    f'<line x1="{tx:.1f}" y1="{y - 4}" x2="{tx:.1f}" y2="{y + bar + 4}" '
                    f'stroke="{INK}" stroke-width="2" stroke-dasharray="4 3"/></g>')
        body.append(_text(label_w - 8, y + bar / 2 + 4, label, anchor="end"))
        body.append(_text(label_w + plot_w + 8, y + bar / 2 + 4,
                          f"{percent(value)} (alert at {percent(threshold)})",
                          weight="600" if over else None, fill=color if over else INK))
    description = "; ".join(f"{label} {percent(v)}, alert threshold {percent(t)}"
                            + (" (over the threshold)" if v >= t and v > 0 else "")
                            for label, v, t in rates)
    return _frame(chart_id, width, height, title, description, body)
