"""The matched-quality frontier analysis on synthetic rows with known answers."""

import json
import math

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from diffusers_memctl.experiments.frontier import (
    FRONTIER_ROWS_NAME,
    add_matched_quality_to_study,
    collect_frontier_rows,
    main,
    read_frontier_rows,
    write_frontier_rows,
)
from diffusers_memctl.experiments.statistics.frontier import (
    analyze_frontier,
    copies_at_quality,
    paired_summary,
    pareto_frontier,
    quality_at_copies,
)


def test_pareto_frontier_keeps_the_lower_left_points_by_rising_quality_distance():
    q = [1.0, 2.0, 1.5, 3.0, 4.0, 2.0]
    c = [0.5, 0.3, 0.6, 0.3, 0.0, 0.4]
    fq, fc = pareto_frontier(q, c)
    assert fq.tolist() == [1.0, 2.0, 4.0] and fc.tolist() == [0.5, 0.3, 0.0]


def test_read_offs_interpolate_and_refuse_to_extrapolate_past_uniform():
    frontier = (np.array([1.0, 2.0, 4.0]), np.array([0.5, 0.3, 0.0]))
    assert copies_at_quality(frontier, 3.0) == pytest.approx(0.15)
    assert copies_at_quality(frontier, 1.5) == pytest.approx(0.4)
    assert copies_at_quality(frontier, 5.0) == 0.0  # worse quality than uniform's worst: uniform's fewest copies
    assert math.isnan(copies_at_quality(frontier, 0.5))  # better quality than uniform ever had
    assert quality_at_copies(frontier, 0.15) == pytest.approx(3.0)
    assert quality_at_copies(frontier, 0.6) == 1.0  # more copies than uniform's best-quality state: that quality
    assert math.isnan(quality_at_copies(frontier, -0.1))


def _synthetic_rows(num_pretrainings: int = 5) -> list[dict]:
    """Uniform on the line copies = 0.5 - 0.1 (Frechet - 1) for Frechet in [1, 5]; three methods off it."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(num_pretrainings):
        base = {"dataset": "synthetic", "train_subset_size": 16, "pretrain_seed": seed}
        for arm, qs in (("pretraining", [5.0, 3.0, 1.0]), ("uniform", [1.0, 2.0, 4.0]), ("uniform_lr0.5", [1.5])):
            for step, q in enumerate(qs):
                rows.append({**base, "arm": arm, "step": 100 * step, "final": step == len(qs) - 1,
                             "heldout_frechet_distance": q, "memorized_fraction": 0.5 - 0.1 * (q - 1)})  # fmt: skip
        noise = rng.normal(0, 0.002, size=3)
        for arm, offset in (("below", -0.05), ("along", 0.0), ("above", 0.08)):
            for step, q in ((0, 1.0), (100, 2.5), (200, 3.0)):
                # A mean-zero jitter for "along" (alternating sign), so its mean difference is zero exactly.
                jitter = (0.01 if seed % 2 else -0.01) * (seed < 4) if arm == "along" else noise[step // 100]
                copies = 0.5 - 0.1 * (q - 1) + (offset + jitter if step else 0.0)
                rows.append({**base, "arm": arm, "step": step, "final": step == 200,
                             "heldout_frechet_distance": q, "memorized_fraction": copies})  # fmt: skip
    return rows


def test_analysis_places_methods_below_along_and_above_the_frontier_with_holm():
    analysis = analyze_frontier(_synthetic_rows())
    verdicts = {v["method"]: v for v in analysis["verdicts"]}
    assert verdicts["below"]["verdict"] == "below"
    assert verdicts["along"]["verdict"] == "unresolved"
    assert verdicts["above"]["verdict"] == "above"
    assert verdicts["above"]["dominated_in"] == 5 and verdicts["below"]["dominated_in"] == 0
    assert verdicts["above"]["beyond_uniform_quality_in"] == 0
    final = {(t["method"], t["read_off"]): t for t in analysis["tests"] if t["state"] == "final"}
    below = final[("below", "copies_at_matched_quality")]
    assert below["n"] == 5 and below["mean"] == pytest.approx(-0.05, abs=0.003)
    assert below["ci_low"] < below["mean"] < below["ci_high"] < 0
    # (b): 0.05 fewer copies on a line of slope -0.1 per unit of Frechet = 0.5 better Frechet.
    assert final[("below", "quality_at_matched_copies")]["mean"] == pytest.approx(-0.5, abs=0.03)
    assert final[("along", "copies_at_matched_quality")]["mean"] == pytest.approx(0.0, abs=1e-12)
    # Holm within each family (one read-off and state over the 3 methods), the same as statsmodels' own.
    for read_off in ("copies_at_matched_quality", "quality_at_matched_copies"):
        family = [final[(m, read_off)] for m in ("above", "along", "below")]
        expected = multipletests([t["p"] for t in family], method="holm")[1]
        assert [t["p_holm"] for t in family] == pytest.approx(list(expected))
        assert all(t["p_holm"] >= t["p"] for t in family)
    # Two read-offs x two states: final (step 200) and step 100 (step 0, the shared pretrained model, is no state).
    assert len(analysis["families"]) == 2 * 2
    # Along training: the step-100 state of "below" is resolved below too.
    assert "step 100" in verdicts["below"]["steps_resolved_below"]


def test_one_pretraining_gives_no_interval_and_no_p():
    summary = paired_summary([0.1])
    assert summary["n"] == 1 and summary["ci_low"] is None and summary["p"] is None
    analysis = analyze_frontier(_synthetic_rows(1))
    assert all(t.get("p_holm") is None for t in analysis["tests"])
    assert {v["verdict"] for v in analysis["verdicts"]} == {"unresolved"}


def test_rows_round_trip_through_the_csv_and_the_command_rebuilds_the_report(tmp_path):
    rows = _synthetic_rows()
    for row in rows:
        row.setdefault("learning_rate", 2e-4)
    write_frontier_rows(tmp_path / FRONTIER_ROWS_NAME, rows)
    back = read_frontier_rows(tmp_path / FRONTIER_ROWS_NAME)
    assert len(back) == len(rows)
    assert back[0]["arm"] == "pretraining" and back[0]["step"] == 0 and back[0]["final"] is False
    assert back[-1]["memorized_fraction"] == pytest.approx(rows[-1]["memorized_fraction"], rel=1e-5)
    result = main([str(tmp_path)])
    analysis = json.loads((tmp_path / "analysis.json").read_text())
    assert analysis["verdicts"] == json.loads(json.dumps(result["analysis"]["verdicts"]))
    assert (tmp_path / "figures" / "frontier_synthetic.png").stat().st_size > 10_000
    report = (tmp_path / "REPORT.md").read_text()
    assert "| synthetic | 16 | `below` | below uniform's frontier" in report
    assert "p_holm" in report


def test_collect_rows_from_a_study_folder(tmp_path):
    def run(folder, method, history, lr):
        folder.mkdir(parents=True)
        (folder / "training_config.json").write_text(
            json.dumps({"args": {"method_name": method, "learning_rate": lr}})
        )
        (folder / "metrics_history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))

    row = {"memorized_fraction": 0.1, "heldout_frechet_distance": 2.0, "num_samples": 250, "eval_seconds": 1.0}
    group = tmp_path / "n00016-p3"
    run(group / "pretrained", None, [{**row, "step": 300, "final": False}, {**row, "step": 600, "final": True}], 5e-4)
    (group / "pretrained" / "train_complete.json").write_text("{}")
    run(group / "cells" / "uniform_lr0.5-seed0", "uniform_lr0.5", [{**row, "step": 0, "final": False}], 1e-4)
    (group / "cells" / "uniform_lr0.5-seed0" / "metrics.json").write_text("{}")
    run(group / "cells" / "ci_late-seed0", "ci_late", [{**row, "step": 0, "final": False}], 2e-4)  # unfinished
    rows = collect_frontier_rows(tmp_path, "digits")
    assert [(r["arm"], r["step"], r["final"]) for r in rows] == [
        ("pretraining", 300, False), ("pretraining", 600, True), ("uniform_lr0.5", 0, False)
    ]  # fmt: skip
    assert rows[0]["train_subset_size"] == 16 and rows[0]["pretrain_seed"] == 3
    assert rows[2]["learning_rate"] == 1e-4


def test_a_study_evaluated_along_training_opens_its_report_with_the_matched_quality_answer(tmp_path):
    """One pretraining: uniform trained less reaches ci_late's quality with fewer copies -> "does not beat"."""

    def run(folder, method, history):
        folder.mkdir(parents=True)
        args = {"method_name": method, "learning_rate": 2e-4, "dataset_name": "digits"}
        (folder / "training_config.json").write_text(json.dumps({"args": args}))
        (folder / "metrics_history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
        (folder / "metrics.json").write_text("{}")
        (folder / "train_complete.json").write_text("{}")

    def state(step, q, c, final=False):
        return {"step": step, "final": final, "heldout_frechet_distance": q, "memorized_fraction": c}

    group = tmp_path / "n00016-p0"
    run(group / "pretrained", None, [state(300, 3.8, 0.0), state(600, 2.1, 0.0), state(1500, 1.8, 0.29, True)])
    run(group / "cells" / "uniform-seed0", "uniform", [state(0, 1.8, 0.29), state(400, 2.0, 0.35, True)])
    run(group / "cells" / "ci_late-seed0", "ci_late", [state(0, 1.8, 0.29), state(400, 3.0, 0.04, True)])
    (tmp_path / "REPORT.md").write_text("# Memorization study\n\n## The answer\n\nrest\n")
    for _ in range(2):  # rebuilding replaces the answer instead of stacking a second one
        add_matched_quality_to_study(tmp_path, make_plots=False)
    report = (tmp_path / "REPORT.md").read_text()
    assert report.startswith("# Memorization study\n\n<!-- matched-quality answer -->\n## Does it beat training less?")
    assert report.count("## Does it beat training less?") == 1 and report.endswith("## The answer\n\nrest\n")
    assert "`ci_late` (CI-normal on [750, 1000]" in report
    assert "copies 4.0% of its samples at held-out Frechet 3.00" in report
    assert "reaches that quality with 0.0% copies" in report
    assert "**does not beat training less** here" in report and "no interval" in report
    assert (tmp_path / "matched_quality" / "frontier_rows.csv").is_file()


def test_a_method_with_better_quality_than_every_uniform_state_is_counted_not_dropped():
    rows = _synthetic_rows(3)
    for row in rows:
        if row["arm"] == "below" and row["final"]:
            row["heldout_frechet_distance"] = 0.5  # better than uniform's best (1.0); copies 0.25
    analysis = analyze_frontier(rows)
    verdict = next(v for v in analysis["verdicts"] if v["method"] == "below")
    assert verdict["beyond_uniform_quality_in"] == 3
    final = {(t["method"], t["read_off"]): t for t in analysis["tests"] if t["state"] == "final"}
    assert final[("below", "copies_at_matched_quality")]["n"] == 0  # no read-off (a) there
    # (b): at 0.25 copies uniform has Frechet 3.5; the method 0.5, i.e. 3.0 better.
    assert final[("below", "quality_at_matched_copies")]["mean"] == pytest.approx(-3.0, abs=0.05)
