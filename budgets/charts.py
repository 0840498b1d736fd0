"""Bar charts as inline SVG, drawn on the server: no JavaScript, nothing fetched from anywhere.

Each chart is an image with a <title> and a <desc> that states the total and the peak, and
carries its points so that the page can offer the same numbers as a table.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 72, 12, 12, 32
MAX_X_LABELS = 8
AXIS_COLOR, GRID_COLOR, LABEL_COLOR = "#9ca3af", "#e5e7eb", "#4b5563"

Number = Decimal | int


def format_count(value: Number) -> str:
    return f"{int(value):,}" if value == int(value) else f"{Decimal(value):,.1f}"


def format_usd(value: Number) -> str:
    """Dollars with at least two decimals and at most six, e.g. $1,234.50 or $0.00042."""
    text = f"{Decimal(value):,.6f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"${whole}.{decimals.ljust(2, '0')}"


@dataclass(frozen=True)
class Point:
    label: str  # short, under the bar: "13:00", "Mar 4"
    full_label: str  # in the tooltip and the data table: "2025-03-04 13:00 UTC"
    value: Number


@dataclass(frozen=True)
class ShownPoint:
    label: str
    full_label: str
    value: Number
    shown: str


@dataclass(frozen=True)
class Chart:
    chart_id: str
    title: str
    description: str
    value_heading: str
    points: list[ShownPoint]
    svg: SafeString


def _n(coordinate: float) -> str:
    return f"{coordinate:.1f}"


def nice_step(raw: Decimal, *, whole: bool) -> Decimal:
    """The smallest 1, 2 or 5 times a power of ten at or above `raw` (at least 1 for counts)."""
    if raw <= 0:
        return Decimal(1)
    base = Decimal(1).scaleb(raw.adjusted())
    fraction = raw / base
    step = base * next(nice for nice in (1, 2, 5, 10) if fraction <= nice)
    if whole:
        step = max(step, Decimal(1)).to_integral_value(rounding=ROUND_CEILING)
    return step


def axis_ticks(highest: Decimal, *, whole: bool, count: int = 4) -> list[Decimal]:
    """0 and up to `count` evenly spaced round values, the last at or above `highest`."""
    step = nice_step(highest / count, whole=whole)
    steps = max(int((highest / step).to_integral_value(rounding=ROUND_CEILING)), 1)
    return [step * index for index in range(steps + 1)]


def bar_chart(
    *,
    chart_id: str,
    title: str,
    value_heading: str,
    points: Sequence[Point],
    format_value: Callable[[Number], str] = format_count,
    color: str = "#3730a3",
    whole: bool = True,
) -> Chart:
    """A bar per point, a value axis with round ticks, and labels under every few bars."""
    shown = [ShownPoint(p.label, p.full_label, p.value, format_value(p.value)) for p in points]
    values = [Decimal(p.value) for p in points]
    highest = max(values, default=Decimal(0))
    ticks = axis_ticks(highest, whole=whole)
    top = ticks[-1]
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    baseline = TOP + plot_height

    def height_of(value: Decimal) -> float:
        return float(value / top) * plot_height

    tick_rows = []
    for value in ticks:
        y, tick = baseline - height_of(value), format_value(value)
        tick_rows.append((LEFT, WIDTH - RIGHT, _n(y), _n(y), GRID_COLOR, LEFT - 6, _n(y + 4), LABEL_COLOR, tick))
    grid = format_html_join(
        "",
        '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="1"/>'
        '<text x="{}" y="{}" text-anchor="end" font-size="11" fill="{}">{}</text>',
        tick_rows,
    )
    slot = plot_width / max(len(points), 1)
    bar_width = max(slot * 0.7, 1.0)
    bars = format_html_join(
        "",
        '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}: {}</title></rect>',
        (
            (
                _n(LEFT + index * slot + (slot - bar_width) / 2),
                _n(baseline - height_of(value)),
                _n(bar_width),
                _n(height_of(value)),
                color,
                point.full_label,
                point.shown,
            )
            for index, (point, value) in enumerate(zip(shown, values, strict=True))
            if value > 0
        ),
    )
    every = max(-(-len(points) // MAX_X_LABELS), 1)
    x_labels = format_html_join(
        "",
        '<text x="{}" y="{}" text-anchor="middle" font-size="11" fill="{}">{}</text>',
        (
            (_n(LEFT + index * slot + slot / 2), baseline + 18, LABEL_COLOR, point.label)
            for index, point in enumerate(shown)
            if index % every == 0
        ),
    )
    description = describe(title, shown, values, format_value)
    svg = format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {} {}" width="100%" role="img" '
        'aria-labelledby="{}-title {}-desc" preserveAspectRatio="xMidYMid meet">'
        '<title id="{}-title">{}</title><desc id="{}-desc">{}</desc>'
        "{}{}"
        '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="1"/>'
        "{}</svg>",
        WIDTH,
        HEIGHT,
        chart_id,
        chart_id,
        chart_id,
        title,
        chart_id,
        description,
        grid,
        bars,
        LEFT,
        WIDTH - RIGHT,
        baseline,
        baseline,
        AXIS_COLOR,
        x_labels,
    )
    return Chart(chart_id, title, description, value_heading, shown, svg)


def describe(title: str, shown: list[ShownPoint], values: list[Decimal], format_value) -> str:
    """What a sighted reader takes from the chart: the span, the total and the peak."""
    if not shown:
        return f"{title}: no data."
    total = sum(values, Decimal(0))
    if total == 0:
        return f"{title}, {shown[0].full_label} to {shown[-1].full_label}: none."
    peak = max(range(len(values)), key=values.__getitem__)
    return (
        f"{title}, {shown[0].full_label} to {shown[-1].full_label}: {format_value(total)} in total, "
        f"highest {shown[peak].shown} at {shown[peak].full_label}."
    )


# Budget meters ------------------------------------------------------------------------------

METER_WIDTH, METER_HEIGHT = 200, 12
METER_TRACK = "#e5e7eb"
# Green, amber and red with at least 3:1 contrast against white (WCAG non-text contrast).
METER_COLORS = {"ok": "#15803d", "warning": "#b45309", "over": "#b91c1c"}
METER_WORDS = {"ok": "within budget", "warning": "past an alert threshold", "over": "at or over budget"}


@dataclass(frozen=True)
class Meter:
    spent: Decimal
    amount: Decimal
    percent: Decimal  # of the amount, one decimal, may exceed 100
    level: str  # ok, warning, over
    svg: SafeString

    @property
    def percent_text(self) -> str:
        return f"{self.percent:,.1f}%"

    @property
    def level_text(self) -> str:
        return METER_WORDS[self.level]

    @property
    def value_now(self) -> str:
        """For aria-valuenow, which must lie between aria-valuemin and aria-valuemax (0 and 100)."""
        return f"{min(self.percent, Decimal(100)):.1f}"


def meter_level(percent: Decimal, thresholds: Sequence[int]) -> str:
    """Red at or above 100%, amber from the first alert threshold below 100, green before."""
    if percent >= 100:
        return "over"
    warn_from = min((t for t in thresholds if t < 100), default=None)
    if warn_from is not None and percent >= warn_from:
        return "warning"
    return "ok"


def budget_meter(spent: Number, amount: Number, thresholds: Sequence[int]) -> Meter:
    """A horizontal bar of spend against a budget's amount, full at 100%; the page states the
    percentage in text beside it, so the colour is never the only signal."""
    spent, amount = Decimal(spent), Decimal(amount)
    percent = (spent * 100 / amount).quantize(Decimal("0.1")) if amount > 0 else Decimal(0)
    level = meter_level(percent, thresholds)
    filled = float(min(max(percent, Decimal(0)), Decimal(100)) / 100) * METER_WIDTH
    svg = format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" class="meter-bar" viewBox="0 0 {} {}" width="{}" height="{}" '
        'aria-hidden="true" focusable="false">'
        '<rect x="0" y="0" width="{}" height="{}" rx="3" fill="{}"/>'
        '<rect x="0" y="0" width="{}" height="{}" rx="3" fill="{}"/></svg>',
        METER_WIDTH,
        METER_HEIGHT,
        METER_WIDTH,
        METER_HEIGHT,
        METER_WIDTH,
        METER_HEIGHT,
        METER_TRACK,
        _n(filled),
        METER_HEIGHT,
        METER_COLORS[level],
    )
    return Meter(spent, amount, percent, level, svg)
