"""An exponential moving average of the trained weights: what checkpoints store and samples use.

The EMA of a from-scratch diffusion model samples far cleaner than its raw weights after the same
number of steps: the raw weights jitter with every mini-batch, the average does not. The decay
warms up as min(decay, (1 + n) / (10 + n)) so the average does not stay anchored to the random
initialisation in short runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """Shadow copies (fp32) of the trainable parameters of ``module``; ``state_dict`` for resume."""

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = module
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        params = dict(module.named_parameters())
        self.shadow = {n: params[n].detach().float().clone() for n in self.names}
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        params = dict(self.module.named_parameters())
        for n in self.names:
            self.shadow[n].lerp_(params[n].detach().float(), 1.0 - d)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the module holds the averaged weights; the trained ones come back after."""
        params = dict(self.module.named_parameters())
        saved = {n: params[n].detach().clone() for n in self.names}
        with torch.no_grad():
            for n in self.names:
                params[n].copy_(self.shadow[n].to(params[n].dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n in self.names:
                    params[n].copy_(saved[n])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.names) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[0]}")
        self.updates = int(state["updates"])
        for n in self.names:
            self.shadow[n].copy_(state["shadow"][n])
