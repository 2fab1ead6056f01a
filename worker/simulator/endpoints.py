"""Pointing providers at a simulator: the base URL each wire API takes, and a key for it."""

from __future__ import annotations

import msgspec

from worker.config import ProviderConfig

# The simulator serves each wire API under its provider's own path prefix.
BASE_PATHS = {"openai": "/v1", "openai_compatible": "/v1", "anthropic": "", "gemini": "/v1beta"}
SIMULATOR_KEY = "simulator"


def on_simulator(name: str, provider: ProviderConfig, url: str) -> tuple[ProviderConfig, str]:
    """The provider pointed at the simulator at `url` (an echo provider becomes an OpenAI one), with its batch
    API, and the environment variable that must hold SIMULATOR_KEY for it. The simulator serves every wire's
    batch API, the OpenAI-compatible server's too (OpenAI's endpoints, as Together's serve them)."""
    kind = "openai" if provider.kind == "echo" else provider.kind
    key_env = provider.api_key_env or f"{name.upper()}_API_KEY"
    base_url = url + BASE_PATHS[kind]
    return msgspec.structs.replace(provider, kind=kind, base_url=base_url, api_key_env=key_env, batch_api=True), key_env
