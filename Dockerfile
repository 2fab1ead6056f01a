# Python 3.12: asyncio's eager tasks (a job that needs no I/O runs without a turn of the event loop).
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
# The default configurations: the package carries config/ as worker/defaults/ (pyproject.toml), and
# /app/config stays in the image as the file LLM_ROUTER_CONFIG names, which a mounted file replaces.
COPY config ./config
COPY schemas ./schemas
# Without the `demo` extra: the image runs against a Kafka cluster, not the embedded broker.
RUN pip install --no-cache-dir .
ENV LLM_ROUTER_CONFIG=/app/config/router.toml
# Not root: the worker writes no file (its state is on Kafka), and the Kubernetes pods run as this user too.
USER 10001:10001
ENTRYPOINT ["llm-router"]
CMD ["worker"]
