"""Prometheus text, read: one scrape of one endpoint, and the sums, rates and percentiles
the topology page and `ragmesh slo` compute from two scrapes of it."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Scrape:
    """Every sample of one endpoint at one moment: (name, sorted labels) -> value."""

    samples: Mapping[tuple[str, Labels], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
        return cls(samples)

    def total(self, name: str, **match: str) -> float:
        """Sum of `name` over every series whose labels include `match`."""
        return sum(v for labels, v in self._series(name, match))

    def buckets(self, name: str, **match: str) -> list[tuple[float, float]]:
        """Cumulative (upper bound, count) of histogram `name`, series matching `match` added."""
        counts: dict[float, float] = {}
        for labels, value in self._series(f"{name}_bucket", match):
            le = float(dict(labels)["le"])
            counts[le] = counts.get(le, 0.0) + value
        return sorted(counts.items())

    def _series(self, name: str, match: Mapping[str, str]) -> list[tuple[Labels, float]]:
        wanted = set(match.items())
        return [
            (labels, v)
            for (n, labels), v in self.samples.items()
            if n == name and wanted <= set(labels)
        ]

    def since(self, earlier: Scrape | None) -> Scrape:
        """What happened between `earlier` and this scrape: counters as differences; a
        series that went down (its process restarted) counts from zero."""
        if earlier is None:
            return self
        old = earlier.samples
        return Scrape(
            {k: v - old[k] if old.get(k, math.inf) <= v else v for k, v in self.samples.items()}
        )


def fetch(url: str) -> Scrape | None:
    """One scrape; None when the endpoint does not answer (a process down)."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return Scrape.parse(response.read().decode("utf-8"))
    except (OSError, ValueError):
        return None


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus's histogram_quantile: linear within the bucket that holds rank q.

    None without observations; the highest finite bound when q falls in the +Inf bucket.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound
