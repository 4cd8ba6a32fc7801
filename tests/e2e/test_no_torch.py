"""Without torch the service still starts, says why on /health, and upscales with LANCZOS."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.child import run_python

SCRIPT = r"""
import importlib.abc, json, sys

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch' (blocked for this test)")
        return None

sys.meta_path.insert(0, BlockTorch())
from fastapi.testclient import TestClient
from app.config import load_settings
from app.main import create_app
from tests.support.images import gradient_image, png_bytes
from tests.support.http import ok

app = create_app(load_settings({"UPSCALER_WEIGHTS_DIR": sys.argv[1]}), background_load=False)
with TestClient(app) as client:
    health = ok(client.get("/health")).json()
    resp = client.post("/upscale", files={"image": ("a.png", png_bytes(gradient_image()), "image/png")},
                       data={"scale": "2"})
    strict = client.post("/upscale", files={"image": ("a.png", png_bytes(gradient_image()), "image/png")},
                         data={"fallback": "false"})
print(json.dumps({"health": health, "status": resp.status_code, "headers": dict(resp.headers),
                  "strict": strict.status_code, "strict_body": strict.json(),
                  "torch_loaded": "torch" in sys.modules}))
"""


def test_no_torch_serves_lanczos_with_library_missing(weights_dir: Path) -> None:
    out = json.loads(run_python(SCRIPT, str(weights_dir)).strip().splitlines()[-1])
    assert out["torch_loaded"] is False
    health = out["health"]
    assert health["status"] == "degraded" and health["realesrgan_available"] is False
    pt = health["backends"]["pytorch"]
    assert pt["available"] is False and "torch" in pt["reason"]
    assert all(m["fallback_reason"] == "library_missing" for m in health["models"])
    assert out["status"] == 200
    assert out["headers"]["x-fallback-reason"] == "library_missing"
    assert out["headers"]["x-upscaler"] == "lanczos"
    assert out["strict"] == 503 and out["strict_body"]["error"]["type"] == "neural_unavailable"
