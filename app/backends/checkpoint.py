"""Checkpoint normalisation and RRDBNet detection from state-dict keys and tensor shapes.

Works on any mapping of names to objects with a `.shape`, so it needs no torch itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from app.backends.base import Architecture

WRAPPER_KEYS = ("params_ema", "params", "state_dict")


class UnknownArchitecture(ValueError):
    """The state dict is not an RRDBNet this service can build."""


def unwrap(obj: Any) -> dict[str, Any]:
    """Pick the weights out of a checkpoint: top level, `params_ema`, `params` or `state_dict`;
    strip a DataParallel `module.` prefix."""
    if not isinstance(obj, Mapping):
        raise UnknownArchitecture(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    for key in WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    sd = {str(k): v for k, v in obj.items() if hasattr(v, "shape")}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


_OLD_RENAMES = (
    (re.compile(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\.0\."), r"body.\1.rdb\2.conv\3."),
    (re.compile(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\."), r"body.\1.rdb\2.conv\3."),
    (re.compile(r"^trunk_conv\."), "conv_body."),
    (re.compile(r"^upconv1\."), "conv_up1."),
    (re.compile(r"^upconv2\."), "conv_up2."),
    (re.compile(r"^HRconv\."), "conv_hr."),
)


def _from_model_n(sd: dict[str, Any]) -> dict[str, Any]:
    """The original ESRGAN layout (`model.0` ... `model.10`, body in `model.1.sub.N`), x4 only."""
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB", k))}
    n = len(blocks)
    out: dict[str, Any] = {}
    fixed = {
        "model.0.": "conv_first.",
        f"model.1.sub.{n}.": "conv_body.",
        "model.3.": "conv_up1.",
        "model.6.": "conv_up2.",
        "model.8.": "conv_hr.",
        "model.10.": "conv_last.",
    }
    for key, value in sd.items():
        m = re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$", key)
        if m:
            out[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = value
            continue
        for old, new in fixed.items():
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            raise UnknownArchitecture(f"unexpected key {key!r} in an old ESRGAN checkpoint")
    return out


def normalize_state_dict(obj: Any) -> dict[str, Any]:
    """Any accepted layout -> BasicSR RRDBNet key names. Raises UnknownArchitecture."""
    sd = unwrap(obj)
    if not sd:
        raise UnknownArchitecture("checkpoint has no tensors")
    if "model.0.weight" in sd:
        return _from_model_n(sd)
    renamed = {}
    for key, value in sd.items():
        for pattern, repl in _OLD_RENAMES:
            key = pattern.sub(repl, key)
        renamed[key] = value
    return renamed


def detect(sd: Mapping[str, Any]) -> Architecture:
    """Read RRDBNet's hyper-parameters from a normalised state dict. Raises UnknownArchitecture."""
    need = ("conv_first.weight", "conv_last.weight", "conv_body.weight", "conv_up1.weight", "conv_up2.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        raise UnknownArchitecture(f"not an RRDBNet state dict (missing {', '.join(missing)})")
    first, last = tuple(sd["conv_first.weight"].shape), tuple(sd["conv_last.weight"].shape)
    num_feat, first_in = first[0], first[1]
    out_ch = last[0]
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.rdb1\.conv1\.weight$", k))}
    if not blocks or blocks != set(range(len(blocks))):
        raise UnknownArchitecture("RRDB blocks are missing or not numbered 0..N-1")
    grow = int(sd["body.0.rdb1.conv1.weight"].shape[0])
    # conv_first sees the image pixel-unshuffled by 1, 2 or 4 for scale 4, 2 or 1.
    scale = {out_ch: 4, out_ch * 4: 2, out_ch * 16: 1}.get(first_in)
    if scale is None:
        raise UnknownArchitecture(
            f"conv_first takes {first_in} channels for {out_ch} output channels: "
            "not a scale 1, 2 or 4 RRDBNet"
        )
    in_ch = first_in // {4: 1, 2: 4, 1: 16}[scale]
    return Architecture("RRDBNet", scale, in_ch, out_ch, num_feat, len(blocks), grow)
