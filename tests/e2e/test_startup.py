"""Start-up does what the first request would otherwise pay for (imports made on first use)."""

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
