"""The pipeline's typed config: one YAML file, one section per stage (absent or `false` = the stage is off).

    data:     {source: licensedcode-rules, labels: [mit, apache-2.0], max_train: 400, max_dev: 100, max_test: 200}
    adapt:    {text: licensedcode-texts, head_steps: 100, steps: 150}   # continued MLM before fine-tuning
    finetune: {task: multilabel, model: minilm-l6, finetune: {epochs: 2}, train: {lr: 1e-4}}   # FinetuneConfig keys
    compress: {method: int8}
    evaluate: {tfidf: true}
    index:    {corpus: licensedcode-texts, max_docs: 400}   # search the domain's documents (index_config.py)
    bench:    {texts: 64, latency_texts: 16, rounds: 3, threads: 2}
    export:   {hf: true, onnx: false}
    report:   {title: legal quickstart}

The `finetune` section is the fine-tuning recipe's own config (recipes/finetune_config.py: task, model, data,
finetune, train), read by the same typed loader; the pipeline sets `train.out_dir` to RUN/finetune and, when the
`data` stage is on, `data.train/dev/test` to its files; with `adapt` on, fine-tuning starts from RUN/adapt/model
(the adapted encoder) and `evaluate` also fine-tunes the unadapted start model for the comparison. Every stage
writes RUN/<stage>/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from encoderforge import EncoderforgeError
from encoderforge.config import from_dict, merge, read_yaml, set_key
from encoderforge.pipeline.index_config import IndexStage, check_index, check_index_dims
from encoderforge.recipes.finetune_config import DERIVED, FinetuneConfig, finetune_config

# index sits beside evaluate (both judge the model's quality; it reads only data and finetune) and before bench, so
# that a retrieval failure shows before the long timing stage
STAGES = ("data", "tokenizer", "adapt", "finetune", "compress", "evaluate", "index", "bench", "export", "report")
LICENSE_KEYS = ["mit", "apache-2.0", "gpl-2.0", "bsd-new", "lgpl-2.1"]


@dataclass
class DataStage:
    """Materialise a bundled real data set into RUN/data/{train,dev,test}.jsonl.

    Args:
        source: licensedcode-rules (multi-label: which licenses a rule snippet names).
        labels: license keys kept; rules naming any other key are dropped.
        max_train / max_dev / max_test: examples per split (after deduplication and a seeded shuffle).
        max_chars: texts are cut to this many characters.
        seed: shuffle seed.
    """

    source: Literal["licensedcode-rules"] = "licensedcode-rules"
    labels: list[str] = field(default_factory=lambda: list(LICENSE_KEYS))
    max_train: int = 800
    max_dev: int = 200
    max_test: int = 400
    max_chars: int = 400
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_train", "max_dev", "max_test", "max_chars"):
            if getattr(self, name) < 1:
                raise EncoderforgeError(f"data.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class TokenizerStage:
    """How the model's tokenizer cuts the training text (tokens per word, unknown rate, words split).

    Args:
        compare: another tokenizer (file, checkpoint directory or zoo name) measured on the same text.
        max_texts: training texts measured.
    """

    compare: str | None = None
    max_texts: int = 2000


@dataclass
class AdaptStage:
    """Domain adaptation: continued masked-language-model training of the start model on domain text, before
    fine-tuning. Two pretraining runs (the pretrain recipe): a fresh MLM head on the frozen encoder (sentence-
    embedding models such as MiniLM ship none; its held-out loss is the unadapted baseline), then the whole encoder
    with the features of unmasked tokens anchored to the start's (model.anchor_weight), which keeps a sentence
    model's features while it learns the domain's words.

    Args:
        text: licensedcode-texts (the full license texts of licensedcode-data: unlabelled legal text) or a text
            file, JSONL file ({"text": ...}) or directory of them.
        max_docs: documents used (after cleaning and deduplication), 0 = all.
        head_steps: phase 1 steps (MLM head only, encoder frozen).
        head_lr: phase 1 peak learning rate.
        steps: phase 2 steps (whole encoder).
        lr: phase 2 peak learning rate.
        anchor_weight: phase 2 feature anchor, (1 - cosine) x this; 0 = plain MLM.
        batch_rows: packed rows per step.
        max_len: tokens per packed row.
        mask_ratio: share of tokens masked (BERT: 0.15).
        seed: masking, order and initialisation seed.
    """

    text: str = "licensedcode-texts"
    max_docs: int = 0
    head_steps: int = 100
    head_lr: float = 1e-3
    steps: int = 150
    lr: float = 5e-5
    anchor_weight: float = 10.0
    batch_rows: int = 16
    max_len: int = 128
    mask_ratio: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("head_steps", "steps", "batch_rows"):
            if getattr(self, name) < 1:
                raise EncoderforgeError(f"adapt.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_docs < 0:
            raise EncoderforgeError(f"adapt.max_docs must be >= 0 (0 = all), got {self.max_docs}")
        if self.max_len < 16:
            raise EncoderforgeError(f"adapt.max_len must be >= 16, got {self.max_len}")
        if not 0 < self.mask_ratio < 1:
            raise EncoderforgeError(f"adapt.mask_ratio must be in (0, 1), got {self.mask_ratio} (BERT: 0.15)")
        if self.anchor_weight < 0:
            raise EncoderforgeError(f"adapt.anchor_weight must be >= 0, got {self.anchor_weight}")
        if self.text != "licensedcode-texts" and not Path(self.text).exists():
            raise EncoderforgeError(
                f"adapt.text={self.text!r}: no such file or directory; name your domain text "
                "(text, JSONL or a directory) or use licensedcode-texts"
            )


@dataclass
class CompressStage:
    """Compress the fine-tuned encoder. Args: method: int8 (dynamic int8 Linear layers, torch); recipe: also run this
    compression recipe (configs/compress-*.yaml: distill, prune, quantize) on the fine-tuned run; its table and
    Pareto plot join the report."""

    method: Literal["int8"] = "int8"
    recipe: str | None = None

    def __post_init__(self) -> None:
        if self.recipe is not None and not Path(self.recipe).is_file():
            raise EncoderforgeError(
                f"compress.recipe={self.recipe!r}: no such file; give a recipe such as configs/compress-r8.yaml"
            )


@dataclass
class EvaluateStage:
    """Test metrics of every produced model, beside baselines.

    Args:
        tfidf: add TF-IDF + logistic regression.
        extra_seeds: fine-tune again with these `train.seed` values (same data, same settings) so the verdict can
            compare the encoder's seed spread with the baseline instead of trusting one seed.
    """

    tfidf: bool = True
    extra_seeds: list[int] = field(default_factory=list)


@dataclass
class BenchStage:
    """Speed of every produced model vs transformers' BertModel on the test texts, medians over interleaved rounds.

    Args:
        texts: test texts per throughput pass.
        latency_texts: texts sent one at a time for p50/p95 latency.
        rounds: interleaved timed rounds (medians are reported).
        threads: torch intra-op threads.
        transformers: include transformers' BertModel (the anchor) with the same weights.
    """

    texts: int = 128
    latency_texts: int = 32
    rounds: int = 3
    threads: int = 2
    transformers: bool = True

    def __post_init__(self) -> None:
        for name in ("texts", "latency_texts", "rounds", "threads"):
            if getattr(self, name) < 1:
                raise EncoderforgeError(f"bench.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class ExportStage:
    """Export the fine-tuned encoder. Args: hf: a transformers.AutoModel directory; onnx: an ONNX file too."""

    hf: bool = True
    onnx: bool = False


@dataclass
class ReportStage:
    """The HTML report. Args: title: the report's heading."""

    title: str = "encoderforge run"


@dataclass
class PipelineConfig:
    """A resolved pipeline: the stages that are on (None = off), in STAGES order."""

    source: str
    run_dir: Path
    data: DataStage | None = None
    tokenizer: TokenizerStage | None = None
    adapt: AdaptStage | None = None
    finetune: FinetuneConfig | None = None
    compress: CompressStage | None = None
    evaluate: EvaluateStage | None = None
    index: IndexStage | None = None
    bench: BenchStage | None = None
    export: ExportStage | None = None
    report: ReportStage | None = None
    raw: dict[str, Any] = field(default_factory=dict)  # the YAML after --set, for stage hashes and the report
    base_model: str = ""  # the finetune section's start model (adapt trains it; finetune then starts from RUN/adapt)

    @property
    def stages(self) -> list[str]:
        return [s for s in STAGES if getattr(self, s) is not None]


SECTION = {
    "data": DataStage,
    "tokenizer": TokenizerStage,
    "adapt": AdaptStage,
    "compress": CompressStage,
    "evaluate": EvaluateStage,
    "index": IndexStage,
    "bench": BenchStage,
    "export": ExportStage,
    "report": ReportStage,
}


def load_pipeline(path: str | Path, out: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read and validate a pipeline YAML before any work: unknown stages or keys, wrong types, missing input files,
    outputs outside the run directory and stages whose inputs a disabled stage would produce are one-line errors
    naming the file, the key and the fix.

    Args:
        path: the pipeline YAML.
        out: the run directory (default: the file's `out:` key, else runs/<file stem>).
        overrides: ["finetune.train.lr=1e-4", "bench.rounds=5", "compress=false"].
    Returns:
        the validated PipelineConfig.
    """
    where = str(path)
    raw = read_yaml(path)
    for item in overrides or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise EncoderforgeError(f"--set {item!r}: expected stage.key=value, e.g. --set finetune.train.lr=1e-4")
        set_key(raw, key, yaml.safe_load(value) if value else value, where=f"--set {item!r}")
    known = {*STAGES, "out"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise EncoderforgeError(f"{where}: unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)} (and `out`)")
    run_dir = Path(out or raw.get("out") or Path("runs") / Path(path).stem)
    cfg = PipelineConfig(source=where, run_dir=run_dir, raw=raw)
    for name, cls in SECTION.items():
        section = raw.get(name)
        if section is None or section is False:
            continue
        if section is True:
            section = {}
        try:
            setattr(cfg, name, from_dict(cls, section, where=f"{where}: {name}"))
        except EncoderforgeError as e:  # a __post_init__ check names the key; add the file
            raise EncoderforgeError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    if raw.get("finetune") not in (None, False):
        cfg.finetune = _finetune(raw["finetune"], cfg, where)
    _check_dependencies(cfg, where)
    return cfg


def _finetune(section: Any, cfg: PipelineConfig, where: str) -> FinetuneConfig:
    """The finetune section through the fine-tuning recipe's own loader, with the run's paths filled in."""
    if not isinstance(section, dict):
        raise EncoderforgeError(f"{where}: finetune: expected a mapping of FinetuneConfig keys (task, model, data, ...)")
    if "recipe" in section:
        section = _with_recipe(section, cfg, where)
    train = section.get("train") or {}
    derived = sorted(set(train) & set(DERIVED)) if isinstance(train, dict) else []
    if derived:
        raise EncoderforgeError(
            f"{where}: finetune.train.{derived[0]} is derived in fine-tuning; set finetune.{DERIVED[derived[0]]} instead"
        )
    out_dir = train.get("out_dir") if isinstance(train, dict) else None
    stage_dir = cfg.run_dir / "finetune"
    if out_dir and Path(out_dir).resolve() != stage_dir.resolve():
        raise EncoderforgeError(
            f"{where}: finetune.train.out_dir={out_dir!r} lies outside the run directory; remove it "
            f"(the pipeline writes {stage_dir})"
        )
    values: dict[str, Any] = {"train.out_dir": str(stage_dir)}
    cfg.base_model = str(section.get("model", "minilm-l6"))
    if cfg.adapt is not None:
        values["model"] = str(cfg.run_dir / "adapt" / "mlm" / "model")  # written by the adapt stage (pipeline/adapt.py)
    data = section.get("data") or {}
    if cfg.data is not None:
        given = sorted(k for k in ("train", "dev", "test") if data.get(k))
        if given:
            raise EncoderforgeError(
                f"{where}: finetune.data.{given[0]} is set but the data stage writes the files; "
                "remove it or turn the data stage off (data: false)"
            )
        values.update({f"data.{k}": str(cfg.run_dir / "data" / f"{k}.jsonl") for k in ("train", "dev", "test")})
        values["data.labels"] = cfg.data.labels
    try:
        ft = finetune_config(str(section.get("task", "classify")), values={**_dotted(section), **values})
    except EncoderforgeError as e:
        raise EncoderforgeError(f"{where}: finetune: {str(e).removeprefix('config: ').removeprefix('config.')}") from None
    if cfg.data is None:
        if not ft.data.train:
            raise EncoderforgeError(f"{where}: finetune.data.train is not set; name a labelled file or turn on the data stage")
        for k in ("train", "dev", "test"):
            f = getattr(ft.data, k)
            if f and not Path(f).is_file():
                raise EncoderforgeError(f"{where}: finetune.data.{k}={f!r}: no such file; fix the path")
    return ft


def _with_recipe(section: dict[str, Any], cfg: PipelineConfig, where: str) -> dict[str, Any]:
    """`finetune: {recipe: best.yaml, ...}`: a fine-tuning recipe (e.g. the best trial `encoderforge search` wrote) under
    the section's own keys; its run directory and thread count are the pipeline's, and with the data stage on, its
    whole data section is too (the files the stage writes and their fields)."""
    path = str(section["recipe"])
    if not Path(path).is_file():
        raise EncoderforgeError(
            f"{where}: finetune.recipe={path!r}: no such file; give a recipe YAML (e.g. a search's best.yaml)"
        )
    base = read_yaml(path)
    task = section.get("task", base.get("task"))
    if base.get("task", task) != task:
        raise EncoderforgeError(f"{where}: finetune.task={task!r} but {path} is a {base['task']!r} recipe; drop one of them")
    (base.get("train") or {}).pop("out_dir", None)
    (base.get("finetune") or {}).pop("threads", None)
    if cfg.data is not None:
        base.pop("data", None)  # the data stage's files and fields
    return merge(base, {k: v for k, v in section.items() if k != "recipe"})


def _dotted(section: dict[str, Any]) -> dict[str, Any]:
    """{"train": {"lr": 1e-4}} -> {"train.lr": 1e-4} (one level, as finetune_config's `values` takes them)."""
    out: dict[str, Any] = {}
    for k, v in section.items():
        if isinstance(v, dict):
            out.update({f"{k}.{sub}": x for sub, x in v.items()})
        else:
            out[k] = v
    return out


NEEDS = {
    "tokenizer": ["finetune"],
    "compress": ["finetune"],
    "evaluate": ["finetune"],
    "bench": ["finetune"],
    "export": ["finetune"],
}


def _check_dependencies(cfg: PipelineConfig, where: str) -> None:
    """A stage whose input another stage produces needs that stage on."""
    if cfg.adapt is not None and cfg.finetune is None:
        raise EncoderforgeError(
            f"{where}: adapt trains the model the finetune stage starts from but finetune is off; add a finetune: "
            "section or remove adapt"
        )
    for stage, needs in NEEDS.items():
        for need in needs:
            if getattr(cfg, stage) is not None and getattr(cfg, need) is None:
                raise EncoderforgeError(
                    f"{where}: {stage} needs the {need} stage's model but {need} is off; add a {need}: section or remove {stage}"
                )
    if cfg.index is not None:
        check_index(cfg.index, data_on=cfg.data is not None, finetune_on=cfg.finetune is not None, where=where)
        check_index_dims(cfg.index, cfg.base_model, where)
    if cfg.report is not None and not any(getattr(cfg, s) is not None for s in ("finetune", "evaluate", "bench")):
        raise EncoderforgeError(f"{where}: report needs a finetune, evaluate or bench stage to report on; add one")
    if cfg.evaluate is not None and cfg.finetune is not None and not cfg.finetune.data.test and cfg.data is None:
        raise EncoderforgeError(f"{where}: evaluate needs test data; set finetune.data.test or turn on the data stage")
    if cfg.finetune is not None and cfg.finetune.task not in ("classify", "multilabel") and (cfg.evaluate or cfg.compress):
        raise EncoderforgeError(
            f"{where}: evaluate/compress support classify and multilabel tasks today, not "
            f"{cfg.finetune.task!r}; remove those stages"
        )
