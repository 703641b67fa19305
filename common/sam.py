"""Sharpness-aware minimisation (SAM; Foret et al., ICLR 2021) around any torch optimiser.

One SAM update of the weights w is two gradient evaluations:

1. g = grad L(w); climb to w + e with e = rho * g / ||g|| (ASAM, ``adaptive=True``: e = rho * w^2 g / ||w g||);
2. g' = grad L(w + e); go back to w and let the base optimiser step with g'.

``first_step`` and ``second_step`` expose the two halves for training loops that run the passes themselves;
``step(closure)`` runs both around a closure that recomputes the loss and its gradients, the way
``torch.optim.LBFGS`` takes one. Moments and other base-optimiser state live in ``self.state`` (shared with the
base optimiser), so ``state_dict`` round-trips a run.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer

_EPS = 1e-12


class SAM(Optimizer):
    """Args:
        params: parameters or parameter groups; per-group ``rho``/``adaptive`` override the defaults.
        base_optimizer: called as ``base_optimizer(param_groups, **base_kwargs)``: a class such as
            ``torch.optim.Adam`` or a ``functools.partial`` of one.
        rho: radius of the neighbourhood whose worst case is minimised (0.05 in the paper and POSTER++).
        adaptive: scale the climb per weight by |w| (ASAM), making it invariant to weight rescaling.
        base_kwargs: the base optimiser's own arguments (lr, betas, momentum, ...).
    """

    def __init__(self, params: Iterable, base_optimizer: Callable[..., Optimizer], rho: float = 0.05,
                 adaptive: bool = False, **base_kwargs):
        if rho < 0:
            raise ValueError(f"SAM rho must be non-negative, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self._share_with_base()
        # where each parameter was before the climb; transient, so kept out of the state dict
        self._origin: dict[torch.Tensor, torch.Tensor] = {}

    def _share_with_base(self) -> None:
        """One set of groups (so schedulers that change our lr change the base's) and one state."""
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move every parameter that has a gradient to w + e(w)."""
        if self._origin:
            raise RuntimeError("SAM.first_step called twice without second_step")
        scale_base = self._grad_norm() + _EPS
        for group in self.param_groups:
            scale = group["rho"] / scale_base
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._origin[p] = p.detach().clone()
                climb = p.grad * scale.to(p.grad)
                p.add_(climb * p.square() if group["adaptive"] else climb)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return to w and update it with the gradient that is now in ``.grad`` (taken at w + e)."""
        for p, origin in self._origin.items():
            p.copy_(origin)
        self._origin.clear()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """Both halves; ``closure`` must zero nothing, recompute the loss at the current weights and backpropagate.

        The gradient at w must already be in ``.grad`` when this is called.
        """
        if closure is None:
            raise ValueError("SAM.step needs a closure that re-evaluates the loss; or call first_step/second_step")
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

    def _grad_norm(self) -> torch.Tensor:
        """L2 norm over every group's gradients together (ASAM: of |w| * grad)."""
        norms = [
            (p.grad * p.abs() if group["adaptive"] else p.grad).norm(p=2).to(self._norm_device)
            for group in self.param_groups for p in group["params"] if p.grad is not None
        ]
        if not norms:
            return torch.zeros((), device=self._norm_device)
        return torch.linalg.vector_norm(torch.stack(norms))

    @property
    def _norm_device(self) -> torch.device:
        return self.param_groups[0]["params"][0].device

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self._share_with_base()
