"""GenFusion's repair schedule against a re-enactment of the official control flow (TrainManager.run_with_repair
and train), and the repaired views' weight function."""

from __future__ import annotations

import math

import pytest

from gfbench.methods.genfusion.schedule import RepairSchedule


def official_run(start, every, until, iterations, lambda_reg):
    """The official loop's bookkeeping only: (iterations after which a round ran, {iteration: weight})."""
    rounds, weights = [], {}
    sample_steps = [0] + list(range(start, until + 1, every))

    def train(first, last):
        for iteration in range(first + 1, last + 1):
            if start < iteration < until:
                weights[iteration] = lambda_reg * math.sin((iteration - start) / (until - start) * math.pi)

    for i in range(len(sample_steps) - 1):
        start_iter, end_iter = sample_steps[i], sample_steps[i + 1]
        if start_iter >= until:
            break
        train(start_iter, min(end_iter, iterations))
        if end_iter >= iterations:
            break
        rounds.append(end_iter)
    if sample_steps[-1] < iterations:
        train(sample_steps[-1], iterations)
    return rounds, weights


CASES = [
    (3000, 1000, 7000, 7000, 0.5),  # masked script (diffusion_until left at its default 7000)
    (1000, 1000, 7000, 7000, 1.0),  # sparse script; the paper's 1000-step warm-up
    (5000, 4000, 30000, 26000, 1.0),  # scene-completion script: until beyond the last step
    (100, 100, 300, 300, 0.5),  # a quick CPU schedule
    (100, 70, 300, 300, 1.0),  # until not on the grid
]


@pytest.mark.parametrize("start, every, until, steps, lambda_reg", CASES)
def test_rounds_and_weights_match_the_official_loop(start, every, until, steps, lambda_reg):
    schedule = RepairSchedule(start=start, every=every, until=until, steps=steps, lambda_reg=lambda_reg)
    rounds, weights = official_run(start, every, until, steps, lambda_reg)
    assert schedule.rounds() == rounds
    for step in range(steps):  # gfbench step s is the code's iteration s + 1
        assert schedule.weight(step) == pytest.approx(weights.get(step + 1, 0.0), abs=1e-15), step


def test_masked_script_rounds_and_round_indices():
    schedule = RepairSchedule(start=3000, every=1000, until=7000, steps=7000, lambda_reg=0.5)
    assert schedule.rounds() == [3000, 4000, 5000, 6000]
    assert [schedule.round_index(n) for n in (2999, 3000, 4000, 6000, 7000)] == [None, 0, 1, 3, None]


def test_weight_rises_from_zero_peaks_half_way_and_falls_back():
    schedule = RepairSchedule(start=1000, every=1000, until=7000, steps=7000, lambda_reg=0.8)
    assert schedule.weight(998) == 0.0  # iteration 999: warm-up
    assert schedule.weight(999) == 0.0  # iteration 1000: the round has just run, sin(0)
    assert schedule.weight(1000) == pytest.approx(0.8 * math.sin(math.pi / 6000))
    assert schedule.weight(3999) == pytest.approx(0.8)  # iteration 4000, half way
    assert schedule.weight(5999) == pytest.approx(schedule.weight(1999))  # symmetric about the peak
    assert schedule.weight(6999) == 0.0  # iteration 7000 = until


def test_from_config_and_bad_numbers():
    config = {"repair_start": 1000, "repair_every": 1000, "repair_until": 7000, "steps": 7000, "lambda_reg": 1.0}
    assert RepairSchedule.from_config(config).rounds() == [1000, 2000, 3000, 4000, 5000, 6000]
    with pytest.raises(KeyError, match="repair_every"):
        RepairSchedule.from_config({k: v for k, v in config.items() if k != "repair_every"})
    with pytest.raises(ValueError, match="below repair_until"):
        RepairSchedule(start=7000, every=1000, until=7000, steps=7000, lambda_reg=1.0)
    with pytest.raises(ValueError, match="repair_every"):
        RepairSchedule(start=0, every=0, until=7000, steps=7000, lambda_reg=1.0)
