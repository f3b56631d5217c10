"""Step 08's tasks.py, loaded as it is, never copied: the app and every task server must run
the very same code. In your own repo this is simply the module both import; here this file
loads step 08's under the name the app imports it by, `tasks`."""

import importlib.util
import sys
from pathlib import Path

_source = Path(__file__).resolve().parent.parent / "08_fastapi_jobs" / "tasks.py"
_spec = importlib.util.spec_from_file_location("tasks", _source)
sys.modules["tasks"] = _module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
