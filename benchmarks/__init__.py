"""The cost of offloading, measured: Prefect background tasks next to Celery and arq.

Run it from the repo root: `uv run python -m benchmarks.run` (see benchmarks/README.md).
"""
