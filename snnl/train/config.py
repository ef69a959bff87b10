"""Training configurations and the paper's presets: the one source of defaults.

Agarap & Azcarraga's Table I crosses three choices into SNNL-1 .. SNNL-8:

    SNNL-n, n - 1 = 4 * annealing + 2 * argmin + unsupervised

i.e. odd numbers are supervised, 5-8 anneal the temperature, and 3, 4, 7, 8
take the minimum over layers (Eq. 4) instead of the sum (Eq. 5).  So SNNL-5,
the paper's best, is supervised, annealed and summed; SNNL-1 is the same with
a fixed temperature; SNNL-7 the same with the minimum.

"Unsupervised" drops the same-class constraint: every point counts as one
class, so N_i = S_i and each row's loss is -log(eps + S_i / (eps + S_i)) ~ 0.
Its gradient (about eps / S_i^2 in magnitude) only nudges points closer
together, so the unsupervised presets train essentially like ``baseline-ae``;
they are kept to reproduce the paper's table.  Needing no labels, they train
on the whole training set, as the paper's unsupervised rows do; the
supervised ones on the labelled subset (``ExperimentConfig.labelled_count``).

The fixed temperature is T = 100, the value the authors' code and Frosst et
al.'s reference implementation (cleverhans) start from.

``snnl-label-free`` is SNNL without labels (``snnl.train.positives``): each
point's positive is a view of one of its 20 nearest neighbours in a 10-d
UMAP embedding of the inputs, drawn every batch, and, from the sixth epoch
on, its balanced k-means cluster of the codes for the half of each cluster
held most firmly (``snnl.train.pseudo_labels``); the two-view form of the
loss on a unit-length code (cosine, T = 2, alpha = 1, the code layer alone),
60 epochs, on the whole training set.  The temperature, the start of the
cluster positives and the length were chosen by seed agreement on the
training images alone, never the test split
(``results/fashion-mnist/selection/PROTOCOL.md``); the rest came from earlier
screens.  Those screens, the label-free presets they produced and retired,
and what each variant scored are in ``results/README.md``.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field

from .. import choices, validate
from .temperature import AnnealingTemperature, FixedTemperature

# A TrainConfig field a resumed run may change: it does not change the model trained so
# far (a larger ``epochs`` extends training; the loss backend computes the same loss).
RESUMABLE = {"resume": "free"}


@dataclass(frozen=True)
class TrainConfig:
    name: str = "snnl-5"
    method: str = "autoencoder"  # "autoencoder", or "pca" (the ``original`` baseline)
    snnl: bool = True  # add alpha * SNNL over the hidden layers to the reconstruction loss
    supervised: bool = True  # False: every point is one class (see the module docstring)
    # who are each point's positives: its classmates ("classes": the labels', or one class when
    # not supervised), or, label-free, a partner drawn each batch: a view of it, one of its nearest
    # neighbours, or a view of one (snnl.train.positives)
    positives: str = "classes"
    # label-free: partners drawn per anchor and batch, positives of the anchor and of each other
    # (more than one: SupCon's several views; see snnl.train.positives)
    partners: int = 1
    neighbours: int = 10  # the k nearest neighbours a "neighbours" / "neighbour-views" partner is drawn from
    # where they are searched: the inputs (cosine), or a UMAP embedding of the inputs (snnl.train.positives)
    neighbour_space: str = "inputs"
    # label-free: from this many epochs on, each point's cluster in the codes is its label too
    # (balanced k-means, refreshed every epoch; None: never; snnl.train.pseudo_labels) ...
    pseudo_labels_from: int | None = None
    pseudo_label_share: float = 0.5  # ... for this share of each cluster, the points it holds most firmly
    # ... in this many clusters (None: the number the codes will be clustered into, set by the run)
    pseudo_label_clusters: int | None = None
    layers: str = "all"  # where the SNNL term applies: every hidden layer (the paper's) or the code alone
    temperature: str = "annealing"  # or "fixed"
    fixed_temperature: float = 100.0
    anneal_eta: float = 1.0
    anneal_gamma: float = 0.55
    combine: str = "sum"  # over layers: "sum" (Eq. 5) or "min" (Eq. 4, the paper's argmin)
    alpha: float = 100.0
    distance: str = "cosine"
    eps: float = 1e-5
    loss_backend: str = field(default="auto", metadata=RESUMABLE)
    code_dim: int = 70
    hidden: tuple[int, ...] = (500, 500, 2000)
    # logistic code and output, binary cross-entropy (SNNL autoencoder); N2D uses
    # linear ones and the mean squared error
    code_activation: str = "sigmoid"
    output_activation: str = "sigmoid"
    init: str = "he"  # "he" (He on ReLU layers) or "glorot" (Keras' default, N2D's code); see snnl.autoencoder
    epochs: int = field(default=50, metadata=RESUMABLE)
    batch_size: int = 256
    learning_rate: float = 1e-3
    adam_eps: float = 1e-8  # torch's default; Keras (N2D's code) uses 1e-7
    patience: int | None = None  # stop when the epoch loss has not improved for this many epochs
    amp: bool = False  # bfloat16 autocast, CUDA only

    def __post_init__(self):
        for key, allowed in {
            "method": choices.METHODS,
            "temperature": choices.TEMPERATURES,
            "combine": choices.COMBINE,
            "distance": choices.DISTANCES,
            "loss_backend": choices.LOSS_BACKENDS,
            "code_activation": choices.CODE_ACTIVATIONS,
            "output_activation": choices.OUTPUT_ACTIVATIONS,
            "init": choices.INITS,
            "positives": choices.POSITIVES,
            "layers": choices.LAYERS,
            "neighbour_space": choices.NEIGHBOUR_SPACES,
        }.items():
            validate.choice(key, getattr(self, key), allowed)
        for key in ("code_dim", "epochs", "batch_size", "neighbours", "partners"):
            validate.integer(key, getattr(self, key))
        validate.integer("patience", self.patience, allow_none=True)
        validate.integer("pseudo_labels_from", self.pseudo_labels_from, 0, allow_none=True)
        validate.integer("pseudo_label_clusters", self.pseudo_label_clusters, 2, allow_none=True)
        share = self.pseudo_label_share
        if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 < share <= 1:
            raise ValueError(f"pseudo_label_share must be in (0, 1], got {self.pseudo_label_share!r}")
        if self.pseudo_labels_from is not None and self.positives == "classes":
            raise ValueError(
                "pseudo_labels_from is for label-free positives: with positives='classes' the labels are given"
            )
        for key in ("learning_rate", "fixed_temperature", "anneal_eta", "adam_eps"):
            validate.positive(key, getattr(self, key))
        validate.non_negative("alpha", self.alpha)
        if self.positives != "classes" and (not self.snnl or self.supervised or self.method != "autoencoder"):
            raise ValueError(
                f"positives={self.positives!r} is label-free SNNL: it needs snnl=True and "
                "supervised=False (labels would not be read)"
            )
        if self.partners != 1 and self.positives == "classes":
            raise ValueError(
                f"partners={self.partners} is for label-free positives: positives='classes' draws no partners"
            )
        if self.neighbour_space != "inputs" and self.positives not in choices.NEIGHBOUR_POSITIVES:
            raise ValueError(
                f"neighbour_space={self.neighbour_space!r} says where nearest neighbours are searched; "
                f"positives={self.positives!r} searches none "
                f"(use {' or '.join(map(repr, choices.NEIGHBOUR_POSITIVES))})"
            )
        object.__setattr__(self, "hidden", tuple(validate.integer("hidden width", h) for h in self.hidden))

    def check_dependencies(self) -> None:
        """Optional packages training will need, before any work starts."""
        if self.neighbour_space == "umap":
            from ..optional import resolve_umap_backend

            resolve_umap_backend("auto")  # snnl.train.positives.NEIGHBOUR_UMAP's: cuML, else umap-learn

    @classmethod
    def resumable_fields(cls) -> tuple[str, ...]:
        """The fields a resumed training may change (``RESUMABLE``)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("resume") == "free")

    @property
    def uses_labels(self) -> bool:
        """Whether training reads labels: only the supervised SNNL does."""
        return uses_labels(vars(self))

    @property
    def reconstruction_loss(self) -> str:
        return "bce" if self.output_activation == "sigmoid" else "mse"

    def temperature_schedule(self):
        if self.temperature == "fixed":
            return FixedTemperature(self.fixed_temperature)
        return AnnealingTemperature(self.anneal_eta, self.anneal_gamma)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}")
        return cls(**data)


def uses_labels(train: dict) -> bool:
    """``TrainConfig.uses_labels`` of a stored configuration (``to_dict``),
    also of one written by an older version."""
    return (
        train.get("method", "autoencoder") == "autoencoder"
        and bool(train.get("snnl"))
        and bool(train.get("supervised"))
    )


def _snnl_preset(number: int) -> TrainConfig:
    code = number - 1
    return TrainConfig(
        name=f"snnl-{number}",
        supervised=not code & 1,
        combine="min" if code & 2 else "sum",
        temperature="annealing" if code & 4 else "fixed",
    )


# Table I's eight, the two baselines beside them, and the label-free preset chosen without test labels: each
# name's one-line meaning is what --config's help and the README show
PRESET_MEANINGS: dict[str, str] = {
    "snnl-1": "supervised, fixed T = 100, summed over layers",
    "snnl-2": "unsupervised, fixed T = 100, summed over layers",
    "snnl-3": "supervised, fixed T = 100, minimum over layers",
    "snnl-4": "unsupervised, fixed T = 100, minimum over layers",
    "snnl-5": "supervised, annealed T, summed over layers (the paper's best)",
    "snnl-6": "unsupervised, annealed T, summed over layers",
    "snnl-7": "supervised, annealed T, minimum over layers",
    "snnl-8": "unsupervised, annealed T, minimum over layers",
    "snnl-label-free": "no labels: UMAP-neighbour views, cluster positives, T = 2, 60 epochs (no test label chose it)",
    "baseline-ae": "the autoencoder alone, no SNNL",
    "original": "PCA of the inputs, no training",
}

# the label-free preset's settings (module docstring): the contrastive two-view family's rather
# than the paper's (eps = 0: every row has its partner; the term on the unit-length code alone,
# alpha = 1, where summed over every layer at alpha = 100 it swamps the reconstruction)
_LABEL_FREE = TrainConfig(
    name="snnl-label-free",
    supervised=False,
    positives="neighbour-views",
    neighbours=20,
    neighbour_space="umap",
    pseudo_labels_from=5,
    temperature="fixed",
    fixed_temperature=2.0,
    alpha=1.0,
    eps=0.0,
    layers="code",
    code_activation="unit",
    epochs=60,
)

PRESETS: dict[str, TrainConfig] = {
    **{f"snnl-{n}": _snnl_preset(n) for n in range(1, 9)},
    "snnl-label-free": _LABEL_FREE,
    "baseline-ae": TrainConfig(name="baseline-ae", snnl=False),
    "original": TrainConfig(name="original", method="pca"),
}


def temperature_fields(value) -> dict:
    """The TrainConfig fields of a temperature given as one value, as
    ``snnl run --temperature`` and ``SNNLKMeans(temperature=...)`` take it:
    ``"annealing"`` (the paper's schedule, T = 1 / (1 + epoch)^0.55) or a
    positive number (that fixed T, whatever the preset's schedule)."""
    if value == "annealing":
        return {"temperature": "annealing"}
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be 'annealing' or a positive number, got {value!r}") from None
    if isinstance(value, bool) or not number > 0 or number == float("inf"):
        raise ValueError(f"temperature must be 'annealing' or a positive number, got {value!r}")
    return {"temperature": "fixed", "fixed_temperature": number}


def with_snnl_term(config: TrainConfig, *, alpha=None, temperature=None) -> TrainConfig:
    """``config`` with its SNNL term's weight and temperature replaced where
    given (``temperature`` as ``temperature_fields`` takes it).  Refused for a
    configuration without the term, which would silently ignore them."""
    given = [name for name, value in (("alpha", alpha), ("temperature", temperature)) if value is not None]
    if not given:
        return config
    if not config.snnl or config.method != "autoencoder":  # "original" is PCA, trained with nothing
        raise ValueError(f"{given[0]} sets the SNNL term, and {config.name} has none: choose a configuration with SNNL")
    changes = {} if alpha is None else {"alpha": alpha}
    if temperature is not None:
        changes.update(temperature_fields(temperature))
    return config.replace(**changes)


def with_pseudo_label_clusters(config: TrainConfig, clusters: int) -> TrainConfig:
    """``config`` with ``pseudo_label_clusters`` set to ``clusters`` (the
    number of clusters the run will find) where it takes pseudo-labels and
    leaves that number open."""
    if config.pseudo_labels_from is None or config.pseudo_label_clusters is not None:
        return config
    return config.replace(pseudo_label_clusters=int(clusters))


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown configuration {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def config_changes(stored: dict, current: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(field, stored value, current value) for every field that differs,
    nested dictionaries flattened to dotted names."""
    changes = []
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append((f"{prefix}{key}", old, new))
    return changes


def describe_changes(changes) -> str:
    return "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in changes)


def describe(config: TrainConfig) -> str:
    if config.method == "pca":
        return f"PCA of the raw inputs to {config.code_dim} dimensions"
    if not config.snnl:
        return f"autoencoder, reconstruction loss only ({config.reconstruction_loss.upper()})"
    temperature = "annealed T" if config.temperature == "annealing" else f"fixed T={config.fixed_temperature:g}"
    if config.positives != "classes":
        where = " in a UMAP embedding" if config.neighbour_space == "umap" else ""
        partner = {
            "views": "a random view of itself",
            "neighbours": f"one of its {config.neighbours} nearest neighbours{where}",
            "neighbour-views": f"a view of one of its {config.neighbours} nearest neighbours{where}",
        }
        positive = partner[config.positives] + (f", {config.partners} per point" if config.partners > 1 else "")
        if config.pseudo_labels_from is not None:
            positive += (
                f"; after epoch {config.pseudo_labels_from} also its balanced k-means cluster of the codes, "
                f"for the {config.pseudo_label_share:.0%} of each cluster held most firmly"
            )
        return (
            f"autoencoder + {config.alpha:g} x SNNL without labels (positive: {positive}; "
            f"{temperature}, {'the code' if config.layers == 'code' else 'every hidden layer'})"
        )
    return (
        f"autoencoder + {config.alpha:g} x SNNL ({'supervised' if config.supervised else 'unsupervised'}, "
        f"{temperature}, {config.combine} over layers)"
    )
