"""Charts drawn on the server as SVG: no script library, nothing fetched by the browser.

Each chart is an `<svg role="img">` with a `<title>` and a `<desc>` that says what it
shows in words, each bar carries its value (`data-value`, and a `<title>` a pointer
shows), and every Chart also gives its numbers as a table, which the page puts beside
the picture for screen readers and for anyone who wants the figures. Colours are
distinguishable in grey too (dark, mid, light) and each series is named in a legend.
"""
from __future__ import annotations

from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 28, 56
# Okabe-Ito colours (safe for colour vision deficiencies), of different lightness
PALETTE = ("#0072B2", "#E69F00", "#D55E00", "#009E73", "#56B4E9", "#CC79A7", "#999999")


@dataclass(frozen=True)
class Chart:
    title: str
    svg: str
    summary: str  # the chart in one or two sentences (the `<desc>`)
    table: tuple[tuple[str, ...], ...]  # header row, then one row per bar or group

    @property
    def empty(self) -> bool:
        return len(self.table) <= 1


def _nice_max(value: float) -> float:
    """The axis top: 1, 2 or 5 times a power of ten, at least `value`."""
    if value <= 0:
        return 1
    step = 10 ** (len(str(int(value))) - 1) if value >= 1 else 1
    for m in (1, 2, 5, 10):
        if m * step >= value:
            return m * step
    return 10 * step


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _slug(title: str) -> str:
    """Element ids from the title: several charts share a page, ids must not repeat."""
    return "chart-" + "-".join("".join(c if c.isalnum() else " " for c in title.lower()).split())


def _head(title: str, summary: str, width: int, height: int) -> list[str]:
    key = _slug(title)
    return [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-labelledby="{key}-t {key}-d" '
            f'class="chart">',
            f'<title id="{key}-t">{escape(title)}</title>',
            f'<desc id="{key}-d">{escape(summary)}</desc>',
            # presentation attributes, not a <style>: the pages' CSP allows no inline style
            '<g font-family="sans-serif" font-size="11" fill="#222">']


def _frame(title: str, summary: str, body: list[str], ymax: float, y_label: str) -> str:
    plot_h = HEIGHT - TOP - BOTTOM
    axis = [f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#444"/>',
            f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" '
            f'stroke="#444"/>']
    for frac in (0, 0.5, 1):
        y = TOP + plot_h * (1 - frac)
        axis.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick" fill="#444">'
                    f'{_fmt(ymax * frac)}</text>')
    axis.append(f'<text x="{LEFT}" y="{TOP - 10}" class="axis-label">{escape(y_label)}</text>')
    return "\n".join([*_head(title, summary, WIDTH, HEIGHT), *axis, *body, "</g></svg>"])


def stacked_bars(title: str, categories: list[str], series: dict[str, list[int]],
                 y_label: str = "count") -> Chart:
    """One bar per category (a day), split by series (an outcome), with a legend."""
    names = [n for n in series if any(series[n])] or list(series)
    totals = [sum(series[n][i] for n in names) for i in range(len(categories))]
    ymax = _nice_max(max(totals, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(categories), 1)
    bar_w = max(2.0, slot * 0.7)
    body = []
    for i, cat in enumerate(categories):
        x, y = LEFT + slot * i + (slot - bar_w) / 2, TOP + plot_h
        for k, name in enumerate(names):
            v = series[name][i]
            if not v:
                continue
            h = plot_h * v / ymax
            y -= h
            body.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                        f'height="{h:.1f}" fill="{PALETTE[k % len(PALETTE)]}" '
                        f'data-label="{escape(cat)}" data-series="{escape(name)}" data-value="{v}">'
                        f'<title>{escape(cat)}: {v} {escape(name)}</title></rect>')
        if len(categories) <= 16 or i % max(1, len(categories) // 8) == 0:
            body.append(f'<text x="{x + bar_w / 2:.1f}" y="{TOP + plot_h + 14}" '
                        f'text-anchor="middle" class="tick" fill="#444">{escape(cat[-5:])}</text>')
    for k, name in enumerate(names):  # legend under the axis
        lx = LEFT + k * 120
        body.append(f'<rect x="{lx}" y="{HEIGHT - 22}" width="10" height="10" '
                    f'fill="{PALETTE[k % len(PALETTE)]}"/>'
                    f'<text x="{lx + 14}" y="{HEIGHT - 13}">{escape(name)}</text>')
    grand = sum(totals)
    parts = ", ".join(f"{sum(series[n])} {n}" for n in names if sum(series[n]))
    summary = (f"{title}: {grand} in {len(categories)} days" + (f" ({parts})" if parts else "")
               + (f"; busiest {categories[totals.index(max(totals))]} with {max(totals)}."
                  if grand else "; none."))
    table = (("day", *names, "total"),
             *((cat, *(str(series[n][i]) for n in names), str(totals[i]))
               for i, cat in enumerate(categories)))
    return Chart(title, _frame(title, summary, body, ymax, y_label), summary, table)


def histogram(title: str, buckets: list[tuple[str, int]], x_label: str,
              y_label: str = "count") -> Chart:
    """One bar per bucket ("<= 1 min", ...), labelled under the axis."""
    ymax = _nice_max(max((c for _, c in buckets), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(buckets), 1)
    body = []
    for i, (label, count) in enumerate(buckets):
        h = plot_h * count / ymax
        x = LEFT + slot * i + slot * 0.1
        body.append(f'<rect class="bar" x="{x:.1f}" y="{TOP + plot_h - h:.1f}" '
                    f'width="{slot * 0.8:.1f}" height="{h:.1f}" fill="{PALETTE[0]}" '
                    f'data-label="{escape(label)}" data-value="{count}">'
                    f'<title>{escape(label)}: {count}</title></rect>')
        body.append(f'<text x="{x + slot * 0.4:.1f}" y="{TOP + plot_h + 14}" text-anchor="middle" '
                    f'class="tick" fill="#444">{escape(label)}</text>')
    body.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 12}" text-anchor="middle">'
                f'{escape(x_label)}</text>')
    total = sum(c for _, c in buckets)
    if total:
        top_label, top_count = max(buckets, key=lambda b: b[1])
        summary = f"{title}: {total} in all; most ({top_count}) {top_label}."
    else:
        summary = f"{title}: none yet."
    table = ((x_label, y_label), *((label, str(c)) for label, c in buckets))
    return Chart(title, _frame(title, summary, body, ymax, y_label), summary, table)


def horizontal_bars(title: str, rows: list[tuple[str, float, str]], value_label: str,
                    format_value=_fmt) -> Chart:
    """One bar per row (label, value, note), longest first; the value and note beside it."""
    rows = sorted(rows, key=lambda r: -r[1])
    bar_h, gap, label_w = 18, 8, 150
    height = max(TOP + len(rows) * (bar_h + gap) + 16, 80)
    vmax = _nice_max(max((r[1] for r in rows), default=0))
    plot_w = WIDTH - label_w - 160
    body = []
    for i, (label, value, note) in enumerate(rows):
        y = TOP + i * (bar_h + gap)
        w = plot_w * value / vmax
        body.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{escape(label)}</text>')
        body.append(f'<rect class="bar" x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                    f'fill="{PALETTE[0]}" data-label="{escape(label)}" data-value="{value:g}">'
                    f'<title>{escape(label)}: {escape(format_value(value))}</title></rect>')
        body.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 13}">{escape(format_value(value))}'
                    f'{" (" + escape(note) + ")" if note else ""}</text>')
    if rows:
        slow = rows[0]
        summary = (f"{title}: {len(rows)} sources; slowest {slow[0]} at {format_value(slow[1])}, "
                   f"fastest {rows[-1][0]} at {format_value(rows[-1][1])}.")
    else:
        summary = f"{title}: none yet."
    svg = "\n".join([
        *_head(title, summary, WIDTH, height),
        f'<text x="{label_w}" y="{TOP - 10}">{escape(value_label)}</text>', *body, "</g></svg>"])
    table = (("source", value_label, "note"), *((r[0], format_value(r[1]), r[2]) for r in rows))
    return Chart(title, svg, summary, table)


def duration(seconds: float) -> str:
    """A duration as people say it: 45 s, 12 min, 3.5 h, 2 d."""
    if seconds < 60 or (seconds < 90 and seconds % 60):
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    value, unit = (seconds / 3600, "h") if seconds < 36 * 3600 else (seconds / 86400, "d")
    return f"{value:.0f} {unit}" if float(value).is_integer() else f"{value:.1f} {unit}"
