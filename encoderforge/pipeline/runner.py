"""`encoderforge run`: the stages of a validated pipeline in order, each skipped when its content hash is unchanged.

    RUN/pipeline.json        the resolved pipeline (YAML after --set) and the command that reproduces the run
    RUN/<stage>/stage.json   {"hash", "status": running | done, "seconds", "inputs"}; the hash covers the stage's
                             resolved config and the hashes of its inputs (earlier stages' hashes, data files)
    RUN/<stage>/metrics.json what the stage measured (finetune: the recipe's own metrics.json in RUN/finetune/)

A killed stage has status "running" and reruns (fine-tuning resumes from its last checkpoint by itself); a stage
whose config or inputs changed reruns, and so does every stage after it (their input hashes change).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from encoderforge import EncoderforgeError
from encoderforge.config import to_dict
from encoderforge.data.shards import MANIFEST
from encoderforge.fileio import atomic_file, check_output, file_digest, read_marker
from encoderforge.pipeline.config import PipelineConfig
from encoderforge.pipeline.data import data_version, write_data
from encoderforge.pipeline.index_config import LICENSE_CORPUS
from encoderforge.pipeline.stages import run_stage


@dataclass
class RunResult:
    run_dir: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    report: Path | None = None


def stage_config(cfg: PipelineConfig, name: str) -> dict[str, Any]:
    """The resolved config of one stage as plain data (finetune: the whole FinetuneConfig)."""
    section = getattr(cfg, name)
    return to_dict(section) if dataclasses.is_dataclass(section) else {}


# the earlier stages whose outputs a stage reads: a change there reruns it (and only there)
READS = {
    "data": [],
    "tokenizer": ["data"],
    "adapt": [],
    "finetune": ["data", "adapt"],
    "compress": ["finetune"],
    "evaluate": ["data", "adapt", "finetune", "compress"],
    "index": ["data", "finetune"],  # queries (the test split) and the model; adapt reaches it through finetune's hash
    "bench": ["finetune"],
    "export": ["finetune"],
    "report": ["data", "tokenizer", "adapt", "finetune", "compress", "evaluate", "index", "bench", "export"],
}


def stage_inputs(cfg: PipelineConfig, name: str, hashes: dict[str, str]) -> dict[str, Any]:
    """What a stage reads besides its config: the hashes of the stages it reads, file digests of user-given data."""
    inputs: dict[str, Any] = {k: hashes[k] for k in READS[name] if k in hashes}
    if name == "data" or (name == "adapt" and cfg.adapt is not None and cfg.adapt.text == "licensedcode-texts"):
        inputs["package"] = data_version()
    if name == "adapt" and cfg.adapt is not None:
        inputs["base_model"] = cfg.base_model
        if cfg.adapt.text != "licensedcode-texts":
            inputs["files"] = {str(f): file_digest(f) for f in _files(Path(cfg.adapt.text))}
    if name == "index" and cfg.index is not None:
        ix = cfg.index
        inputs["base_model"] = cfg.base_model  # the comparison row; with adapt on, finetune's config no longer names it
        if ix.corpus == LICENSE_CORPUS:
            inputs["package"] = data_version()
        inputs["files"] = {f: file_digest(f) for f in (ix.corpus, ix.queries, ix.qrels) if f and f != LICENSE_CORPUS}
    if name in ("tokenizer", "finetune") and cfg.finetune is not None and cfg.data is None:
        d = cfg.finetune.data
        inputs["files"] = {f: file_digest(f) for f in (d.train, d.dev, d.test) if f}
    return inputs


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def reset_stage_dir(stage_dir: Path) -> None:
    """Before a stage reruns with another config: delete the runs it made inside its own directory (each carries
    our run marker, or is a shard directory with its manifest), so that they retrain instead of refusing."""
    for child in sorted(stage_dir.iterdir()) if stage_dir.is_dir() else []:
        if child.is_dir() and (read_marker(child) is not None or (child / MANIFEST).is_file()):
            shutil.rmtree(child)


def content_hash(config: dict[str, Any], inputs: dict[str, Any]) -> str:
    blob = json.dumps({"config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_stage(stage_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((stage_dir / "stage.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_stage(stage_dir: Path, record: dict[str, Any]) -> None:
    with atomic_file(stage_dir / "stage.json") as f:
        json.dump(record, f, indent=2)


# rough shares of a run's time (the quickstart on 2 cores), for the overall ETA before a stage has been timed
WEIGHT = {
    "data": 1.0,
    "tokenizer": 1.0,
    "adapt": 0.0,  # from its steps: run_pipeline
    "finetune": 40.0,
    "compress": 2.0,
    "evaluate": 1.0,
    "index": 6.0,
    "bench": 15.0,
    "export": 1.0,
    "report": 1.0,
}


def _eta(done_s: float, done: list[str], todo: list[str], weight: dict[str, float]) -> str:
    """Remaining time: seconds per unit of weight so far times the weight still to run."""
    w_done = sum(weight[s] for s in done)
    if w_done < 0.05 * (w_done + sum(weight[s] for s in todo)):
        return "eta ?"  # a few seconds of small stages do not predict a long one
    return f"eta ~{_hms(done_s / w_done * sum(weight[s] for s in todo))}"


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}:{s % 60:02d}"


def run_pipeline(cfg: PipelineConfig, *, command: str = "", stream: TextIO | None = None) -> RunResult:
    """Run the pipeline's stages in order into `cfg.run_dir` (module docstring).

    Args:
        cfg: from `load_pipeline` (already validated).
        command: the command line that reproduces the run (recorded for the report).
        stream: where the overall progress lines go (stderr).
    Returns:
        the stages that ran and were skipped, and the report's path.
    Example:
        >>> run_pipeline(load_pipeline("examples/legal-quickstart.yaml", "runs/legal"))
    """
    from encoderforge.pipeline.report import write_report

    out = stream or sys.stderr
    run = cfg.run_dir
    check_output(run, [cfg.source], flag="--out", expect="dir")
    if run.is_dir() and any(run.iterdir()) and not (run / "pipeline.json").is_file():
        raise EncoderforgeError(
            f"{run}: exists and is not a pipeline run (no pipeline.json); encoderforge never writes "
            "into a directory of other files — choose another --out"
        )
    run.mkdir(parents=True, exist_ok=True)
    with atomic_file(run / "pipeline.json") as f:
        json.dump({"source": cfg.source, "pipeline": cfg.raw, "command": command}, f, indent=2, default=str)
    result = RunResult(run)
    hashes: dict[str, str] = {}
    stages = cfg.stages
    t_start, done_s = time.perf_counter(), 0.0
    weight = dict(WEIGHT)  # evaluate's extra seeds are whole fine-tunes
    seeds = len(cfg.evaluate.extra_seeds) if cfg.evaluate else 0
    weight["evaluate"] += WEIGHT["finetune"] * (seeds + (seeds + 1 if cfg.adapt else 0))  # extra seeds, base model
    if cfg.adapt:  # measured on the quickstart: a head-only step ~1/3.5 of a whole-encoder anchored step ~1/17 of finetune
        weight["adapt"] = WEIGHT["finetune"] * (cfg.adapt.head_steps / 3.5 + cfg.adapt.steps) / 17
    for k, name in enumerate(stages, 1):
        stage_dir = run / name
        config = stage_config(cfg, name)
        h = content_hash(config, stage_inputs(cfg, name, hashes))
        hashes[name] = h
        old = read_stage(stage_dir)
        elapsed = time.perf_counter() - t_start
        eta = _eta(done_s, result.ran, stages[k - 1 :], weight)
        if old and old.get("hash") == h and old.get("status") == "done":
            print(f"stage {k}/{len(stages)} {name}: unchanged (hash {h}), skipped  elapsed {_hms(elapsed)}", file=out, flush=True)
            result.skipped.append(name)
            continue
        print(f"stage {k}/{len(stages)} {name}  elapsed {_hms(elapsed)} {eta}", file=out, flush=True)
        t0 = time.perf_counter()
        changed = old is not None and old.get("hash") != h  # a finished run of another config is replaced
        stage_dir.mkdir(parents=True, exist_ok=True)
        if name != "finetune":  # the finetune recipe owns its directory (run marker, resume)
            if changed:
                reset_stage_dir(stage_dir)
            write_stage(stage_dir, {"hash": h, "status": "running"})
        if name == "data":
            metrics = write_data(cfg.data, stage_dir)  # type: ignore[arg-type]
        elif name == "report":
            metrics = {"report": str(write_report(run))}
        elif name == "index":
            from encoderforge.pipeline.index_stage import run_index

            metrics = run_index(cfg, stage_dir)
        else:
            metrics = run_stage(name, cfg, stage_dir, overwrite=changed)
        seconds = round(time.perf_counter() - t0, 1)
        if name != "finetune":
            with atomic_file(stage_dir / "metrics.json") as f:
                json.dump(metrics, f, indent=2)
        write_stage(stage_dir, {"hash": h, "status": "done", "seconds": seconds, "config": config})
        done_s += seconds
        result.ran.append(name)
    if (run / "report" / "report.html").is_file():
        result.report = run / "report" / "report.html"
    print(
        f"pipeline done in {_hms(time.perf_counter() - t_start)}: ran {len(result.ran)}, skipped {len(result.skipped)}",
        file=out,
        flush=True,
    )
    return result
