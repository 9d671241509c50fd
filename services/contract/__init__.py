"""The tier contract: what the gateway and every Triton LLM model agree on.

- `prompt`: the RAG prompt's format; the gateway builds it, the extractive model parses it.
- `tensors`: the names and datatypes of a tier's tensors, those of TensorRT-LLM's
  `inflight_batcher_llm` ensemble (`text_input`, `max_tokens`, ... -> `text_output`), which
  the gateway's requests, the models' config.pbtxt files and the models themselves use.
- `documents`: a document as the gateway sends it and retrieval stores it.
- `backend`: the python-backend side of that contract (reading a request's tensors, answering
  with the output tensors or an error), shared by the models in triton_models/cpu/.

The ground floor of services/: it imports nothing else of ours, and `prompt` and `tensors`
only the standard library, so the models' venv (.venv-models, where the project is installed
with --no-deps) imports them as the gateway does. `backend` imports Triton's
`triton_python_backend_utils` and numpy; only the models import it.
"""
