"""The architecture registry: which family a state dict is, and the net built from it.

Each native family is one module (`rrdbnet`, `compact`) offering `matches(sd)` (do the keys look like
this family), `normalize(sd)` (its accepted key layouts -> one), `describe(sd)` (hyper-parameters from
the shapes, as a ModelDescriptor; raises UnknownArchitecture) and `build(descriptor)` (the torch
module). What no native family claims goes to the spandrel extra when it is installed.

Imports torch (through the family modules): only the PyTorch backend and the scripts import this.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from app.models import compact, rrdbnet, spandrel_adapter
from app.models.checkpoint import key_summary, read, unwrap
from app.models.descriptor import ModelDescriptor, UnknownArchitecture

FAMILIES = (rrdbnet, compact)
SPANDREL_HINT = "install the spandrel extra"


def claim(sd: Mapping[str, Any]) -> tuple[Any, dict[str, Any]] | None:
    """(family module, state dict in its key names) of the native family whose keys these are."""
    for family in FAMILIES:
        if family.matches(sd):
            return family, family.normalize(sd)
    return None


def describe(sd: Mapping[str, Any]) -> ModelDescriptor:
    """The native family's descriptor of an unwrapped state dict. Raises UnknownArchitecture."""
    claimed = claim(sd)
    if claimed is None:
        raise UnknownArchitecture(f"unsupported architecture: {key_summary(sd)}")
    family, normalized = claimed
    descriptor: ModelDescriptor = family.describe(normalized)
    return descriptor


def load(checkpoint: Any) -> tuple[ModelDescriptor, torch.nn.Module]:
    """(descriptor, fp32 module in eval mode with the weights loaded) from a checkpoint object already
    read through a safe path (a mapping of tensors or numpy arrays, possibly wrapped).

    Raises UnknownArchitecture (`unsupported architecture: <keys> (...)` when nobody recognises it) and
    RuntimeError when the weights do not fit the net (strict loading).
    """
    sd = {k: torch.as_tensor(v) for k, v in unwrap(checkpoint).items()}
    native: UnknownArchitecture | None = None
    claimed = claim(sd)
    if claimed is not None:
        family, normalized = claimed
        try:
            descriptor = family.describe(normalized)
        except UnknownArchitecture as exc:  # spandrel may know a variant we do not build
            native = exc
        else:
            net = family.build(descriptor)
            net.load_state_dict(normalized, strict=True)
            return descriptor, net.eval()
    if spandrel_adapter.version() is None:
        if native is not None:
            raise native
        raise UnknownArchitecture(f"unsupported architecture: {key_summary(sd)} ({SPANDREL_HINT})")
    try:
        return spandrel_adapter.load(sd)
    except UnknownArchitecture as exc:
        raise native or UnknownArchitecture(f"unsupported architecture: {key_summary(sd)} ({exc})") from None


def load_file(path: Path) -> tuple[ModelDescriptor, torch.nn.Module, dict[str, str]]:
    """(descriptor, fp32 eval module, metadata) from a weights file (see `checkpoint.read` for the
    formats). Raises ValueError (UnknownArchitecture included), RuntimeError (weights that do not fit)
    and OSError."""
    raw, meta = read(path)
    descriptor, net = load(raw)
    if meta.get("format") == "ncnn":
        descriptor = dataclasses.replace(descriptor, source="ncnn")
    return descriptor, net, meta
