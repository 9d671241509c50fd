"""What fitting a prompt to a tier's window costs the gateway, per tier and prompt size.

    python -m loadtest.bench_tokens [--fits 300]

Builds the gateway's tiers from the default config (each with its model's tokenizer) and
times `Tier.prompt` on a question with 0 to 4 sources of about 180 tokens each, in this
process, one core. A prompt whose UTF-8 bytes already leave room for max_tokens is not
counted at all; a longer one is tokenized, once per source dropped.
"""

from __future__ import annotations

import argparse
import time

from services.config.gateway import GatewayConfig
from services.contract.prompt import Source
from services.gateway.tiers import Tier, Tiers

QUESTION = "How do I parse a JSON string?"
TEXT = "The json module parses JSON strings with json.loads, which returns Python objects. " * 9
MAX_TOKENS = 256


def _time(tier: Tier, sources: list[Source], fits: int) -> tuple[float, int]:
    """Milliseconds per fit, and the fitted prompt's tokens (its model's count)."""
    started = time.perf_counter()
    for _ in range(fits):
        fitted = tier.prompt(QUESTION, sources, MAX_TOKENS)
    elapsed = time.perf_counter() - started
    return elapsed / fits * 1000, tier.count(fitted.prompt) + tier.config.template_tokens


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=300)
    args = parser.parse_args(argv)
    tiers = Tiers(GatewayConfig())
    sources = [Source(f"d{i}", f"d{i}#0", TEXT) for i in range(4)]
    print(f"{'tier':<10}{'sources':>8}{'prompt tokens':>15}{'ms a fit':>10}")
    for tier in tiers.all():
        for count in range(len(sources) + 1):
            ms, size = _time(tier, sources[:count], args.fits)
            print(f"{tier.name:<10}{count:>8}{size:>15}{ms:>10.3f}")


if __name__ == "__main__":
    main()
