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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .loss.registry import CHOICES as BACKEND_CHOICES
from .loss.validation import DISTANCES
from .models import CODE_ACTIVATIONS, INITS, OUTPUT_ACTIVATIONS
from .positives import KINDS as POSITIVES
from .positives import LABEL_FREE
from .temperature import AnnealingTemperature, FixedTemperature

LAYERS = ("all", "code")


@dataclass(frozen=True)
class TrainConfig:
    name: str = "snnl-5"
    method: str = "autoencoder"  # "autoencoder", or "pca" (the ``original`` baseline)
    snnl: bool = True  # add alpha * SNNL over the hidden layers to the reconstruction loss
    supervised: bool = True  # False: every point is one class (see the module docstring)
    # who are each point's positives: its classmates ("classes": the labels', or one class when
    # not supervised), or, label-free, a partner drawn each batch: a view of it, one of its nearest
    # neighbours, or a view of one (snnl.positives)
    positives: str = "classes"
    neighbours: int = 10  # the k nearest neighbours a "neighbours" / "neighbour-views" partner is drawn from
    layers: str = "all"  # where the SNNL term applies: every hidden layer (the paper's) or the code alone
    temperature: str = "annealing"  # or "fixed"
    fixed_temperature: float = 100.0
    anneal_eta: float = 1.0
    anneal_gamma: float = 0.55
    combine: str = "sum"  # over layers: "sum" (Eq. 5) or "min" (Eq. 4, the paper's argmin)
    alpha: float = 100.0
    distance: str = "cosine"
    eps: float = 1e-5
    loss_backend: str = "auto"
    code_dim: int = 70
    hidden: tuple[int, ...] = (500, 500, 2000)
    # logistic code and output, binary cross-entropy (SNNL autoencoder); N2D uses
    # linear ones and the mean squared error
    code_activation: str = "sigmoid"
    output_activation: str = "sigmoid"
    init: str = "he"  # "he" (He on ReLU layers) or "glorot" (Keras' default, N2D's code); see snnl.models
    epochs: int = 50
    batch_size: int = 256
    learning_rate: float = 1e-3
    adam_eps: float = 1e-8  # torch's default; Keras (N2D's code) uses 1e-7
    patience: int | None = None  # stop when the epoch loss has not improved for this many epochs
    amp: bool = False  # bfloat16 autocast, CUDA only

    def __post_init__(self):
        choices = {
            "method": ("autoencoder", "pca"),
            "temperature": ("annealing", "fixed"),
            "combine": ("sum", "min"),
            "distance": DISTANCES,
            "loss_backend": BACKEND_CHOICES,
            "code_activation": CODE_ACTIVATIONS,
            "output_activation": OUTPUT_ACTIVATIONS,
            "init": INITS,
            "positives": POSITIVES,
            "layers": LAYERS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        for key in ("code_dim", "epochs", "batch_size", "neighbours"):
            value = getattr(self, key)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        for key in ("learning_rate", "fixed_temperature", "anneal_eta", "adam_eps"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)!r}")
        if self.patience is not None and (int(self.patience) != self.patience or self.patience < 1):
            raise ValueError(f"patience must be a positive integer or None, got {self.patience!r}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.positives != "classes" and (not self.snnl or self.supervised or self.method != "autoencoder"):
            raise ValueError(f"positives={self.positives!r} is label-free SNNL: it needs snnl=True and "
                             "supervised=False (labels would not be read)")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

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

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}")
        return cls(**data)


def uses_labels(train: dict) -> bool:
    """``TrainConfig.uses_labels`` of a stored configuration (``to_dict``),
    also of one written by an older version."""
    return train.get("method", "autoencoder") == "autoencoder" and bool(train.get("snnl")) \
        and bool(train.get("supervised"))


def _snnl_preset(number: int) -> TrainConfig:
    code = number - 1
    return TrainConfig(
        name=f"snnl-{number}",
        supervised=not code & 1,
        combine="min" if code & 2 else "sum",
        temperature="annealing" if code & 4 else "fixed",
    )


def _label_free_preset(positives: str) -> TrainConfig:
    """SNNL without labels (snnl.positives): each point's partner is its one
    positive.  The loss is the contrastive two-view form, so its settings are
    that family's rather than the paper's: a sharp fixed temperature (0.1 on
    the cosine distance), the term on the code alone with alpha = 1 (summed
    over every layer at alpha = 100 it swamps the reconstruction), eps = 0
    (every row has its partner), and a unit-length code, compared by cosine
    in the loss and clustered by k-means in that same geometry."""
    return TrainConfig(name=f"snnl-{positives}", supervised=False, positives=positives, temperature="fixed",
                       fixed_temperature=0.1, alpha=1.0, eps=0.0, layers="code", code_activation="unit")


PRESETS: dict[str, TrainConfig] = {
    **{f"snnl-{n}": _snnl_preset(n) for n in range(1, 9)},
    **{f"snnl-{kind}": _label_free_preset(kind) for kind in LABEL_FREE},
    "baseline-ae": TrainConfig(name="baseline-ae", snnl=False),
    "original": TrainConfig(name="original", method="pca"),
}


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown configuration {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


# --------------------------------------------------------------------------- checks shared by the run configurations


def check_positive_int(name: str, value, minimum: int = 1, *, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() \
            or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_seeds(seeds) -> tuple[int, ...]:
    """Seeds: at least one, each an integer in [0, 2**32) (what numpy and
    scikit-learn accept), no repeats (a repeated seed would count twice in
    the mean and standard deviation)."""
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("at least one seed is needed")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"seeds must be integers in [0, 2**32), got {seed!r}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds must not repeat; {', '.join(map(str, repeated))} appear more than once")
    return seeds


def check_device(device) -> str:
    """'auto', 'cpu', 'cuda' or 'cuda:N' (any device torch knows, checked
    against what this machine has before any work starts)."""
    import torch

    if device == "auto":
        return device
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for, but torch sees no CUDA device")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return str(device)


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def describe(config: TrainConfig) -> str:
    if config.method == "pca":
        return f"PCA of the raw inputs to {config.code_dim} dimensions"
    if not config.snnl:
        return f"autoencoder, reconstruction loss only ({config.reconstruction_loss.upper()})"
    temperature = "annealed T" if config.temperature == "annealing" else f"fixed T={config.fixed_temperature:g}"
    if config.positives != "classes":
        partner = {"views": "a random view of itself", "neighbours": f"one of its {config.neighbours} nearest "
                   "neighbours", "neighbour-views": f"a view of one of its {config.neighbours} nearest neighbours"}
        return (f"autoencoder + {config.alpha:g} x SNNL without labels (positive: {partner[config.positives]}; "
                f"{temperature}, {'the code' if config.layers == 'code' else 'every hidden layer'})")
    return (
        f"autoencoder + {config.alpha:g} x SNNL ({'supervised' if config.supervised else 'unsupervised'}, "
        f"{temperature}, {config.combine} over layers)"
    )
