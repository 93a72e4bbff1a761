import re

import numpy as np
import pytest
from scipy import stats

pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402

from diffusers_memctl.experiments.statistics.analysis import analyze_sweep, timestep_bin_losses  # noqa: E402
from diffusers_memctl.reports import figures as report_figures  # noqa: E402
from diffusers_memctl.reports import markdown  # noqa: E402
from diffusers_memctl.reports import runs as run_figures  # noqa: E402
from diffusers_memctl.reports import sweeps as sweep_figures  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GRID = (0, 250, 500, 750, 1000)


def make_rows():
    rng = np.random.default_rng(7)
    rows = []
    for lo in GRID:
        for hi in GRID:
            if lo >= hi:
                continue
            for seed in (0, 1):
                mean = (lo + hi) / 2
                rows.append(
                    {
                        "cell": f"ci_{lo}_{hi}",
                        "timestep_sampling": "ci_normal",
                        "ci_lower": lo,
                        "ci_upper": hi,
                        "ci_mean": mean,
                        "ci_width": hi - lo,
                        "seed": seed,
                        "run_dir": f"runs/ci_{lo}_{hi}/seed{seed}",
                        "final_loss": 0.1 - 5e-5 * mean,
                        # lo + hi / 1000 + seed: a unique, decodable value per cell and seed
                        "mean_l2": lo + hi / 1000 + seed,
                        "pca_pc1_wasserstein_1": 5 - 4e-3 * mean + rng.normal(0, 0.2),
                        "pca_pc1_js_distance": 0.2 - 1e-4 * mean + rng.normal(0, 0.01),
                        "pca_pc2_wasserstein_1": 3 - 2e-3 * mean + rng.normal(0, 0.2),
                        "pca_pc2_js_distance": 0.1 - 5e-5 * mean + rng.normal(0, 0.01),
                    }
                )
    rows.append(
        {
            "cell": "uniform",
            "timestep_sampling": "uniform",
            "ci_lower": None,
            "ci_upper": None,
            "ci_mean": None,
            "ci_width": None,
            "seed": 0,
            "run_dir": "runs/uniform/seed0",
            "final_loss": 0.08,
            "mean_l2": 123.0,
            "pca_pc1_wasserstein_1": 4.0,
            "pca_pc1_js_distance": 0.2,
            "pca_pc2_wasserstein_1": 2.0,
            "pca_pc2_js_distance": 0.1,
        }
    )
    return rows


def make_history(num_steps, base, num_logged_bins=10):
    records = []
    for step in range(num_steps):
        bin_losses = [base * (num_logged_bins - k) / num_logged_bins for k in range(num_logged_bins)]
        bin_losses[-1] = None  # an empty bin is logged as null
        records.append(
            {
                "step": step,
                "epoch": 0,
                "loss": base + 0.01 * np.cos(step),
                "lr": 1e-4,
                "bin_losses": bin_losses,
                "bin_counts": [k + 1 for k in range(num_logged_bins - 1)] + [0],
            }
        )
    return records


def make_histories(rows):
    return {row["run_dir"]: make_history(30, 0.2 - 1e-4 * (row["ci_mean"] or 500)) for row in rows}


def _figure_builders():
    rng = np.random.default_rng(0)
    rows = make_rows()
    return {
        "heatmap": lambda: sweep_figures.plot_metric_heatmap(rows, "mean_l2"),
        "vs_mean": lambda: sweep_figures.plot_metric_vs_mean(rows, "mean_l2"),
        "vs_width": lambda: sweep_figures.plot_metric_vs_width(rows, "mean_l2"),
        "pca_vs_mean": lambda: sweep_figures.plot_pca_distances_vs_mean(rows, n_components=2),
        "loss_by_width": lambda: sweep_figures.plot_loss_curves_by_width(make_histories(rows), rows, smooth=5),
        "sampling": lambda: sweep_figures.plot_sampling_distributions(
            {"uniform": np.full(1000, 1e-3), "ci_0_500": np.r_[np.full(500, 1.9e-3), np.full(500, 1e-4)]}
        ),
        "pca_scatter": lambda: run_figures.plot_pca_scatter(
            rng.normal(size=(40, 3)), rng.normal(size=(60, 3)), title="t"
        ),
        "nn_hist": lambda: run_figures.plot_nn_distance_histogram(rng.uniform(1, 2, 50), memorization_ratio=0.1),
        "nn_hist_ratios": lambda: run_figures.plot_nn_distance_histogram(
            rng.uniform(1, 2, 50), memorization_ratio=rng.uniform(0, 1, 50)
        ),
        "image_grid_rgb": lambda: run_figures.plot_image_nn_grid(
            rng.uniform(-1, 1, (5, 3, 8, 8)), rng.uniform(-1, 1, (5, 3, 8, 8)), ncols=3
        ),
        "replicated_pairs": lambda: run_figures.plot_replicated_pairs(
            rng.uniform(-1, 1, (5, 3, 8, 8)), rng.uniform(-1, 1, (5, 3, 8, 8)), rng.uniform(0, 1, 5)
        ),
        "signal_overlay": lambda: run_figures.plot_signal_overlay(
            rng.normal(size=(6, 2, 32)), rng.normal(size=(9, 2, 32)), max_items=4
        ),
        "loss_history": lambda: run_figures.plot_loss_history(make_history(40, 0.1), smooth=4),
        "timestep_bin_losses": lambda: sweep_figures.plot_timestep_bin_losses(
            timestep_bin_losses(make_histories(rows), rows)
        ),
    }


@pytest.mark.parametrize("name", sorted(_figure_builders()))
def test_figure_functions_return_figures_and_save_png(name, tmp_path):
    fig = _figure_builders()[name]()
    assert isinstance(fig, Figure)
    assert fig.axes, "figure has no axes"
    path = report_figures.save_figure(fig, tmp_path / "nested" / "dir" / name)
    assert path.suffix == ".png" and path.parent == tmp_path / "nested" / "dir"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_save_figure_rejects_other_formats(tmp_path):
    fig = sweep_figures.plot_metric_vs_mean(make_rows(), "mean_l2")
    with pytest.raises(ValueError, match="plot.pdf"):
        report_figures.save_figure(fig, tmp_path / "plot.pdf")


def test_heatmap_places_cells_at_lower_upper_position():
    rows = make_rows()
    fig = sweep_figures.plot_metric_heatmap(rows, "mean_l2")
    ax = fig.axes[0]
    grid = ax.images[0].get_array()
    xlabels = [float(t.get_text()) for t in ax.get_xticklabels()]
    ylabels = [float(t.get_text()) for t in ax.get_yticklabels()]
    assert xlabels == [0, 250, 500, 750]
    assert ylabels == [250, 500, 750, 1000]
    assert grid.shape == (4, 4)
    for lo, hi in ((0, 1000), (250, 500), (750, 1000), (0, 250)):
        expected = np.mean([lo + hi / 1000 + seed for seed in (0, 1)])
        assert grid[ylabels.index(hi), xlabels.index(lo)] == pytest.approx(expected)
    # (500, 250) is not an interval: that cell stays empty
    assert np.ma.is_masked(grid[ylabels.index(250), xlabels.index(500)])
    assert int(np.ma.count_masked(grid)) == 16 - 10
    # annotations carry the same numbers and the baseline is named in the title
    assert "0.75" in [t.get_text() for t in ax.texts]  # cell (0, 250): mean of 0.25 and 1.25
    assert "123" in ax.get_title()


def test_heatmap_rejects_interval_beyond_num_train_timesteps():
    with pytest.raises(ValueError, match="num_train_timesteps=500"):
        sweep_figures.plot_metric_heatmap(make_rows(), "mean_l2", num_train_timesteps=500)


def test_unknown_metric_raises():
    with pytest.raises(ValueError, match="'fid'"):
        sweep_figures.plot_metric_vs_mean(make_rows(), "fid")


def test_metric_vs_mean_title_reports_scipy_correlation():
    rows = make_rows()
    ci = [r for r in rows if r["timestep_sampling"] == "ci_normal"]
    ref = stats.pearsonr([r["ci_mean"] for r in ci], [r["mean_l2"] for r in ci])
    title = sweep_figures.plot_metric_vs_mean(rows, "mean_l2").axes[0].get_title()
    assert f"r = {ref.statistic:+.3f}" in title
    low, high = ref.confidence_interval()
    assert f"{low:+.3f}, {high:+.3f}" in title
    assert f"n = {len(ci)}" in title


def test_metric_vs_width_has_one_box_per_width():
    ax = sweep_figures.plot_metric_vs_width(make_rows(), "mean_l2").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["250", "500", "750", "1000"]


def test_pca_distances_need_columns():
    with pytest.raises(ValueError, match="pca_pc3_wasserstein_1"):
        sweep_figures.plot_pca_distances_vs_mean(make_rows(), n_components=3)


def test_loss_curves_one_panel_per_width_one_curve_per_mean():
    rows = make_rows()
    fig = sweep_figures.plot_loss_curves_by_width(make_histories(rows), rows, smooth=1)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title().startswith("CI width")]
    assert [ax.get_title() for ax in panels] == [f"CI width {w}" for w in (250, 500, 750, 1000)]
    for ax, means in zip(panels, (4, 3, 2, 1)):
        labels = [line.get_label() for line in ax.get_lines()]
        assert sum(label.startswith("mean ") for label in labels) == means
        assert "uniform" in labels


def test_loss_curves_without_matching_history_raise():
    with pytest.raises(ValueError, match="no loss history"):
        sweep_figures.plot_loss_curves_by_width({"elsewhere": make_history(3, 0.1)}, make_rows())


def test_loss_history_merges_logged_bins_by_count():
    records = make_history(5, 0.1, num_logged_bins=20)
    fig = run_figures.plot_loss_history(records, num_bins=10)
    lines = fig.axes[1].get_lines()
    assert len(lines) == 10
    losses, counts = [0.1 * (20 - k) / 20 for k in (0, 1)], [1, 2]
    expected = np.dot(losses, counts) / sum(counts)
    np.testing.assert_allclose(lines[0].get_ydata(), expected)
    # the last merged bin has one empty logged bin: only the non-empty one counts
    np.testing.assert_allclose(lines[9].get_ydata(), 0.1 * 2 / 20)
    with pytest.raises(ValueError, match="num_bins=3"):
        run_figures.plot_loss_history(records, num_bins=3)


def test_image_grid_maps_range_and_orders_rows():
    generated = np.linspace(-1, 1, 2 * 4 * 4).reshape(2, 1, 4, 4)
    nearest = -generated
    fig = run_figures.plot_image_nn_grid(generated, nearest, ncols=2)
    shown = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(shown) == 4
    # axes are row-major: generated pair 0, generated pair 1, then their nearest samples below
    np.testing.assert_allclose(shown[0], (generated[0, 0] + 1) / 2)
    np.testing.assert_allclose(shown[2], (nearest[0, 0] + 1) / 2)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        run_figures.plot_image_nn_grid(np.zeros((2, 2, 4, 4)), np.zeros((2, 2, 4, 4)))


def test_replicated_pairs_put_each_match_beside_its_image_with_the_similarity():
    rng = np.random.default_rng(0)
    generated, matched = rng.uniform(-1, 1, (3, 1, 4, 4)), rng.uniform(-1, 1, (3, 1, 4, 4))
    fig = run_figures.plot_replicated_pairs(generated, matched, [0.9, 0.5, 0.2], ncols=2, train_indices=[7, 1, 4])
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 6
    # row-major: generated 0, its match, generated 1, its match; then the second row
    np.testing.assert_allclose(shown[0].images[0].get_array(), (generated[0, 0] + 1) / 2)
    np.testing.assert_allclose(shown[1].images[0].get_array(), (matched[0, 0] + 1) / 2)
    np.testing.assert_allclose(shown[4].images[0].get_array(), (generated[2, 0] + 1) / 2)
    assert [shown[i].get_title() for i in (0, 1, 2, 4)] == ["sim=0.900", "training #7", "sim=0.500", "sim=0.200"]
    assert shown[2].title.get_color() == "red" and shown[4].title.get_color() == "black"  # 0.5 >= tau: a replica
    with pytest.raises(ValueError, match="same pairs"):
        run_figures.plot_replicated_pairs(generated, matched, [0.9, 0.5])


def test_signal_overlay_draws_at_most_max_items():
    fig = run_figures.plot_signal_overlay(np.zeros((10, 1, 16)), np.ones((20, 1, 16)), max_items=3)
    assert len(fig.axes[0].get_lines()) == 6
    with pytest.raises(ValueError, match="share"):
        run_figures.plot_signal_overlay(np.zeros((2, 1, 16)), np.zeros((2, 1, 8)))


def test_write_sweep_report(tmp_path):
    rows = make_rows()
    analysis = analyze_sweep(rows)
    analysis["cell_level_correlations"] = analyze_sweep(rows, unit="cell")["correlations"]
    figures = {
        "mean_l2 heatmap": report_figures.save_figure(
            sweep_figures.plot_metric_heatmap(rows, "mean_l2"), tmp_path / "plots/heat"
        ),
        "mean_l2 vs mean": report_figures.save_figure(
            sweep_figures.plot_metric_vs_mean(rows, "mean_l2"), tmp_path / "plots/mean"
        ),
    }
    path = markdown.write_sweep_report(tmp_path, rows, analysis, figures)
    assert path == tmp_path / "REPORT.md"
    text = path.read_text()
    assert "![mean_l2 heatmap](plots/heat.png)" in text
    assert "![mean_l2 vs mean](plots/mean.png)" in text
    header = "| metric | vs | r, cell means [95% CI] | p | p_Holm | n | r, runs [95% CI] | p | p_Holm | n | paper r |"
    assert header in text
    pearson = analysis["correlations"]["mean_l2"]["ci_mean"]["pearson"]
    cell = analysis["cell_level_correlations"]["mean_l2"]["ci_mean"]["pearson"]
    assert cell["n"] == analysis["n_cells"] < pearson["n"]
    row = next(line for line in text.splitlines() if line.startswith("| mean_l2 | ci_mean |"))
    assert f"{pearson['r']:+.3f} [{pearson['ci_low']:+.4f}, {pearson['ci_high']:+.4f}]" in row
    assert f"{cell['r']:+.3f} [{cell['ci_low']:+.4f}, {cell['ci_high']:+.4f}]" in row
    assert "## In short" in text and "**one** pretrained model" in text
    assert "-0.7388" in row and "[-0.8212, -0.6263]" in row  # the paper's numbers beside ours
    # Each p sits beside its Holm-adjusted value (family: every metric vs ci_mean and ci_width at that level).
    assert pearson["p_holm"] >= pearson["p_value"] and pearson["holm_family_size"] == 2 * len(analysis["metrics"])
    assert f"| {markdown._fmt_p(cell['p_value'])} | {markdown._fmt_p(cell['p_holm'])} |" in row
    assert re.search(r"\| ci_0_1000 \| ci_normal \| 0 \| 1000 \| 500 \| 1000 \| 2 \|", text)
    assert "## Uniform baseline" in text


def test_report_of_few_cells_gives_no_correlation_table_and_says_why(tmp_path):
    rows = [r for r in make_rows() if r["cell"] in ("ci_0_1000", "ci_250_1000")]
    text = markdown.write_sweep_report(tmp_path, rows, analyze_sweep(rows)).read_text()
    assert "Only 2 CI cell(s): too few for a correlation" in text
    assert "| metric | vs |" not in text


def test_report_shows_gradient_profiles_when_the_sweep_was_diagnosed(tmp_path):
    rows = make_rows()
    assert "gradient profiles" not in markdown.write_sweep_report(tmp_path, rows, analyze_sweep(rows)).read_text()
    (tmp_path / "gradient_profiles.csv").write_text(
        "run,timestep_sampling,share_0_500,share_0_500_se,share_500_1000,share_500_1000_se,coherence_0_500,"
        "coherence_500_1000\ncells/ci-0750-1000-seed0,ci_normal,0.071,0.004,0.929,0.004,0.81,0.55\n"
    )
    text = markdown.write_sweep_report(tmp_path, rows, analyze_sweep(rows)).read_text()
    assert "## Where each run learns (gradient profiles)" in text
    assert "| cells/ci-0750-1000-seed0 | 0.071 ± 0.004 | 0.929 ± 0.004 | 0.81 | 0.55 |" in text


def test_heatmap_of_a_constant_metric_has_no_colour_bar():
    rows = [{**r, "memorized_fraction": 0.0} for r in make_rows()]
    fig = sweep_figures.plot_metric_heatmap(rows, "memorized_fraction")
    assert len(fig.axes) == 1 and "constant: 0 in every cell" in fig.axes[0].get_title()
    assert len(sweep_figures.plot_metric_heatmap(rows, "mean_l2").axes) == 2


def test_report_compares_cells_on_the_same_timesteps_relative_to_uniform(tmp_path):
    rows = make_rows()
    histories = make_histories(rows)
    analysis = {**analyze_sweep(rows), "timestep_bin_losses": timestep_bin_losses(histories, rows)}
    text = markdown.write_sweep_report(tmp_path, rows, analysis).read_text()
    assert "## Loss on the same timesteps" in text and "divided by the uniform baseline's loss" in text
    # make_history: bin k of a run logs base * (10 - k) / 10 with base = 0.2 - 1e-4 * mean (uniform: mean 500),
    # so a cell's ratio to uniform is the same on every drawn bin: (0.2 - 1e-4 * mean) / 0.15.
    row = next(line for line in text.splitlines() if line.startswith("| [0, 250] |"))
    expected = f"{(0.2 - 1e-4 * 125) / 0.15:.3g}"
    assert row.split(" | ")[1:4] == [expected] * 3
    assert row.rstrip(" |").endswith("–")  # the last bin is never drawn in make_history

    with pytest.raises(ValueError, match="no ci_normal cell"):
        sweep_figures.plot_timestep_bin_losses([e for e in analysis["timestep_bin_losses"] if e["cell"] == "uniform"])


def test_nearest_neighbour_grid_frames_the_copies():
    rng = np.random.default_rng(0)
    generated, nearest = rng.uniform(-1, 1, (4, 1, 8, 8)), rng.uniform(-1, 1, (4, 1, 8, 8))
    ratios = np.array([0.1, 0.9, 0.2, 0.5, 0.05, 0.8])  # all samples; the first 4 are shown
    fig = run_figures.plot_image_nn_grid(generated, nearest, ncols=4, ratios=ratios, threshold=1 / 3)
    framed = [ax for ax in fig.axes if ax.axison]
    # Pairs 0 and 2 are copies: their generated and nearest images (4 axes) get a red frame, the others none.
    assert len(framed) == 4 and all(ax.spines["top"].get_edgecolor()[:3] == (1.0, 0.0, 0.0) for ax in framed)
    assert "2 of the 4 shown, 50.0% of all 6 samples" in fig._suptitle.get_text()
    assert fig.axes[0].get_title().endswith("r=0.10")
    with pytest.raises(ValueError, match="threshold"):
        run_figures.plot_image_nn_grid(generated, nearest, ratios=ratios)
