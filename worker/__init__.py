"""llm-router: a Kafka worker that routes prompt jobs to the cheapest LLM that clears their bar."""


def __getattr__(name: str) -> str:
    """`worker.__version__`: the installed distribution's version (pyproject.toml's, the one source).

    Looked up on first use: importlib.metadata costs about 50 ms, which every `import worker` would pay.
    """
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llm-router")
    except PackageNotFoundError:  # a checkout run without being installed
        return "0+unknown"
