"""The task code of this deployment: step 08's tasks.py, loaded as it is, never copied.

The app (step 08's api.py) and every task server must run the very same code: a task's key
is a hash of its function's code, and a task server receives only the runs of the keys it
serves. In your own repo this is simply the module that both import; here this file stands
in for it by loading step 08's file under the name the app imports it by, `tasks` (the
task's parameters are pickled with that module name, too).
"""

import importlib.util
import sys
from pathlib import Path

_source = Path(__file__).resolve().parent.parent / "08_fastapi_jobs" / "tasks.py"
_spec = importlib.util.spec_from_file_location("tasks", _source)
sys.modules["tasks"] = _module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
