"""One flat config dataclass for the encoder family, plus preset builders (nanoGPT GPTConfig style)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Literal

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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

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
