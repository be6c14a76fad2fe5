import math

import pytest
import torch

from rlloom.plugins.schedules import Constant, Cosine, CosineHalf, Exponential, Linear
from rlloom.registry import get_registry

SQRT_HALF = math.sqrt(0.5)


@pytest.mark.parametrize(
    "name,factory",
    [
        ("constant", Constant),
        ("linear", Linear),
        ("cosine", Cosine),
        ("cosine_half", CosineHalf),
        ("exponential", Exponential),
    ],
)
def test_registered(name, factory):
    assert get_registry().get("schedule", name).factory is factory


@pytest.mark.parametrize(
    "make",
    [
        lambda: Exponential(gamma=0.0),
        lambda: Exponential(gamma=1.5),
        lambda: Constant(warmup_steps=-1),
        lambda: Linear(warmup_steps=2.5),
        lambda: Linear(min_ratio=-0.1),
        lambda: Cosine(min_ratio=1.1),
        lambda: CosineHalf(min_ratio=2.0),
    ],
)
def test_bad_parameters(make):
    with pytest.raises(ValueError):
        make()


# Hand values at t = 0, T/2, T and past T, with T = total_steps = 10 and no warmup.
@pytest.mark.parametrize(
    "schedule,expected",
    [
        (Constant(), [1.0, 1.0, 1.0, 1.0]),
        # 1 − t/T: 1, 1 − 5/10, 0, clipped at t = T
        (Linear(), [1.0, 0.5, 0.0, 0.0]),
        # m + (1 − m)(1 − t/T) with m = 0.1: 1, 0.1 + 0.9·0.5 = 0.55, 0.1
        (Linear(min_ratio=0.1), [1.0, 0.55, 0.1, 0.1]),
        # cos(πt/2T): cos 0 = 1, cos(π/4) = √½, cos(π/2) = 0
        (Cosine(), [1.0, SQRT_HALF, 0.0, 0.0]),
        # 0.2 + 0.8·cos(πt/2T)
        (Cosine(min_ratio=0.2), [1.0, 0.2 + 0.8 * SQRT_HALF, 0.2, 0.2]),
        # ½(1 + cos(πt/T)): 1, ½(1 + 0) = 0.5, ½(1 − 1) = 0
        (CosineHalf(), [1.0, 0.5, 0.0, 0.0]),
        (CosineHalf(min_ratio=0.1), [1.0, 0.55, 0.1, 0.1]),
        # 0.5^t: 1, 1/32, 1/1024, 1/4096 (not bounded by T)
        (Exponential(gamma=0.5), [1.0, 1 / 32, 1 / 1024, 1 / 4096]),
        (Exponential(gamma=1.0), [1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_hand_values(schedule, expected):
    got = [schedule(step, 10) for step in (0, 5, 10, 12)]
    assert got == pytest.approx(expected, abs=1e-12)


def test_warmup_then_linear():
    sched = Linear(warmup_steps=4)
    # Warmup (step + 1)/4 for steps 0..3; then t = step − 4 over T = 14 − 4 = 10:
    # step 4 → 1, step 9 → 1 − 5/10 = 0.5, step 14 → 0.
    got = [sched(s, 14) for s in (0, 1, 2, 3, 4, 9, 14)]
    assert got == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.5, 0.0])


def test_warmup_then_exponential():
    sched = Exponential(gamma=0.5, warmup_steps=2)
    # (step + 1)/2 for steps 0, 1; then 0.5^(step − 2): step 2 → 1, step 4 → 0.25.
    assert [sched(s, 100) for s in (0, 1, 2, 4)] == pytest.approx([0.5, 1.0, 1.0, 0.25])


@pytest.mark.parametrize("factory", [Constant, Linear, Cosine, CosineHalf, Exponential])
def test_warmup_longer_than_run(factory):
    # 3 steps under a 5-step warmup: (step + 1)/5 throughout.
    sched = factory(warmup_steps=5)
    assert [sched(s, 3) for s in range(3)] == pytest.approx([0.2, 0.4, 0.6])


@pytest.mark.parametrize("factory", [Linear, Cosine, CosineHalf])
def test_decays_are_monotone_within_bounds(factory):
    sched = factory(min_ratio=0.25, warmup_steps=3)
    values = [sched(s, 50) for s in range(3, 51)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[0] == 1.0 and values[-1] == pytest.approx(0.25)


def test_lambda_lr_follows_schedule():
    base_lr, total = 0.1, 6
    sched = get_registry().build("schedule", {"name": "cosine_half", "warmup_steps": 2})
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base_lr)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: sched(step, total))
    # By hand: warmup 1/2, 2/2; then ½(1 + cos(πt/4)) for t = 0, 1, 2, 3.
    multipliers = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        param.grad = torch.ones(1)
        opt.step()
        lr_sched.step()
    assert seen == pytest.approx([base_lr * m for m in multipliers])
