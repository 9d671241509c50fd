"""The RAG evaluation: how well each tier answers the sample corpus's questions (issue 18).

    python -m loadtest.eval [--tiers economy,standard] [--limit N] [--out build/eval]
    python -m loadtest.eval --retrieval   # retrieval alone: dense against hybrid

Starts an isolated one-region mesh (free ports, a fresh data directory), ingests the sample
corpus (services/client/sample_corpus.py), then asks every question of
tests/fixtures/eval_set.jsonl (loadtest/eval/questions.py) through Envoy, one at a time,
tier by tier, and prints one column of figures per tier:

- recall@k: the share of answerable questions for which a Search with the question finds a
  chunk of one of its source documents among the top k (k: the gateway's default_top_k, the
  chunks a generation reads); also over the questions that name an exact identifier.
- citation precision: of the chunks the answers cite, the share that belong to a source
  document of the question or hold one of its key facts.
- correctness: the share of answerable questions whose answer holds every key fact
  (loadtest/eval/scoring.py says how text is compared).
- groundedness: the mean of the gateway's own groundedness score (the `groundedness`
  guardrail of the response, services/guardrails/grounding.py) over the answers that have
  one; a refusal claims nothing and has none.
- refusal: the share of unanswerable questions whose answer says the sources do not hold
  it; false refusal: the same said of an answerable question.
- loop rate: the share of answers that repeat themselves (an 8-word n-gram or a line, 3
  times).
- finish reasons, and time to first token and total latency (p50, p95) of GenerateStream,
  the answer cache skipped (`bypass_cache`).

Writes rows.csv (one row per question and tier, the answer included), summary.csv and
eval.json under --out. tests/integration/test_eval_gate.py runs a short form in `make test`.

`--retrieval` asks no tier: it ranks the set's questions and the held-out identifier
questions (tests/fixtures/identifier_set.jsonl) by vector alone and hybrid, side by side,
and writes retrieval.json (loadtest/eval/retrieval.py).

Libraries. The figures are our own short functions, after a look at the maintained offline
ones: pytrec_eval (trec_eval's `success@k` is our recall@k) needs scipy, and ranks
documents by score, breaking ties by document id, where we want retrieval's own order of
chunks folded into documents; ranx pulls numba, pandas and ir-datasets for the same sum;
rouge-score (with nltk) scores n-gram overlap F-measures, not whether a named fact is
present. None of them scores citations, refusals or loops, and groundedness is the
gateway's own check, so the eval reads it from the response rather than computing a
second one. No hosted or LLM judge: every figure is deterministic.
"""
