"""Direct preference optimisation and its variants, on sequence log-probs of preference pairs.

L(θ) = L_preference(θ) + w·L_SFT(θ), with the DPO loss (DPO, Rafailov et al. 2023, Eq. 7)

    L_preference = −E log σ(β·h),  h = log π_θ(y_w|x)/π_ref(y_w|x) − log π_θ(y_l|x)/π_ref(y_l|x),

and L_SFT = −Σ_t log π_θ(y_w,t | x, y_w,<t), the NLL of the chosen completion (the DPO + NLL loss
of Pang et al. 2024, "Iterative Reasoning Preference Optimization"). The SFT weight w
(``sft_weight``) is a parameter of its own, separate from the preference temperature β. The
variants below keep h and change only the function of h.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from rlloom.errors import ParameterError
from rlloom import hookimpl
from rlloom.batch import PreferenceBatch
from rlloom.kinds import LossOutput


class PreferenceLoss(ABC):
    """Shared machinery of the DPO family; a subclass gives only ``preference(h) -> [N]``.

    Call: ``loss(logprobs, batch) -> LossOutput`` with ``batch`` a ``PreferenceBatch`` of N pairs
    and ``logprobs`` [2N,L] the policy's token log-probs of the chosen rows (0..N−1) stacked over
    the rejected rows (N..2N−1), masked by ``batch.chosen_loss_mask`` / ``batch.rejected_loss_mask``
    [N,L]. The sequence log-prob is log π(y|x) = Σ_t log π(y_t|·)·mask_t, or its mean over the
    completion tokens when ``length_average``; the reference sums ``batch.ref_*_logps`` [N] are
    then divided by the same token counts. ``reference_free`` treats π_ref as a uniform constant
    (its log-probs are taken as 0), so h = log π(y_w|x) − log π(y_l|x).

    The per-pair loss is preference(h) + ``sft_weight``·(−log π(y_w|x)) (the chosen sequence NLL,
    the per-token mean NLL when ``length_average``), returned as ``loss`` [N,1] with ``mask`` ones
    [N,1]. Metrics (means over pairs): ``dpo/rewards_chosen`` β(log π(y_w|x) − log π_ref(y_w|x)),
    ``dpo/rewards_rejected``, ``dpo/margin`` (their difference), ``dpo/accuracy`` (fraction of
    pairs with rewards_chosen > rewards_rejected), ``logps/chosen``, ``logps/rejected``,
    ``loss/preference`` and ``loss/sft`` (the unweighted chosen NLL).

    Peer convention for the SFT term: TRL (``rpo_alpha``=α, or the ``sft`` loss type) adds α
    times one token mean over all chosen tokens of the batch, Σ_i Σ_t NLL / Σ_i |y_w,i|; here it
    is summed per pair. With every chosen completion n tokens long, ``sft_weight: α/n`` gives
    TRL's term.
    """

    requires: ClassVar[set[str]] = set()
    needs_logits: ClassVar[bool] = False
    consumes: ClassVar[str] = "preference"

    def __init__(
        self,
        beta: float = 0.1,
        sft_weight: float = 0.0,
        length_average: bool = False,
        reference_free: bool = False,
    ):
        if not (beta > 0.0 and math.isfinite(beta)):
            raise ParameterError(f"beta must be a finite number > 0, got {beta}")
        if not (sft_weight >= 0.0 and math.isfinite(sft_weight)):
            raise ParameterError(f"sft_weight must be a finite number >= 0, got {sft_weight}")
        self.beta = float(beta)
        self.sft_weight = float(sft_weight)
        self.length_average = bool(length_average)
        self.reference_free = bool(reference_free)

    @abstractmethod
    def preference(self, h: Tensor) -> Tensor:
        """Per-pair preference loss [N] from the log-ratio margin h [N]."""

    def _sequence_logps(self, logprobs: Tensor, mask: Tensor, ref: Tensor | None) -> tuple[Tensor, Tensor]:
        mask = mask.to(logprobs.dtype)
        logps = (logprobs * mask).sum(-1)
        if self.reference_free:
            ref = torch.zeros_like(logps)
        else:
            ref = ref.to(logps)
        if self.length_average:
            count = mask.sum(-1).clamp(min=1)
            logps, ref = logps / count, ref / count
        return logps, ref

    def __call__(self, logprobs: Tensor, batch: PreferenceBatch, logits: Tensor | None = None) -> LossOutput:
        n = len(batch)
        if logprobs.shape != (2 * n, batch.chosen_loss_mask.shape[1]) or (
            batch.rejected_loss_mask.shape != batch.chosen_loss_mask.shape
        ):
            raise ValueError(
                f"preference loss expects logprobs [2N,L] = [{2 * n},{batch.chosen_loss_mask.shape[1]}] "
                f"(chosen rows over rejected rows) and chosen/rejected loss masks [N,L] of one shape; got "
                f"logprobs {list(logprobs.shape)}, chosen_loss_mask {list(batch.chosen_loss_mask.shape)}, "
                f"rejected_loss_mask {list(batch.rejected_loss_mask.shape)}"
            )
        if not self.reference_free and (batch.ref_chosen_logps is None or batch.ref_rejected_logps is None):
            raise ValueError(
                f"{type(self).__name__}: reference log-probs missing (batch.ref_chosen_logps / "
                "batch.ref_rejected_logps are None); compute them with a reference policy or set "
                "reference_free: true"
            )
        chosen, ref_chosen = self._sequence_logps(logprobs[:n], batch.chosen_loss_mask, batch.ref_chosen_logps)
        rejected, ref_rejected = self._sequence_logps(
            logprobs[n:], batch.rejected_loss_mask, batch.ref_rejected_logps
        )
        h = (chosen - ref_chosen) - (rejected - ref_rejected)
        preference = self.preference(h)
        sft = -chosen
        loss = preference + self.sft_weight * sft

        rewards_chosen = self.beta * (chosen - ref_chosen).detach()
        rewards_rejected = self.beta * (rejected - ref_rejected).detach()
        metrics: dict[str, Tensor | float] = {
            "dpo/rewards_chosen": rewards_chosen.mean(),
            "dpo/rewards_rejected": rewards_rejected.mean(),
            "dpo/margin": (rewards_chosen - rewards_rejected).mean(),
            "dpo/accuracy": (rewards_chosen > rewards_rejected).to(h.dtype).mean(),
            "logps/chosen": chosen.detach().mean(),
            "logps/rejected": rejected.detach().mean(),
            "loss/preference": preference.detach().mean(),
            "loss/sft": sft.detach().mean(),
        }
        return LossOutput(loss=loss.unsqueeze(-1), mask=torch.ones_like(loss).unsqueeze(-1), metrics=metrics)


class SigmoidDPO(PreferenceLoss):
    """DPO: −log σ(β·h) on the policy/reference log-ratio margin h (Rafailov et al. 2023).

    DPO, Rafailov et al. 2023, Eq. 7: L = −log σ(β log π(y_w)/π_ref(y_w) − β log π(y_l)/π_ref(y_l)).
    Its gradient is ∂L/∂h = −β σ(−βh), so ∇L = −β σ(−βh)·(∇log π(y_w|x) − ∇log π(y_l|x))
    (Rafailov et al. §4, "What does the DPO update do?"). The factor is σ(−βh), not σ(βh): a
    pair is pushed hardest when the implicit reward ranks it wrongly (h < 0), i.e. σ(−βh) ≈ 1.
    Parameters and shapes: see ``PreferenceLoss``.
    """

    def preference(self, h: Tensor) -> Tensor:
        return -F.logsigmoid(self.beta * h)


class IPO(PreferenceLoss):
    """IPO: (h − 1/(2β))², regressing the log-ratio margin h to 1/(2β) (Azar et al. 2023).

    Azar et al. 2023 ("A General Theoretical Paradigm to Understand Learning from Human
    Preferences", the empirical IPO loss): (h − τ⁻¹/2)² with τ = β. ``length_average``
    defaults to True, as in the reference implementations of IPO (per-token mean log-probs);
    with summed log-probs the target 1/(2β) is on a different scale. The SFT term is that of
    ``PreferenceLoss``. Parameters and shapes: see ``PreferenceLoss``.
    """

    def __init__(
        self,
        beta: float = 0.1,
        sft_weight: float = 0.0,
        length_average: bool = True,
        reference_free: bool = False,
    ):
        super().__init__(beta, sft_weight, length_average, reference_free)

    def preference(self, h: Tensor) -> Tensor:
        return (h - 1.0 / (2.0 * self.beta)) ** 2


class Hinge(PreferenceLoss):
    """SLiC hinge: max(0, 1 − β·h) on the log-ratio margin h (Zhao et al. 2023).

    Zhao et al. 2023 ("SLiC-HF"), calibration loss max(0, δ − log π(y_w|x) + log π(y_l|x)) with
    the margin δ = 1 and the log-ratio scaled by β (the form of TRL's ``hinge``, 1/β the margin
    in log-ratio units); with ``reference_free`` it is SLiC's loss on raw log-probs. The SFT
    term is that of ``PreferenceLoss``. Parameters and shapes: see ``PreferenceLoss``.
    """

    def preference(self, h: Tensor) -> Tensor:
        return torch.relu(1.0 - self.beta * h)


class _NoisyLabelLoss(PreferenceLoss):
    """A preference loss for labels flipped with probability ``label_smoothing`` ε ∈ [0, 0.5)."""

    def __init__(
        self,
        beta: float = 0.1,
        label_smoothing: float = 0.1,
        sft_weight: float = 0.0,
        length_average: bool = False,
        reference_free: bool = False,
    ):
        super().__init__(beta, sft_weight, length_average, reference_free)
        if not 0.0 <= label_smoothing < 0.5:
            raise ParameterError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)


class ConservativeDPO(_NoisyLabelLoss):
    """Conservative DPO (cDPO): −(1−ε)·log σ(βh) − ε·log σ(−βh), DPO with label smoothing ε.

    The DPO loss (Rafailov et al. 2023, Eq. 7) against soft labels: each pair's preference is
    taken as right with probability 1−ε (Mitchell 2023, "A note on DPO with noisy preferences").
    ε = 0 is DPO. The minimiser keeps a finite margin, σ(βh) = 1−ε, instead of pushing h to ∞.
    Peer convention: equal to TRL's ``loss_type="sigmoid"`` with ``label_smoothing=ε`` in TRL's
    DPOTrainer before its 2026 rewrite (that loss is −(1−ε)log σ(βh) − ε log σ(−βh) for every ε,
    so ε = 0, the default, is DPO); the rewritten DPOTrainer's ``sigmoid`` ignores
    ``label_smoothing``, so there no ``loss_type`` gives cDPO. Parameters and shapes: see
    ``PreferenceLoss``; ``label_smoothing`` ε ∈ [0, 0.5).
    """

    def preference(self, h: Tensor) -> Tensor:
        eps = self.label_smoothing
        return -(1.0 - eps) * F.logsigmoid(self.beta * h) - eps * F.logsigmoid(-self.beta * h)


class RobustDPO(_NoisyLabelLoss):
    """Robust DPO (rDPO): ((1−ε)·ℓ(h) − ε·ℓ(−h)) / (1−2ε) with ℓ(h) = −log σ(βh) (Chowdhury et al. 2024).

    Chowdhury et al. 2024 ("Provably Robust DPO for Aligning Language Models"): an unbiased estimate of the clean DPO
    loss (Rafailov et al. 2023, Eq. 7) when each label is flipped with known probability ε.
    ε = 0 is DPO. Peer convention: TRL's ``loss_type="robust"`` with ``label_smoothing=ε``.
    Parameters and shapes: see ``PreferenceLoss``; ``label_smoothing`` ε ∈ [0, 0.5).
    """

    def preference(self, h: Tensor) -> Tensor:
        eps = self.label_smoothing
        kept = -F.logsigmoid(self.beta * h)
        flipped = -F.logsigmoid(-self.beta * h)
        return ((1.0 - eps) * kept - eps * flipped) / (1.0 - 2.0 * eps)


@hookimpl
def rlloom_policy_loss():
    return {
        "dpo": SigmoidDPO,
        "ipo": IPO,
        "hinge": Hinge,
        "robust": RobustDPO,
        "cdpo": ConservativeDPO,
    }
