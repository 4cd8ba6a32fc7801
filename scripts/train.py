"""Train the service's own RRDBNet on ../shared/datasets/train (T91 + BSD200) with bicubic degradation.

    python scripts/train.py --scale 2 --minutes 150          # x2, resumes from runs/x2/last.pt if present
    python scripts/train.py --scale 4 --init-from weights/rrdb-x2.safetensors

Every `--val-every` steps it measures Y-PSNR on Set5 (monitoring only: nothing is fitted to it) with the
EMA weights, saves a resumable checkpoint in `--run-dir`, and exports the EMA weights to `--export`
(safetensors with metadata) when the PSNR improved. Set5/Set14 are never trained on.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.models.rrdbnet import RRDBNet  # noqa: E402
from scripts.quality import bicubic_lr, modcrop, psnr_y  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"


def load_images(folders: list[Path], min_side: int) -> list[np.ndarray]:
    images = []
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in {".png", ".bmp", ".jpg", ".jpeg"}:
                continue
            img = Image.open(path).convert("RGB")
            if min(img.size) >= min_side:
                images.append(np.asarray(img))
    if not images:
        raise SystemExit(f"no training images found in {folders}")
    return images


def sample_batch(images: list[np.ndarray], batch: int, lr_patch: int, scale: int, rng: random.Random):
    """Random HR patches with flips / 90-degree rotations; LR made by Pillow BICUBIC. Returns (lr, hr)."""
    hp = lr_patch * scale
    lrs, hrs = [], []
    for _ in range(batch):
        img = images[rng.randrange(len(images))]
        h, w = img.shape[:2]
        y, x = rng.randrange(h - hp + 1), rng.randrange(w - hp + 1)
        patch = img[y : y + hp, x : x + hp]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if rng.random() < 0.5:
            patch = patch[::-1]
        patch = np.ascontiguousarray(np.rot90(patch, rng.randrange(4)))
        lr = Image.fromarray(patch).resize((lr_patch, lr_patch), Image.Resampling.BICUBIC)
        hrs.append(patch)
        lrs.append(np.asarray(lr))
    to_t = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float().div_(255.0)  # noqa: E731
    return to_t(lrs), to_t(hrs)


def _smooth_identity(conv: nn.Conv2d, channels: int, smooth: bool) -> None:
    """Make the first `channels` outputs copy (or [1,2,1]x[1,2,1]/16-smooth) the same input channels."""
    assert conv.bias is not None, "the net's convolutions all have biases"
    k = torch.zeros(3, 3)
    if smooth:
        t = torch.tensor([1.0, 2.0, 1.0]) / 4
        k = torch.outer(t, t)
    else:
        k[1, 1] = 1.0
    with torch.no_grad():
        conv.weight[:channels].zero_()
        conv.bias[:channels].zero_()
        for c in range(channels):
            conv.weight[c, c] = k


def init_near_interpolation(net: RRDBNet, channels: int = 3) -> None:
    """Start the net close to a plain upsampling, so training begins near interpolation quality.

    RRDBNet has no image-level skip connection: from a random init it starts far below bicubic. Here the
    trunk's residual paths start near zero (body convs x0.1, conv_body x0.01) and the first feature
    channels carry the image: conv_first copies it (averaging the pixel-unshuffle phases for x2/x1),
    each nearest-neighbour x2 is followed by a [1,2,1] smoothing (which makes it exactly bilinear), and
    conv_hr / conv_last pass those channels through. Other channels keep a small random init to learn from.
    """
    with torch.no_grad():
        for name, module in net.named_modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=0.2)
                if module.bias is not None:
                    module.bias.zero_()
                if name.startswith("body."):
                    module.weight.mul_(0.1)
        net.conv_body.weight.mul_(0.01)
        for conv in (net.conv_up1, net.conv_up2, net.conv_hr, net.conv_last):
            conv.weight[:, :channels].mul_(0.1)
        phases = net.unshuffle**2
        net.conv_first.weight[:channels].zero_()
        for c in range(channels):
            net.conv_first.weight[c, c * phases : (c + 1) * phases, 1, 1] = 1.0 / phases
        _smooth_identity(net.conv_up1, channels, smooth=True)
        _smooth_identity(net.conv_up2, channels, smooth=True)
        _smooth_identity(net.conv_hr, channels, smooth=False)
        _smooth_identity(net.conv_last, channels, smooth=False)


def forward_padded(net: nn.Module, lr: torch.Tensor, multiple: int) -> torch.Tensor:
    """Whole-image forward with reflect padding to a size multiple, cropped back."""
    h, w = lr.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    x = F.pad(lr, (0, pw, 0, ph), mode="reflect") if ph or pw else lr
    out = net(x)
    s = out.shape[-1] // x.shape[-1]
    return out[..., : h * s, : w * s]


@torch.inference_mode()
def validate(net: RRDBNet, scale: int, folder: Path) -> float:
    net.eval()
    scores = []
    for path in sorted(folder.glob("*.png")):
        hr = modcrop(Image.open(path).convert("RGB"), scale)
        lr = torch.from_numpy(np.array(bicubic_lr(hr, scale))).permute(2, 0, 1)[None].float() / 255
        sr = forward_padded(net, lr, net.unshuffle)
        sr_u8 = (sr[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        scores.append(psnr_y(sr_u8, np.asarray(hr), shave=scale))
    net.train()
    return float(np.mean(scores))


def export(ema: RRDBNet, args: argparse.Namespace, step: int, val_psnr: float) -> None:
    path = Path(args.export)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in ema.state_dict().items()}
    meta = {
        "arch": "RRDBNet",
        "scale": str(args.scale),
        "num_in_ch": "3",
        "num_out_ch": "3",
        "num_feat": str(args.num_feat),
        "num_block": str(args.num_block),
        "num_grow_ch": str(args.num_grow_ch),
        "training_data": "T91 + BSD200 (../shared/datasets/train), Pillow BICUBIC degradation",
        "loss": "L1",
        "steps": str(step),
        "val_set5_psnr_y": f"{val_psnr:.3f}",
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * t))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, choices=[2, 4], required=True)
    p.add_argument("--num-feat", type=int, default=32)
    p.add_argument("--num-block", type=int, default=3)
    p.add_argument("--num-grow-ch", type=int, default=16)
    p.add_argument("--lr-patch", type=int, default=48, help="LR patch side (HR = x scale)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=40000, help="length of the cosine schedule")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--min-lr", type=float, default=1e-6)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast")
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--minutes", type=float, default=0, help="stop after this long (0 = run the schedule)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", default=None, help="checkpoints (default runs/x<scale>)")
    p.add_argument("--export", default=None, help="weights file (default weights/rrdb-x<scale>.safetensors)")
    p.add_argument("--init-from", default=None, help="safetensors whose matching tensors start the net")
    args = p.parse_args()
    run_dir = Path(args.run_dir or ROOT / "runs" / f"x{args.scale}")
    args.export = args.export or str(ROOT / "weights" / f"rrdb-x{args.scale}.safetensors")
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    images = load_images(
        [DATASETS / "train" / "T91", DATASETS / "train" / "BSD200"], args.lr_patch * args.scale
    )
    net = RRDBNet(3, 3, args.scale, args.num_feat, args.num_block, args.num_grow_ch)
    init_near_interpolation(net)
    if args.init_from:
        from safetensors.torch import load_file

        src = load_file(args.init_from)
        own = net.state_dict()
        same = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
        net.load_state_dict(same, strict=False)
        print(f"initialised {len(same)}/{len(own)} tensors from {args.init_from}")
    ema = RRDBNet(3, 3, args.scale, args.num_feat, args.num_block, args.num_grow_ch)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.99))
    step, best = 0, -1.0

    last = run_dir / "last.pt"
    if last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        net.load_state_dict(ck["net"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        step, best = int(ck["step"]), float(ck["best"])
        torch.set_rng_state(ck["torch_rng"])
        rng.seed(args.seed + step)
        print(f"resumed from {last} at step {step} (best Set5 {best:.3f} dB)")
    else:
        psnr0 = validate(ema, args.scale, DATASETS / "Set5")
        print(f"step 0: Set5 Y-PSNR at init {psnr0:.3f} dB")

    net.train()
    t0 = window_start = time.time()
    seen_loss, window = 0.0, 0
    ema_params: list[torch.Tensor] = list(ema.parameters())
    net_params: list[torch.Tensor] = list(net.parameters())
    while step < args.steps:
        if args.minutes and time.time() - t0 > args.minutes * 60:
            break
        lr_img, hr_img = sample_batch(images, args.batch, args.lr_patch, args.scale, rng)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            out = net(lr_img)
        loss = F.l1_loss(out.float(), hr_img)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, net_params, 1 - decay)
        seen_loss, window = seen_loss + loss.item(), window + 1
        if step % args.val_every == 0 or step == args.steps:
            val = validate(ema, args.scale, DATASETS / "Set5")
            improved = val > best
            if improved:
                best = val
                export(ema, args, step, val)
            rate = window / (time.time() - window_start)
            print(
                f"step {step}: loss {seen_loss / window:.4f} lr {lr_at(step, args):.2e} "
                f"Set5 {val:.3f} dB{' *' if improved else ''} ({rate:.2f} it/s)",
                flush=True,
            )
            seen_loss, window, window_start = 0.0, 0, time.time()
            state = {
                "net": net.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "best": best,
                "torch_rng": torch.get_rng_state(),
            }
            torch.save(state, run_dir / "last.tmp")
            (run_dir / "last.tmp").replace(last)


if __name__ == "__main__":
    main()
