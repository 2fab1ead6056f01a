import pytest

from worker.config import load_config

ECHO = {f"LLM_ROUTER__PROVIDERS__{p}__KIND": "echo" for p in ("OPENAI", "ANTHROPIC", "GEMINI", "LLAMA")}
# The tests of the attempt loop follow plain chains: a floor of 0.85 lets one cheap model answer an unverifiable
# job, as the reference does (the shipped floor, which asks cheap models to agree, is tested in test_agreement.py).
CHAINS = {**ECHO, "LLM_ROUTER__ROUTING__DEFAULT_ACCURACY_FLOOR": "0.85"}


@pytest.fixture(scope="module")
def config():
    """The default configuration with the in-process echo provider behind every provider, and plain chains for
    unverifiable jobs (`CHAINS`)."""
    return load_config(env=CHAINS)


@pytest.fixture(scope="module")
def shipped():
    """The default configuration as shipped, with the echo provider behind every provider."""
    return load_config(env=ECHO)
