"""``SNNLKMeans``: the pipeline as a scikit-learn estimator.

    model = SNNLKMeans(config="snnl-5", epochs=20, random_state=0)
    clusters = model.fit_predict(X, y)   # y: labels, -1 where a row is unlabelled
    codes = model.transform(X_new)
    new_clusters = model.predict(X_new)

As in the paper, the autoencoder is trained on the labelled rows (every row
for the unsupervised presets and ``baseline-ae``), then k-means runs on the
codes of all rows of ``X``.  Inputs must lie in [0, 1] (logistic
reconstruction).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted

from .cluster import kmeans
from .config import preset
from .models import encode_in_batches
from .train import train_autoencoder

UNLABELLED = -1


class SNNLKMeans(ClusterMixin, TransformerMixin, BaseEstimator):
    """Autoencoder regularised with the soft nearest neighbor loss, then k-means.

    Parameters mirror ``snnl run``: ``config`` is a preset name (``snnl-1`` ..
    ``snnl-8``, ``baseline-ae``, ``original``); ``epochs``, ``code_dim``,
    ``alpha``, ``batch_size`` and ``learning_rate`` override the preset when
    given.  ``n_clusters`` defaults to the number of distinct labels in ``y``.
    """

    def __init__(self, n_clusters=None, *, config="snnl-5", epochs=None, code_dim=None, alpha=None,
                 batch_size=None, learning_rate=None, kmeans_backend="auto", n_init=10, device="auto",
                 random_state=None, verbose=False):
        self.n_clusters = n_clusters
        self.config = config
        self.epochs = epochs
        self.code_dim = code_dim
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.kmeans_backend = kmeans_backend
        self.n_init = n_init
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _train_config(self):
        overrides = {k: v for k, v in {"epochs": self.epochs, "code_dim": self.code_dim, "alpha": self.alpha,
                                       "batch_size": self.batch_size, "learning_rate": self.learning_rate}.items()
                     if v is not None}
        return preset(self.config, **overrides)

    def fit(self, X, y=None):
        X = check_array(X, dtype=np.float32)
        config = self._train_config()
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        if y is not None:
            y = np.asarray(y)
            if y.shape != (len(X),):
                raise ValueError(f"y must have shape ({len(X)},), got {y.shape}")
            if not np.issubdtype(y.dtype, np.integer):
                raise TypeError(f"y must hold integer labels (-1 for unlabelled), got dtype {y.dtype}")
        labelled = y is not None and (y != UNLABELLED).any()
        needs_labels = config.method == "autoencoder" and config.snnl and config.supervised
        if needs_labels and not labelled:
            raise ValueError(f"{config.name} is supervised: pass labels y (-1 for unlabelled rows)")
        n_clusters = self.n_clusters
        if n_clusters is None:
            if not labelled:
                raise ValueError("n_clusters is needed when y gives no labels")
            n_clusters = len(np.unique(y[y != UNLABELLED]))

        rows = (y != UNLABELLED) if needs_labels else np.ones(len(X), dtype=bool)
        if config.method == "pca":
            self.model_ = PCA(n_components=min(config.code_dim, *X.shape), random_state=seed).fit(X[rows])
            self.history_ = []
        else:
            result = train_autoencoder(X[rows], y[rows] if needs_labels else None, config, seed=seed,
                                       device=self.device, progress=self.verbose)
            self.model_, self.history_ = result.model, result.history
        codes = self.transform(X)
        clustering = kmeans(codes, n_clusters, backend=self.kmeans_backend, n_init=self.n_init, seed=seed)
        self.labels_ = clustering.labels
        self.cluster_centers_ = clustering.centers
        self.inertia_ = clustering.inertia
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        check_is_fitted(self, "model_")
        X = check_array(X, dtype=np.float32)
        if isinstance(self.model_, PCA):
            return self.model_.transform(X).astype(np.float32)
        return encode_in_batches(self.model_, X).numpy()

    def predict(self, X):
        check_is_fitted(self, "cluster_centers_")
        codes = torch.from_numpy(self.transform(X))
        return torch.cdist(codes, torch.from_numpy(self.cluster_centers_)).argmin(dim=1).numpy()

    def fit_predict(self, X, y=None):
        return self.fit(X, y).labels_
