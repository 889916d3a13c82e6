"""One flat config dataclass for the encoder family, plus preset builders (nanoGPT GPTConfig style)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, Literal, Sequence

from encoderforge import EncoderforgeError

Norm = Literal["post", "pre"]
Activation = Literal["gelu", "geglu"]
Position = Literal["learned", "rope"]
Backend = Literal["eager", "sdpa", "varlen"]


@dataclass
class EncoderConfig:
    """Architecture of a BERT-style encoder.

    Variant *names* (not classes) keep it JSON-serializable. The defaults are the BERT layout
    (post-LayerNorm, GELU, learned absolute positions, biases) that Hugging Face checkpoints use.
    `layer_heads` / `layer_intermediate` record per-layer widths after structured pruning (model/surgery.py): a layer
    with h heads has attention width h * head_dim, and head_dim stays hidden_size // num_heads.
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1
    norm: Norm = "post"
    activation: Activation = "gelu"
    position: Position = "learned"
    rope_theta: float = 10000.0
    bias: bool = True
    pad_token_id: int = 0
    attention: Backend = "varlen"
    layer_heads: list[int] | None = None  # heads of each layer (pruned model); None = num_heads in every layer
    layer_intermediate: list[int] | None = None  # FFN width of each layer; None = intermediate_size in every layer

    def __post_init__(self) -> None:
        choices = {"norm": Norm, "activation": Activation, "position": Position, "attention": Backend}
        for name, lit in choices.items():
            allowed = lit.__args__  # type: ignore[attr-defined]
            if getattr(self, name) not in allowed:
                raise EncoderforgeError(
                    f"config field '{name}'={getattr(self, name)!r} is not supported; use one of {list(allowed)}"
                )
        if self.hidden_size % self.num_heads:
            raise EncoderforgeError(f"config: hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.position == "rope" and self.head_dim % 2:
            raise EncoderforgeError(f"config: RoPE needs an even head_dim, got {self.head_dim}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position"):
            if getattr(self, name) <= 0:
                raise EncoderforgeError(f"config field '{name}' must be positive, got {getattr(self, name)}")
        for name in ("layer_heads", "layer_intermediate"):
            widths = getattr(self, name)
            if widths is None:
                continue
            if not isinstance(widths, (list, tuple)) or len(widths) != self.num_layers:
                raise EncoderforgeError(
                    f"config field '{name}' must list one width per layer (num_layers={self.num_layers}), got {widths!r}; "
                    "fix the list or set it to null"
                )
            if any(isinstance(w, bool) or not isinstance(w, int) or w <= 0 for w in widths):
                raise EncoderforgeError(f"config field '{name}' must hold positive integers, got {list(widths)}")
            setattr(self, name, list(widths))  # a tuple (from Python callers) is stored as the list JSON gives back

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def heads_of(self, layer: int) -> int:
        """Attention heads of layer `layer`."""
        return self.num_heads if self.layer_heads is None else self.layer_heads[layer]

    def ffn_of(self, layer: int) -> int:
        """FFN width (neurons) of layer `layer`."""
        return self.intermediate_size if self.layer_intermediate is None else self.layer_intermediate[layer]

    def with_layer_widths(self, heads: Sequence[int], intermediate: Sequence[int]) -> "EncoderConfig":
        """A new config for `len(heads)` layers with these per-layer widths, in one canonical form: uniform FFN widths
        become `intermediate_size` (the shape Hugging Face BERT can hold), per-layer lists equal to the global value
        in every layer become None; heads stay a list unless all equal num_heads (num_heads also fixes head_dim)."""
        heads, intermediate = list(heads), list(intermediate)
        if len(heads) != len(intermediate):
            raise EncoderforgeError(
                f"with_layer_widths: {len(heads)} head counts but {len(intermediate)} FFN widths; give one per layer"
            )
        ffn = intermediate[0] if len(set(intermediate)) == 1 else self.intermediate_size
        return replace(
            self,
            num_layers=len(heads),
            intermediate_size=ffn,
            layer_heads=None if set(heads) == {self.num_heads} else heads,
            layer_intermediate=None if set(intermediate) == {ffn} else intermediate,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> "EncoderConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise EncoderforgeError(f"{source}: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**d)


# name -> the architecture fields it fixes; any of them can be overridden (preset("bert-tiny", num_layers=4))
SIZES: dict[str, dict[str, int]] = {
    "bert-tiny": dict(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512),
    "bert-mini": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
    "bert-small": dict(hidden_size=512, num_layers=4, num_heads=8, intermediate_size=2048),
    "bert-medium": dict(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=2048),
    "bert-base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "minilm-l6": dict(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536),
}
PRESETS: dict[str, Callable[..., EncoderConfig]] = {
    name: (lambda size: lambda **kw: EncoderConfig(**{**size, **kw}))(size) for name, size in SIZES.items()
}


def preset(name: str, **overrides: Any) -> EncoderConfig:
    """Build a preset config by name, e.g. ``preset("bert-tiny", vocab_size=8000)``; an override replaces the preset's
    own value (``preset("bert-tiny", num_layers=4)``), as an architecture search does."""
    if name not in PRESETS:
        raise EncoderforgeError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
