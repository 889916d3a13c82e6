"""Checkpoints: our own directory format, Hugging Face BERT import, and export back to Hugging Face.

Our format is a directory: config.json ({"format": "encoderforge", "model": EncoderConfig}),
model.safetensors (our parameter names), tokenizer files. Never pickle.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from encoderforge import EncoderforgeError
from encoderforge.fileio import atomic_dir
from encoderforge.model.config import EncoderConfig
from encoderforge.model.encoder import Encoder
from encoderforge.model.zoo import resolve_model

FORMAT = "encoderforge"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class Loaded:
    """A loaded checkpoint: the encoder, plus any extra tensors (e.g. an MLM head) keyed by our names."""

    encoder: Encoder
    extra: dict[str, torch.Tensor]
    path: Path
    source: str  # "encoderforge" or "huggingface"


def load(path: str | Path, *, attention: str | None = None) -> Loaded:
    """Load an encoder from our directory format or a Hugging Face BERT directory (detected from config.json).

    Args:
        path: checkpoint directory, or a zoo name such as 'minilm-l6'.
        attention: override the attention backend ("eager" | "sdpa" | "varlen").
    Returns:
        Loaded with the encoder in eval mode.
    """
    path = resolve_model(path)
    cfg, ours = read_encoder_config(path), _read_config(path).get("format") == FORMAT
    hf = {} if ours else _read_weights(path)
    state = _read_weights(path) if ours else hf_state_to_ours(hf, cfg)
    source, unused = (FORMAT, []) if ours else ("huggingface", _hf_unused(hf, state))
    if attention is not None:
        cfg = EncoderConfig.from_dict({**cfg.to_dict(), "attention": attention})
    _check_tensors(path, state, cfg, hf_names=source != FORMAT, unused=unused)
    check_tokenizer_fits(path, cfg.vocab_size)
    enc = Encoder(cfg)
    enc_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    extra = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    missing, unexpected = enc.load_state_dict(enc_state, strict=False)
    missing = [m for m in missing if not m.startswith("pooler.")]  # some exports drop the pooler
    if missing or unexpected:
        raise EncoderforgeError(
            f"{path}: weights do not match config.json (missing {missing[:5]}, unexpected {unexpected[:5]}); "
            "the checkpoint is incomplete or its config.json belongs to another model"
        )
    return Loaded(encoder=enc.eval(), extra=extra, path=path, source=source)


def read_encoder_config(path: str | Path) -> EncoderConfig:
    """A checkpoint's encoder shape from its config.json alone (ours or Hugging Face BERT), without its weights."""
    path = resolve_model(path)
    raw = _read_config(path)
    if raw.get("format") == FORMAT:
        return EncoderConfig.from_dict(raw["model"], source=f"{path / 'config.json'}: field 'model'")
    return hf_config_to_ours(raw, source=str(path / "config.json"))


def check_tokenizer_fits(model_dir: str | Path, rows: int) -> None:
    """Refuse a model directory whose tokenizer makes ids past the embedding table (an index error mid-training,
    a device-side assert on GPU). A tokenizer *smaller* than the table is legal: BERT checkpoints often pad their
    vocabulary (e.g. to a multiple of 8) and those rows are simply never looked up."""
    model_dir = Path(model_dir)
    file = next((model_dir / n for n in ("tokenizer.json", "vocab.txt") if (model_dir / n).exists()), None)
    if file is None:
        return
    try:  # read the size directly: model/ sits below tokenization/ in the layers
        size = (
            Tokenizer.from_file(str(file)).get_vocab_size(with_added_tokens=True)
            if file.suffix == ".json"
            else sum(1 for line in file.read_text(encoding="utf-8").splitlines() if line.strip())
        )
    except Exception as e:  # tokenizers raises its own exception type for a corrupt file
        raise EncoderforgeError(f"{file}: unreadable tokenizer ({str(e).splitlines()[0][:200]}); restore the file") from None
    if size > rows:
        raise EncoderforgeError(
            f"{file}: the tokenizer has {size} tokens but the model only {rows} embedding rows; "
            f"extend the model with `encoderforge tokenizer extend --model {model_dir} ...` so "
            "every token gets a row, or use the model's own tokenizer"
        )


def _check_tensors(path: Path, state: dict[str, torch.Tensor], cfg: EncoderConfig, *, hf_names: bool, unused: list[str]) -> None:
    """Every tensor config.json implies is present with its shape, and no layer the config lacks is in the file.
    Checked on a meta-device model, so a config that disagrees with the weights costs no memory."""
    weights = _weights_file(path)
    with torch.device("meta"):
        expected = {f"encoder.{k}": tuple(v.shape) for k, v in Encoder(cfg).state_dict().items()}
    if "mlm.bias" in state:  # the tied MLM decoder: one bias per vocabulary entry
        expected["mlm.bias"] = (cfg.vocab_size,)
    names = _hf_names if hf_names else (lambda k: [k])
    for key, shape in expected.items():
        if key in state and tuple(state[key].shape) != shape:
            raise EncoderforgeError(
                f"{weights}: tensor {_label(names(key))!r} has shape {tuple(state[key].shape)} but "
                f"{path / 'config.json'} expects {shape} (hidden_size={cfg.hidden_size}, layers={cfg.num_layers}, "
                f"intermediate_size={cfg.intermediate_size}, vocab_size={cfg.vocab_size}{_widths(cfg)}); config.json does "
                "not belong to these weights — restore the config.json that came with them"
            )
    missing = [
        n
        for k in expected
        if k not in state and not k.startswith("encoder.pooler.")  # some exports drop it
        for n in names(k)
    ]
    extra = sorted(unused + [k for k in state if k.startswith("encoder.") and k not in expected], key=_natural)
    if missing or extra:
        parts = [f"missing {len(missing)} tensors {_few(missing)}"] if missing else []
        parts += [f"{len(extra)} extra tensors {_few(extra)}"] if extra else []
        raise EncoderforgeError(
            f"{weights}: weights do not match {path / 'config.json'} (layers={cfg.num_layers}): {', '.join(parts)}; "
            "the checkpoint is incomplete or its config.json belongs to another model"
        )


def _widths(cfg: EncoderConfig) -> str:
    """The per-layer widths of a pruned config, for error messages ('' when uniform)."""
    return "".join(f", {k}={getattr(cfg, k)}" for k in ("layer_heads", "layer_intermediate") if getattr(cfg, k) is not None)


def _few(names: list[str], n: int = 4) -> str:
    return "[" + ", ".join(map(repr, names[:n])) + (", ...]" if len(names) > n else "]")


def _natural(name: str) -> list:
    """'layer.10' after 'layer.9'."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def _label(names: list[str]) -> str:
    """One tensor name; q, k and v (fused into our qkv) as 'attention.self.query/key/value.weight'."""
    if len(names) == 3:
        head, _, p = names[0].rpartition(".query.")
        return f"{head}.query/key/value.{p}"
    return names[0]


def save(
    encoder: Encoder,
    path: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    extra: dict[str, torch.Tensor] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write our directory format atomically: config.json, model.safetensors, tokenizer files."""
    state = {f"encoder.{k}": v.detach().contiguous() for k, v in encoder.state_dict().items()}
    state.update({k: v.detach().contiguous() for k, v in (extra or {}).items()})
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps({"format": FORMAT, "version": 1, "model": encoder.cfg.to_dict()}, indent=2))
        copy_tokenizer_files(tokenizer_dir, tmp)
    return Path(path)


def export_hf(encoder: Encoder, path: str | Path, *, tokenizer_dir: str | Path | None = None, overwrite: bool = True) -> Path:
    """Write a Hugging Face BERT directory that `transformers.AutoModel.from_pretrained` loads with no
    missing or unexpected keys. Only the BERT layout (post-LN, GELU, learned positions, biases) exports, with one
    FFN width and all heads in every layer (BertConfig derives head_dim = hidden_size / num_attention_heads)."""
    cfg = encoder.cfg
    if any(cfg.heads_of(i) != cfg.num_heads for i in range(cfg.num_layers)):
        raise EncoderforgeError(
            f"cannot export to Hugging Face BERT: layer_heads={cfg.layer_heads} (pruned heads) has no BertConfig "
            "equivalent (it derives head_dim from hidden_size / num_attention_heads); keep the encoderforge format or export ONNX"
        )
    ffn = sorted({cfg.ffn_of(i) for i in range(cfg.num_layers)})
    if len(ffn) > 1:
        raise EncoderforgeError(
            f"cannot export to Hugging Face BERT: layer_intermediate={cfg.layer_intermediate} (per-layer FFN widths) has "
            "no BertConfig equivalent (one intermediate_size); keep the encoderforge format or export ONNX"
        )
    bad = {
        k: getattr(cfg, k)
        for k, ok in (("norm", "post"), ("activation", "gelu"), ("position", "learned"), ("bias", True))
        if getattr(cfg, k) != ok
    }
    if bad or not cfg.type_vocab_size:
        raise EncoderforgeError(
            f"cannot export to Hugging Face BERT: {bad or {'type_vocab_size': 0}} has no BertModel "
            "equivalent; keep the checkpoint in encoderforge format"
        )
    hf = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": ffn[0],
        "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_position,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": cfg.layer_norm_eps,
        "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute",
    }
    state = ours_to_hf_state(encoder.state_dict(), cfg)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(hf, indent=2))
        copy_tokenizer_files(tokenizer_dir, tmp)
    return Path(path)


# ---- Hugging Face <-> ours -------------------------------------------------------------------------

_EMB = {"word_embeddings": "tok", "position_embeddings": "pos", "token_type_embeddings": "segment", "LayerNorm": "norm"}
_LAYER = {
    "attention.output.dense": "attn.out",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "output.LayerNorm": "norm2",
}
_MLM = {"cls.predictions.transform.dense": "mlm.dense", "cls.predictions.transform.LayerNorm": "mlm.norm"}


def hf_config_to_ours(raw: dict, *, source: str) -> EncoderConfig:
    """Map a Hugging Face BERT config.json to EncoderConfig; anything else is a clear error."""
    mtype = raw.get("model_type")
    if mtype not in ("bert",):
        raise EncoderforgeError(
            f"{source}: model_type {mtype!r} is not supported; encoderforge imports BERT "
            "checkpoints (model_type 'bert'), e.g. MiniLM, BERT, BioBERT, LegalBERT"
        )
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise EncoderforgeError(
            f"{source}: position_embedding_type {raw['position_embedding_type']!r} is not "
            "supported; only 'absolute' BERT positions import"
        )
    if raw.get("hidden_act", "gelu") != "gelu":
        raise EncoderforgeError(f"{source}: hidden_act {raw['hidden_act']!r} is not supported; only 'gelu' imports")
    try:
        return EncoderConfig(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=raw["num_attention_heads"],
            intermediate_size=raw["intermediate_size"],
            max_position=raw.get("max_position_embeddings", 512),
            type_vocab_size=raw.get("type_vocab_size", 2),
            layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
            dropout=raw.get("hidden_dropout_prob", 0.1),
            attention_dropout=raw.get("attention_probs_dropout_prob", 0.1),
            pad_token_id=raw.get("pad_token_id", 0) or 0,
        )
    except KeyError as e:
        raise EncoderforgeError(f"{source}: missing field {e.args[0]!r} in a BERT config") from None


def hf_state_to_ours(hf: dict[str, torch.Tensor], cfg: EncoderConfig) -> dict[str, torch.Tensor]:
    """Rename Hugging Face BERT tensors to ours (q, k, v fused into one qkv projection)."""
    hf = {(k[5:] if k.startswith("bert.") else k): v for k, v in hf.items()}
    out: dict[str, torch.Tensor] = {}
    for name, ours in _EMB.items():
        for p in ("weight", "bias"):
            key = f"embeddings.{name}.{p}"
            if key in hf:
                out[f"encoder.embeddings.{ours}.{p}"] = hf[key]
    for i in range(cfg.num_layers):
        pre = f"encoder.layer.{i}."
        for p in ("weight", "bias"):
            qkv = [f"{pre}attention.self.{n}.{p}" for n in ("query", "key", "value")]
            if all(k in hf for k in qkv):
                out[f"encoder.layers.{i}.attn.qkv.{p}"] = torch.cat([hf[k] for k in qkv], dim=0)
            for name, ours in _LAYER.items():
                if f"{pre}{name}.{p}" in hf:
                    out[f"encoder.layers.{i}.{ours}.{p}"] = hf[f"{pre}{name}.{p}"]
    for p in ("weight", "bias"):
        if f"pooler.dense.{p}" in hf:
            out[f"encoder.pooler.dense.{p}"] = hf[f"pooler.dense.{p}"]
        for name, ours in _MLM.items():
            if f"{name}.{p}" in hf:
                out[f"{ours}.{p}"] = hf[f"{name}.{p}"]
    if "cls.predictions.bias" in hf:
        out["mlm.bias"] = hf["cls.predictions.bias"]
    return out


_EMB_BACK = {v: k for k, v in _EMB.items()}
_LAYER_BACK = {v: k for k, v in _LAYER.items()}
_MLM_BACK = {v: k for k, v in _MLM.items()}


def _hf_names(key: str) -> list[str]:
    """The Hugging Face tensor name(s) (no 'bert.' prefix) one of our names came from; qkv came from three."""
    if m := re.fullmatch(r"encoder\.embeddings\.(\w+)\.(weight|bias)", key):
        return [f"embeddings.{_EMB_BACK.get(m[1], m[1])}.{m[2]}"]
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
        if m[2] == "attn.qkv":
            return [f"encoder.layer.{m[1]}.attention.self.{n}.{m[3]}" for n in ("query", "key", "value")]
        return [f"encoder.layer.{m[1]}.{_LAYER_BACK.get(m[2], m[2])}.{m[3]}"]
    if m := re.fullmatch(r"encoder\.(pooler\.dense\.(?:weight|bias))", key):
        return [m[1]]
    if m := re.fullmatch(r"(mlm\.\w+)\.(weight|bias)", key):
        return [f"{_MLM_BACK.get(m[1], m[1])}.{m[2]}"]
    return ["cls.predictions.bias"] if key == "mlm.bias" else [key]


def _hf_unused(hf: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> list[str]:
    """Encoder tensors of a Hugging Face file that the conversion left out (layers past num_hidden_layers, ...).
    Heads we do not use (NSP, the tied decoder) and the position_ids buffer are not encoder weights."""
    used = {n for k in ours for n in _hf_names(k)}
    keys = [k[5:] if k.startswith("bert.") else k for k in hf]
    return [
        k
        for k in keys
        if k not in used and k.split(".")[0] in ("embeddings", "encoder", "pooler") and k != "embeddings.position_ids"
    ]


def ours_to_hf_state(state: dict[str, torch.Tensor], cfg: EncoderConfig) -> dict[str, torch.Tensor]:
    """Inverse of hf_state_to_ours for the encoder (BertModel names, no 'bert.' prefix)."""
    out: dict[str, torch.Tensor] = {}
    for name, ours in _EMB.items():
        for p in ("weight", "bias"):
            if f"embeddings.{ours}.{p}" in state:
                out[f"embeddings.{name}.{p}"] = state[f"embeddings.{ours}.{p}"]
    for i in range(cfg.num_layers):
        for p in ("weight", "bias"):
            q, k, v = state[f"layers.{i}.attn.qkv.{p}"].chunk(3, dim=0)
            for n, t in zip(("query", "key", "value"), (q, k, v)):
                out[f"encoder.layer.{i}.attention.self.{n}.{p}"] = t
            for name, ours in _LAYER.items():
                out[f"encoder.layer.{i}.{name}.{p}"] = state[f"layers.{i}.{ours}.{p}"]
        for p in ("weight", "bias"):
            out[f"pooler.dense.{p}"] = state[f"pooler.dense.{p}"]
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


# ---- files -----------------------------------------------------------------------------------------


def _read_config(path: Path) -> dict:
    if not path.exists():
        raise EncoderforgeError(f"{path}: no such directory; pass a checkpoint directory with config.json and model.safetensors")
    if not path.is_dir():
        raise EncoderforgeError(f"{path}: is a file; pass the checkpoint *directory* that holds config.json")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise EncoderforgeError(f"{cfg_file}: missing; a checkpoint directory needs config.json")
    try:
        return json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EncoderforgeError(f"{cfg_file}: not valid JSON ({e})") from None


def _weights_file(path: Path) -> Path:
    st = path / "model.safetensors"
    return st if st.exists() else path / "pytorch_model.bin"


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    st, pt = path / "model.safetensors", path / "pytorch_model.bin"
    if st.exists():
        try:
            return load_file(str(st))
        except (SafetensorError, OSError, ValueError) as e:
            raise EncoderforgeError(f"{st}: corrupt or truncated safetensors file ({e}); re-export or re-copy it") from None
    if pt.exists():
        try:  # weights_only: never execute pickled code from a checkpoint
            return torch.load(str(pt), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
            raise EncoderforgeError(f"{pt}: cannot be read as plain tensors ({type(e).__name__}: {e})") from None
    raise EncoderforgeError(f"{path}: no model.safetensors or pytorch_model.bin; the directory holds no weights")


def copy_tokenizer_files(src: str | Path | None, dst: Path) -> None:
    """Copy the tokenizer files that exist in `src` (a checkpoint or tokenizer dir) into `dst`."""
    if src is None:
        return
    src = Path(src)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
