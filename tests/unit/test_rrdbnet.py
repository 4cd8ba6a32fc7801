import pytest
import torch

from app.models.rrdbnet import RRDBNet, macs_per_input_pixel


@pytest.mark.parametrize(("scale", "size"), [(1, 16), (2, 10), (4, 7)])
def test_rrdbnet_output_shape_is_input_times_scale(scale: int, size: int) -> None:
    size = size if scale == 4 else size * (4 // scale if scale == 1 else 1)
    net = RRDBNet(3, 3, scale, num_feat=8, num_block=1, num_grow_ch=4).eval()
    with torch.inference_mode():
        out = net(torch.rand(1, 3, size, size + 4))
    assert out.shape == (1, 3, size * scale, (size + 4) * scale)


def test_rrdbnet_parameter_names_match_basicsr() -> None:
    keys = set(RRDBNet(3, 3, 4, 8, 2, 4).state_dict())
    for key in (
        "conv_first.weight",
        "body.1.rdb3.conv5.bias",
        "conv_body.weight",
        "conv_up1.weight",
        "conv_up2.weight",
        "conv_hr.weight",
        "conv_last.bias",
    ):
        assert key in keys


def test_rrdbnet_rejects_unknown_scale() -> None:
    with pytest.raises(ValueError, match="scale"):
        RRDBNet(scale=3)


def test_macs_per_input_pixel_matches_x4plus_count() -> None:
    # RealESRGAN_x4plus: 23 blocks, 64 features, 32 growth: 17.9 M multiply-adds per input pixel.
    assert macs_per_input_pixel(4, 64, 23, 32) == pytest.approx(17.93e6, rel=1e-3)


def test_macs_per_input_pixel_counts_every_convolution() -> None:
    net = RRDBNet(3, 3, 2, 8, 1, 4)
    h = w = 8
    counted = 0

    def hook(module: torch.nn.Conv2d, inp: tuple, out: torch.Tensor) -> None:
        nonlocal counted
        counted += out.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]

    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.inference_mode():
        net(torch.rand(1, 3, h, w))
    assert counted == macs_per_input_pixel(2, 8, 1, 4) * h * w
