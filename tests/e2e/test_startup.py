"""Start-up does what the first request would otherwise pay for (imports made on first use), and sets
the process up for many threads (the GIL's switch interval)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.child import run_python

# A process of its own: in the test run, other tests have long loaded these modules.
SCRIPT = r"""
import asyncio, json, sys
from PIL import Image
from app.config import load_settings
from app.main import create_app

app = create_app(load_settings({"UPSCALER_WEIGHTS_DIR": sys.argv[1]}), background_load=False)

def loaded():
    return {"anyio_backend": "anyio._backends._asyncio" in sys.modules, "pillow_plugins": Image._initialized}

seen = {"before": loaded()}

async def main():
    async with app.router.lifespan_context(app):
        seen["after"] = loaded()

asyncio.run(main())
print(json.dumps(seen))
"""


def test_startup_loads_what_the_first_request_would(tmp_path: Path) -> None:
    seen = json.loads(run_python(SCRIPT, str(tmp_path)).strip().splitlines()[-1])
    assert seen["before"] == {"anyio_backend": False, "pillow_plugins": 0}, "loaded before start-up already"
    assert seen["after"]["anyio_backend"], "anyio's asyncio backend is left to the first request"
    assert seen["after"]["pillow_plugins"] >= 1, "Pillow's format plugins are left to the first Image.open"


SWITCH = r"""
import asyncio, json, sys
from app.config import load_settings
from app.main import create_app

seen = {"before": sys.getswitchinterval()}

async def main():
    for name, env in (("default", {}), ("set", {"UPSCALER_SWITCH_INTERVAL_MS": "2.5"})):
        app = create_app(load_settings({"UPSCALER_WEIGHTS_DIR": sys.argv[1], **env}), background_load=False)
        async with app.router.lifespan_context(app):
            seen[name] = sys.getswitchinterval()
        seen[name + " after"] = sys.getswitchinterval()

asyncio.run(main())
print(json.dumps(seen))
"""


def test_startup_sets_the_switch_interval_and_shutdown_puts_it_back(tmp_path: Path) -> None:
    seen = json.loads(run_python(SWITCH, str(tmp_path)).strip().splitlines()[-1])
    assert seen["before"] == 0.005, "Python's own default before the app starts"
    assert seen["default"] == 0.001 and seen["set"] == 0.0025
    assert seen["default after"] == seen["set after"] == 0.005
