"""`encoderforge compress TEACHER --recipe recipe.yaml --out OUT`: run a compression recipe's steps in order, each on
the previous step's model, then measure every model beside the anchors in one run (recipes/compress_bench.py).

    OUT/
      01-distill/        model/ (fp32 encoder + head), task.json, metrics.json (what the step did, dev metrics),
      02-structured/     train/ (the loop's curve and, while running, its resumable checkpoints)
      03-quantize/       + the quantized artefact (model-int8.safetensors, model-static-int8.onnx or model-int4.safetensors)
      report/            table.md, results.json, pareto.png
      .encoderforge-run.json

A step is finished when its metrics.json exists (written last, atomically); a killed compression resumes at the
first unfinished step, and inside it from the training loop's last checkpoint (pruning is deterministic, so the
same shape is rebuilt before the checkpoint loads). Every training step runs the ONE loop (training/loop.py) on the
teacher run's own splits; compression methods plug in as a task wrapper (distillation) or an after_step hook
(masks), never as a loop of their own.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Literal, cast

import torch
from torch import nn

from encoderforge import EncoderforgeError, require
from encoderforge.compression.recipe import (
    CompressRecipe,
    Distill,
    Quantize,
    Recovery,
    Step,
    Structured,
    Unstructured,
    step_name,
)
from encoderforge.fileio import atomic_file, clear_run_dir, file_digest, prepare_run_dir, write_marker
from encoderforge.model import checkpoint
from encoderforge.recipes.compress_quantize import quantize_step
from encoderforge.recipes.compress_teacher import TeacherRun, load_teacher, save_step_model, student_encoder
from encoderforge.recipes.finetune import rows, train_args
from encoderforge.tasks.sequences import steps_per_epoch
from encoderforge.training.best import BestKeeper
from encoderforge.training.distributed import setup, teardown
from encoderforge.training.loop import train as run_loop

KD_KIND: dict[str, Literal["softmax", "sigmoid"]] = {"classify": "softmax", "multilabel": "sigmoid"}


@dataclass
class CompressResult:
    out: Path
    steps: list[dict[str, Any]]
    report: dict[str, Any]


def compress(
    recipe: CompressRecipe, out: str | Path, *, teacher: str | Path | None = None, overwrite: bool = False
) -> CompressResult:
    """Run `recipe` on the fine-tuned run `teacher` (default: the recipe's own) and write OUT (module docstring).

    Example:
        >>> compress(load_recipe("configs/compress-r8.yaml"), "runs/r8-small", teacher="runs/r8")
    """
    from encoderforge.recipes.compress_bench import bench_models  # the report needs the inference side

    teacher_dir = Path(teacher or recipe.teacher or "")
    if not str(teacher or recipe.teacher or ""):
        raise EncoderforgeError("no teacher run; pass TEACHER (a fine-tuned run directory) or set `teacher:` in the recipe")
    t = load_teacher(teacher_dir)
    if recipe.bench.anchors:  # fail now, not after the training steps
        require("transformers", "hf")
        require("onnxruntime", "onnx")
    require("matplotlib", "demo")
    out = Path(out)
    record: dict[str, Any] = {"teacher": str(teacher_dir), "steps": [{type(s).__name__.lower(): asdict(s)} for s in recipe.steps]}
    record["bench"] = asdict(recipe.bench)
    model_file = teacher_dir / "model" / "model.safetensors"
    record["inputs"] = {"teacher_weights": file_digest(model_file)}
    safe = [f"bench.{k}" for k in record["bench"]]  # a new measurement of the same models
    action = prepare_run_dir(out, "compress", record, inputs=[teacher_dir], overwrite=overwrite, safe_changes=safe)
    dirs = [out / step_name(i, s) for i, s in enumerate(recipe.steps)]
    finished = all((d / "metrics.json").is_file() for d in dirs) and (out / "report" / "results.json").is_file()
    if action == "done" and finished:  # nothing to do: the same recipe already ran to its report
        steps = [{"dir": str(d), **json.loads((d / "metrics.json").read_text(encoding="utf-8"))} for d in dirs]
        return CompressResult(out, steps, json.loads((out / "report" / "results.json").read_text(encoding="utf-8")))
    if action == "overwrite":
        clear_run_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "compress", "running", record)
    done: list[dict[str, Any]] = []
    current = teacher_dir
    redone = False
    for step, d in zip(recipe.steps, dirs):
        if redone:  # built on a model that just changed: its shape file and checkpoints are stale too
            shutil.rmtree(d, ignore_errors=True)
        if redone or not (d / "metrics.json").is_file():  # unfinished: resumes from its own pruned.json / checkpoints
            run_step(t, step, current, d)
            redone = True
        done.append({"dir": str(d), **json.loads((d / "metrics.json").read_text(encoding="utf-8"))})
        current = d
    report = bench_models(t, [Path(s["dir"]) for s in done], recipe.bench, out / "report")
    write_marker(out, "compress", "finished", record)
    return CompressResult(out, done, report)


def run_step(t: TeacherRun, step: Step, previous: Path, d: Path) -> None:
    """One step from the model in `previous` (a run directory) to a finished step directory `d`."""
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info: dict[str, Any] = {"method": type(step).__name__.lower(), "from": str(previous)}
    if isinstance(step, Quantize):
        net = t.net(previous)
        info.update(quantize_step(t, net, step, d))
    else:
        net = t.net(previous)
        teacher = t.net().eval() if step_needs_teacher(step) else None
        layer_map = None
        if isinstance(step, Distill):
            same_depth = teacher is not None and layers_of(net) == layers_of(teacher)
            if step.student == "layers" and step.keep_layers is not None and same_depth:
                layer_map = sorted(set(step.keep_layers))  # each kept block imitates the teacher block it was
            net = distill_student(t, net, step)
            info["student"] = {"layers": student_encoder(net).cfg.num_layers, "source": step.student}
        if isinstance(step, Structured):
            shape = structured_step(t, net, step, d)
            info["pruned"] = {k: v for k, v in shape.items() if not k.startswith("kept_") or k == "kept_layers"}
        hook, select_from = None, 0
        if isinstance(step, Unstructured):
            hook, select_from = sparsifier_for(t, net, step)
        if step.epochs > 0:
            info["train"] = recover(
                t, net, step, d, teacher=teacher, after_step=hook, select_from=select_from, layer_map=layer_map
            )
        if hook is not None:
            hook.close()
            info["sparsity"] = hook_report(net)
        info["dev"] = t.job().evaluate(net, rows(t.dev))
        save_step_model(t, net, d)
        if hook is not None:  # the zeros stored compactly: what the report counts as this model's size on disk
            from encoderforge.compression.sparse_io import save_sparse

            size = save_sparse(student_encoder(net), d / "model-sparse")
            info["sparse_mb"] = round(size.sparse_mb, 2)
    info["seconds"] = round(time.perf_counter() - t0, 1)
    info["params"] = sum(p.numel() for p in student_encoder(net).parameters())
    with atomic_file(d / "metrics.json") as f:
        json.dump(info, f, indent=2)
    shutil.rmtree(d / "train" / "checkpoints", ignore_errors=True)


def layers_of(net: nn.Module) -> int:
    return student_encoder(net).cfg.num_layers


def step_needs_teacher(step: Step) -> bool:
    return isinstance(step, Recovery) and step.epochs > 0 and step.kd_alpha < 1


# ---- the methods, each through compression/ ------------------------------------------------------------


def distill_student(t: TeacherRun, net: nn.Module, step: Distill) -> nn.Module:
    """The student task model: a layer-dropped copy, the 3-layer paraphrase MiniLM, or a checkpoint directory; the
    head starts as the current model's (same hidden size) so the student starts from a trained classifier."""
    from encoderforge.compression.distill import check_same_vocab
    from encoderforge.compression.students import paraphrase_minilm_l3, student_from_teacher

    enc = student_encoder(net)
    if step.student == "layers":
        student_enc = student_from_teacher(enc, step.keep_layers)  # default: every other layer, ending at the last
    elif step.student == "minilm-l3":
        from encoderforge.model.zoo import resolve_model

        check_same_vocab(resolve_model("minilm-l6"), t.run / "model")  # the L3 student reads MiniLM's vocabulary
        student_enc = paraphrase_minilm_l3()
    else:
        check_same_vocab(step.student, t.run / "model")
        student_enc = checkpoint.load(step.student).encoder
    if student_enc.cfg.hidden_size != enc.cfg.hidden_size:
        raise EncoderforgeError(
            f"student hidden size {student_enc.cfg.hidden_size} != teacher's {enc.cfg.hidden_size}; "
            "distil into a student of the same width (student: layers, minilm-l3, or a checkpoint of that width)"
        )
    student = t.spec.build_model(student_enc, t.labels, t.cfg)
    cast(nn.Module, student.head).load_state_dict(cast(nn.Module, net.head).state_dict())
    return student


def loss_batches(t: TeacherRun, net: nn.Module, n: int) -> list[Callable[[], torch.Tensor]]:
    """`n` micro-batches of the training split as closures returning the mean loss: what the importance and
    second-order scores differentiate."""
    job = t.job()
    micro = [b for step in islice(job.train_batches(0), n) for b in step][:n]

    def closure(b: Any) -> Callable[[], torch.Tensor]:
        def f() -> torch.Tensor:
            out = job.loss(net, b)
            return out.total / max(out.count, 1)

        return f

    return [closure(b) for b in micro]


def structured_step(t: TeacherRun, net: nn.Module, step: Structured, d: Path) -> dict[str, Any]:
    """Score and remove heads / neurons / layers. The kept shape goes to d/pruned.json before training, and a resumed
    step re-applies that file instead of scoring again (latency-target pruning depends on live timings)."""
    from encoderforge.compression.structured import importance, prune_structured, prune_to_latency

    saved = d / "pruned.json"
    if saved.is_file():
        shape = json.loads(saved.read_text(encoding="utf-8"))
        apply_shape(net, shape)
        return shape
    imp = importance(net, loss_batches(t, net, step.batches), method=step.score)  # in eval mode: no dropout
    if step.latency_ms is None:
        done = prune_structured(net, imp, heads=step.heads, ffn=step.ffn, layers=step.layers)
    else:
        from encoderforge.recipes.compress_bench import latency_probe

        done = prune_to_latency(net, imp, step.latency_ms, measure=latency_probe(t))
    shape = {
        "kept_layers": done.layers,
        "kept_heads": done.heads,
        "kept_neurons": done.neurons,
        "heads_per_layer": done.heads_per_layer,
        "neurons_per_layer": done.neurons_per_layer,
        "params_before": done.params_before,
        "params_after": done.params_after,
        **({"fraction": done.fraction, "latency_ms_32_dev_texts": done.latency_ms} if step.latency_ms is not None else {}),
    }
    with atomic_file(saved) as f:
        json.dump(shape, f)
    return shape


def apply_shape(net: nn.Module, shape: dict[str, Any]) -> None:
    """Re-apply a saved structured-pruning result (original indices) through the surgery helper."""
    from encoderforge.model.surgery import prune_ffn_neurons, prune_heads, remove_layers

    remove_layers(net, shape["kept_layers"])
    for i, (heads, neurons) in enumerate(zip(shape["kept_heads"], shape["kept_neurons"])):
        prune_heads(net, i, heads)
        prune_ffn_neurons(net, i, neurons)


def sparsifier_for(t: TeacherRun, net: nn.Module, step: Unstructured) -> tuple[Any, int]:
    """The Sparsifier run as the loop's after_step: sparsity rises on a cubic schedule over `prune_fraction` of
    the steps, then the model recovers at the final sparsity; only evaluations from there on can be kept."""
    from encoderforge.compression.obert import task_losses
    from encoderforge.compression.sparsity import Sparsifier

    total = max(1, round(step.epochs * steps_per_epoch(len(t.train), t.cfg.train.batch_rows)))
    end = max(1, round(step.prune_fraction * total))
    every = step.prune_every or max(1, end // 10)
    fisher = task_losses(net, t.job(), num_grads=step.gradients) if step.method == "obert" else None
    hook = Sparsifier(
        net, final=step.sparsity, start=0, end=end, prune_every=every, scorer=step.method, block=step.block, fisher=fisher
    )
    return hook, end


def hook_report(net: nn.Module) -> dict[str, Any]:
    from encoderforge.compression.sparsity import sparsity_report

    rep = sparsity_report(net)
    return {k: rep[k] for k in ("nonzero", "total", "sparsity")}


def recover(
    t: TeacherRun,
    net: nn.Module,
    step: Recovery,
    d: Path,
    *,
    teacher: nn.Module | None,
    after_step: Callable[[int], None] | None = None,
    select_from: int = 0,
    layer_map: list[int] | None = None,
) -> dict[str, Any]:
    """Train `net` with the ONE loop on the teacher's training split (knowledge distillation from `teacher` when
    given) and keep its best dev evaluation from step `select_from` on."""
    from encoderforge.compression.distill import DistillArgs, DistillTask

    cfg = t.with_training(
        epochs=step.epochs, lr=step.lr, warmup_ratio=step.warmup_ratio, evals_per_epoch=step.evals_per_epoch, out_dir=d / "train"
    )
    job = t.job(cfg)
    task: Any = job
    if teacher is not None:
        kd = DistillArgs(
            alpha=step.kd_alpha,
            temperature=step.temperature,
            kind=KD_KIND[t.cfg.task],
            hidden_weight=step.hidden_weight,
            layer_map=layer_map,
        )
        task = DistillTask(job, teacher, kd)
    targs = train_args(cfg, steps_per_epoch(len(t.train), cfg.train.batch_rows))
    (d / "train").mkdir(parents=True, exist_ok=True)
    keeper = BestKeeper(net, job.primary, 0, greater_is_better=t.spec.greater_is_better)

    def on_eval(s: int, metrics: dict[str, float]) -> bool:
        return keeper(s, metrics) if s >= select_from else False

    dist = setup(cfg.train.device)
    t0 = time.perf_counter()
    try:
        run_loop(
            net, task, targs, dist, tokenizer_dir=t.run / "model", on_eval=on_eval, extra_state=keeper, after_step=after_step
        )
    finally:
        teardown(dist)
    if keeper.state is not None:
        keeper.restore()
    return {"steps": targs.steps, "best_step": keeper.best_step, "seconds": round(time.perf_counter() - t0, 1)}
