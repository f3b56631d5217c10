"""Step 18: a rolling deploy of a changed task. The new release has a new task key, so the
previous release's runs are drained by its own task servers before they stop; every run
completes exactly once. And what a task key set by hand would do instead."""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
from datetime import UTC, datetime

from harness import (
    RunsEndBetweenPages,
    clean_env,
    end_run,
    load_module,
    step_dir,
    wait_for,
    waiting_runs,
)
from pinned_tasks import unserved
from prefect.client.orchestration import get_client

from tutorial.runner import Process, wait_until_subscribed

STEP = step_dir(18)


def runs_of(prefect_server, task_key: str, since: datetime) -> list[dict]:
    """The runs of task_key submitted since the test began (other tests submit
    make_thumbnail runs to the same server)."""
    body = {
        "task_runs": {
            "name": {"any_": ["make_thumbnail"]},
            "expected_start_time": {"after_": since.isoformat()},
        },
        "limit": 200,
    }
    return [
        r
        for r in prefect_server.api("POST", "/task_runs/filter", json=body)
        if r["task_key"] == task_key
    ]


def drain(prefect_server, task_key: str, timeout: float) -> Process:
    return prefect_server.run_script(
        STEP / "drain.py", task_key, "--timeout", str(timeout), timeout=timeout + 120
    )


def test_submit_py_deploys_the_new_release_and_strands_nothing(prefect_server, task_server):
    task_server(STEP / "task_server.py")  # this release's, as the tutorial starts it
    began = datetime.now(UTC)
    submit = prefect_server.run_script(STEP / "submit.py", timeout=300)

    assert submit.code == 0, submit.output
    keys = re.search(
        r"^previous release: (make_thumbnail-\w+), this release: (make_thumbnail-\w+)$",
        submit.output,
        re.M,
    )
    assert keys, submit.output
    old_key, new_key = keys.groups()
    assert old_key != new_key
    drained = re.findall(rf"^{old_key}: (\d+) waiting, (\d+) in flight$", submit.output, re.M)
    assert drained[-1] == ("0", "0"), submit.output
    lines = submit.output.splitlines()
    assert "previous release's task server stopped" in lines
    assert "previous app's runs: ['thumbnails/photo-0.jpg', 'thumbnails/photo-1.jpg'] ..." in lines
    assert (
        "this app's runs:     ['thumbnails/256/photo-8.jpg', 'thumbnails/256/photo-9.jpg'] ..."
        in lines
    )

    # Every run of both releases completed, each after exactly one Running state: none was
    # stranded, none ran twice.
    old, new = runs_of(prefect_server, old_key, began), runs_of(prefect_server, new_key, began)
    assert (len(old), len(new)) == (8, 4)
    for run in old + new:
        assert prefect_server.state_names(run["id"]) == [
            "Scheduled",
            "Pending",
            "Running",
            "Completed",
        ]


def test_the_old_keys_runs_wait_until_a_task_server_of_the_old_release_takes_them(
    prefect_server, task_server, client_settings
):
    """Stopping the old task servers before their runs are done strands the runs still in
    the queue: this release's task servers never take them. drain.py says so, and the runs
    complete once an old task server is back."""
    task_server(STEP / "task_server.py")
    previous = _load(STEP / "previous" / "tasks.py")
    futures = [previous.make_thumbnail.delay(f"late-{n}.jpg") for n in range(3)]
    key = previous.make_thumbnail.task_key

    waiting = drain(prefect_server, key, timeout=3)
    assert waiting.code == 1, waiting.output
    assert f"{key}: 3 waiting, 0 in flight" in waiting.output.splitlines()
    assert {prefect_server.state_type(str(f.task_run_id)) for f in futures} == {"SCHEDULED"}

    task_server(STEP / "previous" / "task_server.py")
    done = drain(prefect_server, key, timeout=120)
    assert done.code == 0, done.output
    assert done.output.splitlines()[-1] == f"{key}: 0 waiting, 0 in flight"
    assert {prefect_server.state_type(str(f.task_run_id)) for f in futures} == {"COMPLETED"}


def _load(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tasks_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A task server of the previous release whose task key was set by hand.
STABLE_KEY_SERVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from prefect.task_worker import serve
    from tasks import make_thumbnail
    make_thumbnail.task_key = "make_thumbnail-stable"
    serve(make_thumbnail)
    """
)


def test_a_task_key_set_by_hand_is_received_and_dropped(prefect_server, started, client_settings):
    """Setting task_key yourself does not work in Prefect 3.9: the task server subscribes under
    that key and receives the run, but it runs with_options() copies of its tasks, whose key
    is the hash of the code again. It finds no task for the run and drops it, out of the
    queue: the run never runs."""
    argv = [sys.executable, "-c", STABLE_KEY_SERVER, str(STEP / "previous")]
    server = Process("stable-key-server", argv, env=prefect_server.env, echo=False)
    started.append(server)
    wait_until_subscribed(prefect_server.api_url, server)
    workers = prefect_server.api("POST", "/task_workers/filter", json={})
    assert ["make_thumbnail-stable"] in [w["task_keys"] for w in workers]

    previous = _load(STEP / "previous" / "tasks.py")
    previous.make_thumbnail.task_key = "make_thumbnail-stable"
    run_id = str(previous.make_thumbnail.delay("photo.jpg").task_run_id)
    wait_for(
        lambda: server.output,
        lambda output: "not found in task worker registry" in output,
        timeout=60,
        what="the task server to receive the run and find no task for it",
    )
    assert f"Received task run: {run_id}" in server.output
    # Dropped, never run: the task server asks the API to delete such a run
    # (tasks.scheduling.delete_failed_submissions); the server's recorder may write it
    # back from its Scheduled event, so it is either gone or still only Scheduled; read while
    # the delete commits, it may be found with no state yet. Never Pending, never Running.
    found = prefect_server.request("GET", f"/task_runs/{run_id}")
    assert found.status_code in (200, 404)
    if found.status_code == 200:
        assert prefect_server.state_names(run_id) in ([], ["Scheduled"])
    # with_options() builds a new task from the function: the key is the hash again.
    copy = previous.make_thumbnail.with_options(persist_result=True)
    assert re.fullmatch(r"make_thumbnail-[0-9a-f]{8}", copy.task_key)
    # The run is out of the queue. A second task server with the key, alone on it, receives
    # the next run submitted and never the dropped one, which it would have received first:
    # the queue hands out a key's runs in the order they came.
    server.stop()
    second = Process("second", argv, env=prefect_server.env, echo=False)
    started.append(second)
    wait_until_subscribed(prefect_server.api_url, second)
    next_id = str(previous.make_thumbnail.delay("next.jpg").task_run_id)
    wait_for(
        lambda: second.output,
        lambda output: f"Received task run: {next_id}" in output,
        timeout=60,
        what="the second task server to receive the next run",
    )
    assert f"Received task run: {run_id}" not in second.output


def test_a_thin_task_over_your_code_keeps_its_key_across_releases(tmp_path):
    """The key hashes the @task function's own code, nothing it calls: a task that only
    calls your implementation keeps its key while the implementation changes."""
    wrapper = textwrap.dedent(
        """
        from prefect import task

        import impl


        @task
        def make_thumbnail(name: str) -> str:
            return impl.make_thumbnail(name)
        """
    )
    keys = []
    for release, body in (("v1", "f'thumbnails/{name}'"), ("v2", "f'thumbnails/256/{name}'")):
        folder = tmp_path / release
        folder.mkdir()
        (folder / "tasks.py").write_text(wrapper)
        (folder / "impl.py").write_text(f"def make_thumbnail(name):\n    return {body}\n")
        probe = Process(
            release,
            [sys.executable, "-c", "import tasks; print(tasks.make_thumbnail.task_key)"],
            env=clean_env(PYTHONPATH=str(folder)),
            echo=False,
        )
        assert probe.wait(timeout=120) == 0, probe.output
        keys.append(probe.output.split()[-1])
    assert keys[0] == keys[1]
    assert re.fullmatch(r"make_thumbnail-[0-9a-f]{8}", keys[0])


def test_a_key_with_no_run_and_no_task_server_is_refused(prefect_server):
    """A mistyped key must not read as drained: the deploy would stop the old task servers."""
    typo = drain(prefect_server, "make_thumbnail-0000beef", timeout=3)
    assert typo.code == 2, typo.output
    assert "no unfinished run and no task server has the key make_thumbnail-0000beef" in (
        typo.output
    )


def test_a_cancelled_run_keeps_its_key_from_draining(prefect_server, client_settings):
    """Cancelling is not an end: the run waits for a task server of its key to end it
    (step 15), so stopping them now would leave it Cancelling for good."""
    with waiting_runs(prefect_server, unserved, 1) as (run_id,):
        end_run(prefect_server, run_id, "CANCELLING")
        waiting = drain(prefect_server, unserved.task_key, timeout=3)
        assert waiting.code == 1, waiting.output
        assert f"{unserved.task_key}: 0 waiting, 1 in flight" in waiting.output.splitlines()

        # Once it has ended, nothing of the key is left (and nothing serves it: exit 2).
        end_run(prefect_server, run_id, "CANCELLED")
        done = drain(prefect_server, unserved.task_key, timeout=3)
        assert done.code == 2 and "no unfinished run" in done.output, done.output


def test_every_run_of_the_key_is_counted_while_runs_end_between_pages(
    prefect_server, client_settings
):
    """More unfinished runs than one page, and a hundred of the first page's end before the
    next page is read: paged by offset, runs would slip past the page boundary unseen."""
    module = load_module(STEP / "drain.py")
    with waiting_runs(prefect_server, unserved, module.PAGE + 50) as ids:

        async def count():
            async with get_client() as client:
                reader = RunsEndBetweenPages(client, prefect_server, ids)
                return await module.unfinished(reader, unserved.task_key)

        assert asyncio.run(count()).total() == len(ids)
