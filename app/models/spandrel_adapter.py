"""The optional spandrel extra: every architecture spandrel recognises and our families do not
(SwinIR, HAT, DAT, SPAN, OmniSR, ...), behind the same safe loading.

spandrel gets a state dict that our own loader already read (safetensors, or torch.load with
weights_only=True): spandrel never opens the file, so nothing is ever unpickled. Its descriptor's size
requirements, tiling preference and precision support are carried over into ours.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from typing import Any

from app.models.descriptor import ModelDescriptor, Tiling, UnknownArchitecture

# Purposes that map an image to a (possibly larger) image with no other input.
SERVABLE_PURPOSES = ("SR", "Restoration", "FaceSR")
# Per input pixel, at the peak of one forward: transformers (SwinIR, HAT, DAT) keep attention maps and
# several embed_dim-wide tensors alive; this errs high, as the memory estimate must.
ACTIVATIONS_PER_PIXEL_PER_SCALE2 = 1024


def version() -> str | None:
    """spandrel's version, or None when the extra is not importable."""
    try:
        module = importlib.import_module("spandrel")
    except Exception:  # ImportError, or torchvision failing at import beside a mismatched torch
        return None
    return str(getattr(module, "__version__", "unknown"))


def load(sd: Mapping[str, Any]) -> tuple[ModelDescriptor, Any]:
    """(descriptor, torch module in fp32 eval mode) for a state dict spandrel recognises.
    Raises UnknownArchitecture (not recognised, or not an image-to-image model) and ImportError."""
    spandrel = importlib.import_module("spandrel")
    try:
        with warnings.catch_warnings():
            # Some architectures (SwinIR, HAT) call torch.meshgrid without `indexing` while they are
            # built; torch warns of a future change that does not affect them.
            warnings.filterwarnings("ignore", message=r"torch\.meshgrid", category=UserWarning)
            model = spandrel.ModelLoader(device="cpu").load_from_state_dict(dict(sd))
    except spandrel.UnsupportedModelError:
        raise UnknownArchitecture(f"spandrel {spandrel.__version__} does not recognise it either") from None
    except (RuntimeError, KeyError, ValueError, IndexError, TypeError) as exc:
        raise UnknownArchitecture(f"spandrel could not build it: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, spandrel.ImageModelDescriptor) or model.purpose not in SERVABLE_PURPOSES:
        raise UnknownArchitecture(
            f"{model.architecture.name} is a {model.purpose} model (it needs more than an image)"
        )
    req = model.size_requirements
    tilings: dict[str, Tiling] = {
        "SUPPORTED": "supported",
        "DISCOURAGED": "discouraged",
        "INTERNAL": "internal",
    }
    tiling = tilings[model.tiling.name]
    hyper: dict[str, int | float | str | bool] = {"purpose": model.purpose}
    if model.tags:
        hyper["tags"] = " ".join(model.tags)
    if req.square:
        hyper["square"] = True
    descriptor = ModelDescriptor(
        family=model.architecture.name,
        scale=int(model.scale),
        in_ch=int(model.input_channels),
        out_ch=int(model.output_channels),
        hyperparameters=hyper,
        size_minimum=max(1, int(req.minimum)),
        size_multiple=max(1, int(req.multiple_of)),
        supports_half=bool(model.supports_half),
        supports_bfloat16=bool(model.supports_bfloat16),
        tiling=tiling,
        activations_per_pixel=ACTIVATIONS_PER_PIXEL_PER_SCALE2 * int(model.scale) ** 2,
        source="spandrel",
    )
    return descriptor, model.model.eval()
