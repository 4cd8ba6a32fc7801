"""The model registry: scan the weights folder once at start-up, load every candidate, say why not."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from app.backends.base import WEIGHTS_MISSING, Backend, ModelEntry

log = logging.getLogger("app.registry")

# When one name exists for several backends, the first available one here serves it: a Core ML
# package is only ever available on macOS, where it can use the Neural Engine.
PREFERENCE = ("coreml", "pytorch")


class Registry:
    def __init__(self, backends: Iterable[Backend]) -> None:
        self.backends = {b.name: b for b in backends}
        self.models: list[ModelEntry] = []

    def scan(self, weights_dir: Path) -> None:
        """Find and load every candidate in `weights_dir`. One bad file never raises.

        One stem with several files of one backend (`x.safetensors` and `x.pth`) is one model: the
        files are tried in the backend's order of preference (safest first) and the first that loads
        serves; the others are listed with `duplicate_of` and never loaded.
        """
        if not weights_dir.is_dir():
            log.warning("weights folder %s does not exist: serving LANCZOS only", weights_dir)
            return
        by_suffix = {s: b for b in self.backends.values() for s in b.suffixes}
        groups: dict[tuple[str, str], list[Path]] = {}
        for path in sorted(weights_dir.iterdir()):
            backend = by_suffix.get(path.suffix.lower())
            if backend is not None and not path.name.startswith("."):
                groups.setdefault((backend.name, path.stem), []).append(path)
        for (backend_name, stem), paths in groups.items():
            backend = self.backends[backend_name]
            paths.sort(key=lambda p: backend.suffixes.index(p.suffix.lower()))
            served: Path | None = None
            for path in paths:
                entry = ModelEntry(name=stem, backend=backend_name, file=path)
                if served is not None:
                    entry.duplicate_of = served.name
                    entry.reason = f"duplicate: {served.name} serves the name {stem} (one stem is one model)"
                    log.warning("model %s: %s is not loaded: %s", stem, path.name, entry.reason)
                else:
                    self._load(backend, entry)
                    if entry.available:
                        served = path
                self.models.append(entry)

    @staticmethod
    def _load(backend: Backend, entry: ModelEntry) -> None:
        try:
            backend.load(entry)
        except Exception as exc:  # a backend bug on one file must not stop start-up either
            entry.reason, entry.fallback_reason = f"{type(exc).__name__}: {exc}", WEIGHTS_MISSING
        if entry.available:
            log.info(
                "model %s (%s, x%s) ready from %s", entry.name, entry.backend, entry.scale, entry.file.name
            )
        else:
            log.warning("model %s (%s) unavailable: %s", entry.name, entry.backend, entry.reason)

    def names(self) -> list[str]:
        return sorted({m.name for m in self.models})

    def named(self, name: str) -> list[ModelEntry]:
        """Entries called `name`, in backend preference order."""
        rank = {b: i for i, b in enumerate(PREFERENCE)}
        return sorted((m for m in self.models if m.name == name), key=lambda m: rank.get(m.backend, 99))

    def serving(self, name: str) -> ModelEntry | None:
        return next((m for m in self.named(name) if m.available), None)

    def available(self) -> list[ModelEntry]:
        """One entry per name that can serve (the preferred backend's)."""
        out = []
        for name in self.names():
            entry = self.serving(name)
            if entry is not None:
                out.append(entry)
        return out
