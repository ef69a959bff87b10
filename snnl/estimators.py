"""The scikit-learn estimators: ``SNNLKMeans`` (Agarap & Azcarraga's
pipeline) and ``N2D``.

``SNNLKMeans``:

    model = SNNLKMeans(config="snnl-5", epochs=20, random_state=0)
    clusters = model.fit_predict(X, y)   # y: labels >= 0, -1 where a row is unlabelled
    codes = model.transform(X_new)
    new_clusters = model.predict(X_new)

As in the paper, the autoencoder is trained on the labelled rows (every row
for the unsupervised presets and ``baseline-ae``), then k-means runs on the
codes of all rows of ``X``.

Inputs: the logistic reconstruction (binary cross-entropy) needs values in
[0, 1].  Data already in [0, 1] (pixels) is used as it is; other data is
mapped to [0, 1] by one affine map fitted on the training data (its global
minimum and maximum, the same for every feature, so the features keep their
relative scales).  ``transform``, ``predict`` and ``score`` take new data
through the same map; values beyond the fitted range (held-out data scaled
like the training data rarely stays inside it) are clipped to it, with a
warning that says how far out they were, as ``MinMaxScaler(clip=True)`` would.

It behaves as scikit-learn's estimators do (``check_estimator`` passes):
parameters are checked when fitting, before any training; ``n_features_in_``
and ``feature_names_in_`` are kept and checked on new data; ``random_state``
seeds everything without touching the global random state.  The supervised
presets declare that they need ``y`` (estimator tags).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from . import choices, validate
from .autoencoder import encode_in_batches
from .cluster.assign import fit_assignment
from .cluster.kmeans import kmeans, resolve_kmeans_backend
from .cluster.manifold import ManifoldConfig, fit_manifold
from .encoders import fit_encoder
from .metrics import evaluate
from .progress import from_verbose
from .runs.config import N2D_AUTOENCODER
from .train.config import PRESETS, preset, with_pseudo_label_clusters, with_snnl_term
from .train.loop import train_autoencoder

UNLABELLED = -1


def check_labels(y, n_rows: int) -> np.ndarray:
    """Class labels as int64: integers (or integral floats) >= 0, -1 for an
    unlabelled row; anything else is refused with scikit-learn's wording."""
    y = np.asarray(y)
    if y.shape != (n_rows,):
        raise ValueError(f"y must have shape ({n_rows},), got {y.shape}")
    kind = type_of_target(y, input_name="y", raise_unknown=True)
    if kind not in ("binary", "multiclass") or y.dtype.kind not in "iuf":
        raise ValueError(
            f"Unknown label type: y is {kind} ({y.dtype}); pass integer class labels, -1 for unlabelled rows"
        )
    labels = y.astype(np.int64)
    if (labels < UNLABELLED).any():
        raise ValueError(f"y holds {int(labels.min())}: labels are class ids >= 0, or -1 for an unlabelled row")
    return labels


class InputRange:
    """The affine map of inputs to [0, 1]: identity for data already in [0, 1],
    else (x - low) / (high - low) with the training data's global extremes."""

    def __init__(self, x: np.ndarray):
        low, high = float(x.min()), float(x.max())
        self.identity = low >= 0.0 and high <= 1.0
        self.low, self.high = (0.0, 1.0) if self.identity else (low, high)

    def __call__(self, x: np.ndarray, what: str = "X") -> np.ndarray:
        span = self.high - self.low
        tolerance = 1e-6 * max(span, 1.0)
        low, high = float(x.min()), float(x.max())
        if low < self.low - tolerance or high > self.high + tolerance:
            outside = float(((x < self.low - tolerance) | (x > self.high + tolerance)).mean())
            warnings.warn(
                f"{what} holds values in [{low:.4g}, {high:.4g}], beyond the range the model was fitted on "
                f"[{self.low:.4g}, {self.high:.4g}] ({outside:.2%} of the entries): they are clipped to it",
                UserWarning,
                stacklevel=3,
            )
            x = np.clip(x, self.low, self.high)
        if self.identity:
            return x
        return ((x - self.low) / (span if span > 0 else 1.0)).astype(np.float32)


class SNNLKMeans(ClusterMixin, TransformerMixin, BaseEstimator):
    """Autoencoder regularised with the soft nearest neighbor loss, then k-means.

    Parameters mirror ``snnl run``: ``config`` is a preset name (``snnl-1`` ..
    ``snnl-8``, ``snnl-label-free``, ``baseline-ae``, ``original``); ``epochs``,
    ``code_dim``, ``alpha``, ``temperature`` (a number: that fixed T;
    ``"annealing"``: the paper's schedule), ``batch_size`` and
    ``learning_rate`` override the preset when given.  ``n_clusters``
    defaults to the number of distinct labels in ``y``.
    ``verbose``: training progress on stderr, bars on a terminal and a line
    per epoch otherwise (the default; the preset's 50 epochs on digits take
    about 25 s on 2 CPU cores); ``"lines"``; ``False`` or 0: nothing.
    ``image_shape``: the shape of the images the rows of ``X`` are, e.g.
    ``(28, 28)``, for the label-free preset's views (``snnl-label-free``);
    without it it takes tabular views (feature dropout and noise).  The
    label-free preset is fitted without ``y``.
    """

    def __init__(
        self,
        n_clusters=None,
        *,
        config="snnl-5",
        epochs=None,
        code_dim=None,
        alpha=None,
        temperature=None,
        batch_size=None,
        learning_rate=None,
        kmeans_backend="auto",
        n_init=10,
        device="auto",
        random_state=None,
        verbose=True,
        image_shape=None,
    ):
        self.n_clusters = n_clusters
        self.config = config
        self.epochs = epochs
        self.code_dim = code_dim
        self.alpha = alpha
        self.temperature = temperature
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.kmeans_backend = kmeans_backend
        self.n_init = n_init
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.image_shape = image_shape

    def _train_config(self):
        if self.config not in PRESETS:
            raise ValueError(f"config must be one of {', '.join(PRESETS)}; got {self.config!r}")
        overrides = {
            k: v
            for k, v in {
                "epochs": self.epochs,
                "code_dim": self.code_dim,
                "batch_size": self.batch_size,
                "learning_rate": self.learning_rate,
            }.items()
            if v is not None
        }
        return with_snnl_term(preset(self.config, **overrides), alpha=self.alpha, temperature=self.temperature)

    def _needs_labels(self) -> bool:
        config = PRESETS.get(self.config)
        return config is not None and config.uses_labels

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = self._needs_labels()  # the supervised SNNL uses the labels
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def _check_params(self):
        """Every parameter, before any work (scikit-learn checks them in fit)."""
        config = self._train_config()
        validate.integer("n_clusters", self.n_clusters, 1, allow_none=True)
        validate.integer("n_init", self.n_init, 1)
        validate.choice("kmeans_backend", self.kmeans_backend, choices.KMEANS_BACKENDS)
        resolve_kmeans_backend(self.kmeans_backend)
        validate.device(self.device)
        from_verbose(self.verbose)
        return config

    def fit(self, X, y=None):
        config = self._check_params()
        needs_labels = config.uses_labels
        if needs_labels and y is None:
            raise ValueError(
                f"{type(self).__name__} with config={config.name!r} requires y to be passed, but the "
                "target y is None (labels >= 0, -1 for unlabelled rows)"
            )
        X = validate_data(self, X, dtype=np.float32, ensure_min_samples=2)
        if y is not None:
            y = check_labels(y, len(X))
        labelled = y is not None and (y != UNLABELLED).any()
        if needs_labels and not labelled:
            raise ValueError(f"{config.name} is supervised: pass labels y (-1 for unlabelled rows)")
        n_clusters = self.n_clusters
        if n_clusters is None:
            if not labelled:
                raise ValueError("n_clusters is needed when y gives no labels")
            n_clusters = len(np.unique(y[y != UNLABELLED]))
        if n_clusters > len(X):
            raise ValueError(f"n_clusters={n_clusters} is more than the {len(X)} samples")
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))

        self.input_range_ = InputRange(X)
        X01 = self.input_range_(X)
        rows = (y != UNLABELLED) if needs_labels else np.ones(len(X), dtype=bool)
        encoder = fit_encoder(
            X01[rows],
            y[rows] if needs_labels else None,
            with_pseudo_label_clusters(config, n_clusters),
            seed=seed,
            device=self.device,
            progress=from_verbose(self.verbose),
            image_shape=self.image_shape,
        )
        self.encoder_ = encoder
        self.model_, self.history_ = encoder.model, encoder.history
        codes = self._encode(X01)
        clustering = kmeans(codes, n_clusters, backend=self.kmeans_backend, n_init=self.n_init, seed=seed)
        self.labels_ = clustering.labels
        self.cluster_centers_ = clustering.centers
        self.inertia_ = clustering.inertia
        return self

    def _encode(self, X01):
        # float64: a row's code must not depend on the rows beside it (encode_in_batches)
        return self.encoder_.encode(X01, dtype=torch.float64)

    def transform(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return self._encode(self.input_range_(X))

    def predict(self, X):
        check_is_fitted(self, "cluster_centers_")
        codes = torch.from_numpy(self.transform(X))
        return (
            torch.cdist(codes, torch.from_numpy(np.asarray(self.cluster_centers_, dtype=np.float32)))
            .argmin(dim=1)
            .numpy()
        )

    def fit_predict(self, X, y=None):
        return self.fit(X, y).labels_

    def score(self, X, y=None) -> float:
        """Opposite of the k-means objective of ``X``'s codes on the fitted
        centres (the sum of squared distances to the nearest centre), as
        ``KMeans.score``: higher is better."""
        check_is_fitted(self, "cluster_centers_")
        codes = torch.from_numpy(np.asarray(self.transform(X), dtype=np.float64))
        centres = torch.from_numpy(np.asarray(self.cluster_centers_, dtype=np.float64))
        return -float(torch.cdist(codes, centres).min(dim=1).values.square().sum())


class N2D(ClusterMixin, TransformerMixin, BaseEstimator):
    """N2D as a scikit-learn estimator: ``N2D(n_clusters=10).fit_predict(X)``.

    Parameters are checked in ``fit`` before any training, optional packages
    too (UMAP).  After fitting: ``labels_``, ``embedding_`` (the manifold
    embedding that was clustered), ``codes_`` (autoencoder codes), ``model_``
    (the autoencoder), ``manifold_`` (the fitted manifold learner),
    ``assignment_`` (the fitted mixture or k-means centres),
    ``n_features_in_`` and, for DataFrames, ``feature_names_in_``.  New
    points go through all three: ``transform`` gives their embedding,
    ``predict`` their clusters (t-SNE cannot embed new points: with
    ``manifold="tsne"`` both are refused, saying so).  UMAP places new points
    together, so a point's embedding depends a little on the batch it comes
    in (scikit-learn's invariance checks see it).  The reconstruction is linear (MSE): any finite
    inputs.  ``random_state`` seeds everything without touching the global
    random state.  ``epochs`` defaults to the paper's 1000: on digits 13 to
    31 minutes on 2 CPU cores, as busy as they were (ACC 0.88), where
    ``epochs=50`` takes about 25 s (ACC 0.84; ``bench/estimator_fits.py``).  ``verbose``:
    training progress on stderr, bars on a terminal and a line per epoch
    otherwise (the default); ``"lines"``; ``False`` or 0: nothing.
    """

    def __init__(
        self,
        n_clusters=10,
        *,
        epochs=1000,
        batch_size=256,
        learning_rate=1e-3,
        patience=None,
        manifold="umap",
        n_neighbors=20,
        min_dist=0.0,
        umap_backend="auto",
        cluster="gmm",
        device="auto",
        random_state=None,
        verbose=True,
    ):
        self.n_clusters = n_clusters
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.patience = patience
        self.manifold = manifold
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.umap_backend = umap_backend
        self.cluster = cluster
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self):
        """The autoencoder and manifold configurations, checked (before any work)."""
        validate.integer("n_clusters", self.n_clusters, 1)  # one cluster is allowed, as in KMeans and GaussianMixture
        validate.choice("cluster", self.cluster, choices.CLUSTERERS)
        validate.device(self.device)
        from_verbose(self.verbose)
        config = N2D_AUTOENCODER.replace(
            code_dim=int(self.n_clusters),
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            patience=self.patience,
        )
        manifold = ManifoldConfig(
            method=self.manifold,
            umap_neighbors=self.n_neighbors,
            umap_min_dist=self.min_dist,
            umap_backend=self.umap_backend,
        )
        manifold.check_dependencies()
        return config, manifold

    def fit(self, X, y=None):
        config, manifold = self._check_params()
        X = validate_data(self, X, dtype=np.float32, ensure_min_samples=2)
        if self.n_clusters > len(X):
            raise ValueError(f"n_clusters={self.n_clusters} is more than the {len(X)} samples")
        if manifold.method == "umap" and manifold.umap_neighbors >= len(X):
            # as umap-learn does with small data: fewer neighbours, said aloud
            neighbors = max(2, len(X) - 1)
            warnings.warn(
                f"n_neighbors={manifold.umap_neighbors} is not below the {len(X)} samples; UMAP uses {neighbors}",
                UserWarning,
                stacklevel=2,
            )
            manifold = dataclasses.replace(manifold, umap_neighbors=neighbors)
        manifold.check_data(len(X))
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        trained = train_autoencoder(X, None, config, seed=seed, device=self.device, progress=from_verbose(self.verbose))
        self.model_ = trained.model
        # float64: a row's code must not depend on the rows beside it (as transform's)
        self.codes_ = encode_in_batches(trained.model, X, dtype=torch.float64).numpy()
        self.embedding_, _, self.manifold_ = fit_manifold(self.codes_, int(self.n_clusters), manifold, seed=seed)
        self.labels_, self.assignment_ = fit_assignment(self.embedding_, int(self.n_clusters), self.cluster, seed)
        return self

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    def fit_transform(self, X, y=None):
        """The embedding that was clustered (``embedding_``)."""
        return self.fit(X).embedding_

    def transform(self, X):
        """The manifold embedding of new points: through the autoencoder and the fitted manifold learner."""
        check_is_fitted(self, "manifold_")
        if self.manifold_ is None:
            raise ValueError(
                f"{type(self).__name__} with manifold={self.manifold!r} cannot embed new points (t-SNE has no "
                "transform): fit with manifold='umap' or 'isomap', or use fit_predict on all the points"
            )
        X = validate_data(self, X, dtype=np.float32, reset=False)
        codes = encode_in_batches(self.model_, X, dtype=torch.float64).numpy()
        return np.asarray(self.manifold_.transform(codes), dtype=np.float32)

    def predict(self, X):
        """The clusters of new points (``transform``, then the fitted mixture or centres)."""
        check_is_fitted(self, "assignment_")
        return self.assignment_.predict(self.transform(X))

    def score_against(self, y_true) -> dict:
        """The six metrics of the last fit against true labels."""
        check_is_fitted(self, "labels_")
        return evaluate(self.embedding_, np.asarray(y_true), self.labels_)
