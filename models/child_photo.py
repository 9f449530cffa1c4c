"""Photo classifier: does this photo show a child under 16?

Photos carry no caption at search time, so the law's photo rule needs a classifier on
the image tower's output.  An L2-regularised logistic regression over the pooled
features and ImageNet class probabilities; the decision threshold is chosen elsewhere
(on training folds, for the legal recall floor) and stored beside the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import models  # noqa: F401
import torch  # noqa: E402


@dataclass(frozen=True)
class ChildPhotoConfig:
    l2: float = 1e-2
    max_iter: int = 200
    # One thread: these fits are small, and OpenMP workers that spin while the other core
    # is busy made them 20x slower on a loaded 2-core machine.
    threads: int = 1


def photo_inputs(features: np.ndarray, logits: np.ndarray) -> np.ndarray:
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    return np.hstack([f, np.sqrt(p)]).astype(np.float32)


class ChildPhotoClassifier:
    def __init__(self, mean: np.ndarray, std: np.ndarray, w: np.ndarray, b: float):
        self.mean, self.std, self.w, self.b = mean, std, w, b

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, config: ChildPhotoConfig = ChildPhotoConfig()) -> "ChildPhotoClassifier":
        torch.set_num_threads(config.threads)
        mean, std = x.mean(0), x.std(0) + 1e-6
        xt = torch.from_numpy((x - mean) / std)
        yt = torch.from_numpy(y.astype(np.float32))
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        # Balanced weights: the legal floor is on recall of the (minority) child class.
        pos = max(float(yt.mean()), 1e-3)
        sw = torch.where(yt > 0.5, 0.5 / pos, 0.5 / max(1 - pos, 1e-3))
        opt = torch.optim.LBFGS([w, b], max_iter=config.max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            logit = xt @ w + b
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logit, yt, weight=sw)
                    + config.l2 * (w * w).sum())
            loss.backward()
            return loss

        opt.step(closure)
        return cls(mean.astype(np.float32), std.astype(np.float32), w.detach().numpy(), float(b.item()))

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.std) @ self.w + self.b
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std, "w": self.w.astype(np.float32),
                "b": np.array([self.b], dtype=np.float32)}

    @classmethod
    def from_state_dict(cls, d: dict[str, np.ndarray]) -> "ChildPhotoClassifier":
        return cls(d["mean"], d["std"], d["w"], float(d["b"][0]))
