"""Step 08's app, loaded as it is, never copied: DELETE /jobs/{id} is part of it. In your own
repo the endpoint simply lives in your app's module; here this file loads step 08's. The app
imports `tasks`, which is this folder's tasks.py: step 08's task, loaded the same way."""

import importlib.util
from pathlib import Path

_source = Path(__file__).resolve().parent.parent / "08_fastapi_jobs" / "api.py"
_spec = importlib.util.spec_from_file_location("jobs_api", _source)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
app = _module.app
