"""Settings: one pydantic-settings class read from `UPSCALER_*` environment variables.

Nothing is read at import: `load_settings()` reads the environment (or a dict given by a test) when the
app starts, and a bad value raises `SettingsError` with one line naming the variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "UPSCALER_"
_ORIGIN = re.compile(r"\*|https?://[^/\s,]+")


class SettingsError(Exception):
    """A setting has a bad value; the message is one line that names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Loopback by default, as A1111 and ComfyUI do; 0.0.0.0 (the Docker image's value) opens it.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    weights_dir: Path = Path("weights")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    # Tile side in input pixels; 0 runs whole images, None picks per device and model.
    tile: int | None = Field(None, ge=0)
    tile_pad: int = Field(16, ge=0, le=256)
    max_upload_mb: float = Field(50.0, gt=0)
    max_input_pixels: int = Field(16_777_216, ge=1)
    max_output_pixels: int = Field(67_108_864, ge=1)
    queue_size: int = Field(16, ge=1)
    # Images per /generate or batch request (413 beyond).
    max_batch: int = Field(16, ge=1, le=1000)
    request_timeout_s: float = Field(300.0, gt=0)
    # A request body (and a connection's request headers) not fully received by then: 408, closed.
    read_timeout_s: float = Field(30.0, gt=0)
    # Connections served at once by `python -m app`; beyond it new ones get 503.
    max_connections: int = Field(256, ge=1)
    # Text chunks and the ICC profile carried to an output, each at most this many KiB in total.
    max_metadata_kb: int = Field(1024, ge=0)
    api_key: SecretStr | None = None
    default_model: str | None = None
    coreml_compute_units: Literal["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"] = "ALL"
    png_compress_level: int = Field(1, ge=0, le=9)
    # torch.compile each PyTorch model at start-up (readiness waits for it); off: the compile costs
    # about a minute per model on a GPU (less with Inductor's cache, TORCHINDUCTOR_CACHE_DIR, warm).
    compile: bool = False
    # CUDA graphs for the window shapes a model runs again (app/backends/cuda_graphs.py): on CUDA
    # only; rrdb-x2's images/s under 8 clients rose 4-70% a round (README, On a GPU).
    cuda_graphs: bool = True
    # How long a thread that wants the GIL waits before the holder must hand it over (Python's
    # default is 5 ms): every torch op, decode and encode call gives the GIL up and takes it back
    # (app/scheduler.py, switch_interval).
    switch_interval_ms: float = Field(1.0, gt=0, le=100)
    threads: int = Field(0, ge=0, description="intra-op threads for inference; 0 = all cores")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Memory one request may need (estimated before its work starts; beyond it: 413 image_too_large).
    memory_budget_mb: float = Field(0.0, ge=0, description="0 = half of the machine's (or container's) RAM")
    # Comma-separated origins allowed to call from a browser ("*" for any); empty = no CORS headers.
    cors_origins: str = ""
    # SIGTERM: stop taking work, give in-flight requests this long to finish, then exit.
    shutdown_grace_s: float = Field(30.0, ge=0, le=3600)

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: str) -> str:
        for origin in (o.strip() for o in value.split(",")):
            if origin and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not '*' or an origin like https://example.com[:port]")
        return value

    @property
    def loopback_only(self) -> bool:
        """Whether the service listens on a loopback address only."""
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from `environ` (default: the process environment).

    Raises SettingsError naming the first bad variable, e.g. "UPSCALER_TILE: Input should be ...".
    """
    env = os.environ if environ is None else environ
    values = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in env.items()
        if key.startswith(ENV_PREFIX) and value != ""
    }
    try:
        # model_validate skips BaseSettings' own environment reading: `env` is the only source.
        return Settings.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ENV_PREFIX + str(err["loc"][0]).upper() if err["loc"] else ENV_PREFIX
        raise SettingsError(
            f"invalid setting {name}={values.get(str(err['loc'][0]), '')!r}: {err['msg']}"
        ) from None
