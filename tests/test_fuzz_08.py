"""Step 08's API fuzzed from its own OpenAPI schema with schemathesis: the real app under
uvicorn, a real Prefect server, a valid key. No answer is a 5xx, and every answer's status
code, headers and body are what the schema documents."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from harness import PrefectServer, step_dir, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tutorial.runner import wait_until_answering

STEP = step_dir(8)
KEY = secrets.token_urlsafe(24)
AUTH = {"Authorization": f"Bearer {KEY}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on a Prefect server of its own, with no task server: the runs the fuzzer
    queues go away with that server instead of reaching other tests' task servers."""
    home = tmp_path_factory.mktemp("fuzz-08")
    with PrefectServer.start(home) as server:
        api, url = server.spawn_api(
            STEP, JOBS_API_KEYS=f"fuzz={KEY}", JOBS_DB=str(home / "jobs.db")
        )
        try:
            wait_until_answering(f"{url}/health", api)
            # The first submission to a cold Prefect server can take longer than the app waits.
            wait_for(
                lambda: (
                    httpx.post(
                        f"{url}/jobs",
                        json={"title": "Warm up", "text": "It is on the mat."},
                        headers={**AUTH, "Idempotency-Key": "warm-up"},
                        timeout=30,
                    ).status_code
                ),
                lambda status: status == 202,
                timeout=90,
                interval=1,
                what="the first POST /jobs to be accepted",
            )
            yield url
        finally:
            api.stop()


def test_the_api_answers_only_what_its_schema_documents(fuzzed_app: str):
    schema = schemathesis.openapi.from_url(f"{fuzzed_app}/openapi.json")
    # Valid requests, and requests that break the schema (bad bodies, ids, headers).
    cases = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )

    @given(case=cases)
    @settings(
        max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def fuzz(case) -> None:
        case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=30)

    fuzz()
