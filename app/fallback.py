"""Choose the model for a request, or LANCZOS, and say why (SPEC's fallback policy)."""

from __future__ import annotations

from dataclasses import dataclass

from app.backends.base import (
    BACKEND_UNAVAILABLE,
    DISABLED_BY_REQUEST,
    LIBRARY_MISSING,
    WEIGHTS_MISSING,
    ModelEntry,
)
from app.backends.registry import Registry
from app.errors import InvalidParameter

LANCZOS = "lanczos"
NEAREST = "nearest"  # A1111's "Nearest" upscaler: a plain pixel repeat, by name only
AUTO = "auto"


@dataclass(frozen=True)
class Choice:
    """`entry` runs the request; None means LANCZOS, with `reason` (None when LANCZOS was simply asked
    for by name) and a human `detail`."""

    entry: ModelEntry | None
    reason: str | None = None
    detail: str | None = None


def _unavailable(entries: list[ModelEntry], what: str) -> Choice:
    reasons = [e.fallback_reason for e in entries if e.fallback_reason]
    # The most actionable cause first: installing a library fixes more than replacing one file.
    for reason in (LIBRARY_MISSING, BACKEND_UNAVAILABLE):
        if reason in reasons:
            break
    else:
        reason = reasons[0] if reasons else WEIGHTS_MISSING
    details = "; ".join(f"{e.name} ({e.backend}): {e.reason}" for e in entries)
    return Choice(None, reason, f"{what}: {details}" if details else what)


def choose(
    registry: Registry, model: str, use_realesrgan: bool, scale: float, default_model: str | None
) -> Choice:
    """Pick the model for an upscale by `scale`. Raises InvalidParameter for an unknown model name."""
    key = (model or AUTO).strip()
    if key.lower() in (LANCZOS, NEAREST):
        return Choice(None, None, f"{key.upper()} requested by name")
    if not use_realesrgan:
        return Choice(None, DISABLED_BY_REQUEST, "use_realesrgan=false")
    if key.lower() != AUTO:
        entries = registry.named(key)
        if not entries:
            known = ", ".join(registry.names()) or "none"
            raise InvalidParameter(
                f"unknown model {key[:200]!r}; known models: {known}, or 'auto' / 'lanczos'"
            )
        serving = registry.serving(key)
        return Choice(serving) if serving else _unavailable(entries, f"model {key} cannot serve")
    if default_model:
        serving = registry.serving(default_model)
        if serving is not None:
            return Choice(serving)
    ready = registry.available()
    if not ready:
        if not registry.models:
            return Choice(None, WEIGHTS_MISSING, "no model files in the weights folder")
        return _unavailable(registry.models, "no model can serve")
    big_enough = [e for e in ready if (e.scale or 0) >= scale]
    if big_enough:
        return Choice(min(big_enough, key=lambda e: (e.scale, e.name)))
    return Choice(max(ready, key=lambda e: (e.scale or 0, e.name)))
