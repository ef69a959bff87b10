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

Label-free SNNL (``snnl-views``, ``snnl-neighbours``, ``snnl-neighbour-views``)
answers "who counts as the same" without labels (``snnl.train.positives``): each
point's positive is a partner drawn every batch (a random view of itself,
one of its 10 nearest input-space neighbours, or a view of one), and the
loss is the two-view form, the NT-Xent / InfoNCE family, applied to a
unit-length code (T = 0.5 on the cosine distance, alpha = 1, the code layer
alone).  They too train on the whole training set.  On a 10,000-image
Fashion-MNIST screen (40 epochs, k-means on the test codes; the plain
autoencoder 0.51-0.53 there): views alone fell to ACC 0.23-0.35 (instance
discrimination with an MLP and small warps spreads the classes apart),
neighbours or views of neighbours at T = 0.1 rose to about 0.57 by epoch 10
and then sank (0.31-0.50 by epoch 40: a sharp softmax repels the many
same-class points that are not the partner), and at T = 0.5 both held about
0.60 (neighbour views 0.593 at epoch 20, 0.613 at 40).  The full
Fashion-MNIST run of ``snnl-neighbour-views`` at T = 0.1 confirmed the
decline (ACC 0.350 after 50 epochs on 60,000 images), hence T = 0.5.

``snnl-umap-neighbour-views`` searches the neighbours in a 10-d UMAP
embedding of the inputs instead (``TrainConfig.neighbour_space``; N2D's
UMAP settings).  On the same screen, at 20 epochs: 20 UMAP neighbours gave
ACC 0.672-0.678 (NMI 0.634) against the input-space neighbours' 0.605 (NMI
0.619), although fewer of them share the anchor's class (0.72 against
0.77): a point's neighbours along the data's manifold pull it along its
class rather than towards its near duplicates.  50 UMAP neighbours fell
back to 0.598, and with 20 the ACC fell from 0.678 at epoch 20 to 0.629 at
epoch 40: hence 20 neighbours and 20 epochs.  (The screen, like every
choice of a preset here, scored the codes with the labels; training never
reads them.)  On the whole of Fashion-MNIST (Table IV protocol, 4 seeds)
it reached ACC 0.648 +- 0.016, NMI 0.628 +- 0.021, against 0.602 / 0.632
for the input-space neighbours (results/fashion-mnist/label-free.md).
Three partners per anchor (``partners=3``) instead of one, neighbours from
the UMAP of a plain autoencoder's codes, and neighbours refreshed from the
codes during training were screened next and gave no gain; scored after
every epoch on the whole training set, the preset reaches its level in two
epochs and then moves about it (ACC 0.56-0.69 from one epoch to the next,
no trend), and neither a lower learning rate, 60 neighbours, a larger
batch at the same or a scaled learning rate, nor training on the test
images too (N2D's protocol) lifted that level (results/README.md).

``snnl-umap-neighbour-views-t1`` and ``-t1.5`` are the same at T = 1 and
1.5.  Scored after every epoch on the whole training set (seed 0), T = 1
held ACC 0.66-0.68 (NMI 0.64) from epoch 3 to 8 where T = 0.5 swung between
0.58 and 0.69 (mean 0.63): a softer softmax repels the same-class points
that are not the partner less, and the codes stop moving about.  T = 1.5
rose more slowly and held 0.687-0.696 (NMI 0.65) from epoch 11 to 20;
T = 2 was too soft (ACC 0.57-0.59, NMI rising slowly to 0.62 by epoch 8).
Over 4 seeds (Table IV protocol) T = 1 reached ACC 0.675 +- 0.014, NMI
0.645 +- 0.013, and T = 1.5 ACC 0.693 +- 0.002, NMI 0.655 +- 0.003
(results/fashion-mnist/label-free.md); on the 1,347 digits (120 steps in
20 epochs) they fall below T = 0.5 (0.911 and 0.844 against 0.952).  At
T = 1, alpha = 3 held 0.68-0.69 but dipped to 0.58 at epoch 19; at T = 1.5,
40 UMAP neighbours, or 20 from the UMAP of a plain autoencoder's codes,
scored no higher by epoch 11 (0.673 and 0.609).  Other changes, screened
the same way at T = 0.5, stayed in its band or fell below it: negatives
debiased for a class prior of 0.1 (Chuang et al.), each anchor's 10 most
similar in-batch negatives left out of its denominator (false-negative
cancellation), a view as the anchor too, neighbours ranked by shared
neighbours, and the term on every hidden layer (results/README.md).

``snnl-umap-neighbour-views-clusters`` is ``-t1.5`` with cluster positives
(``snnl.train.pseudo_labels``): from the eleventh epoch on, the training
codes are clustered before every epoch, spread in equal shares over
k-means's centres, and the half of each cluster held most firmly takes the
cluster as its label, so that its cluster mates are positives beside its
partner.  Started at the sixth epoch, seed 0 passed ACC 0.70 at epoch 8
and held 0.700-0.707 (NMI 0.654-0.660) to epoch 20, where ``-t1.5`` held
0.687-0.696; the equal shares were what helped (plain k-means clusters as
labels, 4,100-9,500 points where every class has 6,000, ended at 0.680).
But seeds 1 and 2 locked a wrong cut of the footwear into their labels
(sandals split between the sneakers' and the boots' clusters) and ended
at 0.631 and 0.642: the codes of the sixth epoch are too young.  From the
eleventh, when ``-t1.5``'s codes have reached their level, seed 1 passed
0.70 by epoch 13.  Over 4 seeds (Table IV protocol), after 20 epochs, ACC
0.699 +- 0.005, NMI 0.657 +- 0.007.  Trained on, ACC held 0.70-0.71 while
NMI kept rising slowly (seed 1: 0.665 at epoch 20, 0.668 at 40, 0.675 at
60; seed 0: 0.661 at 20, 0.667 at 30), hence 60 epochs.  Labels from 30
clusters instead of 10 (over-clustering) scored lower and swung more
(seed 0, epochs 11 to 26: ACC 0.61-0.70, NMI 0.62-0.66; 0.685 / 0.650 at
26, where 10 clusters gave 0.708 / 0.664).  Over 4 seeds at 60
epochs: ACC 0.704 +- 0.005, NMI 0.668 +- 0.008 (results/README.md).
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


def _label_free_preset(positives: str, neighbour_space: str = "inputs") -> TrainConfig:
    """SNNL without labels (snnl.train.positives): each point's partner is its one
    positive.  The loss is the contrastive two-view form, so its settings are
    that family's rather than the paper's: a fixed temperature of 0.5 on the
    cosine distance (0.1, NT-Xent's usual, repels same-class points that are
    not the partner until the classes dissolve), the term on the code alone with alpha = 1 (summed
    over every layer at alpha = 100 it swamps the reconstruction), eps = 0
    (every row has its partner), and a unit-length code, compared by cosine
    in the loss and clustered by k-means in that same geometry.
    ``neighbour_space="umap"``: the neighbours searched in a UMAP embedding
    of the inputs (``snnl-umap-neighbour-views``)."""
    return TrainConfig(
        name=f"snnl-{positives}" if neighbour_space == "inputs" else f"snnl-{neighbour_space}-{positives}",
        supervised=False,
        positives=positives,
        neighbour_space=neighbour_space,
        temperature="fixed",
        fixed_temperature=0.5,
        alpha=1.0,
        eps=0.0,
        layers="code",
        code_activation="unit",
    )


# 20 UMAP neighbours (UMAP's own neighbourhood size) and 20 epochs: on the screen (module
# docstring) ACC rose to 0.67-0.68 by epoch 20 and fell back to 0.63 by epoch 40
_UMAP_NEIGHBOUR_VIEWS = _label_free_preset("neighbour-views", "umap").replace(neighbours=20, epochs=20)

PRESETS: dict[str, TrainConfig] = {
    **{f"snnl-{n}": _snnl_preset(n) for n in range(1, 9)},
    **{f"snnl-{kind}": _label_free_preset(kind) for kind in choices.LABEL_FREE},
    "snnl-umap-neighbour-views": _UMAP_NEIGHBOUR_VIEWS,
    # the same at T = 1 and 1.5: steadier codes on Fashion-MNIST (the module docstring's screens)
    **{
        f"snnl-umap-neighbour-views-t{t:g}": _UMAP_NEIGHBOUR_VIEWS.replace(
            name=f"snnl-umap-neighbour-views-t{t:g}", fixed_temperature=t
        )
        for t in (1.0, 1.5)
    },
    # and with cluster positives: from epoch 11 on, each point's balanced k-means cluster of the
    # codes is its label too, for the half of each cluster held most firmly (snnl.train.pseudo_labels);
    # 60 epochs, as NMI still rises slowly after 20 while ACC holds (the module docstring)
    "snnl-umap-neighbour-views-clusters": _UMAP_NEIGHBOUR_VIEWS.replace(
        name="snnl-umap-neighbour-views-clusters", fixed_temperature=1.5, pseudo_labels_from=10, epochs=60
    ),
    # the recommended label-free preset, chosen without the Fashion-MNIST test split by seed
    # agreement on the training images (results/fashion-mnist/selection/PROTOCOL.md)
    "snnl-label-free": _UMAP_NEIGHBOUR_VIEWS.replace(
        name="snnl-label-free", fixed_temperature=2.0, pseudo_labels_from=5, epochs=60
    ),
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
