"""llm-router: a Kafka worker that routes prompt jobs to the cheapest LLM that clears their bar."""

__version__ = "0.1.0"
