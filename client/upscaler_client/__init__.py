"""Client for the Upscaler service: `Client` (blocking) and `AsyncClient` (asyncio), typed results,
retries on 503 honouring Retry-After, and the API key. `upscale` is the folder CLI."""

from upscaler_client.client import (
    AsyncClient,
    Client,
    GenerateResult,
    Health,
    UpscalerError,
    UpscaleResult,
)

__all__ = ["AsyncClient", "Client", "GenerateResult", "Health", "UpscaleResult", "UpscalerError"]
