from pathlib import Path

import pytest

from app.backends.base import ModelEntry
from app.backends.registry import Registry
from app.errors import InvalidParameter
from app.fallback import choose


class _Runner:
    def __init__(self, scale: int) -> None:
        self.scale = scale
        self.default_tile = 64
        self.size_multiple = 1

    def run(self, x):  # pragma: no cover - never called here
        raise AssertionError


def _registry(*entries: ModelEntry) -> Registry:
    r = Registry([])
    r.models = list(entries)
    return r


def _ok(name: str, scale: int, backend: str = "pytorch") -> ModelEntry:
    return ModelEntry(name, backend, Path(f"{name}.pth"), runner=_Runner(scale))


def _bad(name: str, fallback_reason: str, backend: str = "pytorch") -> ModelEntry:
    return ModelEntry(name, backend, Path(f"{name}.pth"), reason="why", fallback_reason=fallback_reason)


def test_choose_auto_picks_smallest_native_scale_that_suffices() -> None:
    r = _registry(_ok("x2", 2), _ok("x4", 4), _ok("x1", 1))
    assert choose(r, "auto", True, 2.0, None).entry.name == "x2"  # type: ignore[union-attr]
    assert choose(r, "auto", True, 1.5, None).entry.name == "x2"  # type: ignore[union-attr]
    assert choose(r, "auto", True, 3.0, None).entry.name == "x4"  # type: ignore[union-attr]
    assert choose(r, "auto", True, 6.0, None).entry.name == "x4"  # type: ignore[union-attr]


def test_choose_auto_prefers_available_default_model() -> None:
    r = _registry(_ok("x2", 2), _ok("x4", 4), _bad("broken", "weights_missing"))
    assert choose(r, "auto", True, 4.0, "x2").entry.name == "x2"  # type: ignore[union-attr]
    assert choose(r, "auto", True, 4.0, "broken").entry.name == "x4"  # type: ignore[union-attr]


def test_choose_lanczos_and_disabled() -> None:
    r = _registry(_ok("x2", 2))
    assert choose(r, "lanczos", True, 2.0, None).entry is None
    assert choose(r, "LANCZOS", True, 2.0, None).reason is None
    assert choose(r, "auto", False, 2.0, None).reason == "disabled_by_request"


def test_choose_unknown_model_is_invalid_parameter() -> None:
    with pytest.raises(InvalidParameter, match="x2"):
        choose(_registry(_ok("x2", 2)), "nope", True, 2.0, None)


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ((), "weights_missing"),
        ((_bad("a", "weights_missing"),), "weights_missing"),
        ((_bad("a", "weights_missing"), _bad("b", "library_missing")), "library_missing"),
        ((_bad("a", "backend_unavailable", "coreml"), _bad("a", "weights_missing")), "backend_unavailable"),
    ],
)
def test_choose_without_usable_models_names_the_cause(entries: tuple, reason: str) -> None:
    choice = choose(_registry(*entries), "auto", True, 2.0, None)
    assert choice.entry is None and choice.reason == reason and choice.detail


def test_choose_named_unavailable_model_falls_back_with_its_reason() -> None:
    r = _registry(_bad("m", "backend_unavailable", "coreml"))
    choice = choose(r, "m", True, 2.0, None)
    assert choice.entry is None and choice.reason == "backend_unavailable"


def test_registry_prefers_coreml_when_both_serve_a_name() -> None:
    r = _registry(_ok("m", 4, "pytorch"), _ok("m", 4, "coreml"))
    assert r.serving("m").backend == "coreml"  # type: ignore[union-attr]
    r = _registry(_ok("m", 4, "pytorch"), _bad("m", "backend_unavailable", "coreml"))
    assert r.serving("m").backend == "pytorch"  # type: ignore[union-attr]
    assert [e.name for e in r.available()] == ["m"]
