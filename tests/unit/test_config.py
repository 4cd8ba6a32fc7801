import subprocess
import sys
from pathlib import Path

import pytest

from app.config import Settings, SettingsError, load_settings
from tests.support.paths import ROOT


def test_load_settings_defaults_match_spec() -> None:
    s = load_settings({})
    assert (s.host, s.port, s.weights_dir) == ("127.0.0.1", 8000, Path("weights"))
    assert s.loopback_only and not load_settings({"UPSCALER_HOST": "0.0.0.0"}).loopback_only
    assert load_settings({"UPSCALER_HOST": "::1"}).loopback_only
    assert (s.device, s.precision, s.tile, s.coreml_compute_units) == ("auto", "auto", None, "ALL")
    assert (s.max_upload_mb, s.max_input_pixels, s.max_output_pixels) == (50, 16_777_216, 67_108_864)
    assert s.api_key is None and s.default_model is None


def test_load_settings_reads_only_the_given_dict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSCALER_PORT", "1234")
    s = load_settings({"UPSCALER_PORT": "9000", "UPSCALER_TILE": "0", "UPSCALER_API_KEY": "k", "OTHER": "x"})
    assert s.port == 9000 and s.tile == 0
    assert s.api_key is not None and s.api_key.get_secret_value() == "k"
    assert load_settings().port == 1234  # without a dict: the process environment


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("UPSCALER_PORT", "eighty"),
        ("UPSCALER_DEVICE", "tpu"),
        ("UPSCALER_PRECISION", "fp8"),
        ("UPSCALER_TILE", "-1"),
        ("UPSCALER_MAX_UPLOAD_MB", "0"),
        ("UPSCALER_COREML_COMPUTE_UNITS", "GPU_ONLY"),
        ("UPSCALER_SWITCH_INTERVAL_MS", "0"),
    ],
)
def test_load_settings_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({name: value})
    message = str(info.value)
    assert name in message and "\n" not in message


def test_settings_is_frozen() -> None:
    with pytest.raises(ValueError):
        Settings().port = 1  # type: ignore[misc]


def test_python_m_app_bad_setting_exits_with_one_line() -> None:
    env = {"PATH": "/usr/bin:/bin", "UPSCALER_QUEUE_SIZE": "lots"}
    proc = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "UPSCALER_QUEUE_SIZE" in lines[0]
