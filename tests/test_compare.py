"""Specification of refdiff.compare and ``refdiff compare``: one command trains the four families and prints one
table with every metric finite where it is defined; its flags are checked before any work; the parts it is built
of (the time-budgeted diffusion loop, the loss regress, the matched parameter counts) hold their definitions."""

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff.cli import main
from refdiff.compare import CONFIGS, FAMILIES, GUIDANCE, TRAIN, loss_regress, param_counts, train_diffusion
from refdiff.digits_eval import digit_split
from refdiff.train import train_step
from refdiff.train_state import init_state

# A comparison in a few seconds: half a second of training each, 4 samples per class, 2 DDIM steps, a bound of
# 3 steps, a 2-sample IWAE bound.
TINY = ("--seconds", "0.5", "--per-class", "4", "--sample-steps", "2", "--vlb-steps", "3", "--iwae-k", "2")
METRICS = ("fd", "precision", "recall", "class_fraction", "inception_score", "sample_seconds_per_image",
           "sample_cpu_seconds_per_image", "worst_class_recall")


def test_compare_prints_one_table_with_every_family_and_writes_finite_json(tmp_path, capsys):
    """`refdiff compare` with a tiny budget exits 0, prints a table row per family (diffusion one per guidance
    scale) and writes compare.json: every family, each metric finite, bits/dim finite for diffusion, VAE and flow
    and None for the GAN, the loss regress in [0, 1] (None for the GAN), at least one step each within about the
    budget; and compare_samples.png."""
    assert main(["compare", "--out", str(tmp_path), *TINY]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "compare.json").read_text())
    assert tuple(report["families"]) == FAMILIES
    rows = [f"diffusion, guidance {g:g}" for g in GUIDANCE] + ["gan", "vae", "flow"]
    for row in rows:
        assert any(line.startswith(row) for line in printed.splitlines()), (row, printed)
    for name, family in report["families"].items():
        assert family["train_steps"] >= 1 and 0.5 <= family["train_cpu_seconds"] < 5.0
        assert family["params"] == param_counts(name)[0]
        assert (family["bits_per_dim"] is None) == (name == "gan")
        if name != "gan":
            assert math.isfinite(family["bits_per_dim"]["bits_per_dim"]) and 0 <= family["loss_regress"] <= 1
        for row, scores in family["rows"].items():
            assert all(math.isfinite(scores[k]) for k in METRICS), (row, scores)
            assert len(scores["per_class"]) == 10
    assert sorted(r for f in report["families"].values() for r in f["rows"]) == sorted(rows)
    assert (tmp_path / "compare_samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flags, named", [
    (("--seconds", "0"), "--seconds"), (("--seconds", "-1"), "--seconds"), (("--seconds", "nan"), "--seconds"),
    (("--per-class", "3"), "--per-class"), (("--sample-steps", "0"), "--sample-steps"),
    (("--vlb-steps", "-1"), "--vlb-steps"), (("--vlb-steps", "1001"), "--vlb-steps"), (("--iwae-k", "0"), "--iwae-k"),
    (("--seed", "-1"), "--seed")])
def test_compare_names_a_bad_flag_before_any_work(tmp_path, capsys, flags, named):
    """A flag out of its range ends `refdiff compare` with status 1 and one error line that names the flag, before
    anything is trained or written (the --out folder is not made)."""
    out = tmp_path / "out"
    assert main(["compare", "--out", str(out), *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"refdiff compare: error: {named} must") and err.count("\n") == 1
    assert not out.exists()


def test_compare_refuses_an_out_that_is_a_file(tmp_path, capsys):
    """--out naming a file is an error naming --out, before any work."""
    (tmp_path / "f").write_text("")
    assert main(["compare", "--out", str(tmp_path / "f"), "--seconds", "1"]) == 1
    assert "--out" in capsys.readouterr().err


def test_the_families_parameter_counts_are_matched_within_a_quarter():
    """The four configs train between 35k and 50k parameters each, the largest at most 1.25 times the smallest (a
    GAN's count is both its networks', a VAE's its encoder's and decoder's; the generator or decoder alone
    samples)."""
    counts = {name: param_counts(name) for name in FAMILIES}
    trained = [c[0] for c in counts.values()]
    assert all(35_000 <= n <= 50_000 for n in trained) and max(trained) / min(trained) <= 1.25, counts
    assert all(counts[n][1] < counts[n][0] for n in ("gan", "vae")) and all(counts[n][0] == counts[n][1]
                                                                           for n in ("diffusion", "flow"))


def test_the_time_budgeted_diffusion_loop_is_train_step_repeated():
    """train_diffusion with a budget it does not reach runs train_cfg.steps steps of refdiff.train.train_step: the
    same losses and the same EMA as calling train_step that many times on a fresh state; with a budget that runs out
    at once it stops after one step."""
    x, _, y, _ = digit_split()
    cfg, model_cfg = dataclasses.replace(TRAIN["diffusion"], steps=3, warmup_steps=0), CONFIGS["diffusion"]
    run = train_diffusion(cfg, model_cfg, x, y, seconds=1e6, clock="wall")
    state, schedule = init_state(cfg, model_cfg), cfg.schedule_obj()
    expected = [train_step(cfg, model_cfg, schedule, state, x, y) for _ in range(3)]
    assert run.losses == expected and run.info["steps_done"] == 3
    assert all(np.array_equal(run.params[k], state.ema[k]) for k in state.ema)
    assert train_diffusion(cfg, model_cfg, x, y, seconds=1e-9).info["steps_done"] == 1


@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=200))
def test_loss_regress_lies_in_zero_one(losses):
    """loss_regress is in [0, 1] for any loss log."""
    assert 0.0 <= loss_regress(losses) <= 1.0


def test_loss_regress_is_zero_at_the_best_end_and_one_at_the_worst():
    """A falling loss (and a flat one) ends at its best window: 0; a loss that falls and climbs back above its
    start ends at its worst: 1; one that gives back half of its range: 0.5."""
    falling = list(np.linspace(2.0, 1.0, 100))
    assert loss_regress(falling) == 0.0 and loss_regress([1.0] * 50) == 0.0
    assert loss_regress(falling + list(np.full(20, 3.0))) == 1.0
    assert math.isclose(loss_regress([2.0] * 10 + [1.0] * 80 + [1.5] * 10), 0.5)
