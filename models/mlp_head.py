"""MLP head (torch): pair features -> match score in [0, 1], trained on soft targets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import models  # noqa: F401
import torch  # noqa: E402
from torch import nn  # noqa: E402


@dataclass(frozen=True)
class MlpConfig:
    """Size and training settings of the ``mlp`` relevance head."""

    # Six features, ~20k judged pairs: a small net and a few large-batch epochs measured
    # as well out of fold as longer training, at a fraction of the time.
    hidden: int = 64
    dropout: float = 0.0
    epochs: int = 4
    batch_size: int = 1024
    lr: float = 1e-2
    weight_decay: float = 1e-4
    seed: int = 0
    # One thread: these fits are small, and OpenMP workers that spin while the other core
    # is busy made them 20x slower on a loaded 2-core machine.
    threads: int = 1


class MlpHead(nn.Module):
    """Relevance head: a small MLP on standardised pair features.

    d -> ``hidden`` -> ``hidden // 2`` -> 1 with GELU; the input mean and std are buffers, so they
    are saved with the weights.
    """

    name = "mlp"

    def __init__(self, n_in: int, config: MlpConfig = MlpConfig()):
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))
        self.net = nn.Sequential(
            nn.Linear(n_in, config.hidden), nn.GELU(), nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.hidden // 2), nn.GELU(),
            nn.Linear(config.hidden // 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (n,) for pair features (n, d)."""
        return self.net((x - self.mean) / self.std).squeeze(-1)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None,
            config: MlpConfig = MlpConfig()) -> "MlpHead":
        """Train on pair features ``x`` (n, d) and soft targets ``y`` (n,) in [0, 1].

        ``weight`` (n,): per-pair weights, rescaled to mean 1 (None: equal).  Weighted binary
        cross-entropy, AdamW with a one-cycle learning rate, seeded by ``config.seed``; sets torch's
        process-wide thread count to ``config.threads``.  Returns the model in eval mode.
        """
        torch.set_num_threads(config.threads)
        g = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        yt = torch.from_numpy(np.asarray(y, dtype=np.float32))
        wt = torch.from_numpy(np.asarray(weight if weight is not None else np.ones(len(y)), dtype=np.float32))
        wt = wt / wt.mean()
        model = cls(x.shape[1], config)
        model.mean.copy_(xt.mean(0))
        model.std.copy_(xt.std(0).clamp(min=1e-6))
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        steps = config.epochs * ((len(x) + config.batch_size - 1) // config.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(steps, 1))
        model.train()
        for _ in range(config.epochs):
            perm = torch.randperm(len(x), generator=g)
            for s in range(0, len(x), config.batch_size):
                i = perm[s : s + config.batch_size]
                loss = nn.functional.binary_cross_entropy_with_logits(model(xt[i]), yt[i], weight=wt[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        return model.eval()

    @torch.inference_mode()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Match probabilities (n,) float32 in [0, 1] for pair features (n, d)."""
        torch.set_num_threads(self.config.threads)
        return torch.sigmoid(self(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))).numpy()
