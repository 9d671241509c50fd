"""The topology page: what the diagram draws from a view, escaping, and a self-contained page."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from services.console.page import render_page, render_svg

SVG = "{http://www.w3.org/2000/svg}"
DASH = "\u2013"  # an en dash, what the page shows for no data
LAYERS = ("client", "edge", "gateway", "retrieval", "inference", "telemetry")


def node(rps=12.5, p95=14.0, p99=38.0, up=True, **extra):
    return {"up": up, "rps": rps, "p95_ms": p95, "p99_ms": p99, "error_rate": 0.0, **extra}


def view(remote="remote", breaker="triton 127.0.0.1:8001"):
    """Two regions: local carries the traffic; remote is idle, unhealthy and partly down."""
    local = {
        "name": "local",
        "priority": 0,
        "healthy": True,
        "gateway": node(
            cache_hit_ratio=0.25,
            continuations_per_s=0.25,
            continuation_gap_p95_ms=820.0,
            breakers=[{"name": "retrieval", "state": "closed"}, {"name": breaker, "state": "open"}],
        ),
        "retrieval": node(p95=9.0, p99=20.0),
        "inference": node(rps=25.0, p95=3.0, p99=6.0),
    }
    far = {
        "name": remote,
        "priority": 1,
        "healthy": False,
        "gateway": node(rps=0.0, cache_hit_ratio=None, breakers=[]),
        "retrieval": node(rps=0.0, p95=None, p99=None),
        "inference": node(rps=0.0, p95=None, p99=None, up=False),
    }
    links = [{"from": "client", "to": "edge", "rps": 12.5}]
    for name, rps in (("local", 12.5), (remote, 0.0)):
        links += [
            {"from": "edge", "to": f"gateway-{name}", "rps": rps},
            {"from": f"gateway-{name}", "to": f"retrieval-{name}", "rps": rps},
            {"from": f"gateway-{name}", "to": f"inference-{name}", "rps": rps},
            {"from": f"retrieval-{name}", "to": f"inference-{name}", "rps": rps},
        ]
    return {
        "time": "2026-11-27T03:50:00Z",
        "window_s": 30.0,
        "edge": node(p95=15.2, p99=40.1),
        "regions": [local, far],
        "links": links,
        "telemetry": {
            "up": True,
            "detail": ["otlp → http://127.0.0.1:6006", "prometheus: 7/7 endpoints"],
        },
    }


def parse(svg):
    return ET.fromstring(svg)


def by_attr(root, name):
    return {e.get(name): e for e in root.iter() if e.get(name) is not None}


def texts(element):
    return ["".join(t.itertext()) for t in element.iter(f"{SVG}text")]


def test_svg_is_well_formed_and_deterministic():
    root = parse(render_svg(view()))
    assert root.tag == f"{SVG}svg"
    assert root.get("id") == "topology"
    assert root.get("width") == "100%"
    assert root.get("viewBox", "").startswith("0 0 ")
    assert render_svg(view()) == render_svg(view())


def test_every_layer_label_and_node_is_drawn():
    root = parse(render_svg(view()))
    labels = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "layer"]
    assert labels == list(LAYERS)
    expected = {"client", "edge", "telemetry"} | {
        f"{layer}-{region}"
        for layer in ("gateway", "retrieval", "inference")
        for region in ("local", "remote")
    }
    assert set(by_attr(root, "data-node")) == expected


def test_region_header_shows_name_priority_and_health():
    shown = texts(parse(render_svg(view())))
    assert {"local", "remote", "priority 0", "priority 1", "healthy", "unhealthy"} <= set(shown)


def test_node_overlays_are_formatted():
    nodes = by_attr(parse(render_svg(view())), "data-node")
    gateway = texts(nodes["gateway-local"])
    assert gateway[:6] == [
        "gateway",
        "12.5 rps",
        "p95 14 ms · p99 38 ms",
        "err 0.0%",
        "cache hit 25%",
        "continued 0.25/s · gap p95 820 ms",
    ]
    assert texts(nodes["inference-local"])[1:3] == ["25.0 rps", "p95 3.0 ms · p99 6.0 ms"]
    assert "p95 15 ms · p99 40 ms" in texts(nodes["edge"])
    assert f"cache {DASH}" in texts(nodes["gateway-remote"])
    assert f"continued {DASH} · gap p95 {DASH}" in texts(nodes["gateway-remote"])
    assert "otlp → http://127.0.0.1:6006" in texts(nodes["telemetry"])


def test_missing_latencies_render_as_a_dash():
    nodes = by_attr(parse(render_svg(view())), "data-node")
    assert f"p95 {DASH} · p99 {DASH}" in texts(nodes["retrieval-remote"])


def test_live_links_pulse_and_idle_links_do_not():
    links = by_attr(parse(render_svg(view())), "data-link")
    live = links["edge>gateway-local"]
    assert live.get("class") == "live link"
    assert re.fullmatch(r"animation-duration: \d\.\d\ds", live.get("style"))
    idle = links["edge>gateway-remote"]
    assert "live" not in idle.get("class").split()
    assert idle.get("style") is None
    assert "retrieval-local>inference-local" in links
    assert "inference-remote>telemetry" in links


def test_pulses_speed_up_with_traffic_within_bounds():
    def duration(rps):
        v = view()
        v["links"][0]["rps"] = rps
        link = by_attr(parse(render_svg(v)), "data-link")["client>edge"]
        return float(link.get("style").split(": ")[1].rstrip("s"))

    assert duration(0.001) == 3.0
    assert 3.0 > duration(1.0) > duration(50.0) > 0.4
    assert duration(1e9) == 0.4


def test_breakers_are_colored_by_state():
    gateway = by_attr(parse(render_svg(view())), "data-node")["gateway-local"]
    states = {
        t.text: t.get("class").split()[-1]
        for t in gateway.iter(f"{SVG}text")
        if "breaker-" in t.get("class")
    }
    assert states == {"closed": "breaker-closed", "open": "breaker-open"}
    assert texts(gateway)[6:10:2] == ["retrieval", "triton 127.0.0.1:8001"]
    assert ".breaker-open{fill:#ef4444" in render_svg(view())


def test_a_down_node_says_so():
    nodes = by_attr(parse(render_svg(view())), "data-node")
    assert nodes["inference-remote"].get("class") == "node down"
    assert "down" in texts(nodes["inference-remote"])
    assert nodes["inference-local"].get("class") == "node"
    assert "down" not in texts(nodes["inference-local"])


def test_strings_from_the_view_are_escaped():
    svg = render_svg(view(remote="<x>", breaker='<b>&"'))
    assert "<x>" not in svg and "&lt;x&gt;" in svg
    assert "<b>" not in svg and "&lt;b&gt;&amp;&quot;" in svg
    nodes = by_attr(parse(svg), "data-node")
    assert "gateway-<x>" in nodes
    assert '<b>&"' in texts(nodes["gateway-local"])


def test_page_embeds_the_diagram_and_refreshes_it():
    v = view()
    page = render_page(v, refresh_s=2.0)
    assert page.startswith("<!doctype html>")
    assert "<title>ragmesh topology</title>" in page
    assert f'<div id="diagram" data-refresh-ms="2000">{render_svg(v)}</div>' in page
    assert "fetch('/topology/svg', {cache: 'no-store'})" in page
    assert '<noscript><meta http-equiv="refresh" content="2"></noscript>' in page
    assert "2026-11-27T03:50:00Z · last 30 s" in page
    assert 'id="stale" hidden' in page


def test_page_loads_nothing_from_elsewhere():
    page = render_page(view(), refresh_s=2.0)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "@import" not in page and "url(http" not in page
    # The only URLs: the SVG namespace (a name, never fetched) and the view's own text.
    namespace = 'xmlns="http://www.w3.org/2000/svg"'
    urls = len(re.findall(r"https?:", page))
    assert urls == page.count(namespace) + page.count("http://127.0.0.1:6006") == 2
