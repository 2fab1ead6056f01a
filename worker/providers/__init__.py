"""Provider adapters: one module per wire API, all behind the `Provider` protocol."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from msgspec import Struct

from worker.config import Config, ConfigError, ModelConfig, ProviderConfig
from worker.http import Transport, make_transport
from worker.providers import anthropic, gemini, openai
from worker.providers.anthropic import AnthropicProvider
from worker.providers.base import BatchApi, Completion, CompletionRequest, Provider, Sampling
from worker.providers.echo import EchoProvider
from worker.providers.gemini import GeminiProvider
from worker.providers.openai import OpenAIProvider

__all__ = [
    "BatchApi",
    "Completion",
    "CompletionRequest",
    "Provider",
    "Providers",
    "Sampling",
    "batch_api",
    "batch_apis",
    "build_providers",
    "dropped_params",
]

# An adapter's constructor: (name, provider config, its models, API key, transport).
_Adapter = Callable[[str, ProviderConfig, dict[str, ModelConfig], str | None, Transport], Provider]

_ADAPTERS: dict[str, _Adapter] = {
    "openai": OpenAIProvider,
    "openai_compatible": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
}

# Each wire API's generation settings, given its API version: (its wire fields, the job's settings it leaves out).
_SAMPLING: dict[str, Callable[[Sampling, str], tuple[dict, list[str]]]] = {
    "openai": openai.sampling_fields,
    "openai_compatible": openai.sampling_fields,
    "anthropic": anthropic.sampling_fields,
    "gemini": gemini.sampling_fields,
}


def dropped_params(config: ProviderConfig, request: CompletionRequest) -> list[str]:
    """The job's settings a call to a provider of this kind leaves out: generation settings it does not take,
    on an OpenAI-compatible server a `tool_choice` it cannot ask for (the echo provider, which samples nothing,
    leaves none out), then what the request itself left out for the model (`CompletionRequest.left_out`)."""
    fields = _SAMPLING.get(config.kind)
    dropped = fields(request.sampling, config.anthropic_version)[1] if fields else []
    if config.kind in ("openai", "openai_compatible"):
        dropped += openai.tool_fields(request, openai.COMPAT[config.compat])[1]
    return dropped + list(request.left_out)


class Providers(Struct, kw_only=True):
    """The provider clients that can be called, and why the others cannot."""

    clients: dict[str, Provider]
    unavailable: dict[str, str]


def build_providers(config: Config, env: Mapping[str, str] | None = None) -> Providers:
    """One client per configured provider, created once; a provider whose API key is missing is left out."""
    env = os.environ if env is None else env
    clients: dict[str, Provider] = {}
    unavailable: dict[str, str] = {}
    for name, provider in config.providers.items():
        models = {m: c for m, c in config.models.items() if c.provider == name}
        if provider.kind == "echo":
            clients[name] = EchoProvider(name, provider, models)
            continue
        key = env.get(provider.api_key_env, "") if provider.api_key_env else None
        if provider.api_key_env and not key:
            unavailable[name] = f"no API key: set {provider.api_key_env}"
            continue
        try:
            transport = make_transport(provider)
        except ConfigError as exc:
            raise ConfigError(f"providers.{name}: {exc}") from None
        clients[name] = _ADAPTERS[provider.kind](name, provider, models, key, transport)
    return Providers(clients=clients, unavailable=unavailable)


# The clients with a batch API: each implements BatchApi (an OpenAI-compatible server's is OpenAI's).
_BATCH_CLIENTS = (OpenAIProvider, AnthropicProvider, GeminiProvider, EchoProvider)


def batch_api(client: Provider, config: ProviderConfig) -> BatchApi | None:
    """The batch API of a built client (`build_providers`) whose configuration has `batch_api` true, else None."""
    if config.batch_api and isinstance(client, _BATCH_CLIENTS):
        return client
    return None


def batch_apis(config: Config, clients: Mapping[str, Provider]) -> dict[str, BatchApi]:
    """The batch APIs jobs may use, by provider name (`batch_api`)."""
    apis = {name: batch_api(client, config.providers[name]) for name, client in clients.items()}
    return {name: api for name, api in apis.items() if api is not None}
