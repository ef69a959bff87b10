"""The encoders a run fits before it clusters: one interface, so that the
experiment (``snnl.methods.agarap``) and the estimator (``snnl.estimators``) never
ask which one they hold.

- ``"autoencoder"``: the paper's, trained by ``snnl.train.loop.train_autoencoder``
  (with or without the SNNL term, labels or none);
- ``"pca"``: PCA of the raw inputs to ``code_dim`` dimensions, the paper's
  ``original`` baseline; it trains nothing.

A new encoder is one class with ``fit`` and ``encode`` and one entry in
``ENCODERS`` (keyed by ``TrainConfig.method``, whose choices must match).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from .autoencoder import Autoencoder, encode_in_batches
from .choices import METHODS
from .train.config import TrainConfig


class Encoder(Protocol):
    history: list[dict]  # one record per training epoch (none for an encoder that does not train)

    @property
    def model(self):
        """What was fitted (an ``Autoencoder``, a scikit-learn ``PCA``)."""

    def encode(self, x, *, dtype: torch.dtype = torch.float32) -> np.ndarray:
        """The codes of the rows of ``x``, float32; ``dtype`` is the one computed in."""


@dataclass
class AutoencoderEncoder:
    model: Autoencoder
    history: list[dict] = field(default_factory=list)

    @classmethod
    def fit(cls, x, y, config: TrainConfig, *, seed: int, **training) -> AutoencoderEncoder:
        """``training``: ``train_autoencoder``'s options (device, checkpoint, progress, ...)."""
        from .train.loop import train_autoencoder

        result = train_autoencoder(x, y, config, seed=seed, **training)
        return cls(result.model, result.history)

    def encode(self, x, *, dtype: torch.dtype = torch.float32) -> np.ndarray:
        return encode_in_batches(self.model, x, dtype=dtype).numpy()


@dataclass
class PCAEncoder:
    model: object  # sklearn.decomposition.PCA
    history: list[dict] = field(default_factory=list)

    @classmethod
    def fit(cls, x, y, config: TrainConfig, *, seed: int, **training) -> PCAEncoder:
        """Labels and the training options do not apply: PCA reads the inputs alone."""
        from sklearn.decomposition import PCA

        x = np.asarray(x)
        return cls(PCA(n_components=min(config.code_dim, *x.shape), random_state=seed).fit(x))

    def encode(self, x, *, dtype: torch.dtype = torch.float32) -> np.ndarray:
        # scikit-learn computes in the inputs' precision; ``dtype`` is the autoencoder's concern
        return self.model.transform(np.asarray(x)).astype(np.float32)  # type: ignore[attr-defined]


ENCODERS: dict[str, type[AutoencoderEncoder] | type[PCAEncoder]] = {
    "autoencoder": AutoencoderEncoder,
    "pca": PCAEncoder,
}
if tuple(ENCODERS) != METHODS:
    raise ImportError(f"snnl.choices.METHODS {METHODS} does not list the encoders {tuple(ENCODERS)}")


def fit_encoder(x, y, config: TrainConfig, *, seed: int = 0, **training) -> Encoder:
    """The encoder ``config.method`` names, fitted on ``x`` (labels ``y`` where
    the configuration uses them); ``training``: ``train_autoencoder``'s options."""
    return ENCODERS[config.method].fit(x, y, config, seed=seed, **training)
