import math

import pytest
import torch

from rlloom.batch import SFTBatch
from rlloom.plugins.sft import NLL
from rlloom.registry import get_registry


def make_batch(input_ids, loss_mask):
    ids = torch.tensor(input_ids)
    return SFTBatch(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=torch.tensor(loss_mask))


def token_logprobs(logits, input_ids):
    """log π(input_ids[b,t]) from logits aligned with the tokens, by log_softmax + gather."""
    return torch.log_softmax(logits, dim=-1).gather(-1, input_ids.unsqueeze(-1)).squeeze(-1)


# A tiny vocabulary, V = 3. Position 0 predicts nothing (loss_mask 0); at positions 1 and 2
# the distributions are chosen so that every probability is a simple fraction:
#   t=1: π = [1/4, 1/2, 1/4], target 1 → p_t = 1/2
#   t=2: π = [1/2, 1/4, 1/4], target 2 → p_t = 1/4
PROBS = [[1 / 3, 1 / 3, 1 / 3], [0.25, 0.5, 0.25], [0.5, 0.25, 0.25]]
IDS = [[0, 1, 2]]
LOSS_MASK = [[0, 1, 1]]


def tiny():
    logits = torch.tensor([[[math.log(p) for p in row] for row in PROBS]], dtype=torch.float64)
    batch = make_batch(IDS, LOSS_MASK)
    return token_logprobs(logits, batch.input_ids), batch, logits


def test_plain_nll_hand_values():
    logprobs, batch, _ = tiny()
    out = NLL()(logprobs, batch)
    # −log π(y_t): t=1 → −log 1/2 = log 2; t=2 → −log 1/4 = log 4; t=0 masked → 0.
    expected = [[0.0, math.log(2), math.log(4)]]
    torch.testing.assert_close(out.loss, torch.tensor(expected, dtype=torch.float64))
    assert out.mask is batch.loss_mask
    # Mean over the two loss tokens: (log 2 + log 4) / 2 = 1.5 log 2.
    assert out.metrics["sft/nll"].item() == pytest.approx(1.5 * math.log(2))
    assert "sft/token_accuracy" not in out.metrics


def test_label_smoothing_hand_values():
    logprobs, batch, logits = tiny()
    eps, vocab = 0.3, 3
    out = NLL(label_smoothing=eps)(logprobs, batch, logits)
    # ℓ_t = −Σ_v q(v) log π(v), q(v) = (1−ε)·[v = y_t] + ε/V, summed in plain Python.
    expected = [0.0]
    for t in (1, 2):
        y = IDS[0][t]
        q = [(1 - eps) * (v == y) + eps / vocab for v in range(vocab)]
        expected.append(-sum(q[v] * math.log(PROBS[t][v]) for v in range(vocab)))
    torch.testing.assert_close(out.loss, torch.tensor([expected], dtype=torch.float64))
    # The metric stays the plain NLL.
    assert out.metrics["sft/nll"].item() == pytest.approx(1.5 * math.log(2))


def test_focal_hand_values():
    logprobs, batch, _ = tiny()
    gamma, alpha = 2.0, 0.5
    out = NLL(focal_gamma=gamma, focal_alpha=alpha)(logprobs, batch)
    # −α (1−p_t)^γ log p_t: t=1: 0.5·(1/2)²·log 2 = log 2 / 8; t=2: 0.5·(3/4)²·log 4 = 9 log 4 / 32.
    expected = [[0.0, math.log(2) / 8, 9 * math.log(4) / 32]]
    torch.testing.assert_close(out.loss, torch.tensor(expected, dtype=torch.float64))


def test_focal_with_label_smoothing_weights_the_smoothed_loss():
    logprobs, batch, logits = tiny()
    eps, gamma, alpha, vocab = 0.2, 1.5, 0.25, 3
    out = NLL(label_smoothing=eps, focal_gamma=gamma, focal_alpha=alpha)(logprobs, batch, logits)
    expected = [0.0]
    for t in (1, 2):
        y = IDS[0][t]
        q = [(1 - eps) * (v == y) + eps / vocab for v in range(vocab)]
        smoothed = -sum(q[v] * math.log(PROBS[t][v]) for v in range(vocab))
        expected.append(alpha * (1 - PROBS[t][y]) ** gamma * smoothed)
    torch.testing.assert_close(out.loss, torch.tensor([expected], dtype=torch.float64))


def random_case(b=11, length=5, vocab=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, length, vocab, generator=g, dtype=dtype) * 2
    ids = torch.randint(vocab, (b, length), generator=g)
    mask = (torch.rand(b, length, generator=g) > 0.3).long()
    mask[:, 0] = 0
    batch = SFTBatch(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=mask)
    return logits, batch


def test_label_smoothing_matches_log_softmax_formula():
    # With q = (1−ε)·onehot(y_t) + ε/V, ℓ_t = −Σ_v q(v) log π(v) = −(1−ε) log π(y_t) − ε·(1/V)
    # Σ_v log π(v), and (1/V) Σ_v log π(v) = mean_v z_v − logsumexp(z): NLL takes this last term
    # from the logits chunk by chunk; here it is checked against a full log_softmax.
    # b = 11 rows spans two chunks of 8.
    logits, batch = random_case()
    eps, vocab = 0.1, logits.shape[-1]
    logp = torch.log_softmax(logits, dim=-1)
    q = (1 - eps) * torch.nn.functional.one_hot(batch.input_ids, vocab) + eps / vocab
    expected = -(q * logp).sum(-1) * batch.loss_mask
    out = NLL(label_smoothing=eps)(token_logprobs(logits, batch.input_ids), batch, logits)
    torch.testing.assert_close(out.loss, expected)


def test_label_smoothing_bfloat16_logits_computed_in_float32():
    logits, batch = random_case(dtype=torch.float32)
    eps = 0.1
    low = logits.to(torch.bfloat16)
    # Reference: the same bf16 logits, upcast, through the log_softmax formula.
    logp = torch.log_softmax(low.float(), dim=-1)
    q = (1 - eps) * torch.nn.functional.one_hot(batch.input_ids, logits.shape[-1]) + eps / logits.shape[-1]
    expected = -(q * logp).sum(-1) * batch.loss_mask
    out = NLL(label_smoothing=eps)(token_logprobs(low.float(), batch.input_ids), batch, low)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)


def test_focal_gamma0_alpha1_equals_plain():
    logits, batch = random_case()
    logprobs = token_logprobs(logits, batch.input_ids)
    torch.testing.assert_close(NLL(focal_gamma=0.0, focal_alpha=1.0)(logprobs, batch).loss, NLL()(logprobs, batch).loss)


def test_focal_matches_independent_formula():
    logits, batch = random_case()
    logprobs = token_logprobs(logits, batch.input_ids)
    gamma, alpha = 2.0, 0.25
    expected = -alpha * (1 - logprobs.exp()) ** gamma * logprobs * batch.loss_mask
    torch.testing.assert_close(NLL(focal_gamma=gamma, focal_alpha=alpha)(logprobs, batch).loss, expected)


def test_gradient_is_minus_grad_logprob():
    # SFT NLL gradient: ∇L = −Σ_t ∇ log π(y_t). With respect to the logits z of one
    # position, −∇_z log softmax(z)_y = softmax(z) − onehot(y); masked positions get 0.
    logits, batch = random_case()
    logits.requires_grad_(True)
    NLL()(token_logprobs(logits, batch.input_ids), batch).loss.sum().backward()
    onehot = torch.nn.functional.one_hot(batch.input_ids, logits.shape[-1]).double()
    expected = (torch.softmax(logits.detach(), -1) - onehot) * batch.loss_mask.unsqueeze(-1)
    torch.testing.assert_close(logits.grad, expected)
    # And with respect to the token log-probs themselves: −1 on loss tokens.
    logprobs = token_logprobs(logits.detach(), batch.input_ids).requires_grad_(True)
    NLL()(logprobs, batch).loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, -batch.loss_mask.double())


def test_gradcheck_smoothing_and_focal():
    logits, batch = random_case(b=3, length=4, vocab=5)
    loss = NLL(label_smoothing=0.2, focal_gamma=1.5, focal_alpha=0.5)

    def f(z):
        return loss(token_logprobs(z, batch.input_ids), batch, z).loss

    assert torch.autograd.gradcheck(f, (logits.requires_grad_(True),))


def test_token_accuracy():
    # Argmax of π per position: t=1 → 1 (target 1, right); t=2 → 0 (target 2, wrong). 1 of 2.
    logprobs, batch, logits = tiny()
    out = NLL()(logprobs, batch, logits)
    assert out.metrics["sft/token_accuracy"].item() == pytest.approx(0.5)


def test_needs_logits_follows_label_smoothing():
    assert NLL.needs_logits is False
    assert NLL().needs_logits is False
    assert NLL(focal_gamma=2.0).needs_logits is False
    assert NLL(label_smoothing=0.1).needs_logits is True
    logprobs, batch, _ = tiny()
    with pytest.raises(ValueError, match="logits"):
        NLL(label_smoothing=0.1)(logprobs, batch)


def test_registered():
    assert get_registry().get("policy_loss", "nll").factory is NLL


@pytest.mark.parametrize(
    "params",
    [{"label_smoothing": -0.1}, {"label_smoothing": 1.0}, {"focal_gamma": -1.0}, {"focal_alpha": 0.0}],
)
def test_bad_params(params):
    with pytest.raises(ValueError):
        NLL(**params)
