"""The echo model: each request's text_input back as text_output, FINAL in one response,
finish_reason "stop"; its token counts are the text's words. The contract's helpers build the
response, as for every model (services/contract/backend.py)."""

from __future__ import annotations

from typing import Any

from services.contract import backend


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            text = backend.text_input(request)
            words = len(text.split())
            response = backend.response(text, words, words, "stop")
            request.get_response_sender().send(response, flags=backend.FINAL)
