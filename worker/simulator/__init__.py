"""The provider simulator: a local HTTP server speaking the OpenAI, Anthropic, Gemini and
OpenAI-compatible wire formats, with configurable latency, errors, rate limits and answer quality."""
