"""Plain SVG figures for the docs (no plotting dependency)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from infermeter.throttle.experiments.fairness import HEAVY, LIGHTS, RunResult

HEAVY_COLOUR = "#d62728"
LIGHT_COLOUR = "#1f77b4"


def _text(x: float, y: float, s: str, size: int = 12, anchor: str = "start", **extra: str) -> str:
    attrs = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in extra.items())
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"'
        f' font-family="sans-serif"{attrs}>{escape(s)}</text>'
    )


def _series_panel(
    x0: float, y0: float, w: float, h: float, result: RunResult, title: str, ymax: float
) -> list[str]:
    out = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    out.append(_text(x0 + w / 2, y0 - 8, title, 13, "middle", font_weight="bold"))
    for frac in (0.0, 0.5, 1.0):
        y = y0 + h - frac * h
        out.append(_text(x0 - 6, y + 4, f"{ymax * frac:.0f}", 10, "end"))
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#eee"/>')
    n = len(result.heavy_series)
    cap_y = y0 + h - result.capacity / ymax * h
    out.append(
        f'<line x1="{x0}" y1="{cap_y:.1f}" x2="{x0 + w}" y2="{cap_y:.1f}" stroke="#555" '
        'stroke-dasharray="4 3"/>'
    )
    out.append(_text(x0 + w - 4, cap_y - 4, "pool capacity", 10, "end", fill="#555"))

    def path(values: Sequence[float], colour: str) -> str:
        pts = " ".join(
            f"{x0 + (i + 0.5) / n * w:.1f},{y0 + h - min(v, ymax) / ymax * h:.1f}"
            for i, v in enumerate(values)
        )
        return f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>'

    out.append(path(result.heavy_series, HEAVY_COLOUR))
    out.append(path(result.light_series, LIGHT_COLOUR))
    out.append(_text(x0 + w / 2, y0 + h + 16, "time (s)", 10, "middle"))
    out.append(_text(x0, y0 + h + 16, "0", 10, "middle"))
    out.append(_text(x0 + w, y0 + h + 16, f"{result.duration_s:.0f}", 10, "middle"))
    return out


def fairness_svg(fair: RunResult, rpm: RunResult, alone: RunResult, fair_latency: float) -> str:
    """Service over time (heavy vs the nine light tenants) and light-tenant latency."""
    width, height = 980, 430
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        '<rect width="100%" height="100%" fill="white"/>',
        _text(
            width / 2,
            22,
            "One heavy tenant, nine light ones, saturated pool: served work (units/s)",
            15,
            "middle",
            font_weight="bold",
        ),
    ]
    ymax = fair.capacity * 1.2
    out += _series_panel(60, 60, 270, 250, fair, "fair share (VTC) under pressure", ymax)
    out += _series_panel(380, 60, 270, 250, rpm, "plain requests-per-minute limit", ymax)
    # legend
    out.append(f'<rect x="60" y="345" width="14" height="4" fill="{HEAVY_COLOUR}"/>')
    out.append(_text(80, 351, "heavy tenant", 11))
    out.append(f'<rect x="170" y="345" width="14" height="4" fill="{LIGHT_COLOUR}"/>')
    out.append(_text(190, 351, "nine light tenants together", 11))
    # latency bars
    bx, by, bw, bh = 730, 60, 220, 250
    out.append(
        _text(bx + bw / 2, by - 8, "light-tenant latency (s)", 13, "middle", font_weight="bold")
    )
    runs = [("fair share", fair), ("RPM limit", rpm), ("lights alone", alone)]
    top = max(r.light_latency(0.95) for _, r in runs) * 1.1
    slot = bw / len(runs)
    for i, (label, r) in enumerate(runs):
        for j, (q, shade) in enumerate(((0.5, LIGHT_COLOUR), (0.95, "#9ecae1"))):
            v = r.light_latency(q)
            bar_h = v / top * bh
            x = bx + i * slot + 8 + j * (slot - 16) / 2
            out.append(
                f'<rect x="{x:.1f}" y="{by + bh - bar_h:.1f}" width="{(slot - 16) / 2 - 2:.1f}" '
                f'height="{bar_h:.1f}" fill="{shade}"/>'
            )
            out.append(_text(x + (slot - 16) / 4, by + bh - bar_h - 3, f"{v:.1f}", 9, "middle"))
        out.append(_text(bx + i * slot + slot / 2, by + bh + 14, label, 10, "middle"))
    fy = by + bh - fair_latency / top * bh
    out.append(
        f'<line x1="{bx}" y1="{fy:.1f}" x2="{bx + bw}" y2="{fy:.1f}" stroke="#2ca02c" '
        'stroke-dasharray="4 3"/>'
    )
    out.append(
        _text(
            bx + 4,
            by + 12,
            f"green line: fair-share latency {fair_latency:.1f} s",
            9,
            fill="#2ca02c",
        )
    )
    out.append(_text(bx, by + bh + 30, "dark: p50, light: p95", 10))
    # numbers
    lines = []
    for label, r in (("fair share", fair), ("RPM limit", rpm)):
        mm = sum(r.max_min_shares()[t] for t in LIGHTS)
        heavy = r.tenants[HEAVY]
        lines.append(
            f"{label}: light share {r.light_share():.1%} (max-min fair {mm:.1%}), light demand "
            f"served {r.light_demand_served():.1%}, heavy refused {heavy.refused}/{heavy.sent}, "
            f"light p50/p95 {r.light_latency(0.5):.2f}/{r.light_latency(0.95):.2f} s"
        )
    for k, line in enumerate(lines):
        out.append(_text(60, 380 + 18 * k, line, 11))
    out.append("</svg>")
    return "\n".join(out) + "\n"
