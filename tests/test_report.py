"""What is shown to people: the backend report (snnl backends)."""

import torch

from snnl.optional import umap_learn_status
from snnl.report.backends import backend_report, format_report

HAS_UMAP = umap_learn_status()[0]


def test_backend_report_names_what_auto_runs():
    # the report is read by users deciding what to install: it must name the
    # backends that "auto" really resolves to on this machine

    from snnl.cluster.kmeans import resolve_kmeans_backend
    from snnl.loss.registry import resolve
    from snnl.optional import resolve_umap_backend

    rows = {row["step"]: row for row in backend_report()}
    assert rows["SNNL loss (backend='auto')"]["backend"] == resolve("auto", torch.zeros(4, 2)).name
    kmeans_row = rows["k-means (backend='auto')"]["backend"]
    assert kmeans_row.startswith({"sklearn": "scikit-learn", "faiss": "faiss"}[resolve_kmeans_backend("auto")])
    umap_row = rows["UMAP"]["backend"]
    if HAS_UMAP or umap_row != "unavailable":
        assert umap_row.lower().startswith(resolve_umap_backend("auto").lower())
    assert "cuML has no Gaussian mixture" in format_report(list(rows.values()))
