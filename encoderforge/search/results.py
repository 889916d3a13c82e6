"""A search's outputs from its journal: results.csv / results.md (every trial), pareto.png (dev metric vs training
seconds, the Pareto front marked) and best.yaml (the best trial as a fine-tuning recipe that reproduces it)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import yaml

from encoderforge import require
from encoderforge.config import to_dict
from encoderforge.fileio import atomic_file
from encoderforge.recipes.finetune_config import DERIVED
from encoderforge.search.space import SearchSpace

NOT_IN_RECIPE = {"train": {"out_dir", "resume", "progress", *DERIVED}}  # the run's own, or derived by fine-tuning


def rows(study: Any, space: SearchSpace, primary: str) -> list[dict[str, Any]]:
    out = []
    for t in study.trials:
        u = t.user_attrs
        out.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                **{p.key: t.params.get(p.key) for p in space.params},
                f"dev_{primary}": t.value,
                "last_eval": list(t.intermediate_values.values())[-1]
                if t.intermediate_values
                else None,  # where a pruned one stood
                f"test_{primary}": (u.get("test") or {}).get(primary),
                f"probe_test_{primary}": (u.get("probe_test") or {}).get(primary),
                "seconds": u.get("seconds"),
                "epochs_run": u.get("epochs_run"),
                "note": "defaults"
                if u.get("defaults")
                else (f"pruned at epoch {u['pruned_at_epoch']}" if "pruned_at_epoch" in u else note(u)),
            }
        )
    return out


def note(u: dict[str, Any]) -> str:
    if "stopped_by_budget_at_epoch" in u:
        return f"stopped by the budget at epoch {u['stopped_by_budget_at_epoch']}"
    if u.get("interrupted"):
        return "interrupted by a kill; the budget was spent before it could run again"
    return f"rerun of interrupted trial {u['requeued_from']}" if "requeued_from" in u else ""


def pareto(points: list[tuple[float, float]], maximize: bool) -> list[int]:
    """Indices of the points (cost, value) no other point beats on both (cheaper or equal AND better or equal)."""
    sign = 1 if maximize else -1
    front = []
    for i, (c, v) in enumerate(points):
        if not any((c2 <= c and sign * v2 >= sign * v) and (c2, v2) != (c, v) for c2, v2 in points):
            front.append(i)
    return front


def write_results(run: Path, space: SearchSpace, study: Any, budget_s: float, spent_s: float) -> dict[str, Any]:
    primary, maximize = space.metric, space.maximize
    table = rows(study, space, primary)
    with atomic_file(run / "results.csv") as f:
        buf = io.StringIO()
        if table:
            w = csv.DictWriter(buf, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
        f.write(buf.getvalue())
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = max(done, key=lambda t: t.value if maximize else -t.value) if done else None
    summary: dict[str, Any] = {
        "budget_s": budget_s,
        "spent_s": round(spent_s, 1),
        "trials": {s: sum(r["state"] == s for r in table) for s in ("complete", "pruned", "fail", "running", "waiting")},
        "primary": primary,
        "best": None,
    }
    if best is not None:
        defaults = next((t for t in done if t.user_attrs.get("defaults")), None)
        summary["best"] = {"trial": best.number, "params": best.params, "dev": best.value, "test": best.user_attrs.get("test")}
        if defaults is not None:
            summary["defaults"] = {"trial": defaults.number, "dev": defaults.value, "test": defaults.user_attrs.get("test")}
        write_best_yaml(run / "best.yaml", space, best)
    with atomic_file(run / "results.md") as f:
        f.write(markdown(table, summary))
    with atomic_file(run / "summary.json") as f:
        json.dump(summary, f, indent=2)
    if done:
        plot(run / "pareto.png", table, primary, maximize)
    return summary


def write_best_yaml(path: Path, space: SearchSpace, best: Any) -> None:
    cfg = to_dict(space.config(best.params, "unused"))
    for section, keys in NOT_IN_RECIPE.items():
        for k in keys:
            if space.kind == "finetune" or k == "out_dir":  # a pretraining recipe sets its own steps
                cfg[section].pop(k, None)
    test = (best.user_attrs.get("test") or {}).get(space.metric)
    head = f"# The best trial ({best.number}) of the search in {path.parent}: {space.metric} {best.value:.4f}" + (
        f", test {test:.4f}" if test is not None else ""
    )
    if space.kind == "pretrain":
        head += f".\n# Reproduce it: encoderforge pretrain --config {path} --set train.out_dir=runs/best\n"
    else:
        head += (
            f".\n# Reproduce it: encoderforge finetune {space.task} --config {path} --out runs/best\n"
            "# (finetune.threads: 1 is how the trial ran and gives the same numbers; more threads are faster, the last\n"
            "# digits may differ.) In `encoderforge run`, use it as  finetune: {recipe: " + str(path) + "}\n"
        )
    with atomic_file(path) as f:
        f.write(head + yaml.safe_dump(cfg, sort_keys=False))


def markdown(table: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = [f"# Search: {summary['trials']['complete']} complete, {summary['trials']['pruned']} pruned, "
             f"{summary['trials']['fail']} failed trials in {summary['spent_s']:.0f} s of a {summary['budget_s']:.0f} s budget", ""]  # fmt: skip
    if summary["best"]:
        b = summary["best"]
        lines += [f"Best: trial {b['trial']}, dev {summary['primary']} {b['dev']:.4f} ({json.dumps(b['params'])})", ""]
    if table:
        lines += ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
        lines += ["| " + " | ".join(cell(v) for v in r.values()) + " |" for r in table]
    return "\n".join(lines) + "\n"


def plot(path: Path, table: list[dict[str, Any]], primary: str, maximize: bool) -> None:
    require("matplotlib", "demo").use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in table if r["state"] == "complete" and r["seconds"] is not None]
    pts = [(float(r["seconds"]), float(r[f"dev_{primary}"])) for r in done]
    front = sorted(pareto(pts, maximize), key=lambda i: pts[i][0])
    pruned = [r for r in table if r["state"] == "pruned" and r["seconds"] is not None and r["last_eval"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], label="complete trials", color="tab:blue")
    for r, (c, v) in zip(done, pts):
        ax.annotate(str(r["trial"]) + (" (defaults)" if r["note"] == "defaults" else ""), (c, v), fontsize=7)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="tab:red", marker="o", label="Pareto front")
    if pruned:
        ax.scatter(
            [float(r["seconds"]) for r in pruned],
            [float(r["last_eval"]) for r in pruned],
            marker="x",
            color="grey",
            label="pruned (at its last evaluation)",
        )
    ax.set_xlabel("trial seconds (wall clock, one thread: probe, training, evaluations)")
    ax.set_ylabel(f"dev {primary}")
    ax.set_title("Search: dev metric vs cost")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
