"""Fixtures shared by every test: the real images from ../shared/datasets, a weights folder of tiny
random-weight RRDBNets, and apps built from a dict of settings (never from the process environment).
Helpers live in tests/support/."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import load_settings
from app.main import create_app
from tests.support.checkpoints import tiny_state_dict, write_checkpoint
from tests.support.paths import DATASETS


@pytest.fixture(scope="session")
def datasets() -> Path:
    """../shared/datasets, or skip: the real images live beside the repository, never inside it."""
    if not (DATASETS / "Set5").is_dir():
        pytest.skip(f"real images not found at {DATASETS} (../shared/datasets beside the repository)")
    return DATASETS


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    """A weights folder with tiny x2 and x4 models."""
    d = tmp_path / "weights"
    d.mkdir()
    write_checkpoint(tiny_state_dict(2, seed=1), d / "tiny-x2", "safetensors")
    write_checkpoint(tiny_state_dict(4, seed=2), d / "tiny-x4", "params_ema")
    return d


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[ClientFactory]:
    """make_client(env) -> a started TestClient; env is a dict of UPSCALER_* settings."""
    clients: list[TestClient] = []

    def factory(env: dict[str, str] | None = None, **kwargs: object) -> TestClient:
        env = {"UPSCALER_WEIGHTS_DIR": str(tmp_path / "empty-weights"), **(env or {})}
        client = TestClient(create_app(load_settings(env), background_load=False), **kwargs)  # type: ignore[arg-type]
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory, weights_dir: Path) -> TestClient:
    """An app serving the tiny x2 and x4 models."""
    return make_client({"UPSCALER_WEIGHTS_DIR": str(weights_dir)})
