"""Unstructured and 4-block pruning: the cubic schedule, masks held by the training loop's after_step through real
AdamW steps, checkpoints and a resume, magnitude and oBERT selection, sparse storage on disk, bad input."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

from encoderforge import EncoderforgeError
from encoderforge.compression.obert import task_losses
from encoderforge.compression.sparse_io import load_sparse, save_sparse
from encoderforge.compression.sparsity import Sparsifier, cubic_sparsity, prunable_weights, prune_once, sparsity_report
from encoderforge.model.config import EncoderConfig
from encoderforge.model.encoder import Encoder
from encoderforge.training.args import TrainArgs
from encoderforge.training.distributed import setup
from encoderforge.training.loop import train
from encoderforge.training.task import LossSum

CFG = dict(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_position=16)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # identical kernels in the continuous and the resumed run
    yield
    torch.set_num_threads(n)


def tiny(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(EncoderConfig(**CFG, dropout=0.0, attention_dropout=0.0))


@dataclass
class Batch:
    ids: torch.Tensor  # (B, T)
    target: torch.Tensor  # (B, T, C)

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.ids.to(device), self.target.to(device))


class Regression:
    """Regress the encoder's states onto fixed random targets; batch k is a pure function of k (resume-exact)."""

    def batch(self, k: int) -> Batch:
        gen = torch.Generator().manual_seed(k)
        return Batch(torch.randint(1, CFG["vocab_size"], (4, 8), generator=gen), torch.randn(4, 8, 16, generator=gen))

    def train_batches(self, start_step: int):
        step = start_step
        while True:
            yield [self.batch(step)]
            step += 1

    def eval_batches(self):
        return [self.batch(10**6)]

    def loss(self, model, batch: Batch) -> LossSum:
        out = model(batch.ids)
        return LossSum(((out - batch.target) ** 2).sum(), count=batch.target.numel(), tokens=batch.ids.numel())

    def metrics(self, sums):
        return {"loss": sums["loss"] / sums["count"]}


def args(out_dir, steps: int, **kw) -> TrainArgs:
    base = dict(lr=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.1, eval_every=0, save_every=4, log_every=0)
    base.update(kw)
    return TrainArgs(steps=steps, batch_rows=4, out_dir=str(out_dir), progress=False, device="cpu", precision="fp32", **base)


def zeros(model) -> dict[str, torch.Tensor]:
    return {k: (w == 0).clone() for k, w in prunable_weights(model).items()}


def test_cubic_schedule():
    kw = dict(start=10, end=50, final=0.8)
    assert cubic_sparsity(0, **kw) == 0.0 and cubic_sparsity(10, **kw) == 0.0
    assert cubic_sparsity(30, **kw) == pytest.approx(0.8 - 0.8 * 0.5**3)  # s_f + (s_i - s_f)(1 - 20/40)^3
    assert cubic_sparsity(50, **kw) == 0.8 and cubic_sparsity(500, **kw) == 0.8
    assert cubic_sparsity(10, **kw, initial=0.5) == 0.5
    assert cubic_sparsity(20, **kw, initial=0.5) == pytest.approx(0.8 - 0.3 * 0.75**3)
    values = [cubic_sparsity(s, **kw) for s in range(60)]
    assert values == sorted(values)  # never decreases: fast early, slow near the end


def test_prunable_weights_are_the_block_linears_only():
    names = set(prunable_weights(tiny()))
    assert names == {f"layers.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.out", "mlp.fc1", "mlp.fc2")}


def test_masks_hold_through_adamw_steps_in_the_loop(tmp_path):
    model, task = tiny(), Regression()
    sparsifier = Sparsifier(model, final=0.5, start=2, end=6, prune_every=2)
    seen: list[dict[str, torch.Tensor]] = []
    weights: list[dict[str, torch.Tensor]] = []

    def after_step(step: int) -> None:
        sparsifier(step)
        seen.append(zeros(model))
        weights.append({k: w.detach().clone() for k, w in prunable_weights(model).items()})

    train(model, task, args(tmp_path, 8), setup("cpu"), after_step=after_step)
    total = sum(w.numel() for w in prunable_weights(model).values())
    pruned = [sum(int(z.sum()) for z in s.values()) for s in seen]  # after steps 1..8
    assert pruned[:3] == [0, 0, 0]  # step 2 prunes to the schedule's 0%
    assert pruned[3] == round(cubic_sparsity(4, start=2, end=6, final=0.5) * total)
    assert pruned[5:] == [total // 2] * 3
    for before, after in zip(seen, seen[1:]):  # once pruned, stays pruned
        assert all((after[k] | ~before[k]).all() for k in before)
    last = weights[-2]
    assert all(not torch.equal(last[k][~seen[-1][k]], w[~seen[-1][k]]) for k, w in weights[-1].items())  # training went on
    ckpt = load_file(str(tmp_path / "checkpoints" / "step-00000008" / "model.safetensors"))
    assert all(torch.equal(ckpt[k] == 0, seen[-1][k]) for k in seen[-1])  # the checkpoint holds the pruned weights
    report = sparsity_report(model)
    assert report["nonzero"] == total - total // 2 and report["sparsity"] == pytest.approx(0.5, abs=1 / total)
    assert set(report["per_tensor"]) == set(seen[-1])


def test_resumed_sparsifier_continues_identically(tmp_path):
    """No mask state is saved: a resumed run's Sparsifier re-reads the masks from the loaded weights (exact zeros)."""
    task = Regression()
    kw = dict(final=0.6, start=2, end=8, prune_every=2)  # resumed after step 4: step 5 only re-applies the masks
    ref = tiny()
    train(ref, task, args(tmp_path / "ref", 10), setup("cpu"), after_step=Sparsifier(ref, **kw))

    first = tiny()
    train(first, task, args(tmp_path / "run", 4), setup("cpu"), after_step=Sparsifier(first, **kw))  # stops mid-schedule
    resumed = tiny()  # a fresh dense model: its Sparsifier sees no zeros until the checkpoint is loaded
    train(resumed, task, args(tmp_path / "run", 10), setup("cpu"), after_step=Sparsifier(resumed, **kw))
    for (name, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert sparsity_report(resumed)["sparsity"] == pytest.approx(0.6, abs=1e-3)


def test_obert_four_blocks_in_the_loop(tmp_path):
    model, task = tiny(), Regression()
    sparsifier = Sparsifier(
        model, final=0.5, start=1, end=3, scorer="obert", block=4, fisher=task_losses(model, task, num_grads=4)
    )
    train(model, task, args(tmp_path, 4), setup("cpu"), after_step=sparsifier)
    for name, z in zeros(model).items():
        groups = z.view(z.shape[0], -1, 4)  # (out, in / 4, 4): a 4-block is all zero or all kept
        assert torch.equal(groups.all(-1), groups.any(-1)), name
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_magnitude_picks_the_smallest():
    model = tiny()
    weights = prunable_weights(model)
    total = sum(w.numel() for w in weights.values())
    with torch.no_grad():  # distinct magnitudes, spread across tensors
        values = (torch.randperm(total, generator=torch.Generator().manual_seed(0)).float() + 1) / total
        signs = torch.randint(0, 2, (total,), generator=torch.Generator().manual_seed(1)) * 2 - 1
        flat = values * signs
        i = 0
        for w in weights.values():
            w.copy_(flat[i : i + w.numel()].view_as(w))
            i += w.numel()
    before = {k: w.detach().clone() for k, w in weights.items()}
    prune_once(model, 0.3)
    cut = torch.cat([b.abs().flatten() for b in before.values()]).kthvalue(round(0.3 * total)).values
    for k, w in prunable_weights(model).items():
        assert torch.equal(w == 0, before[k].abs() <= cut), k  # global: the 30% smallest over all tensors

    per = tiny()
    before = {k: w.detach().clone() for k, w in prunable_weights(per).items()}
    prune_once(per, 0.25, scope="per-tensor", block=4)
    for k, w in prunable_weights(per).items():
        energy = (before[k].view(w.shape[0], -1, 4) ** 2).sum(-1)  # (out, in / 4)
        pruned = (w.view(w.shape[0], -1, 4) == 0).all(-1)
        assert int(pruned.sum()) == round(0.25 * energy.numel())
        assert energy[pruned].max() <= energy[~pruned].min(), k


def test_obert_prune_once_reaches_the_target():
    model, task = tiny(), Regression()
    fisher = task_losses(model, task, num_grads=3)(0)
    report = prune_once(model, 0.7, scorer="obert", fisher=fisher)
    assert report["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind for the next optimizer step


def test_sparse_io_round_trip_is_exact_and_smaller(tmp_path):
    torch.manual_seed(0)  # wider than tiny(): with 4k weights the files' headers would dominate
    model = Encoder(EncoderConfig(**{**CFG, "hidden_size": 64, "intermediate_size": 256}))
    prune_once(model, 0.8)
    state = model.state_dict()
    size = save_sparse(model, tmp_path / "sparse")
    loaded = load_sparse(tmp_path / "sparse")
    assert list(loaded) == list(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    weights = sum(w.numel() * 4 for w in prunable_weights(model).values()) / 1e6
    assert size.sparse_mb < size.dense_mb - 0.6 * weights  # 80% zeros: values + 1 bit per weight
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sparse"]  # atomic: no temporary left beside it

    half = save_sparse(model, tmp_path / "half", values="fp16")
    assert half.sparse_mb < size.sparse_mb
    w = load_sparse(tmp_path / "half")["layers.0.mlp.fc1.weight"]
    assert torch.equal(w, state["layers.0.mlp.fc1.weight"].half().float())
    with pytest.raises(EncoderforgeError, match="sparse_index.json"):
        load_sparse(tmp_path / "missing")


def test_bad_input_is_a_one_line_error():
    model = tiny()
    for kw, match in [
        (dict(final=1.0, start=0, end=10), "final=1.0"),
        (dict(final=-0.1, start=0, end=10), "final=-0.1"),
        (dict(final=0.5, start=10, end=10), "start=10"),
        (dict(final=0.5, start=0, end=10, block=3), "block=3"),
        (dict(final=0.5, start=0, end=10, prune_every=0), "prune_every"),
        (dict(final=0.5, start=0, end=10, initial=0.7), "initial=0.7"),
        (dict(final=0.5, start=0, end=10, scorer="obert"), "fisher"),
        (dict(final=0.5, start=0, end=10, scorer="movement"), "scorer"),
    ]:
        with pytest.raises(EncoderforgeError, match=match) as err:
            Sparsifier(model, **kw)
        assert "\n" not in str(err.value)
    with pytest.raises(EncoderforgeError, match="sparsity=1.5"):
        prune_once(model, 1.5)
    with pytest.raises(EncoderforgeError, match="start=5"):
        cubic_sparsity(3, start=5, end=2, final=0.5)
