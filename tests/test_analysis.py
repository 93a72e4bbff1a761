import json
import math

import numpy as np
import pytest
from scipy import stats

from diffusers_memctl.experiments.statistics.analysis import (
    PAPER_REFERENCE,
    analyze_sweep,
    load_loss_histories,
    pearson_with_ci,
    rows_to_dataframe,
    spearman,
    timestep_bin_losses,
)

GRID = range(0, 1001, 200)


def make_rows(seeds=(0, 1), with_baseline=True, baseline_has_ci=False):
    """A synthetic sweep: metrics fall with the CI mean, rise with the width, plus seeded noise."""
    rng = np.random.default_rng(1234)
    rows = []
    for lo in GRID:
        for hi in GRID:
            if lo >= hi:
                continue
            for seed in seeds:
                mean, width = (lo + hi) / 2, hi - lo
                rows.append(
                    {
                        "cell": f"ci_{lo}_{hi}",
                        "timestep_sampling": "ci_normal",
                        "ci_lower": lo,
                        "ci_upper": hi,
                        "ci_mean": mean,
                        "ci_width": width,
                        "seed": seed,
                        "run_dir": f"/sweep/ci_{lo}_{hi}/seed{seed}",
                        "final_loss": 0.1 - 5e-5 * mean + rng.normal(0, 0.005),
                        "mean_l2": 1.0 - 4e-4 * mean + 1e-4 * width + rng.normal(0, 0.05),
                        "nn_l2_mean": 0.5 - 2e-4 * mean + rng.normal(0, 0.05),
                        "memorized_fraction": float(rng.uniform(0, 0.2)),
                        "pca_pc1_wasserstein_1": 5.0 - 4e-3 * mean + rng.normal(0, 0.3),
                        "pca_pc1_js_distance": 0.2 - 1e-4 * mean + rng.normal(0, 0.01),
                        "pca_pc2_wasserstein_1": 3.0 - 2e-3 * mean + rng.normal(0, 0.3),
                        "pca_pc2_js_distance": 0.1 - 5e-5 * mean + rng.normal(0, 0.01),
                    }
                )
    if with_baseline:
        for seed, value in zip(seeds, (9.0, 11.0, 10.0)):
            rows.append(
                {
                    "cell": "uniform",
                    "timestep_sampling": "uniform",
                    "ci_lower": 0 if baseline_has_ci else None,
                    "ci_upper": 1000 if baseline_has_ci else float("nan"),
                    "ci_mean": 500.0 if baseline_has_ci else None,
                    "ci_width": 1000.0 if baseline_has_ci else None,
                    "seed": seed,
                    "run_dir": f"/sweep/uniform/seed{seed}",
                    "final_loss": 0.05,
                    "mean_l2": value,  # far off the trend: including it would change every correlation
                    "nn_l2_mean": value,
                    "memorized_fraction": 0.5,
                    "pca_pc1_wasserstein_1": value,
                    "pca_pc1_js_distance": 0.3,
                    "pca_pc2_wasserstein_1": value,
                    "pca_pc2_js_distance": 0.3,
                }
            )
    return rows


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_pearson_matches_scipy(confidence):
    rows = make_rows()
    x = [r["ci_mean"] for r in rows if r["timestep_sampling"] == "ci_normal"]
    y = [r["mean_l2"] for r in rows if r["timestep_sampling"] == "ci_normal"]
    got = pearson_with_ci(x, y, confidence=confidence)
    ref = stats.pearsonr(x, y)
    interval = ref.confidence_interval(confidence_level=confidence)
    assert got["n"] == len(x)
    assert got["note"] is None
    assert got["r"] == pytest.approx(ref.statistic, rel=1e-12)
    assert got["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert got["ci_low"] == pytest.approx(interval.low, rel=1e-10)
    assert got["ci_high"] == pytest.approx(interval.high, rel=1e-10)
    assert got["ci_low"] < got["r"] < got["ci_high"]


def test_pearson_interval_from_textbook_formula():
    # Independent check of the Fisher-z construction with the paper's own r and an assumed n.
    x = np.arange(12.0)
    y = np.array([0.3, 1.9, 1.2, 4.4, 3.1, 6.0, 5.2, 8.8, 6.1, 9.9, 11.5, 10.0])
    got = pearson_with_ci(x, y)
    r = np.corrcoef(x, y)[0, 1]
    half = 1.959963984540054 / math.sqrt(12 - 3)
    assert got["ci_low"] == pytest.approx(math.tanh(math.atanh(r) - half), rel=1e-9)
    assert got["ci_high"] == pytest.approx(math.tanh(math.atanh(r) + half), rel=1e-9)


def test_pearson_small_p_value_matches_scipy():
    x = np.arange(40.0)
    y = x + np.sin(x)
    assert pearson_with_ci(x, y)["p_value"] == pytest.approx(stats.pearsonr(x, y).pvalue, rel=1e-6, abs=1e-300)


def test_spearman_matches_scipy_with_ties():
    x = [1, 2, 2, 3, 4, 4, 4, 5, 6, 7]
    y = [2.0, 1.0, 3.0, 3.0, 5.0, 4.0, 6.0, 8.0, 7.0, 7.0]
    got = spearman(x, y)
    ref = stats.spearmanr(x, y)
    assert got["n"] == 10
    assert got["rho"] == pytest.approx(ref.statistic, rel=1e-12)
    assert got["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_nan_and_none_are_dropped_pairwise():
    x = [1.0, 2.0, np.nan, 4.0, 5.0, 6.0, None, 8.0]
    y = [1.5, 1.0, 3.0, np.nan, 4.0, 7.0, 2.0, 6.5]
    keep = [0, 1, 4, 5, 7]
    xs, ys = [x[i] for i in keep], [y[i] for i in keep]
    got = pearson_with_ci(x, y)
    assert got["n"] == 5
    assert got["r"] == pytest.approx(stats.pearsonr(xs, ys).statistic, rel=1e-12)
    rank = spearman(x, y)
    assert rank["n"] == 5
    assert rank["rho"] == pytest.approx(stats.spearmanr(xs, ys).statistic, rel=1e-12)


@pytest.mark.parametrize(
    ("x", "y", "fragment"),
    [
        ([1, 2, 3], [3, 1, 2], "at least 4"),
        ([1, 2, np.nan, 4, 5], [1, 2, 3, np.nan, 5], "at least 4"),
        ([1, 2, 3, 4, 5], [2, 2, 2, 2, 2], "constant"),
    ],
)
def test_pearson_degenerate_inputs_give_nan_with_note(x, y, fragment):
    got = pearson_with_ci(x, y)
    assert fragment in got["note"]
    assert all(math.isnan(got[key]) for key in ("r", "ci_low", "ci_high", "p_value"))


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.2, "0.95"])
def test_pearson_rejects_bad_confidence(confidence):
    with pytest.raises(ValueError, match="confidence"):
        pearson_with_ci([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], confidence=confidence)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="same length"):
        pearson_with_ci([1, 2, 3, 4], [1, 2, 3])


@pytest.mark.parametrize("baseline_has_ci", [False, True])
def test_analyze_sweep_excludes_baseline_and_matches_scipy(baseline_has_ci):
    rows = make_rows(baseline_has_ci=baseline_has_ci)
    result = analyze_sweep(rows)
    ci = [r for r in rows if r["timestep_sampling"] == "ci_normal"]
    for metric in ("mean_l2", "pca_pc1_wasserstein_1"):
        for variable in ("ci_mean", "ci_width"):
            entry = result["correlations"][metric][variable]
            x, y = [r[variable] for r in ci], [r[metric] for r in ci]
            assert entry["pearson"]["r"] == pytest.approx(stats.pearsonr(x, y).statistic, rel=1e-10)
            assert entry["pearson"]["n"] == len(ci)
            assert entry["spearman"]["rho"] == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-10)
    if baseline_has_ci:
        # With the baseline's interval present the exclusion must come from its sampler name.
        everything = stats.pearsonr([r["ci_mean"] for r in rows], [r["mean_l2"] for r in rows]).statistic
        assert result["correlations"]["mean_l2"]["ci_mean"]["pearson"]["r"] != pytest.approx(everything, abs=1e-3)
    assert result["n_ci_rows"] == len(ci)
    assert result["n_cells"] == 15
    baseline = result["baseline"]["mean_l2"]
    assert baseline["n"] == 2
    assert baseline["mean"] == pytest.approx(10.0)
    assert baseline["std"] == pytest.approx(np.std([9.0, 11.0], ddof=1))
    assert result["baseline_cells"] == ["uniform"]


def test_analyze_sweep_direction_and_cells():
    rows = make_rows()
    result = analyze_sweep(rows)
    assert result["correlations"]["mean_l2"]["ci_mean"]["pearson"]["r"] < -0.5
    assert result["correlations"]["mean_l2"]["ci_mean"]["pearson"]["p_value"] < 1e-3
    cell = next(c for c in result["cells"] if c["cell"] == "ci_200_800")
    values = [r["nn_l2_mean"] for r in rows if r["cell"] == "ci_200_800"]
    assert cell["n_seeds"] == 2
    assert (cell["ci_mean"], cell["ci_width"]) == (500.0, 600.0)
    assert cell["metrics"]["nn_l2_mean"]["mean"] == pytest.approx(np.mean(values))
    assert cell["metrics"]["nn_l2_mean"]["std"] == pytest.approx(np.std(values, ddof=1))


def test_analyze_sweep_default_metrics():
    result = analyze_sweep(make_rows())
    assert "final_loss" in result["metrics"]
    assert "mean_l2" in result["metrics"]
    for column in ("seed", "ci_lower", "ci_upper", "ci_mean", "ci_width", "cell", "run_dir"):
        assert column not in result["metrics"]


def test_analyze_sweep_cell_unit_averages_seeds():
    rows = make_rows()
    result = analyze_sweep(rows, metrics=["mean_l2"], unit="cell")
    cells = sorted({r["cell"] for r in rows if r["timestep_sampling"] == "ci_normal"})
    x = [next(r["ci_mean"] for r in rows if r["cell"] == c) for c in cells]
    y = [np.mean([r["mean_l2"] for r in rows if r["cell"] == c]) for c in cells]
    pearson = result["correlations"]["mean_l2"]["ci_mean"]["pearson"]
    assert pearson["n"] == 15
    assert pearson["r"] == pytest.approx(stats.pearsonr(x, y).statistic, rel=1e-10)


def test_analyze_sweep_is_json_serialisable_without_nan():
    rows = make_rows(seeds=(0,))[:3] + make_rows(seeds=(0,))[-1:]  # three cells: too few for a correlation
    for row in rows:
        row["pca_frechet_distance"] = float("nan")
    result = analyze_sweep(rows)
    text = json.dumps(result, allow_nan=False)
    back = json.loads(text)
    pearson = back["correlations"]["mean_l2"]["ci_mean"]["pearson"]
    assert pearson["r"] is None and "at least 4" in pearson["note"]
    assert back["baseline"]["mean_l2"]["std"] is None  # a single seed has no spread
    assert back["paper_reference"]["mean_vs_distance"]["r"] == -0.7388


def test_analyze_sweep_accepts_dataframe_and_rejects_unknown_metric():
    rows = make_rows()
    from_frame = analyze_sweep(rows_to_dataframe(rows), metrics=["mean_l2"])
    from_list = analyze_sweep(rows, metrics=["mean_l2"])
    assert from_frame["correlations"] == from_list["correlations"]
    with pytest.raises(ValueError, match="fid"):
        analyze_sweep(rows, metrics=["fid"])


def test_paper_reference_numbers():
    ref = PAPER_REFERENCE["mean_vs_distance"]
    assert (ref["r"], ref["ci_low"], ref["ci_high"]) == (-0.7388, -0.8212, -0.6263)
    assert PAPER_REFERENCE["width_vs_distance"]["r"] == 0.316


def test_rows_to_dataframe_fills_mean_and_width():
    rows = [
        {"seed": 0, "ci_upper": 800, "ci_lower": 200, "mean_l2": 1.0, "cell": "a", "timestep_sampling": "ci_normal"}
    ]
    frame = rows_to_dataframe(rows)
    assert list(frame.columns[:6]) == ["cell", "timestep_sampling", "ci_lower", "ci_upper", "ci_mean", "ci_width"]
    assert frame.loc[0, "ci_mean"] == 500.0 and frame.loc[0, "ci_width"] == 600.0


def _write_history(run_dir, losses):
    run_dir.mkdir(parents=True)
    with (run_dir / "loss_history.jsonl").open("w") as handle:
        for step, loss in enumerate(losses):
            record = {"step": step, "epoch": 0, "loss": loss, "lr": 1e-4, "bin_losses": [loss] * 10}
            handle.write(json.dumps(record) + "\n")
        handle.write("\n")


def test_load_loss_histories(tmp_path):
    _write_history(tmp_path / "a", [0.5, 0.4, 0.3])
    _write_history(tmp_path / "b", [0.9])
    histories = load_loss_histories([tmp_path / "a", tmp_path / "b"])
    assert list(histories) == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert [r["loss"] for r in histories[str(tmp_path / "a")]] == [0.5, 0.4, 0.3]
    labelled = load_loss_histories({"cell_b": tmp_path / "b"})
    assert labelled["cell_b"][0]["step"] == 0

    with pytest.raises(FileNotFoundError, match="missing"):
        load_loss_histories([tmp_path / "missing"])
    assert list(load_loss_histories([tmp_path / "missing", tmp_path / "b"], missing="skip")) == [str(tmp_path / "b")]

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "loss_history.jsonl").write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "lo\n')
    with pytest.raises(ValueError, match=":2"):
        load_loss_histories([tmp_path / "c"])


def _bin_record(step, losses, counts):
    return {"step": step, "loss": 0.0, "bin_losses": losses, "bin_counts": counts}


def test_timestep_bin_losses_pool_the_last_steps_of_every_seed_by_count():
    rows = [
        {
            "cell": "ci-0-500",
            "timestep_sampling": "ci_normal",
            "ci_lower": 0,
            "ci_upper": 500,
            "seed": s,
            "run_dir": f"r{s}",
        }
        for s in (0, 1)
    ] + [{"cell": "uniform", "timestep_sampling": "uniform", "seed": 0, "run_dir": "u0"}]
    histories = {
        # 8 steps each: with tail_fraction 0.25 only steps 6 and 7 count; steps 0-5 carry a loss that must not leak in.
        "r0": [_bin_record(i, [9.0, 9.0], [1, 1]) for i in range(6)]
        + [_bin_record(6, [1.0, None], [2, 0]), _bin_record(7, [4.0, 3.0], [1, 3])],
        "r1": [_bin_record(i, [9.0, 9.0], [1, 1]) for i in range(6)]
        + [_bin_record(6, [2.0, 5.0], [1, 1]), _bin_record(7, [1.0, 1.0], [0, 1])],  # a zero count is ignored
        "u0": [_bin_record(i, [0.5, 0.25], [4, 4]) for i in range(8)],
    }
    out = timestep_bin_losses(histories, rows, tail_fraction=0.25)
    assert [e["cell"] for e in out] == ["ci-0-500", "uniform"]
    cell = out[0]
    assert cell["n_runs"] == 2 and cell["bin_counts"] == [4, 5]
    assert cell["bin_losses"][0] == pytest.approx((1.0 * 2 + 4.0 * 1 + 2.0 * 1) / 4)
    assert cell["bin_losses"][1] == pytest.approx((3.0 * 3 + 5.0 * 1 + 1.0 * 1) / 5)
    assert cell["ci_mean"] == 250.0 and cell["ci_width"] == 500.0
    assert out[1]["bin_losses"] == [0.5, 0.25] and out[1]["bin_counts"] == [8, 8]
    json.dumps(out)  # JSON-ready: written into analysis.json

    # A bin never drawn is None, not 0; rows without a history are left out.
    only = timestep_bin_losses({"u0": [_bin_record(0, [0.5, None], [4, 0])]}, rows)
    assert only == [{**only[0], "bin_losses": [0.5, None], "bin_counts": [4, 0]}] and only[0]["cell"] == "uniform"
    with pytest.raises(ValueError, match="tail_fraction"):
        timestep_bin_losses(histories, rows, tail_fraction=0.0)
