FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY config ./config
COPY schemas ./schemas
RUN pip install --no-cache-dir .
ENV LLM_ROUTER_CONFIG=/app/config/router.toml
ENTRYPOINT ["llm-router"]
CMD ["worker"]
