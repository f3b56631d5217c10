"""Run this folder's tests as you would run your app's: `pytest tutorial/17_test_your_app`."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    # One process (the repo's own settings run its suite in two): one Prefect server and
    # one task server for the whole session. -p no:cacheprovider: no .pytest_cache here.
    argv = [sys.executable, "-m", "pytest", str(HERE), "-o", "addopts=", "-p", "no:cacheprovider"]
    sys.exit(subprocess.call([*argv, "-v", "--durations=3"]))
