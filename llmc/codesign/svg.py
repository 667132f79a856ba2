"""A roofline chart as inline SVG, with no plotting library: what every ``llmc compile`` report
embeds in ``report.html`` (milliseconds to draw; ``llmc roofline --plot`` uses matplotlib)."""

from __future__ import annotations

import html
import math
from typing import Any

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
W, H = 460, 360
ML, MR, MT, MB = 62, 12, 28, 44


def _points(report: Any, stage: str) -> list[tuple[float, float, float, list[str]]]:
    tot = report.totals[stage]["time_ms"] or 1.0
    pts: list[tuple[float, float, float, list[str]]] = []
    for g in report.groups(stage):
        if g.flops <= 0 or g.bytes <= 0 or g.time_ms <= 0:
            continue
        x, y, share = g.intensity, g.flops / (g.time_ms / 1e3), g.time_ms / tot
        for i, (px, py, ps, names) in enumerate(pts):
            if abs(math.log(px / x)) < 0.03 and abs(math.log(py / y)) < 0.03:
                pts[i] = (px, py, ps + share, [*names, g.group])
                break
        else:
            pts.append((x, y, share, [g.group]))
    return pts


def _panel(report: Any, stage: str, ox: float) -> list[str]:
    spec = report.spec
    bw = spec["mem_bandwidth"]
    pts = _points(report, stage)
    dtypes = sorted({g.peak_dtype for g in report.groups(stage) if g.peak_dtype} or {"f32"})
    peaks = {d: spec["peak_flops"][d] for d in dtypes if d in spec["peak_flops"]}
    top = max(peaks.values()) if peaks else 1e12
    xs = [p[0] for p in pts] + [v / bw for v in peaks.values()]
    x0 = 10 ** math.floor(math.log10(min(xs + [1.0]) / 2))
    x1 = 10 ** math.ceil(math.log10(max(xs) * 4))
    y1 = 10 ** math.ceil(math.log10(top * 1.5))
    y0 = 10 ** math.floor(math.log10(min([p[1] for p in pts] + [x0 * bw]) / 2))
    pw, ph = W - ML - MR, H - MT - MB

    def sx(x: float) -> float:
        return ox + ML + pw * (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))

    def sy(y: float) -> float:
        return MT + ph * (1 - (math.log10(y) - math.log10(y0)) / (math.log10(y1) - math.log10(y0)))

    out = [f'<rect x="{ox + ML}" y="{MT}" width="{pw}" height="{ph}" fill="white" stroke="#888"/>']
    for k in range(round(math.log10(x0)), round(math.log10(x1)) + 1):
        x = sx(10**k)
        out.append(f'<line x1="{x:.1f}" y1="{MT}" x2="{x:.1f}" y2="{MT + ph}" stroke="#eee"/>')
        out.append(
            f'<text x="{x:.1f}" y="{MT + ph + 14}" font-size="10" text-anchor="middle">1e{k}</text>'
        )
    for k in range(round(math.log10(y0)), round(math.log10(y1)) + 1):
        y = sy(10**k)
        out.append(
            f'<line x1="{ox + ML}" y1="{y:.1f}" x2="{ox + ML + pw}" y2="{y:.1f}" stroke="#eee"/>'
        )
        out.append(
            f'<text x="{ox + ML - 4}" y="{y + 3:.1f}" font-size="10" text-anchor="end">1e{k}</text>'
        )
    for i, (d, peak) in enumerate(sorted(peaks.items())):
        ridge = peak / bw
        xa = max(x0, y0 / bw)
        path = [(xa, xa * bw), (ridge, peak), (x1, peak)]
        pts_s = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in path)
        out.append(
            f'<polyline points="{pts_s}" fill="none" stroke="#333" stroke-width="1.5" '
            f'stroke-dasharray="{"" if i == 0 else "4,3"}"/>'
        )
        out.append(
            f'<text x="{sx(x1) - 4:.1f}" y="{sy(peak) - 4:.1f}" font-size="10" '
            f'text-anchor="end">{html.escape(d)} {peak / 1e12:.3g} TFLOP/s</text>'
        )
    out.append(f'<text x="{ox + ML + 6}" y="{MT + 14}" font-size="10">{bw / 1e9:.0f} GB/s</text>')
    legend_y = MT + 28
    for i, (x, y, share, names) in enumerate(pts):
        c = PALETTE[i % len(PALETTE)]
        r = 3 + 14 * math.sqrt(share)
        label = html.escape(f"{', '.join(names)} ({100 * share:.0f}%)")
        out.append(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{r:.1f}" fill="{c}" fill-opacity="0.7" '
            f'stroke="black" stroke-width="0.5"><title>{label}</title></circle>'
        )
        out.append(f'<circle cx="{ox + ML + 10}" cy="{legend_y - 3}" r="4" fill="{c}"/>')
        out.append(f'<text x="{ox + ML + 18}" y="{legend_y}" font-size="9">{label}</text>')
        legend_y += 12
    sc = report.scenario
    what = f"prompt {sc.prompt}" if stage == "prefill" else f"cache {sc.env('decode')['past']}"
    out.append(
        f'<text x="{ox + ML + pw / 2}" y="{MT - 10}" font-size="12" text-anchor="middle">'
        f"{stage} (batch {sc.batch}, {what})</text>"
    )
    out.append(
        f'<text x="{ox + ML + pw / 2}" y="{H - 8}" font-size="11" text-anchor="middle">'
        "FLOP/byte</text>"
    )
    out.append(
        f'<text x="{ox + 12}" y="{MT + ph / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 {ox + 12} {MT + ph / 2})">FLOP/s</text>'
    )
    return out


def roofline_svg(report: Any) -> str:
    """Both stages side by side (each op group summed over layers; area = share of time)."""
    body = _panel(report, "prefill", 0) + _panel(report, "decode", W)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H}" '
        f'viewBox="0 0 {2 * W} {H}" font-family="sans-serif">' + "".join(body) + "</svg>"
    )
