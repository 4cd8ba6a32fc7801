"""The upscale pipeline: plan (probe once, choose once, size, check memory) -> decode -> run -> finish
-> encode -> result.

The core takes a `Job` (what to upscale and how), never an API schema; every path yields one `Picture`
until encode. Everything a request owns lives in locals and the returned result; the service object
holds only what start-up built (settings, registry, device queues) and counters.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from app.allocator import give_back
from app.backends.base import DISABLED_BY_REQUEST, MODEL_ERROR, OUT_OF_MEMORY, ModelEntry
from app.backends.registry import Registry
from app.config import Settings
from app.engine import run_model
from app.errors import (
    Cancelled,
    ImageTooLarge,
    InvalidParameter,
    ModelFailed,
    NeuralUnavailable,
    OutOfMemory,
    PayloadTooLarge,
    Timeout,
)
from app.fallback import LANCZOS, NEAREST, Choice, choose
from app.imaging.decode import DecodedImage, Header, decode, probe
from app.imaging.encode import MEDIA_TYPES, cap_metadata, encode, output_format
from app.imaging.pixels import Picture, compose, resize_array, to_unit_float
from app.imaging.resample import lanczos
from app.memory import MemoryBudget, Reservation, budget_bytes, estimate_bytes
from app.scheduler import DeviceQueue
from app.sizing import ScaleTo, Sizing, Target, target_for

log = logging.getLogger("app.service")

InferenceHook = Callable[[str, str, float], None]
"""Called on the device thread after each model run: (model name, backend, seconds)."""

NATIVE_PROBE_FACTOR = 2.0
CUDA_RUNS = 2  # model runs at once on a CUDA device, each on its own stream
T = TypeVar("T")  # the factor a request that names no size is chosen for


@dataclass(frozen=True)
class Job:
    """One image to upscale. `model`: a name, `lanczos` or `auto`; `fallback=False` answers 503 instead
    of falling back; `format` (png / jpeg / webp, None: the input's) and `quality` (1..100) shape the
    output. `header` is the probe's result when the caller already has it."""

    data: bytes
    sizing: Sizing = field(default_factory=ScaleTo)
    model: str = "auto"
    use_realesrgan: bool = True
    fallback: bool = True
    format: str | None = None
    quality: int | None = None
    header: Header | None = None


class Stages:
    """Runs a request's blocking steps off the event loop, each within what is left of its deadline.
    A step still running at the deadline is abandoned (504) and the ones after it never start; its
    memory stays reserved until it really ends. A cancelled request (client gone) starts no step."""

    def __init__(self, held: Reservation, deadline: float, cancel: threading.Event) -> None:
        self.held = held
        self.deadline = deadline
        self.cancel = cancel
        self.timings: dict[str, float] = {}  # stage -> ms, in the order they ran (Server-Timing)

    def took(self, stage: str, since: float, until: float | None = None) -> None:
        """Record a stage that ran from perf_counter() `since` to `until` (now when None)."""
        end = time.perf_counter() if until is None else until
        self.timings[stage] = self.timings.get(stage, 0.0) + (end - since) * 1000.0

    async def run(self, stage: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) on a worker thread, timed as `stage`."""
        t0 = time.perf_counter()
        try:
            return await self._run(fn, *args, **kwargs)
        finally:
            self.took(stage, t0)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.cancel.is_set():
            raise Cancelled()
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Timeout("the request timeout passed before its work was done")
        future = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=left)
        except (TimeoutError, asyncio.TimeoutError):
            self.cancel.set()
            self.held.outlive(future)
            raise Timeout(f"no result within the request timeout ({left:.1f}s left)") from None
        except asyncio.CancelledError:
            self.cancel.set()
            self.held.outlive(future)
            raise


@dataclass(frozen=True)
class Plan:
    """What was decided before a pixel is decoded."""

    header: Header
    target: Target
    out_format: str
    choice: Choice
    memory_bytes: int


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
    metadata_dropped: tuple[str, ...] = ()
    # (stage, ms) in the order they ran: budget (waiting for memory), decode, queue (waiting for the
    # device), model, encode (finishing, LANCZOS included, and encoding).
    timings: tuple[tuple[str, float], ...] = ()


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
        self.budget = MemoryBudget(
            budget_bytes(settings.memory_budget_mb), settings.queue_size, on_idle=give_back
        )
        self.on_inference = on_inference
        self.fallbacks: Counter[str] = Counter()
        self._logged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def queue_for(self, device: str) -> DeviceQueue:
        """The device's queue, made on first use: one model run at a time, two on CUDA (each on its
        own stream, so the GPU is fed while the other request copies and quantises)."""
        if device not in self.queues:
            workers = CUDA_RUNS if device == "cuda" else 1
            self.queues[device] = DeviceQueue(device, self.settings.queue_size, workers)
        return self.queues[device]

    # -- choosing ---------------------------------------------------------------------------------
    def choose(self, job: Job, factor: float) -> Choice:
        if factor <= 1.0 and (job.model or "auto").lower() == "auto":
            # Nothing to enlarge (a /generate at hr_scale 1, a width below the input's): a model pass
            # would only be resized away again.
            return Choice(None, None, "no enlargement: LANCZOS resize only")
        return choose(self.registry, job.model, job.use_realesrgan, factor, self.settings.default_model)

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
            # A LANCZOS the client asked for (use_realesrgan=false) is no fault: info, not a warning.
            level = logging.INFO if reason == DISABLED_BY_REQUEST else logging.WARNING
            log.log(level, "LANCZOS instead of %s: %s (%s)", model, reason, detail or "no detail")

    def check_batch(self, count: int) -> None:
        """Raises PayloadTooLarge (413) for more images in one request than UPSCALER_MAX_BATCH."""
        limit = self.settings.max_batch
        if count > limit:
            raise PayloadTooLarge(f"{count} images in one request; the limit is {limit} (UPSCALER_MAX_BATCH)")

    def estimate(self, header: Header, target: Target, entry: ModelEntry | None) -> int:
        """The estimated peak bytes of this request, from the header alone."""
        s = self.settings
        return estimate_bytes(
            header.width,
            header.height,
            (target.width, target.height),
            target.factor,
            entry,
            tile=s.tile,
            pad=s.tile_pad,
            max_pixels=s.max_output_pixels,
            planes=header.planes,
            bit_depth=header.bit_depth,
            data_bytes=len(header.data),
        )

    # -- the pipeline -----------------------------------------------------------------------------
    def plan(self, job: Job) -> Plan:
        """Probe the header (once), choose the model (once), size the output and check the memory
        budget, all before a pixel is decoded. Raises UpscalerError subclasses."""
        s = self.settings
        if job.quality is not None and not 1 <= job.quality <= 100:
            raise InvalidParameter(f"quality must be 1..100, not {job.quality}")
        header = job.header or probe(job.data, s.max_input_pixels)
        w, h = header.width, header.height
        if isinstance(job.sizing, ScaleTo) and job.sizing.wants_native:
            choice = self.choose(job, NATIVE_PROBE_FACTOR)
            target = target_for(job.sizing, w, h, choice.entry.scale if choice.entry else None)
        else:
            target = target_for(job.sizing, w, h)
            choice = self.choose(job, target.factor)
        if target.width * target.height > s.max_output_pixels:
            raise ImageTooLarge(
                f"output {target.width}x{target.height} is over the limit of {s.max_output_pixels} pixels"
            )
        out_format = output_format(job.format, header.format)
        if choice.entry is None and choice.reason not in (None, DISABLED_BY_REQUEST) and not job.fallback:
            raise NeuralUnavailable(f"no neural model can serve: {choice.detail}", choice.reason or "")
        return Plan(header, target, out_format, choice, self.estimate(header, target, choice.entry))

    async def upscale(
        self, job: Job, *, deadline: float | None = None, cancel: threading.Event | None = None
    ) -> Result:
        """Raises UpscalerError subclasses for anything the client must hear about, and Cancelled when
        `cancel` (set when the client disconnects) is set before or during the model's work."""
        t0 = time.perf_counter()
        deadline = deadline or (time.monotonic() + self.settings.request_timeout_s)
        plan = self.plan(job)
        how = plan.choice.entry.name if plan.choice.entry else LANCZOS
        what = (
            f"{plan.header.width}x{plan.header.height} -> {plan.target.width}x{plan.target.height} with {how}"
        )
        waiting = time.perf_counter()
        async with self.budget.reserve(plan.memory_bytes, deadline, what) as held:
            stages = Stages(held, deadline, cancel or threading.Event())
            stages.took("budget", waiting)
            return await self._run(job, plan, t0, stages)

    async def _run(self, job: Job, plan: Plan, t0: float, stages: Stages) -> Result:
        """decode -> run (model or LANCZOS) -> finish -> encode, inside the request's memory reservation;
        every step bounded by the request's deadline."""
        decoded = await stages.run("decode", decode, plan.header)
        choice, upscaled = plan.choice, None
        if choice.entry is not None:
            try:
                upscaled = await self._neural(decoded, choice.entry, plan.target, stages)
            except (OutOfMemory, ModelFailed) as exc:
                reason = OUT_OF_MEMORY if isinstance(exc, OutOfMemory) else MODEL_ERROR
                if not job.fallback:
                    raise NeuralUnavailable(f"model {choice.entry.name} failed: {exc}", reason) from None
                self.record_fallback(choice.entry.name, reason, str(exc))
                choice = Choice(None, reason, str(exc))
        elif choice.reason:
            self.record_fallback(job.model or "auto", choice.reason, choice.detail)
        nearest = choice.entry is None and (job.model or "").strip().lower() == NEAREST
        text, icc, dropped = cap_metadata(
            decoded.text, decoded.icc_profile, self.settings.max_metadata_kb * 1024
        )
        if dropped:
            log.info(
                "metadata over UPSCALER_MAX_METADATA_KB not carried to the output: %s",
                ", ".join(dropped)[:500],
            )

        def render() -> bytes:
            """Finish (the model's output, or LANCZOS from the input) and encode: one step, one thread
            hop. A request given up meanwhile (deadline, client gone) does not start the encode."""
            if upscaled is not None:
                picture = self._finish(upscaled, decoded, plan.target)
            else:
                picture = self._resize(decoded, plan.target, nearest)
            if stages.cancel.is_set():
                raise Cancelled()
            return encode(
                picture,
                plan.out_format,
                quality=job.quality,
                png_level=self.settings.png_compress_level,
                icc_profile=icc,
                text=text,
            )

        encoded = await stages.run("encode", render)
        used = choice.entry
        return Result(
            data=encoded,
            media_type=MEDIA_TYPES[plan.out_format],
            upscaler=used.name if used else NEAREST if nearest else LANCZOS,
            backend=used.backend if used else "pillow",
            fallback_reason=choice.reason,
            input_size=(plan.header.width, plan.header.height),
            output_size=plan.target.output_size,
            elapsed_ms=(time.perf_counter() - t0) * 1000.0,
            metadata_dropped=tuple(dropped),
            timings=tuple(stages.timings.items()),
        )

    async def _neural(
        self, decoded: DecodedImage, entry: ModelEntry, target: Target, stages: Stages
    ) -> np.ndarray:
        """The model's output, from the device's queue (see _passes); timed as `queue` (waiting for the
        device) and `model` (the run there)."""
        device = getattr(entry.runner, "device", "cpu") if entry.backend == "pytorch" else entry.backend
        span: list[float] = []  # the run's start and end, written on the device thread
        submitted = time.perf_counter()
        try:
            return await self.queue_for(device).run(
                lambda flag: self._passes(decoded, entry, target, flag, span),
                timeout_s=stages.deadline - time.monotonic(),
                cancel=stages.cancel,
            )
        finally:
            stages.took("queue", submitted, span[0] if span else None)
            if len(span) == 2:
                stages.took("model", *span)

    def _passes(
        self,
        decoded: DecodedImage,
        entry: ModelEntry,
        target: Target,
        cancel: threading.Event,
        span: list[float],
    ) -> np.ndarray:
        """Runs on the device thread. The image comes back at the target size (LANCZOS after the model
        where its scale does not land there) and quantised to the output's bit depth, both on the
        model's device for PyTorch on a GPU. The run's start and end go into `span`."""
        runner = entry.runner
        assert runner is not None
        s = self.settings
        t0 = time.perf_counter()
        span.append(t0)
        try:
            out = run_model(
                decoded.pixels,
                runner,
                target.factor,
                tile=s.tile,
                pad=s.tile_pad,
                max_pixels=s.max_output_pixels,
                cancel=cancel,
                bit_depth=decoded.bit_depth,
                size=(target.width, target.height),
            )
        finally:
            span.append(time.perf_counter())
        if self.on_inference is not None:
            self.on_inference(entry.name, entry.backend, span[-1] - t0)
        return out

    @staticmethod
    def _finish(x: np.ndarray, decoded: DecodedImage, target: Target) -> Picture:
        """The model's output (quantised, at the target size) plus the input's alpha (LANCZOS-resized),
        cropped."""
        size = (target.width, target.height)
        alpha = None
        if decoded.alpha is not None:
            alpha = resize_array(to_unit_float(decoded.alpha), size)
        return compose(x, alpha, decoded.bit_depth).crop(target.crop)

    @staticmethod
    def _resize(decoded: DecodedImage, target: Target, nearest: bool = False) -> Picture:
        """The Pillow path: LANCZOS (or NEAREST when asked for by name) straight to the target."""
        size = (target.width, target.height)
        if nearest:
            pixels = decoded.pixels if decoded.alpha is None else np.dstack([decoded.pixels, decoded.alpha])
            ys = np.arange(size[1]) * pixels.shape[0] // size[1]
            xs = np.arange(size[0]) * pixels.shape[1] // size[0]
            return Picture(np.ascontiguousarray(pixels[ys][:, xs])).crop(target.crop)
        image = decoded.pil()
        if image is not None:
            return Picture.from_array(lanczos(image, size)).crop(target.crop)
        color = resize_array(to_unit_float(decoded.pixels), size)
        alpha = None
        if decoded.alpha is not None:
            alpha = resize_array(to_unit_float(decoded.alpha), size)
        return compose(color, alpha, decoded.bit_depth).crop(target.crop)
