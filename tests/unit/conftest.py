import pytest

from worker.config import load_config

ECHO = {f"LLM_ROUTER__PROVIDERS__{p}__KIND": "echo" for p in ("OPENAI", "ANTHROPIC", "GEMINI", "LLAMA")}


@pytest.fixture(scope="module")
def config():
    """The default configuration with the in-process echo provider behind every provider."""
    return load_config(env=ECHO)
