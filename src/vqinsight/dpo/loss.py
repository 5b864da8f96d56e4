"""The Diffusion-DPO objective on per-sample denoising errors (Wallace et al. 2023; VideoDPO, CVPR 2025).

For a pair (winner w, loser l) noised with the same noise at the same timestep, with denoising errors
``e = mean((eps_pred - eps)^2)`` of the trained model (m) and of the frozen reference (r)::

    inside = -0.5 * beta * ((m_w - m_l) - (r_w - r_l))
    loss   = mean(-weight * logsigmoid(inside))

This is the convention of SalesforceAIResearch/DiffusionDPO (``train.py``, ``--beta_dpo 5000``) and of VideoDPO
(``lvdm/models/ddpm3d.py: DDPM.dpo_loss``, ``scale_term = -0.5 * beta_dpo``, times the per-pair ``dupfactor``).
diffusers' ``examples/research_projects/diffusion_dpo`` has no 0.5 factor (``-logsigmoid(beta * (r_diff - m_diff))``),
so ``beta_diffusers ~= 0.5 * beta`` here: diffusers' default 2500 is the same objective as 5000 in this module.

Lowering the winner's error (or raising the loser's) relative to the reference lowers the loss. At the start, when
the model equals the reference, ``inside = 0`` and the loss is ``log 2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every dimension but the batch dimension: (B, ...) -> (B,), in float32.

    VideoDPO computes ``.mean(dim=[1, 2, 3])`` on 5-D video latents (B, C, T, H, W), which leaves the W axis (the
    image code's dims carried over to video): its errors are (B, W), the log-sigmoid acts per (pair, column) and the
    loss also averages over columns. We average over W as well (the Salesforce and diffusers convention, one error
    per sample); with beta fixed the two differ, since the log-sigmoid is not linear.
    """
    if pred.shape != target.shape:
        raise ValueError(f"per_sample_mse: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.ndim < 2:
        raise ValueError(f"per_sample_mse needs a batch dimension and at least one more, got {tuple(pred.shape)}")
    return (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))


def dpo_inside(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The log-sigmoid argument per pair: ``-0.5 * beta * ((m_w - m_l) - (r_w - r_l))``; > 0 means "prefers w"."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    shapes = {tuple(t.shape) for t in (model_err_w, model_err_l, ref_err_w, ref_err_l)}
    if len(shapes) != 1:
        raise ValueError(f"the four per-pair error tensors must have one shape, got {sorted(shapes)}")
    model_diff = model_err_w.float() - model_err_l.float()
    ref_diff = ref_err_w.float() - ref_err_l.float()
    return -0.5 * beta * (model_diff - ref_diff)


def diffusion_dpo_loss(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar Diffusion-DPO loss ``mean(-weights * logsigmoid(inside))`` (see the module docstring).

    Args:
        model_err_w, model_err_l: per-pair errors (B,) of the trained model on the winner and the loser.
        ref_err_w, ref_err_l: the same for the reference model (no gradient needed).
        beta: the KL strength in the Salesforce/VideoDPO convention (5000 in both).
        weights: optional per-pair weights (B,), e.g. VideoDPO's ``dupfactor``; uniform when None.
    """
    inside = dpo_inside(model_err_w, model_err_l, ref_err_w, ref_err_l, beta)
    terms = -F.logsigmoid(inside)
    if weights is not None:
        weights = torch.as_tensor(weights, dtype=terms.dtype, device=terms.device)
        if weights.shape != terms.shape:
            raise ValueError(f"weights must have shape {tuple(terms.shape)}, got {tuple(weights.shape)}")
        terms = weights * terms
    return terms.mean()


def implicit_accuracy(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float = 1.0,
) -> torch.Tensor:
    """Share of pairs on which the model prefers the winner more than the reference does; ties count one half.

    ``mean(inside > 0) + 0.5 * mean(inside == 0)`` (diffusers' definition; Salesforce's drops the tie term). The
    sign of ``inside`` does not depend on beta (> 0); beta only matters through float rounding.
    """
    with torch.no_grad():
        inside = dpo_inside(model_err_w, model_err_l, ref_err_w, ref_err_l, beta)
        return (inside > 0).float().mean() + 0.5 * (inside == 0).float().mean()


def min_snr_weights(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction (Hang et al. 2023): ``min(SNR_t, gamma) / SNR_t``.

    ``SNR_t = abar_t / (1 - abar_t)``. Returned in float32 on the device of ``timesteps``, shape (B,).
    """
    if gamma <= 0:
        raise ValueError(f"snr gamma must be positive, got {gamma}")
    t = torch.as_tensor(timesteps, dtype=torch.long)
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)[t.cpu()]
    snr = abar / (1.0 - abar)
    return (torch.clamp(snr, max=gamma) / snr).to(device=t.device, dtype=torch.float32)
