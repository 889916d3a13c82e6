"""Knowledge distillation as a loss: a `DistillTask` wraps any fine-tuning task and a frozen teacher, so a student
is distilled by the ONE training loop (training/loop.py) exactly as it would be fine-tuned.

    loss = alpha * task loss + (1 - alpha) * KD + hidden_weight * hidden-state transfer

- KD on outputs (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"), per output row:
  "softmax": KL(softmax(t / T) || softmax(s / T)) * T^2 (the T^2 keeps its gradient scale independent of T);
  "sigmoid" (multi-label): the binary KL of each label's sigmoid(t / T) vs sigmoid(s / T), summed over labels, * T^2;
  "regression": sum over outputs of (s - t)^2 (no temperature).
- Hidden-state transfer (TinyBERT, Jiao et al. 2020, without its learned projection): MSE between student block i's
  output and teacher block layer_map[i]'s, summed over the mapped layers. Default map: uniform, student layer i
  (0-based) -> teacher layer (i + 1) * Lt // Ls - 1, i.e. TinyBERT's g(m) = m * Lt / Ls in 1-based terms:
  3 -> 6 layers maps to [1, 3, 5], "every other layer" ending at the teacher's last.

Units. The loop normalises every loss by the summed `count` of the inner task (documents for pooled tasks, labelled
tokens for NER). Each distillation term is therefore `count x (its mean over the batch's own rows)`: KD's rows are
the output's first dim (documents for pooled tasks: the exact sum over documents; all N tokens for per-token
outputs); the hidden term's rows are the packed tokens (N, C), its mean taken over tokens and C. After the loop's
division, KD is the mean per output row and the hidden term the mean squared error per hidden unit, each summed over
layers, whatever the batch or accumulation; `alpha = 1, hidden_weight = 0` is the inner loss exactly.

Not done here: attention-map transfer (TinyBERT, MiniLM): the unpadded / SDPA backends never materialise attention
probabilities, so it would need the eager O(T^2) path in both models; and a learned projection for a student of a
different hidden size: its weights would live outside the student the loop optimises, so a size mismatch is an
error (use hidden_weight=0, logit KD only).

Shapes: R output rows, L outputs, N packed tokens, C hidden size.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

from encoderforge import EncoderforgeError
from encoderforge.model.surgery import encoder_blocks
from encoderforge.model.zoo import resolve_model
from encoderforge.tokenization import load_tokenizer
from encoderforge.training.task import LossSum, Task

KDKind = Literal["softmax", "sigmoid", "regression"]
BlockOut = tuple[torch.Tensor, "torch.Tensor | None"]  # (block output, the `rows` it was asked for)


@dataclass
class DistillArgs:
    """How to distil (validated here; messages name the `distill.*` field).

    Args:
        alpha: weight of the inner task's own loss on gold labels; KD gets 1 - alpha (0 = pure KD).
        temperature: T for the "softmax" and "sigmoid" kinds (Hinton et al. use 1-20; 2-4 is common for BERT).
        kind: "softmax" (single-label, NER), "sigmoid" (multi-label) or "regression" (squared error to the teacher).
        hidden_weight: weight of hidden-state transfer (0 = off: no hooks, no extra work).
        layer_map: teacher block (0-based) for each student block; None = uniform_layer_map.
    """

    alpha: float = 0.5
    temperature: float = 2.0
    kind: KDKind = "softmax"
    hidden_weight: float = 0.0
    layer_map: list[int] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise EncoderforgeError(f"distill.alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise EncoderforgeError(f"distill.temperature must be positive, got {self.temperature}")
        if self.kind not in KDKind.__args__:  # type: ignore[attr-defined]
            raise EncoderforgeError(f"distill.kind={self.kind!r} is not supported; use one of {list(KDKind.__args__)}")  # type: ignore[attr-defined]
        if self.hidden_weight < 0:
            raise EncoderforgeError(f"distill.hidden_weight must be >= 0, got {self.hidden_weight}")


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student block i -> teacher block (i + 1) * Lt // Ls - 1 (TinyBERT's uniform map; the last maps to the last)."""
    if not 0 < student_layers <= teacher_layers:
        raise EncoderforgeError(
            f"no uniform layer_map from {student_layers} student to {teacher_layers} teacher layers; "
            "pass distill.layer_map (a teacher layer for each student layer)"
        )
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


def kd_per_row(student: torch.Tensor, teacher: torch.Tensor, kind: KDKind, temperature: float = 1.0) -> torch.Tensor:
    """(R, L) student and teacher outputs -> (R,) KD loss of each row (see the module docstring; float32).

    Example:
        >>> kd_per_row(torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 0.0]]), "softmax", 2.0)  # (1,)
    """
    s, t = student.float(), teacher.detach().float()
    if s.shape != t.shape:
        raise EncoderforgeError(
            f"student outputs {tuple(s.shape)} and teacher outputs {tuple(t.shape)} differ; build the student "
            "with the teacher's task head (same labels)"
        )
    s, t = (s, t) if s.ndim == 2 else (s.reshape(len(s), -1), t.reshape(len(t), -1))  # (R, L)
    if kind == "regression":
        return ((s - t) ** 2).sum(-1)
    s, t = s / temperature, t / temperature
    if kind == "softmax":
        log_pt = F.log_softmax(t, -1)
        kl = (log_pt.exp() * (log_pt - F.log_softmax(s, -1))).sum(-1)
    else:  # binary KL per label, from log-sigmoids (stable for large logits)
        pt = torch.sigmoid(t)
        kl = (pt * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - pt) * (F.logsigmoid(-t) - F.logsigmoid(-s))).sum(-1)
    return kl * temperature**2


def hidden_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], layer_map: Sequence[int]) -> torch.Tensor:
    """Sum over student blocks i of the mean squared error (over rows and C) between student[i] and
    teacher[layer_map[i]], each (N, C); a () float32 tensor."""
    total = torch.zeros((), device=student[0].device)
    for i, j in enumerate(layer_map):
        total = total + _layer_mse(i, j, student[i], teacher[j])
    return total


def _layer_mse(i: int, j: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean squared error of student layer i's (N, C) states against teacher layer j's."""
    if s.shape[-1] != t.shape[-1]:
        raise EncoderforgeError(
            f"hidden-state transfer needs one hidden size: student layer {i} has {s.shape[-1]}, teacher layer "
            f"{j} has {t.shape[-1]}; set distill.hidden_weight=0 (output KD only) or use a student of the teacher's size"
        )
    if s.shape != t.shape:
        raise EncoderforgeError(
            f"student layer {i} gave {tuple(s.shape)} states, teacher layer {j} {tuple(t.shape)}; "
            "run both on the same batches with the same pooling"
        )
    return F.mse_loss(s.float(), t.detach().float(), reduction="mean")


def check_same_vocab(student_tokenizer_dir: str | Path, teacher_tokenizer_dir: str | Path) -> None:
    """Fail in one line, naming both files, unless student and teacher tokenizers have the same token -> id map
    (outputs and hidden states are compared token by token). Each argument: a checkpoint or tokenizer directory,
    a zoo name, or a tokenizer.json / vocab.txt file."""
    a, b = _tokenizer_file(student_tokenizer_dir), _tokenizer_file(teacher_tokenizer_dir)
    va, vb = (load_tokenizer(p).get_vocab(with_added_tokens=True) for p in (a, b))
    if va == vb:
        return
    ia, ib = ({i: w for w, i in v.items()} for v in (va, vb))
    first = next(i for i in range(max(len(ia), len(ib)) + 1) if ia.get(i) != ib.get(i))
    raise EncoderforgeError(
        f"student tokenizer {a} ({len(va)} tokens) and teacher tokenizer {b} ({len(vb)} tokens) differ, first at id "
        f"{first}: {ia.get(first)!r} vs {ib.get(first)!r}; build the student with the teacher's tokenizer (copy {b.name})"
    )


def _tokenizer_file(path: str | Path) -> Path:
    """The file load_tokenizer would read: a directory's tokenizer.json, else its vocab.txt."""
    p = resolve_model(path)
    if p.is_dir():
        found = [p / n for n in ("tokenizer.json", "vocab.txt") if (p / n).exists()]
        if not found:
            raise EncoderforgeError(f"{p}: no tokenizer.json or vocab.txt; copy the tokenizer files into the checkpoint")
        return found[0]
    if not p.exists():
        raise EncoderforgeError(f"{p}: no such tokenizer file or directory")
    return p


class _Capture(nn.Module):
    """Calls `model` (possibly DDP-wrapped) unchanged and keeps what it returned, for the KD term."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.outputs: list[Any] = []

    def forward(self, batch: Any) -> Any:
        out = self.model(batch)
        self.outputs.append(out)
        return out


@contextlib.contextmanager
def _block_outputs(model: nn.Module | None) -> Iterator[list[BlockOut | None]]:
    """While open, each encoder block of `model` (None: none) stores its last (output, rows) at its index."""
    blocks = [] if model is None else list(encoder_blocks(model))
    outs: list[BlockOut | None] = [None] * len(blocks)

    def keep(i: int):  # noqa: ANN202 - a forward hook
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            rows = args[2] if len(args) > 2 else kwargs.get("rows")  # Block.forward(x, ctx, rows)
            outs[i] = (output, rows)

        return hook

    handles = [b.register_forward_hook(keep(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        yield outs
    finally:
        for h in handles:
            h.remove()


def _aligned(s: BlockOut, t: BlockOut) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides on the same rows: a model's last block may run on selected rows only ([CLS] pooling runs it on
    the sequence starts, Encoder.forward_packed `rows`), the other side's full (N, C) states are indexed to match."""
    (hs, rs), (ht, rt) = s, t
    if hs.ndim != 2 or ht.ndim != 2:
        raise EncoderforgeError(
            f"hidden-state transfer needs packed (N, C) block outputs (task models run the unpadded backend), got "
            f"{tuple(hs.shape)} and {tuple(ht.shape)}; use an unpadded attention backend or distill.hidden_weight=0"
        )
    if rs is not None and rt is None:
        ht = ht[rs]
    elif rt is not None and rs is None:
        hs = hs[rt]
    return hs, ht


class DistillTask:
    """A Task that distils `teacher` into the model the loop trains, on the batches and labels of `inner`.

    Args:
        inner: the fine-tuning task (its batches, its gold-label loss, its metrics); its loss must call the model
            once per batch and get a tensor (what every pooled task and NER do).
        teacher: a trained model of the same task-model type (e.g. a fine-tuned SequenceModel); frozen here
            (requires_grad off, eval mode) and moved to the student's device on first use.
        args: the distillation weights, temperature, kind and layer map.
    Example:
        >>> task = DistillTask(ClassificationTask(tok, labels, train, dev), teacher, DistillArgs(alpha=0.5))
        >>> train(student_from_teacher(teacher), task, train_args, dist)
    """

    def __init__(self, inner: Task, teacher: nn.Module, args: DistillArgs | None = None):
        self.inner, self.args = inner, args or DistillArgs()
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher_layers = len(encoder_blocks(teacher)) if self.args.hidden_weight else 0
        if self.args.hidden_weight and self.args.layer_map is not None:
            bad = [j for j in self.args.layer_map if not 0 <= j < self.teacher_layers]
            if bad:
                raise EncoderforgeError(f"distill.layer_map has {bad}: the teacher has layers 0..{self.teacher_layers - 1}")
        self.primary: str = getattr(inner, "primary", "loss")  # the inner task's dev metric is ours

    def train_batches(self, start_step: int) -> Iterator[list[Any]]:
        return self.inner.train_batches(start_step)

    def eval_batches(self) -> Iterable[Any]:
        return self.inner.eval_batches()

    def loss(self, model: nn.Module, batch: Any) -> LossSum:
        """alpha x inner loss + (1 - alpha) x KD + hidden_weight x hidden transfer, summed over the inner units."""
        a = self.args
        student = _Capture(model)
        with _block_outputs(model if a.hidden_weight else None) as s_states:
            inner = self.inner.loss(student, batch)
        s_out = self._one_output(student.outputs)
        teacher = self._teacher_on(s_out.device)
        with torch.no_grad(), _block_outputs(teacher if a.hidden_weight else None) as t_states:
            t_out = teacher(batch)
        if not isinstance(t_out, torch.Tensor):
            raise EncoderforgeError(f"the teacher returned {type(t_out).__name__}; it must be the student's task-model type")
        rows = max(s_out.shape[0], 1)
        kd = kd_per_row(s_out, t_out, a.kind, a.temperature).sum() * (inner.count / rows)  # count x mean per row
        hidden = torch.zeros((), device=s_out.device)
        if a.hidden_weight:
            hidden = inner.count * self._hidden(s_states, t_states)  # count x mean per hidden unit
        total = a.alpha * inner.total + (1.0 - a.alpha) * kd + a.hidden_weight * hidden
        stats = {
            **inner.stats,
            "distill_task_loss": float(inner.total.detach()),
            "distill_kd": float(kd.detach()),
            "distill_hidden": float(hidden.detach()),
        }
        return LossSum(total=total, count=inner.count, tokens=inner.tokens, stats=stats)

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """The inner task's metrics (its `loss` = the gold-label loss alone) plus kd, hidden and the total loss."""
        n = max(sums["count"], 1e-12)
        inner = self.inner.metrics({**sums, "loss": sums.get("distill_task_loss", 0.0)})
        return {
            **inner,
            "kd": sums.get("distill_kd", 0.0) / n,
            "hidden": sums.get("distill_hidden", 0.0) / n,
            "distill_loss": sums["loss"] / n,
        }

    def _one_output(self, outputs: list[Any]) -> torch.Tensor:
        if len(outputs) != 1 or not isinstance(outputs[0], torch.Tensor):
            raise EncoderforgeError(
                f"DistillTask needs an inner task whose loss runs the model once and gets a tensor; "
                f"{type(self.inner).__name__} ran it {len(outputs)} time(s); distil a pooled (classify, multilabel, "
                "regression) or NER task"
            )
        return cast(torch.Tensor, outputs[0])

    def _teacher_on(self, device: torch.device) -> nn.Module:
        p = next(self.teacher.parameters(), None)
        if p is not None and p.device != device:
            self.teacher.to(device)
        return self.teacher.eval()  # cheap, and keeps dropout off whatever a caller did to the teacher

    def _hidden(self, s_states: list[BlockOut | None], t_states: list[BlockOut | None]) -> torch.Tensor:
        layer_map = self.args.layer_map or uniform_layer_map(len(s_states), self.teacher_layers)
        if len(layer_map) != len(s_states):
            raise EncoderforgeError(
                f"distill.layer_map has {len(layer_map)} entries, the student has {len(s_states)} layers; give one "
                "teacher layer per student layer"
            )
        total = torch.zeros((), device=self._states(s_states, 0, "student")[0].device)
        for i, j in enumerate(layer_map):
            s, t = _aligned(self._states(s_states, i, "student"), self._states(t_states, j, "teacher"))
            total = total + _layer_mse(i, j, s, t)
        return total

    @staticmethod
    def _states(states: list[BlockOut | None], i: int, who: str) -> BlockOut:
        out = states[i]
        if out is None:
            raise EncoderforgeError(f"{who} layer {i} did not run in this forward; check distill.layer_map")
        return out
