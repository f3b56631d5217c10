"""Step 09's API, fuzzed from its own OpenAPI schema with schemathesis: the real app under
uvicorn, a real task server and Prefect server. No answer of the app is a 5xx, and every
status code it answers is one its schema documents."""

from __future__ import annotations

import subprocess
import sys
import uuid

import httpx
from harness import free_port, step_dir, wait_for
from sqlalchemy import Engine, create_engine, text

from tutorial.runner import wait_until_subscribed

STEP = step_dir(9)
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
]


def jobs_run_ids(engine: Engine) -> list[str | None]:
    with engine.connect() as connection:
        ids = connection.execute(text("SELECT task_run_id FROM jobs")).scalars().all()
    return [str(uuid.UUID(run_id)) if run_id else None for run_id in ids]


def test_the_api_answers_every_generated_request_as_its_schema_says(
    prefect_server, spawn, api_server, tmp_path
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = f"sqlite:///{tmp_path}/signup.db"
    server = spawn(STEP / "task_server.py", API_URL=url, SIGNUP_DATABASE_URL=db)
    api_server(STEP, port=port, SIGNUP_DATABASE_URL=db)
    wait_until_subscribed(prefect_server.api_url, server)

    # One real user, so that GET /users/{user_id} gets past its token to Prefect as well:
    # every generated GET asks for this user with its token.
    with httpx.Client(base_url=url, timeout=30) as client:
        user = client.post("/users", json={"email": "fuzz@example.com", "name": "Fuzz"})
        user = user.raise_for_status().json()
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.user_id" = "{user["id"]}"\n')

    argv = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run"]
    argv += [f"{url}/openapi.json", "--header", f"Authorization: Bearer {user['token']}"]
    argv += ["--checks", ",".join(CHECKS), "--max-examples", "5", "--seed", "9"]
    argv += ["--generation-database", "none", "--no-color", "--workers", "1"]
    fuzz = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert fuzz.returncode == 0, fuzz.stdout + fuzz.stderr

    # Every signup the fuzzer made is queued and finished, so that no run of step 09's
    # tasks is left in the Prefect server's queue for the next test's task server.
    engine = create_engine(db)
    try:
        run_ids = wait_for(
            lambda: jobs_run_ids(engine),
            lambda ids: all(ids),
            timeout=120,
            what="fuzzed signups' jobs not queued",
        )
    finally:
        engine.dispose()
    final = {"COMPLETED", "FAILED", "CRASHED"}
    wait_for(
        lambda: [prefect_server.task_run(run_id)["state_type"] for run_id in run_ids],
        lambda states: all(state in final for state in states),
        timeout=120,
        what="fuzzed signups' jobs not finished",
    )
