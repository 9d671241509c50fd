"""The topology page: the blueprint's diagram drawn live from a view (see layers.view).

Plain HTML with inline CSS, SVG and a few lines of script, no external assets. Bands top to
bottom: client, edge, then one column per region (gateway, retrieval, inference), telemetry.
Links that carry traffic pulse, faster with more requests; the page fetches /topology/svg
every refresh_s seconds and swaps the diagram in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Any

LABEL_W, COL_W, NODE_W, TEL_W = 110, 336, 236, 280  # left gutter, region column, cards
LINE_H, GAP, CLIENT_H, TOP = 17, 56, 36, 24
HEAD_H, HEAD_GAP = 54, 138  # a region's header; from the edge's bottom to the gateways' top
BANDS = ("client", "edge", "gateway", "retrieval", "inference", "telemetry")
LAYERS = BANDS[2:5]  # the services of one region, top to bottom
END = 'text-anchor="end"'
Line = tuple[str, str, str]  # a card's text line: left text, right text, right text's class
Label = tuple[int, int, str, int]  # a link's rate label: x, y, text-anchor, rotation
Rates = dict[tuple[str, str], float]  # rps by (from, to)
NONE = "\u2013"  # an en dash: no data

SVG_STYLE = """
.band{fill:#fff;fill-opacity:.025}
.layer{fill:#64748b;font:600 12px ui-sans-serif,system-ui,sans-serif;letter-spacing:.06em}
.region{fill:#0f172a;fill-opacity:.55;stroke:#1e293b}
.region.unhealthy{stroke:#7f1d1d}
.region-name{fill:#f8fafc;font:600 14px ui-sans-serif,system-ui,sans-serif}
.card{fill:url(#card);stroke:#2b3a55}
.node.down{opacity:.6}
.node.down .card{fill:#2a1215;stroke:#ef4444;stroke-width:1.5}
.title{fill:#f1f5f9;font:600 13px ui-sans-serif,system-ui,sans-serif}
.metric{fill:#cbd5e1;font:10.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.muted{fill:#7c8aa5}
.down-label{fill:#ef4444;font:700 11px ui-sans-serif,system-ui,sans-serif}
.up-dot{fill:#22c55e}
.breaker-closed{fill:#22c55e}
.breaker-half_open{fill:#f59e0b}
.breaker-open{fill:#ef4444;font-weight:700}
.badge text{font:600 10px ui-sans-serif,system-ui,sans-serif}
.badge.healthy rect{fill:#052e16;stroke:#166534}
.badge.healthy text{fill:#4ade80}
.badge.unhealthy rect{fill:#450a0a;stroke:#991b1b}
.badge.unhealthy text{fill:#f87171}
.link,.track,.telemetry-link{fill:none}
.link{stroke-width:2}
.link.idle{stroke:#334155}
.link.live{stroke:#38bdf8;stroke-dasharray:4 12;stroke-linecap:round;
 animation:pulse 1s linear infinite}
.track{stroke:#0ea5e9;stroke-opacity:.18;stroke-width:5}
.telemetry-link{stroke:#a78bfa;stroke-opacity:.35;stroke-dasharray:3 5}
.rate{fill:#7dd3fc;font:10.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
 paint-order:stroke;stroke:#0b1120;stroke-width:4px;stroke-linejoin:round}
@keyframes pulse{to{stroke-dashoffset:-16}}
"""
SVG_DEFS = (
    '<defs><linearGradient id="card" x1="0" y1="0" x2="0" y2="1">'
    '<stop offset="0" stop-color="#1c2639"/><stop offset="1" stop-color="#121a2a"/>'
    '</linearGradient><radialGradient id="bg" cx="50%" cy="0%" r="100%">'
    '<stop offset="0" stop-color="#131b31"/><stop offset="1" stop-color="#090e1a"/>'
    "</radialGradient></defs>"
)
PAGE_STYLE = """
:root{color-scheme:dark}
body{margin:0;background:#070b14;color:#e2e8f0;font:14px ui-sans-serif,system-ui,sans-serif}
header{display:flex;align-items:baseline;gap:16px;padding:16px 24px;border-bottom:1px solid #1e293b}
h1{margin:0;font-size:17px;font-weight:600;letter-spacing:.02em}
.meta{color:#7c8aa5;font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
#stale{color:#f59e0b;font-weight:600}
#diagram{padding:20px 24px}
"""
# Swaps in a fresh diagram every refresh; a failed fetch keeps the old one and marks it stale.
SCRIPT = """
const diagram = document.getElementById('diagram');
const caption = document.getElementById('caption');
const stale = document.getElementById('stale');
const every = Number(diagram.dataset.refreshMs);
async function redraw() {
  try {
    const response = await fetch('/topology/svg', {cache: 'no-store'});
    if (!response.ok) throw new Error(response.statusText);
    diagram.innerHTML = await response.text();
    caption.textContent = diagram.querySelector('svg').dataset.caption;
    document.getAnimations().forEach((a) => { a.startTime = 0; });  // pulses keep their phase
    stale.hidden = true;
  } catch (err) {
    stale.hidden = false;
  }
  setTimeout(redraw, every);
}
setTimeout(redraw, every);
"""


def _card_h(lines: int) -> int:
    return 34 + LINE_H * lines


SERVICE_H = _card_h(3)


@dataclass(frozen=True)
class Rows:
    """Top y and height of each band; the gateway and telemetry cards grow with content."""

    y: dict[str, int]
    h: dict[str, int]
    height: int

    def bottom(self, band: str) -> int:
        return self.y[band] + self.h[band]


def _rows(gateway_h: int, telemetry_h: int) -> Rows:
    """Bands top to bottom; above the gateway band sits room for the region headers."""
    heights = (CLIENT_H, SERVICE_H, gateway_h, SERVICE_H, SERVICE_H, telemetry_h)
    h = dict(zip(BANDS, heights, strict=True))
    gaps = (TOP, GAP, HEAD_GAP, GAP, GAP, GAP + 24)
    y, at = {}, 0
    for band, gap in zip(BANDS, gaps, strict=True):
        y[band], at = at + gap, at + gap + h[band]
    return Rows(y=y, h=h, height=at + TOP)


def _ms(value: float | None) -> str:
    if value is None:
        return NONE
    return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"


def _rps(value: float | None) -> str:
    return f"{NONE} rps" if value is None else f"{value:.1f} rps"


def _duration(rps: float) -> float:
    """Seconds per pulse: 3 s for a trickle, faster with more traffic, never under 0.4 s."""
    return min(3.0, max(0.4, 3.0 / (1.0 + math.log2(1.0 + rps) / 2.0)))


def _metrics(node: dict[str, Any]) -> list[Line]:
    err = node.get("error_rate")
    lines: list[Line] = [
        (_rps(node.get("rps")), "", ""),
        (f"p95 {_ms(node.get('p95_ms'))} · p99 {_ms(node.get('p99_ms'))}", "", ""),
        (f"err {NONE}" if err is None else f"err {100 * err:.1f}%", "", ""),
    ]
    if "breakers" in node:  # the gateway
        hit = node.get("cache_hit_ratio")
        lines.append((f"cache {NONE}" if hit is None else f"cache hit {100 * hit:.0f}%", "", ""))
        rate, gap = node.get("continuations_per_s"), node.get("continuation_gap_p95_ms")
        went_on = f"continued {NONE}" if rate is None else f"continued {rate:.2f}/s"
        lines.append((f"{went_on} · gap p95 {_ms(gap)}", "", ""))
        for breaker in node["breakers"]:
            name, state = str(breaker["name"]), str(breaker["state"])
            name = name if len(name) <= 22 else name[:21] + "…"  # leave room for the state
            lines.append((name, state, f"breaker-{state}"))
    return lines


def _node(
    node_id: str,
    title: str,
    xy: tuple[int, int],
    w: int,
    lines: list[Line],
    up: bool | None,
    min_h: int = 0,
) -> str:
    """A card: title, up dot or "down", then one text line each (right parts right-aligned)."""
    (x, y), h = xy, max(min_h, _card_h(len(lines)) if lines else CLIENT_H)
    out = [
        f'<g class="{"node down" if up is False else "node"}" data-node="{escape(node_id)}">',
        f'<rect class="card" x="{x}" y="{y}" width="{w}" height="{h}" rx="10"/>',
        f'<text class="title" x="{x + 14}" y="{y + 22}">{escape(title)}</text>',
    ]
    if up is False:
        out.append(f'<text class="down-label" x="{x + w - 14}" y="{y + 22}" {END}>down</text>')
    elif up:
        out.append(f'<circle class="up-dot" cx="{x + w - 18}" cy="{y + 18}" r="4"/>')
    for i, (left, right, cls) in enumerate(lines):
        ly = y + 24 + LINE_H * (i + 1)
        out.append(f'<text class="metric" x="{x + 14}" y="{ly}">{escape(left)}</text>')
        if right:
            out.append(
                f'<text class="metric {escape(cls)}" x="{x + w - 14}" y="{ly}" {END}>'
                f"{escape(right)}</text>"
            )
    return "".join(out) + "</g>"


def _link(rates: Rates, src: str, dst: str, d: str, at: Label, prefix: str = "") -> str:
    """A topology link: pulsing, with its rate as a label, when it carries traffic; else grey."""
    rps, attr = rates.get((src, dst), 0.0), f'data-link="{escape(f"{src}>{dst}")}"'
    if rps <= 0:
        return f'<path class="idle link" {attr} d="{d}"/>'
    x, y, anchor, angle = at
    turn = f' transform="rotate({angle} {x} {y})"' if angle else ""
    pulse = f'style="animation-duration: {_duration(rps):.2f}s"'
    return (
        f'<path class="track" d="{d}"/><path class="live link" {attr} d="{d}" {pulse}/>'
        f'<text class="rate" x="{x}" y="{y}" text-anchor="{anchor}"{turn}>'
        f"{prefix}{_rps(rps)}</text>"
    )


def _band(label: str, top: int, h: int, width: int) -> str:
    return (
        f'<rect class="band" x="8" y="{top - 14}" width="{width - 16}" height="{h + 28}" rx="12"/>'
        f'<text class="layer" x="20" y="{top + h // 2 + 4}">{label}</text>'
    )


def _region_panel(region: dict[str, Any], col: int, rows: Rows) -> str:
    """The column's backdrop and its header: name, priority and a health badge."""
    x, y, w = col + 22, rows.y["gateway"] - HEAD_H, COL_W - 28
    badge = "healthy" if region.get("healthy") else "unhealthy"
    bw = 18 + 6 * len(badge)
    bx = x + w - 12 - bw
    return (
        f'<rect class="region {badge}" x="{x}" y="{y}" width="{w}" '
        f'height="{rows.bottom("inference") + 16 - y}" rx="14"/>'
        f'<text class="region-name" x="{x + 14}" y="{y + 22}">{escape(str(region["name"]))}</text>'
        f'<text class="metric muted" x="{x + 14}" y="{y + 38}">'
        f"priority {escape(str(region.get('priority')))}</text>"
        f'<g class="badge {badge}"><rect x="{bx}" y="{y + 10}" width="{bw}" height="18" rx="9"/>'
        f'<text x="{bx + bw // 2}" y="{y + 23}" text-anchor="middle">{badge}</text></g>'
    )


def _region_links(name: str, col: int, rows: Rows, rates: Rates, edge_x: int) -> str:
    """edge -> gateway (a curve), gateway -> retrieval -> inference (straight down) and
    gateway -> inference (down a lane right of the column, around retrieval)."""
    gw, ret, inf = (f"{layer}-{name}" for layer in LAYERS)
    x, lane, right = col + 36 + NODE_W // 2, col + 62 + NODE_W, col + 36 + NODE_W
    top, head = rows.bottom("edge"), rows.y["gateway"] - HEAD_H  # vertical through the header
    mid = (top + head) // 2
    curve = f"M{edge_x} {top} C{edge_x} {mid} {x} {mid} {x} {head} V{rows.y['gateway']}"
    curved = ((edge_x + x) // 2, mid - 8, "middle", 0)
    g_bot, r_bot = rows.bottom("gateway"), rows.bottom("retrieval")
    r_top, i_top = rows.y["retrieval"], rows.y["inference"]
    y1, y2 = g_bot - 18, i_top + 18
    around = f"M{right} {y1} H{lane - 12} Q{lane} {y1} {lane} {y1 + 12} V{y2 - 12} "
    around += f"Q{lane} {y2} {lane - 12} {y2} H{right}"
    straight, embed_at = (x + 8, mid + 4, "start", 0), (x + 8, r_bot + GAP // 2, "start", 0)
    return "".join(
        [
            _link(rates, "edge", gw, curve, straight if edge_x == x else curved),
            _link(rates, gw, ret, f"M{x} {g_bot} V{r_top}", (x + 8, g_bot + GAP // 2, "start", 0)),
            _link(rates, ret, inf, f"M{x} {r_bot} V{i_top}", embed_at, "embed "),
            _link(rates, gw, inf, around, (lane + 6, (y1 + y2) // 2, "middle", 90), "generate "),
        ]
    )


def _region_nodes(region: dict[str, Any], col: int, rows: Rows) -> str:
    """The region's three cards, each as tall as its band (gateways differ in breakers)."""
    cards = []
    for layer in LAYERS:
        node, xy = region.get(layer) or {}, (col + 36, rows.y[layer])
        lines, up = _metrics(node), node.get("up")
        cards.append(
            _node(f"{layer}-{region['name']}", layer, xy, NODE_W, lines, up, rows.h[layer])
        )
    return "".join(cards)


def _telemetry_links(regions: list[dict[str, Any]], rows: Rows, edge_x: int) -> str:
    """A dashed line from every service to telemetry, down a lane left of each column."""
    mid = {band: rows.y[band] + rows.h[band] // 2 for band in BANDS}
    sources = [("edge", edge_x - NODE_W // 2, mid["edge"], LABEL_W + 10)]
    for i, region in enumerate(regions):
        col = LABEL_W + i * COL_W
        sources += [
            (f"{layer}-{region['name']}", col + 36, mid[layer], col + 10) for layer in LAYERS
        ]
    lo, hi, bottom = edge_x - TEL_W // 2 + 16, edge_x + TEL_W // 2 - 16, rows.y["telemetry"]
    return "".join(
        f'<path class="telemetry-link" data-link="{escape(f"{node}>telemetry")}" '
        f'd="M{x} {y} H{lane} V{bottom - 18} L{min(max(lane, lo), hi)} {bottom}"/>'
        for node, x, y, lane in sources
    )


def _caption(view: dict[str, Any]) -> str:
    window = view.get("window_s")
    return f"{view.get('time', NONE)} · last {NONE if window is None else f'{window:g}'} s"


def render_svg(view: dict[str, Any]) -> str:
    """The diagram as one <svg id="topology">; the same view always gives the same text."""
    regions: list[dict[str, Any]] = view.get("regions") or []
    edge, telemetry = view.get("edge") or {}, view.get("telemetry") or {}
    detail: list[Line] = [(str(d), "", "") for d in telemetry.get("detail") or []]
    breakers = [len((r.get("gateway") or {}).get("breakers") or []) for r in regions]
    rows = _rows(_card_h(5 + max(breakers, default=0)), _card_h(len(detail)))
    cols = [(r, LABEL_W + i * COL_W) for i, r in enumerate(regions)]
    width = LABEL_W + max(len(cols), 1) * COL_W + 8
    edge_x = LABEL_W + 36 + NODE_W // 2 + max(len(cols) - 1, 0) * COL_W // 2  # columns' middle
    rates = {(str(k["from"]), str(k["to"])): float(k["rps"] or 0) for k in view.get("links") or []}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="topology" '
        f'viewBox="0 0 {width} {rows.height}" width="100%" '
        f'style="display:block;margin:0 auto;max-width:{width * 3 // 2}px" '
        f'data-caption="{escape(_caption(view))}">',
        f"<style>{SVG_STYLE}</style>{SVG_DEFS}",
        f'<rect fill="url(#bg)" width="{width}" height="{rows.height}" rx="16"/>',
        *(_band(band, rows.y[band], rows.h[band], width) for band in BANDS),
        *(_region_panel(r, col, rows) for r, col in cols),
        _telemetry_links(regions, rows, edge_x),
    ]
    y = rows.bottom("client")
    intake = f"M{edge_x} {y} V{rows.y['edge']}"
    parts.append(_link(rates, "client", "edge", intake, (edge_x + 8, y + GAP // 2, "start", 0)))
    parts += [_region_links(str(r["name"]), col, rows, rates, edge_x) for r, col in cols]
    x = edge_x - NODE_W // 2
    parts.append(_node("client", "client", (x, TOP), NODE_W, [], None))
    parts.append(
        _node("edge", "envoy edge", (x, rows.y["edge"]), NODE_W, _metrics(edge), edge.get("up"))
    )
    parts += [_region_nodes(r, col, rows) for r, col in cols]
    xy = (edge_x - TEL_W // 2, rows.y["telemetry"])
    parts.append(_node("telemetry", "telemetry", xy, TEL_W, detail, telemetry.get("up")))
    return "\n".join([*parts, "</svg>"])


def render_page(view: dict[str, Any], refresh_s: float) -> str:
    """The whole page: a header, the diagram, and the script that redraws it every refresh_s."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ragmesh topology</title>
<noscript><meta http-equiv="refresh" content="{max(1, round(refresh_s))}"></noscript>
<style>{PAGE_STYLE}</style>
</head>
<body>
<header><h1>ragmesh topology</h1><span class="meta" id="caption">{escape(_caption(view))}</span>
<span id="stale" hidden>stale</span></header>
<div id="diagram" data-refresh-ms="{round(refresh_s * 1000)}">{render_svg(view)}</div>
<script>{SCRIPT}</script>
</body>
</html>
"""
