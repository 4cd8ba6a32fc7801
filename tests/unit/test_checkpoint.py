"""Checkpoint layouts, architecture detection and the safe loading path (through the PyTorch backend)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from app.models import rrdbnet
from app.models.architectures import describe
from app.models.checkpoint import unwrap
from app.models.descriptor import ModelDescriptor, UnknownArchitecture
from app.models.rrdbnet import RRDBNet
from tests.support.checkpoints import LAYOUTS, load_entry, tiny_state_dict, write_checkpoint


def detect(sd: dict) -> ModelDescriptor:
    """The RRDBNet descriptor of a (possibly wrapped, possibly old-named) state dict."""
    return describe(unwrap(sd))


def normalize_state_dict(obj: object) -> dict:
    return rrdbnet.normalize(unwrap(obj))


CASES = [(layout, 4) for layout in LAYOUTS] + [
    (layout, scale)
    for scale in (1, 2)
    for layout in LAYOUTS
    if layout != "model_n"  # model.N is x4 only
]


@pytest.mark.parametrize(("layout", "scale"), CASES)
def test_load_every_layout_gives_the_same_net(tmp_path: Path, layout: str, scale: int) -> None:
    sd = tiny_state_dict(scale, seed=3, num_block=2)
    entry = load_entry(write_checkpoint(sd, tmp_path / "m", layout))
    assert entry.available, entry.reason
    assert entry.descriptor is not None
    assert (entry.descriptor.scale, entry.descriptor.hp("num_block")) == (scale, 2)
    ref = RRDBNet(3, 3, scale, 8, 2, 4).eval()
    ref.load_state_dict(sd)
    x = np.random.default_rng(0).random((12, 16, 3), dtype=np.float32)
    with torch.inference_mode():
        expected = ref(torch.from_numpy(x).permute(2, 0, 1)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert entry.runner is not None
    np.testing.assert_allclose(entry.runner.run(x), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("scale", "num_feat", "num_block", "grow"), [(1, 8, 1, 4), (2, 12, 3, 6), (4, 16, 2, 8)]
)
def test_detect_reads_hyperparameters(scale: int, num_feat: int, num_block: int, grow: int) -> None:
    arch = detect(
        normalize_state_dict(tiny_state_dict(scale, num_feat=num_feat, num_block=num_block, num_grow_ch=grow))
    )
    hp = arch.hyperparameters
    assert (arch.scale, hp["num_feat"], hp["num_block"], hp["num_grow_ch"], arch.in_ch, arch.out_ch) == (
        scale,
        num_feat,
        num_block,
        grow,
        3,
        3,
    )
    assert arch.size_multiple == {4: 1, 2: 2, 1: 4}[scale]


def test_detect_grayscale_model() -> None:
    arch = detect(tiny_state_dict(2, channels=1))
    assert (arch.in_ch, arch.out_ch, arch.scale) == (1, 1, 2)


def test_detect_rejects_other_architectures() -> None:
    with pytest.raises(UnknownArchitecture, match="unsupported architecture: 1 tensors, keys like encoder"):
        detect({"encoder.weight": torch.zeros(3, 3)})
    sd = tiny_state_dict(4)
    sd["conv_first.weight"] = torch.zeros(8, 5, 3, 3)
    with pytest.raises(UnknownArchitecture, match="scale"):
        detect(sd)


def test_normalize_rejects_non_dict() -> None:
    with pytest.raises(UnknownArchitecture):
        normalize_state_dict([1, 2, 3])


class _RunsCode:
    marker: Path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_load_refuses_a_pickle_that_would_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    payload = _RunsCode()
    payload.marker = marker
    sd = tiny_state_dict(4)
    torch.save({"params": sd, "hook": payload}, tmp_path / "evil.pth")
    entry = load_entry(tmp_path / "evil.pth")
    assert not entry.available
    assert entry.reason is not None and "refused" in entry.reason and "not executed" in entry.reason
    assert entry.fallback_reason == "weights_missing"
    assert not marker.exists()


def test_load_garbage_file_is_unavailable_with_reason(tmp_path: Path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"definitely not a checkpoint")
    (tmp_path / "junk2.safetensors").write_bytes(b"\x00" * 16)
    for name in ("junk.pth", "junk2.safetensors"):
        entry = load_entry(tmp_path / name)
        assert not entry.available and entry.reason


def test_load_wrong_shapes_fail_strict_loading(tmp_path: Path) -> None:
    sd = tiny_state_dict(4)
    sd["conv_hr.weight"] = torch.zeros(8, 8, 1, 1)
    entry = load_entry(write_checkpoint(sd, tmp_path / "bad", "top"))
    assert not entry.available and "conv_hr" in (entry.reason or "")


def test_load_reports_tile_for_cpu(tmp_path: Path) -> None:
    entry = load_entry(write_checkpoint(tiny_state_dict(4), tmp_path / "m", "top"), tile=96)
    assert entry.runner is not None and entry.runner.default_tile == 96
