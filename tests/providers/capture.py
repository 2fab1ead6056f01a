"""A capturing HTTP server on loopback for the conformance tests: it keeps each JSON body the adapters and the
official SDKs send and answers as the wire API would, and the helpers that compare their bodies."""

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.providers.test_adapters import KEYS
from worker.config import load_config
from worker.providers import build_providers
from worker.providers.base import Completion, CompletionRequest

# A minimal valid answer of each wire API, so that the SDKs and the adapters finish their calls.
ANSWERS = {
    "/v1/chat/completions": {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    },
    "/v1/messages": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": "Paris"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 1},
    },
    "generateContent": {
        "candidates": [{"content": {"parts": [{"text": "Paris"}], "role": "model"}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1, "totalTokenCount": 10},
    },
}


class Capture:
    """An HTTP server on loopback that keeps each JSON body it is sent and answers as the wire API would."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        # The answer to each path (by its end for Gemini's): a test may set its own.
        self.answers = {path: dict(answer) for path, answer in ANSWERS.items()}
        capture = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                capture.bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                path = self.path.split("?")[0]
                answer = capture.answers["generateContent" if path.endswith(":generateContent") else path]
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def last(self) -> dict:
        return self.bodies[-1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def env_of(base_url: str, client: str) -> dict[str, str]:
    env = {
        "LLM_ROUTER__PROVIDERS__OPENAI__BASE_URL": f"{base_url}/v1",
        "LLM_ROUTER__PROVIDERS__ANTHROPIC__BASE_URL": base_url,
        "LLM_ROUTER__PROVIDERS__GEMINI__BASE_URL": f"{base_url}/v1beta",
        "LLM_ROUTER__PROVIDERS__LLAMA__BASE_URL": f"{base_url}/v1",
    }
    return env | {
        f"LLM_ROUTER__PROVIDERS__{p}__HTTP_CLIENT": client for p in ("OPENAI", "ANTHROPIC", "GEMINI", "LLAMA")
    }


def same_fields(adapter: dict, sdk: dict) -> None:
    """Every field the adapter sets is in the SDK's body, encoded the same way."""
    assert {name: sdk.get(name) for name in adapter} == adapter


def call_adapter(url: str, request: CompletionRequest, provider: str, **env: str) -> Completion:
    """One call of the worker's adapter for `provider` (its lean client), to the server at `url`; `env` overrides
    the configuration (e.g. LLM_ROUTER__MODELS__GPT_4O__CAPABILITIES)."""
    client = build_providers(load_config(env=env_of(url, "lean") | env), env=KEYS).clients[provider]

    async def run() -> Completion:
        try:
            return await client.complete(request)
        finally:
            await client.close()

    return asyncio.run(run())
