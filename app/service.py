"""upscale(): decode -> choose -> run (tiled, off the event loop) -> encode.

Everything a request owns lives in locals and the returned result; the service object holds only
what start-up built (settings, registry, device queues) and counters.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from app import imaging
from app.backends.base import MODEL_ERROR, OUT_OF_MEMORY, ModelEntry
from app.backends.registry import Registry
from app.config import Settings
from app.engine import run_model
from app.errors import ImageTooLarge, InvalidParameter, ModelFailed, NeuralUnavailable, OutOfMemory
from app.fallback import LANCZOS, Choice, choose
from app.memory import MIB, budget_bytes, estimate_bytes
from app.scheduler import DeviceQueue
from app.schemas import UpscaleParams

log = logging.getLogger("app.service")

InferenceHook = Callable[[str, str, float], None]
"""Called on the device thread after each model run: (model name, backend, seconds)."""

MAX_SCALE = 8.0


@dataclass(frozen=True)
class Target:
    """The output size and how it relates to the input: `factor` is the larger per-axis ratio."""

    width: int
    height: int
    factor: float
    crop: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) after a cover-resize


# A request's options are the API's own validated model: one definition of the fields.
Options = UpscaleParams


@dataclass(frozen=True)
class Result:
    data: bytes
    media_type: str
    upscaler: str
    backend: str
    fallback_reason: str | None
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    elapsed_ms: float


def target_size(w: int, h: int, scale: float | None, width: int | None, height: int | None) -> Target:
    """Output size from a scale or from width / height (one of them keeps the aspect ratio).
    Raises InvalidParameter for a size or scale outside (0, 8x]."""
    if width is not None or height is not None:
        if scale is not None:
            raise InvalidParameter("give either scale or width/height, not both")
        if (width is not None and width < 1) or (height is not None and height < 1):
            raise InvalidParameter("width and height must be positive")
        tw = width if width is not None else max(1, round(w * height / h))  # type: ignore[operator]
        th = height if height is not None else max(1, round(h * width / w))  # type: ignore[operator]
    else:
        s = 2.0 if scale is None else scale
        if not 1.0 < s <= MAX_SCALE:
            raise InvalidParameter(f"scale must be greater than 1 and at most {MAX_SCALE:g}, not {s:g}")
        tw, th = max(1, round(w * s)), max(1, round(h * s))
    factor = max(tw / w, th / h)
    if factor > MAX_SCALE:
        raise InvalidParameter(f"{tw}x{th} is more than {MAX_SCALE:g}x the {w}x{h} input")
    return Target(tw, th, factor)


class UpscaleService:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        queues: dict[str, DeviceQueue],
        *,
        on_inference: InferenceHook | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.queues = queues
        self.memory_budget = budget_bytes(settings.memory_budget_mb)
        self.on_inference = on_inference
        self.fallbacks: Counter[str] = Counter()
        self._logged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def queue_for(self, device: str) -> DeviceQueue:
        """The device's queue (one model run at a time there), made on first use."""
        if device not in self.queues:
            self.queues[device] = DeviceQueue(device, self.settings.queue_size)
        return self.queues[device]

    # -- choosing ---------------------------------------------------------------------------------
    def choose(self, opts: Options, factor: float) -> Choice:
        if factor <= 1.0 and (opts.model or "auto").lower() == "auto":
            # Nothing to enlarge (a /generate at hr_scale 1, a width below the input's): a model pass
            # would only be resized away again.
            return Choice(None, None, "no enlargement: LANCZOS resize only")
        return choose(self.registry, opts.model, opts.use_realesrgan, factor, self.settings.default_model)

    def default_model(self) -> str | None:
        entry = choose(self.registry, "auto", True, 2.0, self.settings.default_model).entry
        return entry.name if entry else None

    def record_fallback(self, model: str, reason: str, detail: str | None) -> None:
        """Count every fallback; log each (model, cause) once, so a flood of requests is one line."""
        with self._lock:
            self.fallbacks[reason] += 1
            first = (model, reason) not in self._logged
            self._logged.add((model, reason))
        if first:
            log.warning("falling back to LANCZOS for %s: %s (%s)", model, reason, detail or "no detail")

    def check_memory(self, w: int, h: int, target: Target, entry: ModelEntry | None) -> int:
        """The estimated peak bytes of this request; raises ImageTooLarge beyond the memory budget."""
        s = self.settings
        need = estimate_bytes(
            w,
            h,
            (target.width, target.height),
            target.factor,
            entry,
            tile=s.tile,
            pad=s.tile_pad,
            max_pixels=s.max_output_pixels,
        )
        if need > self.memory_budget:
            how = entry.name if entry is not None else LANCZOS
            raise ImageTooLarge(
                f"{w}x{h} -> {target.width}x{target.height} with {how} needs about {need / MIB:.1f} MiB; "
                f"the memory budget is {self.memory_budget / MIB:.1f} MiB (UPSCALER_MEMORY_BUDGET_MB)"
            )
        return need

    # -- the pipeline -----------------------------------------------------------------------------
    async def upscale(
        self,
        data: bytes,
        opts: Options,
        *,
        target: Target | None = None,
        fmt: str | None = None,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """Raises UpscalerError subclasses for anything the client must hear about, and Cancelled when
        `cancel` (set when the client disconnects) is set before or during the model's work."""
        t0 = time.perf_counter()
        deadline = deadline or (time.monotonic() + self.settings.request_timeout_s)
        header = imaging.probe(data, self.settings.max_input_pixels)
        w, h = header.width, header.height
        if target is None:
            wanted = opts.scale
            if wanted is None and opts.width is None and opts.height is None:
                # No size asked for: the chosen model's native scale (2 when LANCZOS serves).
                pre = self.choose(opts, 2.0)
                native = pre.entry.scale if pre.entry else None
                wanted = float(native) if native and native > 1 else 2.0
            target = target_size(w, h, wanted, opts.width, opts.height)
        if target.width * target.height > self.settings.max_output_pixels:
            raise ImageTooLarge(
                f"output {target.width}x{target.height} is over the limit of "
                f"{self.settings.max_output_pixels} pixels"
            )
        out_fmt = imaging.output_format(fmt or opts.format, header.format)
        choice = self.choose(opts, target.factor)
        if (
            choice.entry is None
            and choice.reason
            and choice.reason != "disabled_by_request"
            and not opts.fallback
        ):
            raise NeuralUnavailable(f"no neural model can serve: {choice.detail}", choice.reason)
        self.check_memory(w, h, target, choice.entry)

        decoded = await asyncio.to_thread(imaging.decode, data, self.settings.max_input_pixels)
        picture, used, reason = None, choice.entry, choice.reason
        model_name = choice.entry.name if choice.entry else (opts.model or "auto")
        if choice.entry is not None:
            try:
                picture = await self._neural(decoded, choice.entry, target, deadline, cancel)
            except (OutOfMemory, ModelFailed) as exc:
                reason = OUT_OF_MEMORY if isinstance(exc, OutOfMemory) else MODEL_ERROR
                if not opts.fallback:
                    raise NeuralUnavailable(f"model {choice.entry.name} failed: {exc}", reason) from None
                used = None
                choice = Choice(None, reason, str(exc))
        if reason:
            self.record_fallback(model_name, reason, choice.detail)
        if picture is None:
            picture = await asyncio.to_thread(self._lanczos, decoded, target)
        encoded = await asyncio.to_thread(
            imaging.encode,
            picture,
            out_fmt,
            quality=opts.quality,
            png_level=self.settings.png_compress_level,
            icc_profile=decoded.icc_profile,
            text=decoded.text,
        )
        return Result(
            data=encoded,
            media_type=imaging.MEDIA_TYPES[out_fmt],
            upscaler=used.name if used else LANCZOS,
            backend=used.backend if used else "pillow",
            fallback_reason=reason,
            input_size=(w, h),
            output_size=_crop_size(target),
            elapsed_ms=(time.perf_counter() - t0) * 1000.0,
        )

    async def _neural(
        self,
        decoded: imaging.DecodedImage,
        entry: ModelEntry,
        target: Target,
        deadline: float,
        cancel: threading.Event | None = None,
    ) -> Image.Image | np.ndarray:
        device = getattr(entry.runner, "device", "cpu") if entry.backend == "pytorch" else entry.backend
        upscaled = await self.queue_for(device).run(
            lambda flag: self._passes(decoded.pixels, entry, target, flag),
            timeout_s=deadline - time.monotonic(),
            cancel=cancel,
        )
        return await asyncio.to_thread(self._finish, upscaled, decoded, target)

    def _passes(
        self, pixels: np.ndarray, entry: ModelEntry, target: Target, cancel: threading.Event
    ) -> np.ndarray:
        """Runs on the device thread."""
        assert entry.runner is not None
        s = self.settings
        t0 = time.perf_counter()
        out = run_model(
            pixels,
            entry.runner,
            target.factor,
            tile=s.tile,
            pad=s.tile_pad,
            max_pixels=s.max_output_pixels,
            cancel=cancel,
        )
        if self.on_inference is not None:
            self.on_inference(entry.name, entry.backend, time.perf_counter() - t0)
        return out

    @staticmethod
    def _finish(x: np.ndarray, decoded: imaging.DecodedImage, target: Target) -> Image.Image | np.ndarray:
        size = (target.width, target.height)
        if (x.shape[1], x.shape[0]) != size:
            x = imaging.resize_array(x, size)
        alpha = None
        if decoded.alpha is not None:
            alpha = imaging.resize_array(imaging.to_unit_float(decoded.alpha), size)
        picture = imaging.compose(x, alpha, decoded.bit_depth)
        return _crop(picture, target)

    @staticmethod
    def _lanczos(decoded: imaging.DecodedImage, target: Target) -> Image.Image | np.ndarray:
        size = (target.width, target.height)
        if decoded.image is not None:
            return _crop(decoded.image.resize(size, Image.Resampling.LANCZOS), target)
        color = imaging.resize_array(imaging.to_unit_float(decoded.pixels), size)
        alpha = None
        if decoded.alpha is not None:
            alpha = imaging.resize_array(imaging.to_unit_float(decoded.alpha), size)
        return _crop(imaging.compose(color, alpha, decoded.bit_depth), target)


def _crop(picture: Image.Image | np.ndarray, target: Target) -> Image.Image | np.ndarray:
    if target.crop is None:
        return picture
    left, top, right, bottom = target.crop
    if isinstance(picture, np.ndarray):
        return picture[top:bottom, left:right]
    return picture.crop(target.crop)


def _crop_size(target: Target) -> tuple[int, int]:
    if target.crop is None:
        return target.width, target.height
    left, top, right, bottom = target.crop
    return right - left, bottom - top
