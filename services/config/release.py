"""The release section: the local release rings of `ragmesh release` (docs/deploy.md,
"Release rings") and the canary routes the edge renders for them."""

from __future__ import annotations

from dataclasses import dataclass

from services.config.loading import require


@dataclass(frozen=True, kw_only=True)
class ReleaseConfig:
    # Each region's canary gateway serves on its gateway's ports (gRPC, the OpenAI API,
    # metrics) plus this; the edge renders canary clusters and routes for them, inert until
    # a release sets their runtime keys. 0: no canary routes are rendered.
    canary_port_offset: int = 10
    # Ring 0: this share of the first region's requests goes to its canary.
    ring0_percent: int = 5
    # How long each ring runs before the gate judges the canary's own metrics.
    bake_s: float = 30.0
    # The canary must have served this many requests in a ring to be judged; until then the
    # ring's bake goes on, up to max_bake_s, after which the release stops and rolls back
    # ("not enough traffic").
    min_requests: int = 20
    max_bake_s: float = 120.0

    def __post_init__(self) -> None:
        require(
            0 <= self.canary_port_offset < 10000, "release.canary_port_offset", "must be 0..9999"
        )
        require(1 <= self.ring0_percent <= 100, "release.ring0_percent", "must be 1..100")
        require(self.bake_s > 0, "release.bake_s", "must be positive")
        require(self.min_requests >= 1, "release.min_requests", "must be at least 1")
        require(self.max_bake_s >= self.bake_s, "release.max_bake_s", "must be >= bake_s")
