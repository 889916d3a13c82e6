"""The encoder: config, layers, attention backends, heads, checkpoints."""

from encoderforge.model.config import PRESETS, EncoderConfig, preset
from encoderforge.model.encoder import Encoder

__all__ = ["PRESETS", "Encoder", "EncoderConfig", "preset"]
