"""The label-free training the tests run: the recommended preset and its parts.

``snnl-label-free`` combines a partner kind (a view of a neighbour), a
neighbour space (UMAP) and cluster positives; each part is a TrainConfig
option a user can set alone, so the tests train each, built from the one
preset rather than from presets of their own.
"""

from snnl.train.config import preset

VARIANTS = {
    "views": dict(positives="views", neighbour_space="inputs", pseudo_labels_from=None),
    "neighbours": dict(positives="neighbours", neighbour_space="inputs", neighbours=10, pseudo_labels_from=None),
    "neighbour-views": dict(
        positives="neighbour-views", neighbour_space="inputs", neighbours=10, pseudo_labels_from=None
    ),
    "umap-neighbour-views": dict(pseudo_labels_from=None),
    "snnl-label-free": {},
}


def label_free(variant: str = "neighbour-views", **changes):
    """``snnl-label-free`` reduced to ``variant`` (``VARIANTS``), with ``changes``."""
    return preset("snnl-label-free", **{**VARIANTS[variant], **changes})
