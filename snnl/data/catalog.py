"""The named datasets: the IDX ones (their files, where they are published,
their classes), the text-format ones, and the list of every name.

Checksums are those of the files as their authors publish them.  NIST
publishes no SHA-256 for the EMNIST archive; it is checked by its exact size
and the MD5 that torchvision and others have used for years.

Local files are also checked by the SHA-256 of their *content* (the IDX
bytes, decompressed): a recompressed copy, such as Debian's
``dataset-fashion-mnist`` (the same deflate streams without the file name in
the gzip header), has other gzip bytes but the same content.  The content
digests of MNIST and Fashion-MNIST are those of the published files
decompressed (Fashion-MNIST's computed here from Debian's package, whose
content equals the published one; MNIST's as widely listed).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RemoteFile:
    """A file that can be downloaded and checked."""

    name: str
    urls: tuple[str, ...]
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class IdxDataset:
    name: str
    files: dict  # (split, "images" | "labels") -> file name
    classes: tuple[str, ...]
    transposed: bool = False  # EMNIST stores images column-major
    label_offset: int = 0  # subtracted from the stored labels (EMNIST letters are 1..26)
    remote: tuple[RemoteFile, ...] = ()  # what to download
    archive_member_dir: str | None = None  # files live inside remote[0] (a zip) under this folder
    home: str = ""  # where people get it by hand
    image_shape: tuple[int, int] = (28, 28)
    labelled_default: int | None = None  # the paper's labelled training subset
    content_sha256: dict = field(default_factory=dict)  # file name -> SHA-256 of the decompressed IDX bytes


def _mnist_style_files(prefix: str = "") -> dict:
    return {
        ("train", "images"): f"{prefix}train-images-idx3-ubyte.gz",
        ("train", "labels"): f"{prefix}train-labels-idx1-ubyte.gz",
        ("test", "images"): f"{prefix}t10k-images-idx3-ubyte.gz",
        ("test", "labels"): f"{prefix}t10k-labels-idx1-ubyte.gz",
    }


_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
_MNIST_CONTENT_SHA256 = {
    "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_FASHION_CONTENT_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
_EMNIST_ARCHIVE = RemoteFile(
    name="gzip.zip",
    urls=("https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip",),
    md5="58c8d27c78d21e728a6bc7b3cc06412e",
    size=561_753_746,
)

DIGITS = tuple(string.digits)
# Balanced and ByMerge merge the 15 lowercase letters that look like their
# capitals; the 11 that remain are listed after A-Z (emnist-balanced-mapping.txt).
EMNIST_BALANCED_CLASSES = tuple(string.digits + string.ascii_uppercase + "abdefghnqrt")

IDX_DATASETS: dict[str, IdxDataset] = {
    "mnist": IdxDataset(
        name="mnist",
        files=_mnist_style_files(),
        classes=DIGITS,
        remote=tuple(RemoteFile(f, tuple(m + f for m in _MNIST_MIRRORS), sha256=s) for f, s in _MNIST_SHA256.items()),
        home="http://yann.lecun.com/exdb/mnist/ (mirrors: " + ", ".join(_MNIST_MIRRORS) + ")",
        labelled_default=10_000,
        content_sha256=_MNIST_CONTENT_SHA256,
    ),
    "fashion-mnist": IdxDataset(
        name="fashion-mnist",
        files=_mnist_style_files(),
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        remote=tuple(
            RemoteFile(f, tuple(m + f for m in _FASHION_MIRRORS), sha256=s) for f, s in _FASHION_SHA256.items()
        ),
        home="https://github.com/zalandoresearch/fashion-mnist (Debian/Ubuntu: apt-get install dataset-fashion-mnist)",
        labelled_default=10_000,
        content_sha256=_FASHION_CONTENT_SHA256,
    ),
}

_EMNIST_SPLITS = {
    # split -> (classes, label offset, the paper's labelled subset)
    "balanced": (EMNIST_BALANCED_CLASSES, 0, 20_000),
    "bymerge": (EMNIST_BALANCED_CLASSES, 0, None),
    "byclass": (tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase), 0, None),
    "letters": (tuple(string.ascii_lowercase), 1, None),
    "digits": (DIGITS, 0, None),
    "mnist": (DIGITS, 0, None),
}
for _split, (_classes, _offset, _labelled) in _EMNIST_SPLITS.items():
    IDX_DATASETS[f"emnist-{_split}"] = IdxDataset(
        name=f"emnist-{_split}",
        files={
            ("train", "images"): f"emnist-{_split}-train-images-idx3-ubyte.gz",
            ("train", "labels"): f"emnist-{_split}-train-labels-idx1-ubyte.gz",
            ("test", "images"): f"emnist-{_split}-test-images-idx3-ubyte.gz",
            ("test", "labels"): f"emnist-{_split}-test-labels-idx1-ubyte.gz",
        },
        classes=_classes,
        transposed=True,
        label_offset=_offset,
        remote=(_EMNIST_ARCHIVE,),
        archive_member_dir="gzip",
        home="https://www.nist.gov/itl/products-and-services/emnist-dataset (the 'gzip.zip' archive)",
        labelled_default=_labelled,
    )


def known_files() -> dict[str, tuple[str, str]]:
    """Every published digest (of a gzip file or of its content) -> (dataset,
    file name): to recognise a file that belongs to another dataset."""
    index = {}
    for spec in IDX_DATASETS.values():
        for remote in spec.remote:
            if remote.sha256:
                index[remote.sha256] = (spec.name, remote.name)
        for name, digest in spec.content_sha256.items():
            index[digest] = (spec.name, name)
    return index


# the datasets that need no file (made by snnl.data.builtin)
@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    loader: str  # the function of snnl.data.builtin that gives a split's (x, y)
    source: str  # what it is made from, for the provenance record
    classes: tuple[str, ...] | None = None  # None: "0" .. "k-1", from the labels
    image_shape: tuple[int, int] | None = None
    # the function of snnl.data.builtin that checks its options and fills in their defaults;
    # None: the dataset takes no options
    options: str | None = None


BUILTIN_DATASETS = {
    "digits": BuiltinDataset("digits", "digits", "sklearn.datasets.load_digits", DIGITS, (8, 8)),
    # tabular: no image shape (label-free views drop and jitter features, snnl.train.augment)
    "iris": BuiltinDataset("iris", "iris", "sklearn.datasets.load_iris", ("setosa", "versicolor", "virginica")),
    "wine": BuiltinDataset("wine", "wine", "sklearn.datasets.load_wine", ("class_0", "class_1", "class_2")),
    "breast-cancer": BuiltinDataset(
        "breast-cancer", "breast_cancer", "sklearn.datasets.load_breast_cancer", ("malignant", "benign")
    ),
    "blobs": BuiltinDataset("blobs", "blobs", "sklearn.datasets.make_blobs", options="blobs_options"),
}


# the text-format datasets (read by snnl.data.text_formats)
@dataclass(frozen=True)
class TextDataset:
    name: str
    files: dict  # split -> tuple of relative paths (one, or features + labels)
    classes: tuple[str, ...]
    home: str
    reader: str  # the key of its reader in snnl.data.text_formats.READERS
    image_shape: tuple[int, int] | None = None


TEXT_DATASETS = {
    "usps": TextDataset(
        "usps",
        {"train": ("usps",), "test": ("usps.t",)},
        tuple("0123456789"),
        "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps",
        "usps",
        (16, 16),
    ),
    "pendigits": TextDataset(
        "pendigits",
        {"train": ("pendigits.tra",), "test": ("pendigits.tes",)},
        tuple("0123456789"),
        "https://archive.ics.uci.edu/dataset/81/pen+based+recognition+of+handwritten+digits",
        "pendigits",
    ),
    "har": TextDataset(
        "har",
        {
            "train": ("UCI HAR Dataset/train/X_train.txt", "UCI HAR Dataset/train/y_train.txt"),
            "test": ("UCI HAR Dataset/test/X_test.txt", "UCI HAR Dataset/test/y_test.txt"),
        },
        ("walking", "walking upstairs", "walking downstairs", "sitting", "standing", "laying"),
        "https://archive.ics.uci.edu/dataset/240/human+activity+recognition+using+smartphones",
        "har",
    ),
}


def dataset_names() -> list[str]:
    """Every dataset ``load_dataset`` knows: built in, IDX, text formats."""
    return [*BUILTIN_DATASETS, *IDX_DATASETS, *TEXT_DATASETS]
