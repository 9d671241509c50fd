"""Guardrails: checks on what goes into a model and what comes out, shared by the planes.

`injection` (with its rule table, `injection_rules`) reads a text for prompt injection:
the gateway on questions, retrieval on chunks at ingest. `citations` says which sources an
answer rests on and removes markers naming none; `grounding` scores how well the sources
support an answer. No gRPC, no network; the gateway's services/gateway/checks.py applies
them as a tenant's policy says.
"""
