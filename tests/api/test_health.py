"""GET /health, /health/live, /health/ready."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.backends.registry import Registry
from app.config import load_settings
from app.main import create_app
from tests.conftest import ClientFactory
from tests.support.http import ok


def test_health_lists_models_and_backends(client: TestClient) -> None:
    body = ok(client.get("/health")).json()
    assert (body["status"], body["ready"], body["realesrgan_available"]) == ("ok", True, True)
    assert (body["default_model"], body["fallback"]) == ("tiny-x2", "lanczos")
    pt = body["backends"]["pytorch"]
    assert pt["available"] is True and pt["version"].startswith("2.") and pt["device"] == "cpu"
    cm = body["backends"]["coreml"]
    assert cm["available"] is False and cm["reason"]
    models = {m["name"]: m for m in body["models"]}
    assert models["tiny-x4"]["scale"] == 4 and models["tiny-x4"]["arch"] == "RRDBNet"
    assert models["tiny-x2"]["file"] == "tiny-x2.safetensors" and models["tiny-x2"]["available"]


def test_health_degraded_with_bad_files_only(make_client: ClientFactory, tmp_path: Path) -> None:
    d = tmp_path / "w"
    d.mkdir()
    (d / "broken.pth").write_bytes(b"nope")
    (d / "notes.txt").write_text("not a model")
    (d / "phone.mlpackage").mkdir()
    body = ok(make_client({"UPSCALER_WEIGHTS_DIR": str(d)}).get("/health")).json()
    assert (body["status"], body["realesrgan_available"], body["default_model"]) == ("degraded", False, None)
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {"broken", "phone"}
    assert models["broken"]["reason"] and not models["broken"]["available"]
    assert models["phone"]["backend"] == "coreml" and "macOS" in models["phone"]["reason"]


def test_health_live_and_ready(client: TestClient) -> None:
    assert client.get("/health/live").status_code == 200
    resp = client.get("/health/ready")
    assert resp.status_code == 200 and resp.json()["ready"] is True


def test_health_says_starting_until_models_loaded(
    tmp_path: Path, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    original = Registry.scan

    def slow_scan(self: Registry, path: Path) -> None:
        release.wait(30)
        original(self, path)

    monkeypatch.setattr(Registry, "scan", slow_scan)
    app = create_app(load_settings({"UPSCALER_WEIGHTS_DIR": str(weights_dir)}))
    with TestClient(app) as client:
        assert ok(client.get("/health")).json()["status"] == "starting"
        assert client.get("/health/ready").status_code == 503
        assert client.get("/health/live").status_code == 200
        resp = client.post("/upscale", content=b"x", headers={"Content-Type": "image/png"})
        assert resp.status_code == 503 and resp.json()["error"]["type"] == "not_ready"
        release.set()
        for _ in range(500):
            if client.get("/health/ready").status_code == 200:
                break
            threading.Event().wait(0.02)
        assert ok(client.get("/health")).json()["status"] == "ok"
