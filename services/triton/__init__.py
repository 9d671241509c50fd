"""Everything that speaks to Triton: one client a server (client.py: a channel and the
generated stub), on which generation (llm.py), embeddings (embedder.py), model control and
stub recovery (recovery.py) go; the install step and the TensorRT-LLM renderer."""
