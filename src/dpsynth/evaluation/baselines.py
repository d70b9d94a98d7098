"""Baselines on the same embeddings and (epsilon, delta): DP class means and DP-SGD.

DP-SGD uses Opacus for the per-sample clipping and noise; its noise multiplier comes
from dp-accounting's PLD accountant (Poisson-sampled Gaussian, composed over all steps
and, when tuning is accounted, over every configuration trained).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import dp_accounting
import numpy as np
import torch
from dp_accounting.mechanism_calibration import ExplicitBracketInterval
from dp_accounting.pld import pld_privacy_accountant
from torch import nn

from dpsynth.clustering.stats import nearest_centre
from dpsynth.evaluation.mlp import make_mlp
from dpsynth.preprocessing import bound_norms
from dpsynth.privacy import NoiseSource, ReleaseSpec, build_plan


def dp_class_means(X: np.ndarray, y: np.ndarray, classes: np.ndarray, epsilon: float,
                   delta: float, *, noise_seed: int | None = None) -> np.ndarray:
    """Noisy class means (k = 1, no covariance). Counts sensitivity 1, sums R = 1."""
    plan = build_plan([ReleaseSpec("class_counts", 1.0, 4.0), ReleaseSpec("class_sums", 1.0)],
                      epsilon, delta, noise_seeded=noise_seed is not None)
    noise = NoiseSource(noise_seed)
    Xb = bound_norms(X, 1.0, normalize=True)
    lookup = {c: i for i, c in enumerate(np.asarray(classes).tolist())}
    idx = np.array([lookup.get(v, -1) for v in np.asarray(y).tolist()], dtype=np.int64)
    if (idx < 0).any():
        raise ValueError(f"labels {sorted(set(np.asarray(y)[idx < 0].tolist()))[:5]} are not "
                         f"in classes={list(lookup)}")
    counts = np.bincount(idx, minlength=len(classes)).astype(float)
    sums = np.zeros((len(classes), X.shape[1]))
    np.add.at(sums, idx, Xb)
    counts += noise.gaussian(plan.release("class_counts"), len(classes))
    sums += noise.gaussian(plan.release("class_sums"), sums.shape)
    return sums / np.maximum(counts, 1.0)[:, None]


def nearest_mean_predict(means: np.ndarray, classes: np.ndarray, X: np.ndarray) -> np.ndarray:
    return classes[nearest_centre(bound_norms(X, 1.0, normalize=True), means)]


@dataclass(frozen=True)
class DPSGDConfig:
    hidden: int = 0
    lr: float = 2.0
    epochs: int = 10
    batch_size: int = 2048
    clip: float = 1.0
    momentum: float = 0.9

    def label(self) -> str:
        return (f"hidden={self.hidden},lr={self.lr},epochs={self.epochs},"
                f"batch={self.batch_size},clip={self.clip}")


def dpsgd_noise_multiplier(sample_rate: float, steps: int, epsilon: float, delta: float,
                           runs: int = 1,
                           extra_event: dp_accounting.DpEvent | None = None) -> float:
    """Noise multiplier making ``runs`` DP-SGD trainings of ``steps`` steps (eps, delta)-DP.

    ``extra_event`` (e.g. a private selection among the runs) is composed in as well.
    """
    if math.isinf(epsilon):
        return 0.0

    def event(sigma: float) -> dp_accounting.DpEvent:
        step = dp_accounting.PoissonSampledDpEvent(sample_rate,
                                                   dp_accounting.GaussianDpEvent(sigma))
        training = dp_accounting.SelfComposedDpEvent(step, steps * runs)
        if extra_event is None:
            return training
        return dp_accounting.ComposedDpEvent([training, extra_event])

    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3),
        event, epsilon, delta, bracket_interval=ExplicitBracketInterval(0.3, 200.0), tol=1e-3))


def train_dpsgd(X: np.ndarray, y: np.ndarray, n_classes: int, config: DPSGDConfig,
                noise_multiplier: float, *, seed: int = 0) -> nn.Module:
    """Opacus DP-SGD (Poisson sampling, per-sample clipping) with a given noise multiplier."""
    from opacus import PrivacyEngine

    torch.manual_seed(seed)
    Xt = torch.from_numpy(np.asarray(X, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xt, yt),
                                         batch_size=config.batch_size, shuffle=True)
    model = make_mlp(X.shape[1], n_classes, config.hidden)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    engine = PrivacyEngine(accountant="prv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Ghost clipping computes per-sample gradient norms without materialising the
        # per-sample gradients: a 512-wide hidden layer at batch 2048 would otherwise need
        # 2048 x 655k floats (5 GB) per step.
        model, opt, criterion, loader = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, criterion=nn.CrossEntropyLoss(),
            noise_multiplier=noise_multiplier, max_grad_norm=config.clip,
            poisson_sampling=True, grad_sample_mode="ghost")
    model.train()
    for _ in range(config.epochs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for xb, yb in loader:
                if len(xb) == 0:
                    continue
                opt.zero_grad()
                criterion(model(xb), yb).backward()
                opt.step()
    model.eval()
    return model


@torch.inference_mode()
def model_accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    pred = model(torch.from_numpy(np.asarray(X, dtype=np.float32))).argmax(1).numpy()
    return float((pred == np.asarray(y)).mean())
