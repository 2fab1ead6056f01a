"""Provider adapters: one module per wire API, all behind the `Provider` protocol."""

from __future__ import annotations

from worker.config import Config
from worker.providers.base import Completion, CompletionRequest, Provider
from worker.providers.echo import EchoProvider

__all__ = ["Completion", "CompletionRequest", "Provider", "build_providers"]


def build_providers(config: Config) -> dict[str, Provider]:
    """One provider client per configured provider, created once."""
    providers: dict[str, Provider] = {}
    for name, provider in config.providers.items():
        if provider.kind == "echo":
            models = {m: c for m, c in config.models.items() if c.provider == name}
            providers[name] = EchoProvider(name, provider, models)
    return providers
