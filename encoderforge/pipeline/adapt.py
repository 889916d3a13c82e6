"""The `adapt` stage: continued MLM of the start model on domain text (the pretrain recipe, run twice).

    RUN/adapt/corpus.jsonl   the domain text (licensedcode-texts: the bundled license texts)
    RUN/adapt/shards/        token shards (data prepare), 5% of documents held out by hash
    RUN/adapt/head/          phase 1: fresh MLM head, encoder frozen -> the unadapted model's held-out MLM loss
    RUN/adapt/mlm/           phase 2: whole encoder, anchored MLM -> RUN/adapt/mlm/model, where finetune starts

Both phases are ordinary pretraining runs: a killed stage resumes each from its last checkpoint, and a finished
phase is not retrained.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from encoderforge.data.corpus import CorpusSpec, prepare_corpus
from encoderforge.data.datasets import pkg_file
from encoderforge.data.masking import MaskingConfig
from encoderforge.data.shards import MANIFEST
from encoderforge.fileio import atomic_file
from encoderforge.model.zoo import resolve_model
from encoderforge.pipeline.config import AdaptStage
from encoderforge.recipes.pretrain import DataArgs, ModelArgs, PretrainConfig, pretrain
from encoderforge.training.args import TrainArgs

ADAPTED = Path("mlm") / "model"  # under RUN/adapt/: the encoder the finetune stage starts from


def license_texts(max_docs: int) -> list[str]:
    """The full license texts of licensedcode-data (unlabelled legal text), front matter removed, sorted by file."""
    files = sorted(pkg_file("licensedcode-data", "mit.LICENSE").parent.glob("*.LICENSE"))
    texts = []
    for p in files:
        body = p.read_text(encoding="utf-8", errors="replace").split("---", 2)[-1].strip()
        if len(body) >= 200:  # a few entries are stubs ("see URL")
            texts.append(re.sub(r"[ \t]+", " ", body))
    return texts[:max_docs] if max_docs else texts


def domain_corpus(cfg: AdaptStage, stage_dir: Path) -> CorpusSpec:
    """The corpus spec of the domain text; the bundled texts are written to RUN/adapt/corpus.jsonl first."""
    if cfg.text != "licensedcode-texts":
        return CorpusSpec(path=cfg.text, name="domain")
    path = stage_dir / "corpus.jsonl"
    with atomic_file(path, encoding="utf-8") as f:
        for t in license_texts(cfg.max_docs):
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    return CorpusSpec(path=str(path), name="domain")


def phase_config(cfg: AdaptStage, init: str, shards: Path, out: Path, *, head: bool) -> PretrainConfig:
    """One pretraining run: phase 1 (head=True) trains the MLM head on the frozen encoder; phase 2 the whole
    encoder with the feature anchor."""
    steps = cfg.head_steps if head else cfg.steps
    return PretrainConfig(
        model=ModelArgs(init_from=init, freeze_encoder=head, anchor_weight=0.0 if head else cfg.anchor_weight),
        data=DataArgs(shards=str(shards), max_len=cfg.max_len, eval_rows=64),
        masking=MaskingConfig(ratio=cfg.mask_ratio, strategy="whole_word"),
        train=TrainArgs(
            steps=steps,
            batch_rows=cfg.batch_rows,
            lr=cfg.head_lr if head else cfg.lr,
            warmup_steps=max(1, steps // 10),
            seed=cfg.seed,
            log_every=max(1, min(10, steps // 5)),
            eval_every=steps,
            save_every=max(1, min(50, steps)),
            out_dir=str(out),
            progress=False,
        ),
    )


def run_adapt(cfg: AdaptStage, base_model: str, stage_dir: Path) -> dict[str, Any]:
    """Prepare the domain shards (once), run both phases, and return their held-out MLM metrics: phase 1's is
    the unadapted encoder's (with a trained head), phase 2's the adapted one's, on the same held-out rows."""
    shards = stage_dir / "shards"
    if not (shards / MANIFEST).is_file():
        prepare_corpus([domain_corpus(cfg, stage_dir)], resolve_model(base_model), shards, eval_fraction=0.05, seed=cfg.seed)
    manifest = json.loads((shards / MANIFEST).read_text(encoding="utf-8"))
    before = pretrain(phase_config(cfg, base_model, shards, stage_dir / "head", head=True))
    after = pretrain(phase_config(cfg, str(stage_dir / "head" / "model"), shards, stage_dir / "mlm", head=False))
    return {
        "text": cfg.text,
        "base_model": base_model,
        "model": str(stage_dir / ADAPTED),
        "corpus": {k: manifest.get(k) for k in ("documents", "tokens", "corpora") if k in manifest},
        "unadapted": before,
        "adapted": after,
    }
