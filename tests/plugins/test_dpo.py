import math

import pytest
import torch

from rlloom.batch import PreferenceBatch
from rlloom.errors import RegistryError
from rlloom.plugins.dpo import IPO, ConservativeDPO, Hinge, RobustDPO, SigmoidDPO
from rlloom.registry import get_registry

# Two pairs, L = 4. Token log-probs of the chosen rows, then the rejected rows; masks mark the
# completion tokens (position 0 is prompt, padding at the end).
CHOSEN_LP = [[-9.0, -0.5, -1.0, -7.0], [-9.0, -0.2, -0.3, -0.4]]
CHOSEN_MASK = [[0, 1, 1, 0], [0, 1, 1, 1]]
REJECTED_LP = [[-9.0, -1.5, -0.5, -2.0], [-9.0, -0.1, -7.0, -7.0]]
REJECTED_MASK = [[0, 1, 1, 1], [0, 1, 0, 0]]
REF_CHOSEN = [-1.2, -1.5]
REF_REJECTED = [-3.5, -0.3]
BETA = 0.5


def make_batch(ref=True):
    def t(x):
        return torch.tensor(x)

    return PreferenceBatch(
        chosen_input_ids=torch.zeros(2, 4, dtype=torch.long),
        chosen_attention_mask=torch.ones(2, 4, dtype=torch.long),
        chosen_loss_mask=t(CHOSEN_MASK),
        rejected_input_ids=torch.zeros(2, 4, dtype=torch.long),
        rejected_attention_mask=torch.ones(2, 4, dtype=torch.long),
        rejected_loss_mask=t(REJECTED_MASK),
        ref_chosen_logps=t(REF_CHOSEN) if ref else None,
        ref_rejected_logps=t(REF_REJECTED) if ref else None,
    )


def make_logprobs():
    return torch.tensor(CHOSEN_LP + REJECTED_LP, dtype=torch.float64)


def seq(lp, mask, average):
    """Σ_t lp_t·mask_t (or the mean over masked tokens), in plain Python."""
    total = sum(x * m for x, m in zip(lp, mask))
    return total / sum(mask) if average else total


def margins(average=False, reference_free=False):
    """h_i = (log π_w − log π_ref_w) − (log π_l − log π_ref_l) per pair, in plain Python."""
    out = []
    for i in range(2):
        count_w, count_l = sum(CHOSEN_MASK[i]), sum(REJECTED_MASK[i])
        ref_w = 0.0 if reference_free else REF_CHOSEN[i] / (count_w if average else 1)
        ref_l = 0.0 if reference_free else REF_REJECTED[i] / (count_l if average else 1)
        out.append(
            (seq(CHOSEN_LP[i], CHOSEN_MASK[i], average) - ref_w)
            - (seq(REJECTED_LP[i], REJECTED_MASK[i], average) - ref_l)
        )
    return out


def log_sigmoid(x):
    return -math.log(1 + math.exp(-x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def per_pair(out):
    assert out.loss.shape == (2, 1)
    torch.testing.assert_close(out.mask, torch.ones(2, 1, dtype=out.loss.dtype))
    return out.loss[:, 0].tolist()


def test_margins_by_hand():
    # Pair 0: chosen −0.5−1.0 = −1.5, rejected −1.5−0.5−2.0 = −4.0; h = (−1.5+1.2) − (−4.0+3.5) = 0.2.
    # Pair 1: chosen −0.9, rejected −0.1; h = (−0.9+1.5) − (−0.1+0.3) = 0.4.
    assert margins() == pytest.approx([0.2, 0.4])


def test_dpo_loss_and_metrics():
    out = SigmoidDPO(beta=BETA)(make_logprobs(), make_batch())
    h = margins()
    assert per_pair(out) == pytest.approx([-log_sigmoid(BETA * x) for x in h])
    m = out.metrics
    rewards_w = [BETA * (seq(CHOSEN_LP[i], CHOSEN_MASK[i], False) - REF_CHOSEN[i]) for i in range(2)]
    rewards_l = [BETA * (seq(REJECTED_LP[i], REJECTED_MASK[i], False) - REF_REJECTED[i]) for i in range(2)]
    # rewards_w = [0.5·(−0.3), 0.5·0.6] = [−0.15, 0.3]; rewards_l = [0.5·(−0.5), 0.5·0.2] = [−0.25, 0.1].
    assert rewards_w == pytest.approx([-0.15, 0.3]) and rewards_l == pytest.approx([-0.25, 0.1])
    assert m["dpo/rewards_chosen"].item() == pytest.approx(0.075)
    assert m["dpo/rewards_rejected"].item() == pytest.approx(-0.075)
    assert m["dpo/margin"].item() == pytest.approx(0.15)
    assert m["dpo/accuracy"].item() == pytest.approx(1.0)
    assert m["logps/chosen"].item() == pytest.approx((-1.5 - 0.9) / 2)
    assert m["logps/rejected"].item() == pytest.approx((-4.0 - 0.1) / 2)
    assert m["loss/preference"].item() == pytest.approx(sum(-log_sigmoid(BETA * x) for x in h) / 2)
    assert m["loss/sft"].item() == pytest.approx((1.5 + 0.9) / 2)


def test_accuracy_counts_wrongly_ranked_pairs():
    # Swap the reference of pair 1 so its margin is negative: h = (−0.9+0.3) − (−0.1+1.5) = −2.0.
    batch = make_batch()
    batch.ref_chosen_logps = torch.tensor([-1.2, -0.3])
    batch.ref_rejected_logps = torch.tensor([-3.5, -1.5])
    out = SigmoidDPO(beta=BETA)(make_logprobs(), batch)
    assert out.metrics["dpo/accuracy"].item() == pytest.approx(0.5)


def test_sigmoid_gradient_matches_analytic_form():
    # d/dh[−log σ(βh)] = −β σ(−βh): the chosen token log-probs of pair i get −β σ(−βh_i) on
    # each completion token, the rejected ones +β σ(−βh_i) (Rafailov et al. 2023, §4): the
    # factor is σ(−βh), not σ(βh); this checks it.
    logprobs = make_logprobs().requires_grad_(True)
    SigmoidDPO(beta=BETA)(logprobs, make_batch()).loss.sum().backward()
    expected = []
    for i, h in enumerate(margins()):
        expected.append([-BETA * sigmoid(-BETA * h) * m for m in CHOSEN_MASK[i]])
    for i, h in enumerate(margins()):
        expected.append([BETA * sigmoid(-BETA * h) * m for m in REJECTED_MASK[i]])
    torch.testing.assert_close(logprobs.grad, torch.tensor(expected, dtype=torch.float64))
    # A σ(+βh) factor would differ: σ(βh) ≠ σ(−βh) for h ≠ 0.
    assert sigmoid(BETA * 0.2) != pytest.approx(sigmoid(-BETA * 0.2))


@pytest.mark.parametrize(
    "loss",
    [
        SigmoidDPO(beta=BETA, sft_weight=0.3),
        IPO(beta=BETA),
        Hinge(beta=BETA),
        ConservativeDPO(beta=BETA, label_smoothing=0.2),
        RobustDPO(beta=BETA, label_smoothing=0.2, length_average=True),
    ],
)
def test_gradcheck(loss):
    batch = make_batch()
    batch.ref_chosen_logps = batch.ref_chosen_logps.double()
    batch.ref_rejected_logps = batch.ref_rejected_logps.double()
    # Hinge: β·h = 0.1, 0.2 < 1, away from the kink.
    assert torch.autograd.gradcheck(lambda lp: loss(lp, batch).loss, (make_logprobs().requires_grad_(True),))


def test_ipo_hand_values_length_averaged_by_default():
    loss = IPO(beta=BETA)
    assert loss.length_average is True
    # Length-averaged margins: pair 0: (−0.75 + 0.6) − (−4/3 + 3.5/3) = −0.15 + 1/6 = 1/60;
    # pair 1: (−0.3 + 0.5) − (−0.1 + 0.3) = 0. Target 1/(2β) = 1.
    h = margins(average=True)
    assert h == pytest.approx([1 / 60, 0.0])
    assert per_pair(loss(make_logprobs(), make_batch())) == pytest.approx([(1 / 60 - 1) ** 2, 1.0])
    summed = IPO(beta=BETA, length_average=False)(make_logprobs(), make_batch())
    assert per_pair(summed) == pytest.approx([(x - 1) ** 2 for x in margins()])


def test_hinge_hand_values():
    # max(0, 1 − β h): h = [0.2, 0.4] → [0.9, 0.8]; β = 10 → max(0, 1 − 2) = 0, max(0, 1 − 4) = 0.
    assert per_pair(Hinge(beta=BETA)(make_logprobs(), make_batch())) == pytest.approx([0.9, 0.8])
    assert per_pair(Hinge(beta=10.0)(make_logprobs(), make_batch())) == pytest.approx([0.0, 0.0])


def test_cdpo_and_robust_hand_values():
    # cdpo (Mitchell 2023): −(1−ε) log σ(βh) − ε log σ(−βh); robust (rDPO, Chowdhury et al. 2024):
    # ((1−ε)·(−log σ(βh)) − ε·(−log σ(−βh))) / (1 − 2ε); both from the plain-Python margins h.
    eps = 0.2
    h = margins()
    conservative = [-(1 - eps) * log_sigmoid(BETA * x) - eps * log_sigmoid(-BETA * x) for x in h]
    unbiased = [((1 - eps) * -log_sigmoid(BETA * x) - eps * -log_sigmoid(-BETA * x)) / (1 - 2 * eps) for x in h]
    # Pair 0 by hand: βh = 0.1, −log σ(0.1) = 0.644397, −log σ(−0.1) = 0.744397;
    # cdpo = 0.8·0.644397 + 0.2·0.744397 = 0.664397, robust = (0.515517 − 0.148879)/0.6 = 0.611063.
    assert conservative[0] == pytest.approx(0.664397, abs=1e-6)
    assert unbiased[0] == pytest.approx(0.611063, abs=1e-6)
    out = ConservativeDPO(beta=BETA, label_smoothing=eps)(make_logprobs(), make_batch())
    assert per_pair(out) == pytest.approx(conservative)
    out = RobustDPO(beta=BETA, label_smoothing=eps)(make_logprobs(), make_batch())
    assert per_pair(out) == pytest.approx(unbiased)


@pytest.mark.parametrize("cls", [ConservativeDPO, RobustDPO])
def test_noisy_label_losses_with_zero_eps_equal_dpo(cls):
    dpo = SigmoidDPO(beta=BETA)(make_logprobs(), make_batch())
    torch.testing.assert_close(cls(beta=BETA, label_smoothing=0.0)(make_logprobs(), make_batch()).loss, dpo.loss)


def test_length_average():
    out = SigmoidDPO(beta=BETA, length_average=True)(make_logprobs(), make_batch())
    assert per_pair(out) == pytest.approx([-log_sigmoid(BETA * x) for x in margins(average=True)])
    # Mean chosen log-probs: pair 0 (−0.5−1.0)/2 = −0.75, pair 1 (−0.2−0.3−0.4)/3 = −0.3.
    assert out.metrics["logps/chosen"].item() == pytest.approx((-0.75 - 0.3) / 2)


def test_reference_free_ignores_missing_reference():
    out = SigmoidDPO(beta=BETA, reference_free=True)(make_logprobs(), make_batch(ref=False))
    # h = log π_w − log π_l: pair 0: −1.5 + 4.0 = 2.5; pair 1: −0.9 + 0.1 = −0.8.
    h = margins(reference_free=True)
    assert h == pytest.approx([2.5, -0.8])
    assert per_pair(out) == pytest.approx([-log_sigmoid(BETA * x) for x in h])
    # Given reference log-probs are ignored too.
    torch.testing.assert_close(
        SigmoidDPO(beta=BETA, reference_free=True)(make_logprobs(), make_batch()).loss, out.loss
    )


@pytest.mark.parametrize("cls", [SigmoidDPO, IPO, Hinge, ConservativeDPO, RobustDPO])
def test_sft_weight_adds_weighted_chosen_nll(cls):
    w = 0.7
    base = cls(beta=BETA)(make_logprobs(), make_batch())
    mixed = cls(beta=BETA, sft_weight=w)(make_logprobs(), make_batch())
    average = cls is IPO
    nll = [-seq(CHOSEN_LP[i], CHOSEN_MASK[i], average) for i in range(2)]
    added = (mixed.loss - base.loss)[:, 0].tolist()
    assert added == pytest.approx([w * x for x in nll])
    assert mixed.metrics["loss/sft"].item() == pytest.approx(sum(nll) / 2)


@pytest.mark.parametrize("cls", [SigmoidDPO, IPO, Hinge, ConservativeDPO, RobustDPO])
def test_missing_reference_raises(cls):
    with pytest.raises(ValueError, match="reference log-probs missing"):
        cls(beta=BETA)(make_logprobs(), make_batch(ref=False))


def test_wrong_logprob_rows_raise():
    with pytest.raises(ValueError, match=r"\[2N,L\]"):
        SigmoidDPO()(make_logprobs()[:2], make_batch())


def test_registered():
    registry = get_registry()
    # The field's names: ``robust`` is rDPO (TRL's loss_type="robust"), ``cdpo`` conservative DPO.
    expected = {"dpo": SigmoidDPO, "ipo": IPO, "hinge": Hinge, "robust": RobustDPO, "cdpo": ConservativeDPO}
    for name, cls in expected.items():
        assert registry.get("policy_loss", name).factory is cls
    with pytest.raises(RegistryError):
        registry.get("policy_loss", "rdpo")


@pytest.mark.parametrize(
    "cls, params",
    [
        (SigmoidDPO, {"beta": 0.0}),
        (SigmoidDPO, {"beta": -1.0}),
        (IPO, {"beta": float("inf")}),
        (Hinge, {"sft_weight": -0.1}),
        (ConservativeDPO, {"label_smoothing": 0.5}),
        (RobustDPO, {"label_smoothing": -0.1}),
        (RobustDPO, {"label_smoothing": 0.5}),
    ],
)
def test_bad_params(cls, params):
    with pytest.raises(ValueError):
        cls(**params)
