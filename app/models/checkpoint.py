"""Checkpoint unwrapping common to every family, and a short account of unknown key layouts.

`unwrap` and `key_summary` work on any mapping of names to objects with a `.shape`; `read` imports
torch (or safetensors, or nothing for ncnn files) inside the function.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.models.descriptor import UnknownArchitecture

WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "generator")
COMMON_PREFIXES = ("module.", "netG.", "model.module.")


def unwrap(obj: Any) -> dict[str, Any]:
    """Pick the weights out of a checkpoint: top level, `params_ema`, `params`, `state_dict` (and the
    other usual wrappers); strip a DataParallel `module.` (or `netG.`) prefix shared by every key.
    Raises UnknownArchitecture when there is no mapping of tensors."""
    if not isinstance(obj, Mapping):
        raise UnknownArchitecture(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(hasattr(v, "shape") for v in inner.values()):
            obj = inner
            break
    sd = {str(k): v for k, v in obj.items() if hasattr(v, "shape")}
    if not sd:
        raise UnknownArchitecture("checkpoint has no tensors")
    for prefix in COMMON_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
            break
    return sd


def key_summary(sd: Mapping[str, Any], most: int = 4) -> str:
    """What the keys look like, for an `unsupported architecture` reason: the count and the first few
    distinct key patterns (numbers replaced by N), e.g. '312 tensors, keys like layers.N.blocks.N...'."""
    patterns: list[str] = []
    for key in sd:
        pattern = re.sub(r"\.\d+(?=\.|$)", ".N", key)
        if pattern not in patterns:
            patterns.append(pattern)
        if len(patterns) >= most:
            break
    return f"{len(sd)} tensors, keys like {', '.join(patterns)}"


def read(path: Path) -> tuple[Any, dict[str, str]]:
    """A weights file's tensors, through a safe path only, and its metadata for /health.

    `.safetensors`: safetensors (its header metadata too); `.pth` / `.pt`: torch.load with
    weights_only=True (a pickle that would run code is refused, never executed); `.param`: the ncnn pair
    read into our key names (numpy arrays). Raises ValueError (UnknownArchitecture included) with the
    reason, and OSError.
    """
    suffix = path.suffix.lower()
    if suffix == ".param":
        from app.models import ncnn

        model = ncnn.read(path)
        return model.state_dict, {"format": "ncnn", **model.notes}
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            return load_file(str(path)), meta
        except SafetensorError as exc:
            raise ValueError(f"not a readable safetensors file ({str(exc)[:200]})") from None
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True), {}
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        unsafe = [ln for ln in lines if "GLOBAL" in ln or "Unsupported global" in ln]
        if unsafe:
            raise ValueError(
                f"refused: the checkpoint's pickle would run code ({unsafe[0][:200]}); it was not executed"
            ) from None
        detail = next((ln for ln in lines if ln.startswith("Unsupported")), lines[0] if lines else "")
        raise ValueError(f"not a readable PyTorch checkpoint ({detail[:200]})") from None
