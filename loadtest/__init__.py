"""Load and latency benchmarks; they print figures, tests never time anything."""
