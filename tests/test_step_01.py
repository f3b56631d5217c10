"""Step 01: a task submitted with .delay() runs on the task server, not in the submitter."""

import glob
import hashlib
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import pytest
from harness import UUID, clean_env, load_module, step_dir, wait_for

from tutorial.runner import ROOT

STEP = step_dir(1)


def test_delay_runs_on_the_task_server(prefect_server, task_server):
    server = task_server(STEP / "task_server.py")

    submit = prefect_server.run_script(STEP / "submit.py")

    assert submit.code == 0, submit.output
    assert "foreground: welcome email sent to ada@example.com" in submit.output.splitlines()
    run_id = re.search(rf"^background: submitted task run ({UUID})$", submit.output, re.M).group(1)
    ui_url = prefect_server.api_url.removesuffix("/api")
    assert f"watch it in the UI: {ui_url}/runs/task-run/{run_id}" in submit.output
    assert "background: welcome email sent to grace@example.com" in submit.output.splitlines()

    # The foreground call ran in the submitter; the background one on the task server.
    assert "Sent a welcome email to ada@example.com" in submit.output
    assert "Sent a welcome email to grace@example.com" not in submit.output
    server.wait_for_line(rf"Received task run: {run_id}", timeout=10)
    server.wait_for_line(r"Sent a welcome email to grace@example\.com", timeout=10)
    assert "ada@example.com" not in server.output

    run = prefect_server.task_run(run_id)
    assert run["state"]["type"] == "COMPLETED"
    assert run["flow_run_id"] is None  # a background run belongs to no flow
    # The key the task server subscribed with is the one this process computes.
    assert run["task_key"] == load_module(STEP / "tasks.py").send_welcome_email.task_key
    assert prefect_server.state_names(run_id) == ["Scheduled", "Pending", "Running", "Completed"]
    assert prefect_server.result(run_id) == "welcome email sent to grace@example.com"


def test_a_run_waits_for_a_task_server(prefect_server, spawn, task_server):
    """With no task server, a run stays Scheduled; one that starts later picks it up."""
    submit = spawn(STEP / "submit.py")
    run_id = submit.wait_for_line(rf"^background: submitted task run ({UUID})$", timeout=60).group(
        1
    )
    assert prefect_server.task_run(run_id)["state"]["name"] == "Scheduled"

    task_server(STEP / "task_server.py")

    assert submit.wait(timeout=60) == 0, submit.output
    assert "background: welcome email sent to grace@example.com" in submit.output.splitlines()
    assert prefect_server.task_run(run_id)["state"]["type"] == "COMPLETED"


def _task_key(source: str, path) -> str:
    """The task key of send_welcome_email when its module's text is `source`, saved as `path`."""
    path.write_text(source)
    return load_module(path).send_welcome_email.task_key


def test_the_task_key_hashes_the_code_and_its_line_numbers(tmp_path):
    """Why submitter and task server must import the very same tasks.py."""
    source = (STEP / "tasks.py").read_text()
    key = _task_key(source, tmp_path / "tasks.py")

    assert key.startswith("send_welcome_email-")
    assert _task_key(source, tmp_path / "renamed_module.py") == key
    assert _task_key("\n" + source, tmp_path / "blank_line.py") != key
    changed = source.replace("time.sleep(2)", "time.sleep(3)")
    assert _task_key(changed, tmp_path / "changed_body.py") != key


# The recipe of Prefect's _generate_task_key (prefect/tasks.py): 8 hex digits of the MD5 of
# the function's code object, pickled with cloudpickle. Run by another Python version, with
# only cloudpickle (pure Python) borrowed from this environment.
KEY_OF_CODE = """
import hashlib, sys
sys.path.insert(0, sys.argv[1])
import cloudpickle
module = compile(open(sys.argv[2]).read(), "tasks.py", "exec")
code = next(c for c in module.co_consts if getattr(c, "co_name", "") == "send_welcome_email")
print(hashlib.md5(cloudpickle.dumps(((code,), {}))).hexdigest()[:8])
"""


def other_pythons() -> dict[str, str]:
    """Python 3 interpreters of another minor version than this one: on PATH or pyenv's."""
    candidates = [shutil.which(f"python3.{minor}") for minor in range(8, 20)]
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/3.*/bin/python3"))
    found = {}
    for python in filter(None, candidates):
        asked = [python, "-c", "import sys; print(*sys.version_info[:2])"]
        version = subprocess.run(asked, capture_output=True, text=True, timeout=60)
        if version.returncode != 0:  # a pyenv shim without a version selected, say
            continue
        major, minor = map(int, version.stdout.split())
        # cloudpickle 3 needs Python 3.8 or newer.
        if (major, minor) != sys.version_info[:2] and (major, minor) >= (3, 8):
            found.setdefault(f"{major}.{minor}", python)
    return found


def key_on(python: str, folder) -> str:
    """send_welcome_email's task key as the interpreter `python` computes it, by Prefect's
    recipe, with only cloudpickle borrowed from this environment (linked into `folder`)."""
    import cloudpickle

    link = folder / "cloudpickle"
    link.symlink_to(os.path.dirname(cloudpickle.__file__))
    try:
        argv = [python, "-c", KEY_OF_CODE, str(folder), str(STEP / "tasks.py")]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    finally:
        link.unlink()
    assert done.returncode == 0, done.stderr
    return f"send_welcome_email-{done.stdout.strip()}"


def test_the_task_key_is_a_hash_of_the_code_object(tmp_path):
    import cloudpickle
    from prefect.tasks import NUM_CHARS_DYNAMIC_KEY

    task = load_module(STEP / "tasks.py").send_welcome_email
    digest = hashlib.md5(cloudpickle.dumps(((task.fn.__code__,), {}))).hexdigest()
    assert task.task_key == f"send_welcome_email-{digest[:NUM_CHARS_DYNAMIC_KEY]}"
    # The same recipe in a process of its own, as the next test runs it on other Pythons.
    assert key_on(sys.executable, tmp_path) == task.task_key


def test_another_python_minor_version_gives_another_task_key(tmp_path):
    """Bytecode changes from one Python minor version to the next, and so does the key:
    submitter and task server need the same Python minor version."""
    others = other_pythons()
    if not others:
        pytest.skip("no Python of another minor version on this machine")
    key = load_module(STEP / "tasks.py").send_welcome_email.task_key
    keys = {minor: key_on(python, tmp_path) for minor, python in others.items()}
    assert key not in keys.values(), (key, keys)


# Prefect's SDK telemetry, in prefect/_internal/analytics/: at `import prefect`, in an
# interactive terminal only, unless DO_NOT_TRACK is set or a CI variable is.
NOTICE = "Prefect collects anonymous usage data"


def without_tracking_opt_outs(**settings: str) -> dict[str, str]:
    """An environment where Prefect's SDK telemetry is on: no DO_NOT_TRACK, no CI variable
    (unless `settings` name one), plus `settings`."""
    from prefect._internal.analytics.ci_detection import CI_ENV_VARS

    env = clean_env()
    for name in {"DO_NOT_TRACK", *CI_ENV_VARS}:
        env.pop(name, None)
    return {**env, **settings}


@contextmanager
def in_a_terminal(
    argv: list[str], env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen, Callable[[], str]]]:
    """Run `argv` from the repo root with a pseudo-terminal for stdin, stdout and stderr, as
    in a terminal window. Yields the process and a function that returns its output so far;
    the process is stopped at the end."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    chunks: list[bytes] = []

    def pump() -> None:
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:  # EIO: every process writing to the terminal has gone
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    output = lambda: b"".join(chunks).decode(errors="replace")  # noqa: E731
    try:
        yield process, output
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(timeout=5)
        os.close(controller)


def test_prefect_shows_its_telemetry_notice_in_a_terminal(tmp_path):
    """The control for the next test: a terminal and a fresh Prefect home are enough for the
    notice and the .sdk_telemetry folder."""
    env = without_tracking_opt_outs(PREFECT_HOME=str(tmp_path))
    argv = [sys.executable, "-c", "import prefect"]
    with in_a_terminal(argv, env) as (process, out):
        assert process.wait(timeout=120) == 0, out()
    assert NOTICE in out()
    assert (tmp_path / ".sdk_telemetry" / "device_id").is_file()


def test_the_runner_turns_prefects_telemetry_off(prefect_server, tmp_path):
    """`uv run tutorial server 1` in a terminal, with a fresh Prefect home: no notice, no
    files. (The runner's own `import prefect` is the one in a terminal; the processes it
    starts write to pipes, where Prefect's telemetry stays off anyway.)"""
    env = without_tracking_opt_outs(
        PREFECT_API_URL=prefect_server.api_url, PREFECT_HOME=str(tmp_path)
    )
    argv = [sys.executable, "-m", "tutorial.runner", "server", "1"]
    with in_a_terminal(argv, env) as (process, out):
        # With a server already up, it prints the commands for step 1 and exits.
        assert process.wait(timeout=120) == 0, out()
    assert "task_server.py" in out()
    assert NOTICE not in out()
    assert not (tmp_path / ".sdk_telemetry").exists()


def test_a_task_server_started_by_hand_with_do_not_track_sends_nothing(prefect_server, tmp_path):
    """The lesson's command, in a terminal, after the README's `export DO_NOT_TRACK=1`."""
    readme = (ROOT / "README.md").read_text()
    assert "export DO_NOT_TRACK=1" in readme
    env = without_tracking_opt_outs(
        PREFECT_API_URL=prefect_server.api_url, PREFECT_HOME=str(tmp_path), DO_NOT_TRACK="1"
    )
    script = str((STEP / "task_server.py").relative_to(ROOT))
    with in_a_terminal([sys.executable, script], env) as (_, out):
        wait_for(
            lambda: "Subscribing to runs of task(s): send_welcome_email" in out(),
            timeout=120,
            what="the task server did not subscribe",
        )
    assert NOTICE not in out()
    assert not (tmp_path / ".sdk_telemetry").exists()
