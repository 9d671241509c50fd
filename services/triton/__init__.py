"""Everything that speaks to Triton: generation and embeddings over its gRPC API, model
control and stub recovery, the install step and the TensorRT-LLM renderer."""
