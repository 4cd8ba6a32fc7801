"""ncnn model files (`.param` + `.bin`, as Upscayl and realesrgan-ncnn-vulkan ship them) read into the
state dict of one of our families, so they serve like any checkpoint.

The family is recognised from the graph's layers and data flow (which layer feeds which), never from
the order the file lists them in: the convolutions must form one chain from the input, with the
activations, concatenations, residual additions and upsampling of RRDBNet or SRVGGNetCompact around
them. Every weight is shape-checked against the net it is mapped onto (strict loading does the rest).
A graph that ends in a resize after the net (the UP2X / UP3X files of some packages: an x4 net, then
a bicubic x0.5 / x0.75) is recognised: the net serves at its native scale and the service makes any
other size itself, which /health says.

Written here because no maintained package reads ncnn files into PyTorch modules (the `ncnn` package
runs them, and the tests use it as the reference). numpy only: no torch at import.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.models.descriptor import UnknownArchitecture

MAGIC = 7767517
# Layers that carry no weights in the .bin; with Convolution and PReLU these are all an RRDBNet or
# Compact graph has. Any other layer type makes the graph unsupported (its weight layout is unknown).
WEIGHTLESS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle", "Noop"}
FP16_TAG, INT8_TAG, FP32_SCALED_TAG = 0x01306B47, 0x000D4B38, 0x0002C056
NEAREST, BICUBIC = 1, 3
INTERP_NAMES = {1: "nearest", 2: "bilinear", 3: "bicubic"}
ACTIVATION_LEAKY = 2


@dataclass
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, int | float | list[float]]
    weights: list[np.ndarray] = field(default_factory=list)

    def int_param(self, key: int, default: int = 0) -> int:
        value = self.params.get(key, default)
        return int(value) if isinstance(value, (int, float)) else default

    def float_param(self, key: int, default: float = 0.0) -> float:
        value = self.params.get(key, default)
        return float(value) if isinstance(value, (int, float)) else default


@dataclass(frozen=True)
class NcnnModel:
    """What `read` found: the family, its state dict (our key names, float32 numpy) and notes for
    /health (weight storage, a trailing resize that is not applied)."""

    family: str
    state_dict: dict[str, np.ndarray]
    notes: dict[str, str]


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_param(text: str) -> list[Layer]:
    """The text `.param` format. Raises UnknownArchitecture for anything else (the binary form too)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2 or lines[0] != str(MAGIC):
        raise UnknownArchitecture(f"not an ncnn text .param file (no {MAGIC} magic line)")
    try:
        layer_count = int(lines[1].split()[0])
    except (ValueError, IndexError):
        raise UnknownArchitecture("ncnn .param: bad layer/blob count line") from None
    layers = []
    for line in lines[2:]:
        parts = line.split()
        try:
            n_in, n_out = int(parts[2]), int(parts[3])
            bottoms, tops = parts[4 : 4 + n_in], parts[4 + n_in : 4 + n_in + n_out]
            params: dict[int, int | float | list[float]] = {}
            for item in parts[4 + n_in + n_out :]:
                key_text, value = item.split("=", 1)
                key = int(key_text)
                if key <= -23300:  # an array: -23300 - id = count,v1,v2,...
                    values = [float(v) for v in value.split(",")[1:]]
                    params[-23300 - key] = values
                else:
                    params[key] = _number(value)
        except (ValueError, IndexError):
            raise UnknownArchitecture(f"ncnn .param: cannot parse layer line {line[:120]!r}") from None
        if len(bottoms) != n_in or len(tops) != n_out:
            raise UnknownArchitecture(f"ncnn .param: layer line {line[:120]!r} is cut short")
        layers.append(Layer(parts[0], parts[1], bottoms, tops, params))
    if len(layers) != layer_count:
        raise UnknownArchitecture(f"ncnn .param says {layer_count} layers but lists {len(layers)}")
    return layers


class _Bin:
    """ncnn's ModelBin over the .bin bytes: type 0 reads a 4-byte storage tag first, type 1 raw fp32."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0
        self.storage: set[str] = set()

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise UnknownArchitecture("ncnn .bin is shorter than its .param says")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def raw(self, count: int) -> np.ndarray:
        return np.frombuffer(self._take(4 * count), "<f4").astype(np.float32)

    def tagged(self, count: int) -> np.ndarray:
        head = self._take(4)
        tag = struct.unpack("<I", head)[0]
        if tag == FP16_TAG:
            self.storage.add("fp16")
            values = np.frombuffer(self._take(2 * count), "<f2").astype(np.float32)
            self._take((-2 * count) % 4)  # aligned to 4 bytes
            return values
        if tag == INT8_TAG:
            raise UnknownArchitecture("ncnn int8-quantised weights are not supported")
        if tag == 0 or tag == FP32_SCALED_TAG:
            self.storage.add("fp32")
            return self.raw(count)
        # Any other non-zero tag: a 256-entry float table, then one uint8 index per value.
        self.storage.add("table-quantised")
        table = self.raw(256)
        index = np.frombuffer(self._take(count), np.uint8)
        self._take((-count) % 4)
        return table[index]


def read_weights(layers: list[Layer], data: bytes) -> str:
    """Fill each layer's `weights` from the .bin (in the .param's layer order, as ncnn reads it).
    Returns the storage ("fp16", "fp32", ...). Raises UnknownArchitecture for other layer types."""
    reader = _Bin(data)
    for layer in layers:
        if layer.type == "Convolution":
            if layer.int_param(8) or layer.int_param(18):
                raise UnknownArchitecture(f"ncnn layer {layer.name}: int8 or dynamic-weight convolution")
            layer.weights.append(reader.tagged(layer.int_param(6)))
            if layer.int_param(5):
                layer.weights.append(reader.raw(layer.int_param(0)))
        elif layer.type == "PReLU":
            layer.weights.append(reader.raw(layer.int_param(0, 1)))
        elif layer.type not in WEIGHTLESS:
            raise UnknownArchitecture(
                f"unsupported architecture: ncnn layer type {layer.type} ({layer.name})"
            )
    if reader.pos != len(data):
        raise UnknownArchitecture(f"ncnn .bin has {len(data) - reader.pos} bytes more than its .param uses")
    return "+".join(sorted(reader.storage)) or "none"


class Graph:
    """Who produces and who consumes each blob."""

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers
        self.producer: dict[str, Layer] = {}
        self.consumers: dict[str, list[Layer]] = {}
        for layer in layers:
            for top in layer.tops:
                if top in self.producer:
                    raise UnknownArchitecture(f"ncnn graph: blob {top} is produced twice")
                self.producer[top] = layer
            for bottom in layer.bottoms:
                self.consumers.setdefault(bottom, []).append(layer)
        inputs = [la for la in layers if la.type == "Input"]
        if len(inputs) != 1:
            raise UnknownArchitecture(f"ncnn graph has {len(inputs)} inputs, not one image")
        self.input = inputs[0]
        sinks = [la for la in layers if not any(t in self.consumers for t in la.tops)]
        if len(sinks) != 1:
            raise UnknownArchitecture(f"ncnn graph has {len(sinks)} outputs, not one image")
        self.output = sinks[0]

    def source(self, blob: str) -> Layer:
        """The layer a blob really comes from, looking through Split (which only fans a blob out)."""
        layer = self.producer.get(blob)
        if layer is None:
            raise UnknownArchitecture(f"ncnn graph: blob {blob} has no producer")
        while layer.type in ("Split", "Noop"):
            layer = self.producer[layer.bottoms[0]]
        return layer

    def inputs_of(self, layer: Layer) -> list[Layer]:
        return [self.source(b) for b in layer.bottoms]

    def data_flow_order(self) -> list[Layer]:
        """Layers in an order where each comes after everything it reads (Kahn's algorithm)."""
        waiting = {id(la): len(la.bottoms) for la in self.layers}
        ready = [la for la in self.layers if not la.bottoms]
        order: list[Layer] = []
        while ready:
            layer = ready.pop(0)
            order.append(layer)
            for top in layer.tops:
                for consumer in self.consumers.get(top, []):
                    waiting[id(consumer)] -= 1
                    if waiting[id(consumer)] == 0:
                        ready.append(consumer)
        if len(order) != len(self.layers):
            raise UnknownArchitecture("ncnn graph has a cycle or a blob read before it is made")
        return order

    def ancestors(self, layer: Layer) -> Iterator[Layer]:
        seen: set[int] = set()
        stack = [layer]
        while stack:
            for parent in (self.producer[b] for b in stack.pop().bottoms):
                if id(parent) not in seen:
                    seen.add(id(parent))
                    stack.append(parent)
                    yield parent


def _conv_shape(layer: Layer) -> tuple[int, int, int, int]:
    out, kw = layer.int_param(0), layer.int_param(1)
    kh = layer.int_param(11, kw)
    size = layer.int_param(6)
    if not out or not kw or size % (out * kw * kh):
        raise UnknownArchitecture(f"ncnn convolution {layer.name} has inconsistent sizes")
    if (layer.int_param(2, 1), layer.int_param(3, 1), layer.int_param(4)) != (1, 1, kw // 2):
        raise UnknownArchitecture(f"ncnn convolution {layer.name} is not stride 1 with 'same' padding")
    return out, size // (out * kw * kh), kh, kw


def _conv_tensors(layer: Layer, key: str) -> dict[str, np.ndarray]:
    out = {f"{key}.weight": layer.weights[0].reshape(_conv_shape(layer))}
    out[f"{key}.bias"] = (
        layer.weights[1] if len(layer.weights) > 1 else np.zeros(layer.int_param(0), np.float32)
    )
    return out


def _is_leaky(layer: Layer, slope: float = 0.2) -> bool:
    params = layer.params.get(10)
    return (
        layer.int_param(9) == ACTIVATION_LEAKY
        and isinstance(params, list)
        and len(params) == 1
        and abs(params[0] - slope) < 1e-6
    )


def _require(condition: bool, family: str, what: str) -> None:
    if not condition:
        raise UnknownArchitecture(f"ncnn graph is not an {family}: {what}")


def _trailing_resize(graph: Graph) -> tuple[Layer, dict[str, str]]:
    """The layer that ends the net proper, and a note when a downscaling Interp follows it."""
    last = graph.output
    if last.type == "Interp" and last.float_param(1, 1.0) < 1.0:
        how = INTERP_NAMES.get(last.int_param(0), f"type {last.int_param(0)}")
        note = (
            f"the file ends in a {how} x{last.float_param(1):g} resize after the net; the net serves at "
            "its native scale and the service resizes to the requested size with LANCZOS"
        )
        return graph.source(last.bottoms[0]), {"ncnn_trailing_resize": note}
    return last, {}


def _compact(graph: Graph, end: Layer) -> dict[str, np.ndarray]:
    """SRVGGNetCompact: conv+PReLU chain -> conv -> PixelShuffle(s), plus Interp(nearest, s)(input)."""
    name = "SRVGGNetCompact"
    _require(end.type == "BinaryOp" and end.int_param(0) == 0 and len(end.bottoms) == 2, name, "no final add")
    a, b = graph.inputs_of(end)
    shuffle, interp = (a, b) if a.type == "PixelShuffle" else (b, a)
    _require(shuffle.type == "PixelShuffle" and interp.type == "Interp", name, "no pixel shuffle + upsample")
    scale = shuffle.int_param(0)
    _require(
        interp.int_param(0) == NEAREST
        and abs(interp.float_param(1) - scale) < 1e-6
        and abs(interp.float_param(2) - scale) < 1e-6
        and graph.inputs_of(interp) == [graph.input],
        name,
        "the residual is not the nearest-upsampled input",
    )
    # Walk back from the pixel shuffle through conv / PReLU pairs to the input.
    chain: list[Layer] = []
    layer = graph.inputs_of(shuffle)[0]
    while layer is not graph.input:
        _require(layer.type in ("Convolution", "PReLU") and len(layer.bottoms) == 1, name, f"{layer.type}")
        chain.append(layer)
        layer = graph.inputs_of(layer)[0]
    chain.reverse()
    kinds = [la.type for la in chain]
    _require(
        len(chain) >= 3 and kinds == ["Convolution", "PReLU"] * ((len(chain) - 1) // 2) + ["Convolution"],
        name,
        "the body is not alternating convolution and PReLU",
    )
    sd: dict[str, np.ndarray] = {}
    for i, layer in enumerate(chain):
        if layer.type == "PReLU":
            sd[f"body.{i}.weight"] = layer.weights[0]
        else:
            _require(layer.int_param(9) == 0, name, f"{layer.name} has a fused activation")
            sd.update(_conv_tensors(layer, f"body.{i}"))
    return sd


def _rrdbnet(graph: Graph, end: Layer) -> dict[str, np.ndarray]:
    """RRDBNet x4: conv_first, B x 3 dense blocks of 5 convs, conv_body, two nearest x2 upsamplings
    with a leaky conv after each, conv_hr (leaky) and conv_last, in one chain of data flow."""
    name = "RRDBNet"
    convs = [la for la in graph.data_flow_order() if la.type == "Convolution"]
    _require(end is convs[-1] if convs else False, name, "the output is not a convolution")
    _require(len(convs) >= 21 and (len(convs) - 6) % 15 == 0, name, f"{len(convs)} convolutions")
    for earlier, later in itertools.pairwise(convs):
        _require(
            any(p is earlier for p in graph.ancestors(later)),
            name,
            f"{later.name} does not follow {earlier.name}",
        )
    blocks = (len(convs) - 6) // 15
    first, dense, tail = convs[0], convs[1:-5], convs[-5:]
    body, up1, up2, hr, last = tail
    _require(graph.inputs_of(first) == [graph.input], name, "conv_first does not read the input")
    for i, conv in enumerate(dense):
        _require(
            _is_leaky(conv) == (i % 5 != 4), name, f"{conv.name}: activation does not match a dense block"
        )
    for i in range(blocks * 3):  # each dense block ends in x * 0.2 + input (ncnn Eltwise with coefficients)
        users = [c for top in dense[i * 5 + 4].tops for c in graph.consumers.get(top, [])]
        _require(
            any(u.type == "Eltwise" and u.params.get(1) == [0.2, 1.0] for u in users), name, "residual 0.2"
        )
    for conv, leaky in ((first, False), (body, False), (up1, True), (up2, True), (hr, True), (last, False)):
        _require(_is_leaky(conv) == leaky, name, f"{conv.name}: unexpected activation")
    for conv in (up1, up2):
        (src,) = graph.inputs_of(conv)
        _require(
            src.type == "Interp" and src.int_param(0) == NEAREST and src.float_param(1) == 2.0,
            name,
            f"{conv.name} is not fed by a nearest x2 upsampling",
        )
    add = graph.inputs_of(graph.inputs_of(up1)[0])[0]
    _require(
        add.type in ("BinaryOp", "Eltwise") and set(map(id, graph.inputs_of(add))) == {id(first), id(body)},
        name,
        "the trunk does not add conv_first's output to conv_body's",
    )
    _require(_conv_shape(first)[1] == _conv_shape(last)[0], name, "pixel-unshuffled (x2 / x1) graphs")
    keys = ["conv_first"]
    keys += [f"body.{b}.rdb{r}.conv{c}" for b in range(blocks) for r in (1, 2, 3) for c in range(1, 6)]
    keys += ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    sd: dict[str, np.ndarray] = {}
    for key, conv in zip(keys, convs, strict=True):
        sd.update(_conv_tensors(conv, key))
    return sd


def read(param: Path) -> NcnnModel:
    """Read `param` and the `.bin` beside it. Raises UnknownArchitecture (with the reason) and OSError."""
    bin_path = param.with_suffix(".bin")
    if not bin_path.is_file():
        raise UnknownArchitecture(f"ncnn weights {bin_path.name} are missing beside {param.name}")
    layers = parse_param(param.read_text(encoding="utf-8", errors="replace"))
    storage = read_weights(layers, bin_path.read_bytes())
    graph = Graph(layers)
    end, notes = _trailing_resize(graph)
    notes["ncnn_storage"] = storage
    reasons = []
    for family, recognise in (("SRVGGNetCompact", _compact), ("RRDBNet", _rrdbnet)):
        try:
            return NcnnModel(family, recognise(graph, end), notes)
        except UnknownArchitecture as exc:
            reasons.append(str(exc))
    kinds = sorted({la.type for la in layers})
    raise UnknownArchitecture(
        f"unsupported architecture: ncnn graph of {len(layers)} layers ({', '.join(kinds)}); "
        + "; ".join(reasons)
    )
