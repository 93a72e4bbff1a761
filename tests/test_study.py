"""The memorization study: training subsets, named methods, re-weighting vs re-sampling, replicate-level statistics,
held-out quality and the study folder end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffusers_memctl.args import DataArguments, SamplingArguments, SweepArguments
from diffusers_memctl.data import load_training_data, select_training_subset
from diffusers_memctl.loss_weighting import training_timestep_sampler
from diffusers_memctl.methods import STUDY_METHODS, apply_method, parse_methods, resolve_method
from diffusers_memctl.metrics import heldout_metrics
from diffusers_memctl.replicates import (
    method_contrasts,
    mixed_model_effect,
    replicate_correlations,
    replicate_values,
    t_interval,
)
from diffusers_memctl.study import StudyGroup, is_study_dir, study_groups
from diffusers_memctl.sweep import shard_cells
from diffusers_memctl.timestep_sampling import UniformTimestepSampler, create_timestep_sampler

# --------------------------------------------------------------------------------------------------------------
# Training subsets
# --------------------------------------------------------------------------------------------------------------


def test_subset_is_seeded_sorted_and_distinct():
    a = select_training_subset(100, 10, seed=3)
    assert a == select_training_subset(100, 10, seed=3)
    assert a != select_training_subset(100, 10, seed=4)
    assert a == sorted(set(a)) and len(a) == 10 and 0 <= a[0] and a[-1] < 100


@pytest.mark.parametrize(
    "size, message", [(0, "--train_subset_size must be a positive"), (101, "larger than the 100")]
)
def test_bad_subset_sizes_name_the_flag(size, message):
    with pytest.raises(ValueError, match=message):
        select_training_subset(100, size, seed=0)


def test_training_data_keeps_the_subset_and_the_rest_as_heldout():
    full = load_training_data(DataArguments(dataset_name="digits", resolution=8))
    data = load_training_data(
        DataArguments(dataset_name="digits", resolution=8, train_subset_size=20, train_subset_seed=1)
    )
    indices = data.info["subset"]["indices"]
    assert indices == select_training_subset(full.samples.shape[0], 20, 1)
    assert torch.equal(data.samples, full.samples[indices])
    assert data.heldout.shape[0] == full.samples.shape[0] - 20
    rest = [i for i in range(full.samples.shape[0]) if i not in set(indices)]
    assert torch.equal(data.heldout, full.samples[rest])
    other = load_training_data(
        DataArguments(dataset_name="digits", resolution=8, train_subset_size=20, train_subset_seed=2)
    )
    assert data.info["fingerprint"] != other.info["fingerprint"]
    assert full.heldout is None and len(full.info["fingerprint"]) == 64


def test_training_reference_is_computed_once_per_data_and_threshold(monkeypatch):
    from diffusers_memctl import evaluation

    calls = []
    real = evaluation.reference_metrics
    monkeypatch.setattr(evaluation, "reference_metrics", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(evaluation, "_REFERENCE_CACHE", {})
    data = load_training_data(DataArguments(dataset_name="digits", resolution=8, train_subset_size=12))
    first = evaluation.training_reference(data, 1 / 3)
    assert evaluation.training_reference(data, 1 / 3) == first == real(data.samples) and len(calls) == 1
    evaluation.training_reference(data, 0.5)
    other = load_training_data(
        DataArguments(dataset_name="digits", resolution=8, train_subset_size=12, train_subset_seed=5)
    )
    assert evaluation.training_reference(other, 1 / 3) != first and len(calls) == 3


# --------------------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------------------


def test_study_has_the_methods_the_issue_asks_for():
    methods = parse_methods("all")
    assert [m.name for m in methods][0] == "uniform" and len(methods) >= 8
    assert STUDY_METHODS["ci_late"].ci_interval == (750.0, 1000.0)
    assert STUDY_METHODS["importance_ci_late"].settings["loss_weighting"] == "importance"
    assert resolve_method("ci-100-300").settings == {
        "timestep_sampling": "ci_normal",
        "ci_lower": 100,
        "ci_upper": 300,
    }


@pytest.mark.parametrize(
    "text, message", [("uniform,nope", "unknown method 'nope'"), ("uniform,uniform", "twice"), (",", "no method")]
)
def test_bad_method_lists_name_the_flag(text, message):
    with pytest.raises(ValueError, match=f"--methods.*{message}|{message}"):
        parse_methods(text)


def test_apply_method_resets_shared_sampling_flags():
    shared = SamplingArguments(timestep_sampling="ci_normal", ci_lower=0, ci_upper=10, snr_gamma=1.0, logit_mean=3.0)
    uniform = apply_method(shared, STUDY_METHODS["uniform"])
    assert uniform.timestep_sampling == "uniform" and uniform.ci_lower is None and uniform.snr_gamma == 5.0
    assert uniform.logit_mean is None and uniform.method_name == "uniform"
    late = apply_method(shared, STUDY_METHODS["logit_normal_late"])
    assert (late.timestep_sampling, late.logit_mean, late.ci_upper) == ("logit_normal", 1.0, None)


def test_importance_weighting_draws_uniform_timesteps():
    ci = create_timestep_sampler("ci_normal", 1000, t_lower=900, t_upper=1000)
    assert isinstance(training_timestep_sampler(ci, "importance"), UniformTimestepSampler)
    assert training_timestep_sampler(ci, "none") is ci and training_timestep_sampler(ci, "min_snr") is ci


def _bin_counts(run_dir):
    counts = np.zeros(10)
    for line in (run_dir / "loss_history.jsonl").read_text().splitlines():
        counts += np.asarray(json.loads(line)["bin_counts"])
    return counts


def test_importance_run_sees_early_timesteps_that_resampling_does_not(tmp_path):
    from diffusers_memctl.cli.train import main

    common = ["--dataset_name", "digits", "--resolution", "8", "--model_preset", "tiny", "--max_train_steps", "12",
              "--train_batch_size", "32", "--checkpointing_steps", "0", "--save_images_epochs", "0",
              "--save_model_epochs", "0", "--logger", "none", "--eval_num_samples", "0",
              "--timestep_sampling", "ci_normal", "--ci_lower", "900", "--ci_upper", "1000"]  # fmt: skip
    main([*common, "--output_dir", str(tmp_path / "resample")])
    main([*common, "--loss_weighting", "importance", "--output_dir", str(tmp_path / "reweight")])
    resample, reweight = _bin_counts(tmp_path / "resample"), _bin_counts(tmp_path / "reweight")
    # 384 draws: CI-normal [900, 1000] puts ~2.5% of its mass below t = 900; uniform draws put 90% there.
    assert resample[:9].sum() < 0.1 * resample.sum()
    assert reweight[:9].sum() > 0.75 * reweight.sum()


# --------------------------------------------------------------------------------------------------------------
# Replicate-level statistics
# --------------------------------------------------------------------------------------------------------------


def test_t_interval_matches_scipy():
    values = [0.3, -0.1, 0.5, 0.2]
    out = t_interval(values)
    low, high = stats.t.interval(0.95, 3, loc=np.mean(values), scale=stats.sem(values))
    assert out["ci_low"] == pytest.approx(low) and out["ci_high"] == pytest.approx(high)
    assert out["p_value"] == pytest.approx(stats.ttest_1samp(values, 0).pvalue)
    assert t_interval([1.0])["ci_low"] is None


def _synthetic_rows(effect=0.1, slope=0.0, seeds=(0, 1, 2), offsets=(0.0, 5.0, -3.0), fine_tunes=(0, 1)):
    """Rows whose replicate level differs by a large offset per pretraining and whose methods differ by `effect`."""
    rng = np.random.default_rng(0)
    rows = []
    for pseed, offset in zip(seeds, offsets):
        for method, ci_mean in (("uniform", None), ("ci_a", 125.0), ("ci_b", 500.0), ("ci_c", 875.0)):
            for ft in fine_tunes:
                value = offset + (0 if method == "uniform" else effect) + slope * (ci_mean or 0) + rng.normal(0, 1e-3)
                rows.append({"train_subset_size": 16, "method": method, "pretrain_seed": pseed, "seed": ft,
                             "ci_mean": ci_mean, "ci_width": None if ci_mean is None else 250.0, "m": value})  # fmt: skip
    return rows


def test_contrasts_pair_within_a_pretraining():
    rows = _synthetic_rows(effect=0.1)
    table = replicate_values(rows, ["m"])
    assert len(table) == 12 and all(r["n_runs"] == 2 for r in table)
    contrasts = {c["method"]: c for c in method_contrasts(rows, "m")}
    rl = contrasts["ci_a"]["replicate_level"]
    # Pretraining offsets of -3..5 cancel in the paired differences: the interval is tight around 0.1.
    assert rl["mean"] == pytest.approx(0.1, abs=2e-3) and rl["n"] == 3
    assert rl["ci_low"] < 0.1 < rl["ci_high"] and rl["ci_high"] - rl["ci_low"] < 0.02
    assert contrasts["ci_a"]["bootstrap"]["reliable"] is False
    mixed = contrasts["ci_a"]["mixed_model"]
    assert mixed["estimate"] == pytest.approx(0.1, abs=2e-3) and mixed["n_groups"] == 3
    # Treating runs as independent mixes the pretraining offsets into the noise: no significance there.
    assert contrasts["ci_a"]["run_level"]["welch_p_value"] > 0.5


def test_replicate_correlations_find_a_slope_per_pretraining():
    rows = _synthetic_rows(effect=0.0, slope=-0.01)
    (entry,) = replicate_correlations(rows, "m", "ci_mean")
    assert entry["replicate_level"]["r"] < -0.99 and entry["replicate_level"]["n_replicates"] == 3
    assert set(entry["per_replicate_r"]) == {"0", "1", "2"}
    assert entry["mixed_model_slope"]["estimate"] == pytest.approx(-0.01, rel=1e-2)
    # Pooled over runs, the pretraining offsets blur the slope.
    assert abs(entry["run_level"]["r"]) < 0.9 < abs(entry["replicate_level"]["r"])


def test_holm_adjusts_within_the_stated_family():
    from statsmodels.stats.multitest import multipletests

    from diffusers_memctl.multiple_testing import annotate_holm, holm_adjust

    assert holm_adjust([0.012, None, 0.5, float("nan")]) == [pytest.approx(0.024), None, 0.5, None]
    entries = [{"p_value": p} for p in (0.01, 0.04, 0.03)]
    annotate_holm(entries, "three tests")
    expected = multipletests([0.01, 0.04, 0.03], method="holm")[1]
    assert [e["p_holm"] for e in entries] == pytest.approx(list(expected))
    assert entries[0]["holm_family"] == "three tests" and entries[0]["holm_family_size"] == 3


def test_study_contrasts_carry_holm_adjusted_p_per_metric_and_size():
    from statsmodels.stats.multitest import multipletests

    from diffusers_memctl.study_report import study_analysis

    rows = _synthetic_rows(effect=0.1)
    for row in rows:
        row["memorized_fraction"] = row["m"]
    analysis = study_analysis(rows)
    entries = analysis["contrasts_vs_uniform"]["memorized_fraction"]
    raw = [e["replicate_level"]["p_value"] for e in entries]
    adjusted = [e["replicate_level"]["p_holm"] for e in entries]
    assert adjusted == pytest.approx(list(multipletests(raw, method="holm")[1]))
    assert all(e["replicate_level"]["holm_family_size"] == 3 for e in entries)
    assert "every method - uniform" in entries[0]["replicate_level"]["holm_family"]
    assert entries[0]["mixed_model"]["p_holm"] is not None and entries[0]["run_level"]["welch_p_holm"] is not None
    assert "family" in analysis["multiple_testing"]["contrasts_vs_uniform"]
    corr = analysis["ci_correlations"]["memorized_fraction_vs_ci_mean"][0]["replicate_level"]
    assert corr["p_holm"] >= corr["p_value"] and "vs ci_mean at 16" in corr["holm_family"]


def test_mixed_model_flags_a_boundary_fit():
    # Every pretraining has the same mean level: the random-intercept variance is estimated at 0 (the boundary).
    rows = [
        {"pretrain_seed": p, "method": method, "m": base + (0.5 if method == "ci_a" else 0.0) + sign * spread}
        for p, spread in ((0, 0.3), (1, 0.1), (2, 0.2))
        for method in ("uniform", "ci_a")
        for base, sign in ((0.0, 1), (0.0, -1))
    ]
    fit = mixed_model_effect(rows, "m", "is:ci_a")
    assert fit["converged"] is not None and fit["boundary"] is True and fit["quotable"] is False
    assert "boundary" in fit["note"] and fit["random_intercept_variance"] <= 1e-6 * fit["residual_variance"]
    # Distinct levels: a quotable fit.
    good = mixed_model_effect([r for r in _synthetic_rows(effect=0.1) if r["method"] in ("uniform", "ci_a")], "m",
                              "is:ci_a")  # fmt: skip
    assert good["boundary"] is False and good["quotable"] is True and good["note"] is None
    assert isinstance(good["convergence_warnings"], list)


def test_correlations_say_what_they_rest_on():
    rows = _synthetic_rows(effect=0.0, slope=-0.01)
    for row in rows:  # pretraining 2: every CI method scores the same, so its r is undefined
        if row["pretrain_seed"] == 2 and row["ci_mean"] is not None:
            row["m"] = 1.0
    (entry,) = replicate_correlations(rows, "m", "ci_mean")
    assert entry["replicate_level"]["n_replicates"] == 2 and entry["n_replicates_total"] == 3
    assert "2" in entry["excluded_replicates"] and "same for every CI method" in entry["excluded_replicates"]["2"]
    assert entry["n_points_per_replicate"] == 3 and entry["variable_values"] == [125.0, 500.0, 875.0]
    # Three CI means: without the lowest only 2 remain, too few for an r.
    assert entry["per_replicate_r_without_lowest"] == {}


def test_mixed_model_reports_degenerate_input_instead_of_raising():
    rows = [{"pretrain_seed": 0, "method": "uniform", "m": 1.0}, {"pretrain_seed": 0, "method": "x", "m": 2.0}]
    assert mixed_model_effect(rows, "m", "is:x")["note"]


# --------------------------------------------------------------------------------------------------------------
# Held-out quality
# --------------------------------------------------------------------------------------------------------------


def test_heldout_metrics_place_copies_and_fresh_data_at_their_references():
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(2000, 6, generator=generator) * torch.tensor([3.0, 2.0, 1.0, 1.0, 0.5, 0.5])
    training, heldout = data[:12], data[12:]
    copies = training[torch.randint(12, (200,), generator=generator)]
    fresh = torch.randn(200, 6, generator=generator) * torch.tensor([3.0, 2.0, 1.0, 1.0, 0.5, 0.5])
    on_copies = heldout_metrics(copies, training, heldout, n_components=4)
    on_fresh = heldout_metrics(fresh, training, heldout, n_components=4)
    assert on_copies["heldout_frechet_copier"] > 3 * on_copies["heldout_frechet_fresh"]
    assert on_copies["heldout_frechet_gap_ratio"] == pytest.approx(1.0, abs=0.5)
    assert on_fresh["heldout_frechet_gap_ratio"] < 0.3
    few = heldout_metrics(copies, training, heldout[:300], n_components=4)
    assert math.isnan(few["heldout_frechet_fresh"])


# --------------------------------------------------------------------------------------------------------------
# A study folder end to end
# --------------------------------------------------------------------------------------------------------------


def test_groups_and_their_shards():
    sweep = SweepArguments(train_subset_sizes="8,32", pretrain_seeds="0,1,2")
    groups = study_groups(sweep)
    assert [g.name for g in groups][:2] == ["n00008-p0", "n00008-p1"] and len(groups) == 6
    shards = [shard_cells(groups, 2, i) for i in range(2)]
    assert sorted(shards[0] + shards[1], key=lambda g: g.name) == sorted(groups, key=lambda g: g.name)
    assert StudyGroup(8, 2).name == "n00008-p2"
    with pytest.raises(ValueError, match="--pretrain_seeds"):
        study_groups(SweepArguments(train_subset_sizes="8", pretrain_seeds="0,0"))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from diffusers_memctl.cli.sweep import main

    root = tmp_path_factory.mktemp("study")
    args = ["--sweep_dir", str(root), "--dataset_name", "digits", "--resolution", "8", "--model_preset", "tiny",
            "--train_subset_sizes", "10", "--pretrain_seeds", "0,1", "--pretrain_max_train_steps", "6",
            "--methods", "uniform,ci_late,min_snr", "--seeds", "0", "--max_train_steps", "3",
            "--train_batch_size", "8", "--lr_warmup_steps", "1", "--checkpointing_steps", "0",
            "--save_images_epochs", "0", "--save_model_epochs", "0", "--logger", "none",
            "--eval_num_samples", "6", "--num_inference_steps", "2"]  # fmt: skip
    main(args)
    return root


def test_study_folder_holds_groups_rows_and_report(study):
    assert is_study_dir(study)
    rows = list(__import__("csv").DictReader(open(study / "study_results.csv")))
    assert len(rows) == 6 and {r["method"] for r in rows} == {"uniform", "ci_late", "min_snr"}
    assert {r["pretrain_seed"] for r in rows} == {"0", "1"} and {r["train_subset_size"] for r in rows} == {"10"}
    assert all(not r["run_dir"].startswith("/") for r in rows)
    config = json.loads((study / "n00010-p1" / "cells" / "ci_late-seed0" / "training_config.json").read_text())
    assert config["data"]["subset"]["seed"] == 1 and len(config["data"]["subset"]["indices"]) == 10
    assert config["args"]["method_name"] == "ci_late"
    pretrained = json.loads((study / "n00010-p1" / "pretrained" / "training_config.json").read_text())
    assert pretrained["args"]["seed"] == 1 and pretrained["args"]["timestep_sampling"] == "uniform"
    assert pretrained["data"]["subset"] == config["data"]["subset"]
    analysis = json.loads((study / "analysis.json").read_text())
    contrast = analysis["contrasts_vs_uniform"]["memorized_fraction"]
    assert {c["method"] for c in contrast} == {"ci_late", "min_snr"}
    assert all(c["replicate_level"]["n"] == 2 for c in contrast)
    head_to_head = analysis["contrasts_vs_ci_late"]["memorized_fraction"]
    assert {c["method"] for c in head_to_head} == {"uniform", "min_snr"} and head_to_head[0]["baseline"] == "ci_late"
    report = (study / "REPORT.md").read_text()
    assert report.index("## The answer") < report.index("## Method x training-set size")
    assert "## Head to head with `ci_late`" in report
    assert "10 training samples" in report and (study / "figures" / "pareto.png").is_file()
    # Readable for a newcomer: the interval named where the answer names the method, the quality cost in the
    # answer, one footnote for the marks, Holm-adjusted p beside p, the mixed-model fits accounted for.
    answer = report[report.index("## The answer") : report.index("## Method x training-set size")]
    assert (
        "`ci_late` (CI-normal timesteps on [750, 1000])" in answer
        and "- `ci_late`: CI-normal on [750, 1000]" in answer
    )
    assert "Quality on held-out data" in answer and "over 2 pretrainings" in answer and "Holm-adjusted" in answer
    assert "over 1 pretrainings" not in report and report.count("Marks: `*`") == 1
    assert "p_Holm" in report and "## Mixed-model fits" in report
    counts = analysis["mixed_model_fits"]
    assert counts["fitted"] >= counts["quotable"] and f"{counts['fitted']} linear mixed-model fits" in report
    # One size: no by-size figures (a column of points on empty axes).
    assert not list((study / "figures").glob("by_size_*.png"))


def test_exported_study_rebuilds_the_same_analysis(study, tmp_path):
    from diffusers_memctl.cli.report import main

    main([str(study), "--export", str(tmp_path / "export")])
    exported = json.loads((tmp_path / "export" / "analysis.json").read_text())
    settings = json.loads((tmp_path / "export" / "study_settings.json").read_text())
    assert [g["group"] for g in settings["groups"]] == ["n00010-p0", "n00010-p1"] and settings["differences"] == []
    assert settings["shared"]["sweep"]["methods"] == "uniform,ci_late,min_snr"
    assert settings["groups"][1] == {"group": "n00010-p1", "train_subset_size": 10, "train_subset_seed": 1}
    main([str(tmp_path / "export"), "--from_csv"])
    rebuilt = json.loads((tmp_path / "export" / "analysis.json").read_text())
    assert rebuilt == exported
    assert (
        exported["contrasts_vs_uniform"] == json.loads((study / "analysis.json").read_text())["contrasts_vs_uniform"]
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pretrained_run", "x"], "drop --pretrained_run"),
        (["--methods", "uniform", "--pretrain_max_train_steps", "0"], "--pretrain_max_train_steps"),
        (["--pretrain_max_train_steps", "5"], "--methods"),
    ],
)
def test_study_refuses_incomplete_settings(tmp_path, extra, message):
    from diffusers_memctl.cli.sweep import main

    with pytest.raises(ValueError, match=message):
        main(["--sweep_dir", str(tmp_path), "--train_subset_sizes", "8", *extra])


def test_one_pretraining_says_there_is_no_interval(tmp_path):
    from diffusers_memctl.study_report import study_analysis, write_study_report

    rows = [
        {"train_subset_size": 16, "method": m, "pretrain_seed": 0, "seed": 0, "memorized_fraction": c,
         "heldout_frechet_distance": q, "ci_mean": None if m == "uniform" else 875.0, "run_dir": f"x/{m}"}
        for m, c, q in (("uniform", 0.3, 1.9), ("ci_late", 0.02, 2.8))
    ]  # fmt: skip
    text = write_study_report(tmp_path, rows, study_analysis(rows), {}).read_text()
    assert "With one pretraining there is no interval" in text and "over 1 pretrainings" not in text
    assert "28.0 points fewer (one pretraining: a single measurement, no interval)" in text
    assert "`ci_late` is 0.90 worse" in text and "Marks: `*`" not in text


def test_pareto_labels_say_which_way_fewer_copies_lie():
    from diffusers_memctl.study_report import plot_pareto

    rows = _synthetic_rows(effect=0.1)
    for row in rows:
        row.update(nn_ratio_mean=row["m"], heldout_frechet_distance=row["m"], ref_nn_ratio_mean=0.0)
    fig = plot_pareto(rows, copies_metric="nn_ratio_mean")
    ax = fig.axes[0]
    assert "higher = farther" in ax.get_ylabel() and "lower = fewer copies" not in ax.get_ylabel()
    # The training subset's line at 0 lies inside the axes, not on the frame.
    assert ax.get_ylim()[0] < 0.0
