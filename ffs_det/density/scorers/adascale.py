"""AdaSCALE: SCALE with a per-sample percentile, set from how far the largest activations move under a small
input perturbation.

Regmi, "AdaSCALE: Adaptive Scaling for OOD Detection", 2025 (arXiv 2503.08023; PMLR v306). OOD inputs shift
their high-magnitude activations more under a minor perturbation than ID inputs; AdaSCALE scales likely-ID
samples more strongly (a higher percentile) and likely-OOD ones less. The definition followed here is OpenOOD
v1.5's (``openood/postprocessors/adascale_postprocessor.py``, ``openood/networks/adascale_net.py``), with the
defaults of its ``configs/postprocessors/adascale_a.yml``. For an input ``x`` with penultimate features ``f``
(``D`` wide, the input of the classifier's last ``nn.Linear``, ``W, b``) and prediction ``c = argmax logits``:

1. perturbation: ``g = d logit_c / d x``; the ``perturb_fraction`` of input elements with the smallest ``|g|``
   move by ``step * sign(g)`` (``x'``; features ``f'``);
2. OOD evidence: ``Q(x) = sum_{j in T1} max(f'_j, 0) + shift_weight * sum_{j in T2} |f_j - f'_j|``, with ``T1``
   (``T2``) the indices of the ``floor(D k_perturbed / 100)`` (``floor(D k_shift / 100)``) largest entries of
   ``f``;
3. fit: ``F``, the empirical distribution function of ``Q`` over in-distribution inputs;
4. percentile: ``p(x) = min_percentile + (1 - F(Q(x))) (max_percentile - min_percentile)``;
5. SCALE at ``p(x)``: ``r = sum_j max(f_j, 0) / (sum of the k largest max(f_j, 0))``, ``k = D - round(D p / 100)``;
   score (higher = more ID) ``logsumexp(W (f exp(r)) + b)`` for AdaSCALE-A (``variant="a"``, the one on
   OpenOOD's leaderboard), ``logsumexp(r^2 (W f + b))`` for AdaSCALE-L (``"l"``).

It needs the whole classifier (``model``, returning logits, whose last ``nn.Linear`` is the head) run on raw
inputs, also at fit: ``fit(model=..., inputs=...)`` with in-distribution inputs (OpenOOD fits on 5,000 of its ID
validation images), ``score_inputs(model, inputs)`` per batch. Ties (in ``|g|``, among activations) are broken
in index order.
"""
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..inputs import as_features, final_linear, linear_head
from .base import InputScorer, register_scorer
from .logits import negative_energy
from .shaping import checked_exp, check_percentile, scale_ratio, top_mask

__all__ = ["AdaSCALEScorer", "adascale_perturb", "ADASCALE_VARIANTS"]

ADASCALE_VARIANTS = ("a", "l")
_FIT_BATCH = 256  # rows per forward pass when fit is given all inputs as one array


def adascale_perturb(x: torch.Tensor, grad: torch.Tensor, fraction: float, step: float) -> torch.Tensor:
    """``x + step * sign(grad)`` on the ``int(fraction * n)`` of each sample's ``n`` input elements with the
    smallest ``|grad|`` (in index order among ties), ``x`` elsewhere."""
    flat = grad.reshape(grad.shape[0], -1)
    count = int(flat.shape[1] * fraction)
    if count < 1:
        raise ValueError(f"perturb_fraction {fraction} of {flat.shape[1]} input elements is none; raise it")
    chosen = torch.sort(flat.abs(), dim=1, stable=True).indices[:, :count]
    mask = torch.zeros_like(flat).scatter_(1, chosen, 1.0).view_as(grad)
    return x + step * grad.sign() * mask


def _batches(inputs) -> Iterator[torch.Tensor]:
    """Batches of raw inputs: an array / tensor ``(N, ...)`` in blocks of rows, or an iterable of batches (tensors,
    or ``(tensor, ...)`` pairs as a DataLoader gives)."""
    if torch.is_tensor(inputs) or isinstance(inputs, np.ndarray):
        for start in range(0, len(inputs), _FIT_BATCH):
            yield inputs[start:start + _FIT_BATCH]
        return
    for batch in inputs:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@register_scorer("adascale")
class AdaSCALEScorer(InputScorer):
    """AdaSCALE-A / -L. Fitted attributes: ``fit_evidence_`` (the sorted ``Q`` of the in-distribution inputs)
    and ``dim_``."""

    requires = ("model", "inputs")

    def __init__(self, variant: str = "a", min_percentile: float = 75.0, max_percentile: float = 85.0,
                 k_perturbed: float = 5.0, k_shift: float = 1.0, shift_weight: float = 10.0,
                 perturb_fraction: float = 0.05, step: float = 0.5):
        self.variant, self.min_percentile, self.max_percentile = variant, min_percentile, max_percentile
        self.k_perturbed, self.k_shift, self.shift_weight = k_perturbed, k_shift, shift_weight
        self.perturb_fraction, self.step = perturb_fraction, step

    def check_params(self) -> None:
        if self.variant not in ADASCALE_VARIANTS:
            raise ValueError(f"variant must be one of {ADASCALE_VARIANTS} (activation or logit scaling), got "
                             f"{self.variant!r}")
        lo = check_percentile(self.min_percentile)
        if not lo <= check_percentile(self.max_percentile):
            raise ValueError(f"min_percentile ({self.min_percentile}) must not exceed max_percentile "
                             f"({self.max_percentile})")
        for name in ("k_perturbed", "k_shift"):
            if not 0 < float(getattr(self, name)) <= 100:
                raise ValueError(f"{name} must be a percentage in (0, 100], got {getattr(self, name)!r}")
        if not (np.isfinite(float(self.shift_weight)) and float(self.shift_weight) >= 0):
            raise ValueError(f"shift_weight must be a number >= 0, got {self.shift_weight!r}")
        if not 0 < float(self.perturb_fraction) <= 1:
            raise ValueError(f"perturb_fraction must be in (0, 1], got {self.perturb_fraction!r}")
        if not np.isfinite(float(self.step)):
            raise ValueError(f"step must be a finite number, got {self.step!r}")

    def fit(self, X=None, y=None, *, head=None, model=None, inputs=None) -> "AdaSCALEScorer":
        """``model``: the classifier; ``inputs``: in-distribution inputs (an array ``(N, ...)`` or an iterable of
        batches). ``X``, ``y`` and ``head`` are not read (the head is the model's last ``nn.Linear``)."""
        self.check_params()
        self._check_model(model)
        if inputs is None:
            raise ValueError("adascale: fit needs in-distribution inputs of the classifier (inputs=...)")
        evidence = [self._evidence(model, batch)[0] for batch in _batches(inputs)]
        if not evidence:
            raise ValueError("adascale: fit was given no in-distribution inputs")
        self.fit_evidence_ = np.sort(np.concatenate(evidence))
        self.dim_ = final_linear(model).in_features
        return self

    def score_inputs(self, model: nn.Module, inputs) -> np.ndarray:
        self.check_fitted()
        self._check_model(model)
        if inputs is None:
            raise ValueError("adascale needs a batch of the classifier's inputs")
        evidence, features = self._evidence(model, inputs)
        if features.shape[1] != self.dim_:
            raise ValueError(f"the model's penultimate features have width {features.shape[1]}, but adascale was "
                             f"fitted on width {self.dim_}")
        return self.score_features(linear_head(model), features, evidence)

    def percentiles(self, evidence) -> torch.Tensor:
        """``p(x)`` of step 4 from the evidence ``Q(x)`` (``(N,)``), through the fitted distribution function."""
        self.check_fitted()
        below = np.searchsorted(self.fit_evidence_, np.asarray(evidence, dtype=np.float64), side="right")
        share = 1.0 - below / len(self.fit_evidence_)
        lo, hi = float(self.min_percentile), float(self.max_percentile)
        return torch.from_numpy(lo + share * (hi - lo))

    def score_features(self, head, features, evidence) -> np.ndarray:
        """Step 5: the score of features ``(N, D)`` with evidence ``Q`` ``(N,)`` through ``head``."""
        lin = linear_head(head)
        f = as_features(features, dim=lin.in_features)
        r = scale_ratio(f.clamp(min=0), self.percentiles(evidence))
        if self.variant == "a":
            logits = lin.logits(f * checked_exp(r, "adascale"))
        else:
            logits = lin.logits(f) * r ** 2
        return negative_energy(logits).numpy()

    def evidence(self, features, perturbed) -> np.ndarray:
        """Step 2: ``Q`` ``(N,)`` from the features of the inputs and of the perturbed inputs, ``(N, D)`` each."""
        f, fp = as_features(features), as_features(perturbed, "perturbed features")
        if fp.shape != f.shape:
            raise ValueError(f"features {tuple(f.shape)} and perturbed features {tuple(fp.shape)} differ in shape")
        counts = [int(f.shape[1] * float(k) / 100) for k in (self.k_perturbed, self.k_shift)]
        if min(counts) < 1:
            raise ValueError(f"k_perturbed / k_shift of {f.shape[1]} activations give {counts} of them; raise them")
        t1, t2 = top_mask(f, counts[0]), top_mask(f, counts[1])
        moved = torch.where(t1, fp.clamp(min=0), torch.zeros_like(fp)).sum(dim=1)
        shift = torch.where(t2, (f - fp).abs(), torch.zeros_like(f)).sum(dim=1)
        return (moved + float(self.shift_weight) * shift).numpy()

    def _evidence(self, model: nn.Module, inputs):
        """``(Q (N,), features (N, D) float64)`` of one batch of raw inputs."""
        x = inputs if torch.is_tensor(inputs) else torch.as_tensor(np.asarray(inputs))
        param = next(model.parameters(), None)
        x = x.to(*(() if param is None else (param.device,)), dtype=torch.float32 if param is None else param.dtype)
        seen = []
        hook = final_linear(model).register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad(), torch.inference_mode(False):
                x = x.detach().clone().requires_grad_(True)
                logits = model(x)
                picked = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
                (grad,) = torch.autograd.grad(picked, x)  # input gradient only; parameters collect nothing
            perturbed = adascale_perturb(x.detach(), grad, float(self.perturb_fraction), float(self.step))
            with torch.no_grad():
                model(perturbed)
        finally:
            hook.remove()
            model.train(was_training)
        if len(seen) != 2:
            raise ValueError(f"adascale reads the penultimate features as the input of the model's last nn.Linear, "
                             f"which ran {len(seen)} times in two forward passes instead of once in each")
        features = as_features(seen[0].flatten(1), "penultimate features")
        return self.evidence(features, as_features(seen[1].flatten(1), "perturbed features")), features

    @staticmethod
    def _check_model(model) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"adascale needs the classifier (model), a torch.nn.Module returning logits; got "
                             f"{type(model).__name__}")
