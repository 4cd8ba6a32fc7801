"""Pillow's LANCZOS spread over the cores, with Pillow's own result.

Why by hand: Pillow resizes on one core (1024² -> 2048² RGB, with the copy into numpy, took 65-87 ms on
this project's 2-core machine, the largest step of a LANCZOS request once the PNG encode ran on every
core), and no maintained library resizes with Pillow's weights on several. Pillow's resize is two
separable passes, each releasing the GIL: horizontal (to the output's width, on the source's rows),
then vertical. An output row of either pass depends only on its own filter window, so each pass is cut
into bands that run on the encoders' threads:

- the horizontal pass on bands of source rows, each cropped and resized to the output width alone
  (the same weights on the same rows);
- the vertical pass on bands of output rows, each a vertical-only resize of the first pass's image
  with Pillow's `box` naming the band's source rows. A band starts only where output row x source
  height / output height is a whole number, so its filter windows are the whole resize's; a height
  ratio that leaves no such rows close enough together keeps the vertical pass in one piece.

The order of the passes matters (the first pass's output is rounded to the mode's samples). Pillow
runs an enlargement's horizontal pass first, as the bands do, so for enlargements (every LANCZOS from
an upload: the service only enlarges) the result is Pillow's, sample for sample: tests compare every
mode on a real photo. Pillow 13 runs some reductions vertical first, so reductions (a model's output
brought down to a size off its scale, on CPU) and images too small to share are Pillow's whole resize.
RGBA and LA are resized premultiplied, as Pillow does. The bands' samples are written straight into
the output array, so the copy out of Pillow is spread over the cores too.
"""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import Future
from typing import Any

import numpy as np
from PIL import Image

from app.imaging.threads import edges, pool

MIN_BAND_PIXELS = 1 << 18  # output pixels per band at least: smaller bands cost more than they save
_PREMULTIPLIED = {"RGBA": "RGBa", "LA": "La"}


def lanczos(img: Image.Image, size: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """`np.asarray(img.resize(size, LANCZOS))`, size = (W, H), computed in bands on every core; written
    into `out` (an array of that shape and dtype, or a view of one) when given."""
    w, h = size
    sw, sh = img.size
    bands = min(os.cpu_count() or 1, w * h // MIN_BAND_PIXELS)
    if bands < 2 or w < sw or h < sh or (w, h) == (sw, sh):
        whole = np.asarray(img.resize(size, Image.Resampling.LANCZOS))
        if out is None:
            return whole
        out[...] = whole
        return out
    mode = img.mode
    sample = np.asarray(Image.new(mode, (1, 1)))  # the dtype and planes np.asarray gives this mode
    dest = np.empty((h, w, *sample.shape[2:]), sample.dtype) if out is None else out
    back = mode if mode in _PREMULTIPLIED else None  # the last pass's bands convert back
    if back:  # here, once: the source is the smaller side
        img = img.convert(_PREMULTIPLIED[mode])
    if w != sw:  # the horizontal pass, on bands of source rows
        cuts = edges(sh, bands)
        last = h == sh
        jobs = [
            pool().submit(
                _resized,
                img.crop((0, a, sw, b)),
                (w, b - a),
                None,
                back if last else None,
                dest[a:b] if last else None,
            )
            for a, b in itertools.pairwise(cuts)
        ]
        if last:
            return _wait(jobs, dest)
        img = Image.new(img.mode, (w, sh))
        for top, job in zip(cuts, jobs, strict=False):  # cuts has one more: the bottom
            img.paste(job.result(), (0, top))
    step = h // math.gcd(h, sh)  # output rows between band edges whose source row is whole
    if step * bands > h:
        return _resized(img, (w, h), None, back, dest)
    cuts = edges(h, bands, step)  # the vertical pass, on bands of output rows
    return _wait(
        [
            pool().submit(_resized, img, (w, b - a), (0, a * sh // h, w, b * sh // h), back, dest[a:b])
            for a, b in itertools.pairwise(cuts)
        ],
        dest,
    )


def _resized(
    img: Image.Image,
    size: tuple[int, int],
    box: tuple[int, int, int, int] | None,
    back: str | None,
    into: np.ndarray | None,
) -> Any:
    """One band (on a worker thread): resized from `box`, converted to `back`. Written into `into` as
    samples when given (and that returned), else the Pillow image."""
    img = img.resize(size, Image.Resampling.LANCZOS, box=box)
    if back:
        img = img.convert(back)
    if into is None:
        return img
    into[...] = np.asarray(img)
    return into


def _wait(jobs: list[Future[Any]], dest: np.ndarray) -> np.ndarray:
    for job in jobs:
        job.result()
    return dest
