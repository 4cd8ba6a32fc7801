"""`upscale INPUT... -o OUTDIR --url URL`: upscale files and folders through the service.

Folders are walked recursively and their relative paths kept under OUTDIR; an output that already
exists is skipped (so an interrupted run resumes); each output is written to a temporary name and
renamed, so a half-written file never counts as done. A progress bar shows images/s and the ETA; the
summary says what was done, skipped and failed, which upscalers ran and which fell back. Exit code 1
when anything failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from upscaler_client.client import DEFAULT_URL, Client, UpscalerError, UpscaleResult

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
KEEPS_FORMAT = {".png", ".jpg", ".jpeg", ".webp"}  # the service answers in these formats as they came
SUFFIX_BY_FORMAT = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg", "webp": ".webp"}


@dataclass(frozen=True)
class Task:
    source: Path
    target: Path


def find_images(inputs: Sequence[Path]) -> Iterator[tuple[Path, Path]]:
    """(file, path relative to what was given) for every image file under `inputs`, sorted."""
    for given in inputs:
        if given.is_dir():
            for path in sorted(
                p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            ):
                yield path, path.relative_to(given)
        elif given.is_file():
            yield given, Path(given.name)
        else:
            raise FileNotFoundError(given)


def output_path(outdir: Path, relative: Path, fmt: str | None) -> Path:
    """Where an input's result goes: its relative path under `outdir`, with the suffix of the format
    the service will answer in (the requested one, else the input's when it keeps it, else PNG)."""
    if fmt:
        suffix = SUFFIX_BY_FORMAT[fmt]
    else:
        suffix = relative.suffix.lower() if relative.suffix.lower() in KEEPS_FORMAT else ".png"
    return outdir / relative.with_suffix(suffix)


def plan(inputs: Sequence[Path], outdir: Path, fmt: str | None) -> tuple[list[Task], list[Task]]:
    """(to do, already done)."""
    todo: list[Task] = []
    done: list[Task] = []
    for source, relative in find_images(inputs):
        task = Task(source, output_path(outdir, relative, fmt))
        (done if task.target.exists() else todo).append(task)
    return todo, done


def run_one(client: Client, task: Task, options: dict[str, object]) -> UpscaleResult:
    result = client.upscale(task.source, **options)
    task.target.parent.mkdir(parents=True, exist_ok=True)
    partial = task.target.with_name(f".{task.target.name}.part")
    partial.write_bytes(result.image)
    os.replace(partial, task.target)
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="upscale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files and folders")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR", help="where results go")
    p.add_argument(
        "--url", default=os.environ.get("UPSCALER_URL", DEFAULT_URL), help=f"default {DEFAULT_URL}"
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, help="factor, 1 < S <= 8 (default: the model's own)")
    size.add_argument("--width", type=int, help="output width (keeps the aspect ratio)")
    size.add_argument("--height", type=int, help="output height (keeps the aspect ratio)")
    p.add_argument("--model", default=None, help="a model name, lanczos or auto (default)")
    p.add_argument("--format", choices=sorted(SUFFIX_BY_FORMAT), default=None, help="output format")
    p.add_argument("--quality", type=int, default=None, help="JPEG / WebP quality 1..100")
    p.add_argument("--jobs", type=int, default=2, help="requests in flight at once (default 2)")
    p.add_argument("--api-key", default=os.environ.get("UPSCALER_API_KEY"), help="or UPSCALER_API_KEY")
    p.add_argument("--no-fallback", action="store_true", help="fail instead of accepting a LANCZOS fallback")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        todo, done = plan(args.inputs, args.output, args.format)
    except FileNotFoundError as exc:
        print(f"upscale: no such file or folder: {exc}", file=sys.stderr)
        return 2
    options: dict[str, object] = {
        k: v
        for k, v in {
            "scale": args.scale,
            "width": args.width,
            "height": args.height,
            "model": args.model,
            "format": args.format,
            "quality": args.quality,
            "fallback": False if args.no_fallback else None,
        }.items()
        if v is not None
    }
    upscalers: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    failed: list[tuple[Path, str]] = []
    with Client(args.url, api_key=args.api_key) as client, ThreadPoolExecutor(args.jobs) as pool:
        bar = tqdm(total=len(todo), unit="img", disable=args.quiet or not todo, dynamic_ncols=True)
        futures = {pool.submit(run_one, client, task, options): task for task in todo}
        for future in as_completed(futures):
            task = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # an error answer or a transport failure fails this file only
                why = str(exc) if isinstance(exc, UpscalerError) else f"{type(exc).__name__}: {exc}"
                failed.append((task.source, why))
            else:
                upscalers[result.upscaler] += 1
                if result.fallback_reason:
                    fallbacks[result.fallback_reason] += 1
            bar.update(1)
        bar.close()
    print(summary(len(todo) - len(failed), len(done), failed, upscalers, fallbacks))
    return 1 if failed else 0


def summary(
    done: int, skipped: int, failed: list[tuple[Path, str]], upscalers: Counter[str], fallbacks: Counter[str]
) -> str:
    lines = [f"done {done}, skipped {skipped} (already there), failed {len(failed)}"]
    if upscalers:
        lines.append("upscalers: " + ", ".join(f"{name} x{n}" for name, n in upscalers.most_common()))
    if fallbacks:
        lines.append(
            "fallbacks to LANCZOS: " + ", ".join(f"{why} x{n}" for why, n in fallbacks.most_common())
        )
    lines += [f"failed: {path}: {why}" for path, why in failed]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
