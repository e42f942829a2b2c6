"""The shared ID-vs-OOD report (ffs_det.density.report): metrics of a comparison, its table and CSV, file
names, plots, and the statistics over training seeds with their markdown. Expectations are hand-computed."""
import csv
import io
import math

import numpy as np
import pytest
from PIL import Image

from ffs_det.density.report import (Comparison, compare, comparison_csv, comparison_table, hist_png, markdown_table,
                                    mean_pm, paired_pm, paired_stats, roc_png, safe_name, seed_stats, seeds_better)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _comparison() -> Comparison:
    # ID 3, 4, 5, 6. "near": 1, 2 lie below every ID score. "far": 4.5 beats two ID scores, 0 none.
    return compare({"a": {"id": np.array([3.0, 4, 5, 6]), "near": np.array([1.0, 2]), "far": np.array([4.5, 0])}},
                   "id")


def test_compare_metrics_of_every_pair():
    c = _comparison()
    assert c.methods == ["a"] and c.ood_names == ["near", "far"]
    assert c.metrics["a"]["near"]["auroc"] == 1.0 and c.metrics["a"]["near"]["fpr95"] == 0.0
    # AUROC: of the 8 (ID, OOD) pairs, 4.5 is below 5 and 6 and 0 below all four: 6/8
    assert c.metrics["a"]["far"]["auroc"] == pytest.approx(0.75)
    # keeping 95% of 4 ID scores keeps all of them (threshold 3): 4.5 passes, 0 does not
    assert c.metrics["a"]["far"]["fpr95"] == pytest.approx(0.5)
    assert [(m, o) for m, o, *_ in c.pairs(ood="far")] == [("a", "far")]


@pytest.mark.parametrize("scores, match", [({}, "nothing to compare"), ({"a": {"near": [1.0]}}, "no scores of the ID"),
                                           ({"a": {"id": [1.0]}}, "no OOD set")])
def test_compare_refuses_what_it_cannot_compare(scores, match):
    with pytest.raises(ValueError, match=match):
        compare(scores, "id")


def test_table_rows_and_the_few_samples_note():
    text = comparison_table(_comparison(), title="T", method_label="scorer")
    lines = text.splitlines()
    assert lines[0] == "T" and lines[1].split() == ["scorer", "OOD", "set", "n_id", "n_ood", "FPR95%", "AUROC%",
                                                    "AUPR-In%", "AUPR-Out%"]
    assert lines[4].split()[:6] == ["a", "far", "4", "2", "50.00", "75.00"]
    # binomial standard error of FPR95 0.5 on 2 OOD samples: 100 * sqrt(0.5 * 0.5 / 2) = 35.4 points
    assert ("note: a on far: only 4 ID and 2 OOD samples; FPR95 has a binomial standard error of 35.4 points "
            "(and is coarse on so few ID samples)") in text


def test_csv_rows_with_extra_columns_and_a_method_without_scores():
    text = comparison_csv(_comparison(), "scorer", {"a": {"status": "ok"}, "b": {"status": "failed"}}, ["status"])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["scorer", "ood_set", "status", "n_id", "n_ood", "fpr95", "auroc", "aupr_in", "aupr_out",
                       "fpr95_ood_positive"]
    assert rows[1][:6] == ["a", "near", "ok", "4", "2", "0.0"] and rows[2][:2] == ["a", "far"]
    assert rows[3] == ["b", "", "failed"] + [""] * 7


@pytest.mark.parametrize("name, safe", [("x.y-z_1", "x.y-z_1"), ("a/b c", "a_b_c"), (" ood:far ", "ood_far"),
                                        ("...", "set")])
def test_safe_name(name, safe):
    assert safe_name(name) == safe


def test_plots_are_png_images():
    rng = np.random.default_rng(0)
    id_s, ood_s = rng.normal(1, 1, 50), rng.normal(0, 1, 40)
    for png in (roc_png({"a": (id_s, ood_s), "b": (id_s, ood_s - 1)}, "roc"),
                hist_png({"id": id_s, "ood": ood_s}, "hist", "score", cut=0.5)):
        assert png[:8] == PNG_MAGIC
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and min(image.size) > 100


def test_seed_stats_mean_sample_std_and_values():
    s = seed_stats([1, 2, 4])
    # mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9, over n - 1 = 2: 7/3
    assert s["mean"] == pytest.approx(7 / 3) and s["std"] == pytest.approx(math.sqrt(7 / 3))
    assert s["per_seed"] == [1.0, 2.0, 4.0]
    assert seed_stats([5]) == {"mean": 5.0, "std": 0.0, "per_seed": [5.0]}


def test_paired_stats_differences_signs_and_scale():
    p = paired_stats([0.70, 0.86, 0.75], [0.80, 0.84, 0.82], lower_better=True, scale=100.0)
    # differences -10, +2, -7 points: mean -5, squared deviations 25 + 49 + 4 = 78 over 2: std sqrt(39)
    assert p["per_seed"] == pytest.approx([-10.0, 2.0, -7.0])
    assert p["mean"] == pytest.approx(-5.0) and p["std"] == pytest.approx(math.sqrt(39))
    assert (p["seeds_better"], p["seeds"]) == (2, 3)
    assert paired_stats([0.70, 0.86, 0.75], [0.80, 0.84, 0.82], lower_better=False)["seeds_better"] == 1
    # the difference is taken before the scale (the summary's numbers depend on that order)
    assert paired_stats([0.3], [0.1], True, 100.0)["per_seed"] == [(0.3 - 0.1) * 100.0]


def test_seeds_better_counts_neither_ties_nor_nan():
    assert seeds_better([-1.0, 0.0, 2.0, float("nan")], lower_better=True) == 1
    assert seeds_better([-1.0, 0.0, 2.0, float("nan")], lower_better=False) == 1


def test_markdown_of_seed_statistics():
    assert mean_pm({"mean": 77.0, "std": 8.1854, "per_seed": [70, 86, 75]}) == "77.00 ± 8.19"
    assert mean_pm({"mean": 77.0, "std": 0.0, "per_seed": [77]}) == "77.00"  # one seed: no spread to show
    assert paired_pm({"mean": -5.0, "std": math.sqrt(39), "seeds_better": 2, "seeds": 3}) == "-5.00 ± 6.24 (2/3)"
    assert paired_pm({"mean": 1.5, "std": 0.0, "seeds_better": 1, "seeds": 1}) == "+1.50 ± 0.00 (1/1)"
    assert markdown_table(["a", "b"], [["1", "2"], ["3", "4"]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |"
    assert markdown_table(["a"], []) == "| a |\n|---|"
