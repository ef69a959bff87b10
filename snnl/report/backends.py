"""Which implementation each step uses on this machine, and why (``snnl backends``)."""

from __future__ import annotations

import torch

from ..cluster.kmeans import faiss_status
from ..loss.registry import BACKENDS
from ..optional import cuml_status, triton_available, umap_learn_status


def backend_report() -> list[dict]:
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else None
    rows = [
        {
            "step": "device",
            "backend": "cuda" if cuda else "cpu",
            "why": f"CUDA device: {device}" if cuda else "torch sees no CUDA device",
        }
    ]

    if cuda and triton_available():
        loss = ("triton", f"CUDA tensors and Triton importable: {BACKENDS['triton'].summary}")
    else:
        loss = (
            "blocked",
            f"{'no CUDA device' if not cuda else 'Triton is not importable'}: "
            f"{BACKENDS['blocked'].summary}, {BACKENDS['blocked'].memory} memory",
        )
    rows.append({"step": "SNNL loss (backend='auto')", "backend": loss[0], "why": loss[1]})

    has_faiss, faiss_gpu, faiss_why = faiss_status()
    if faiss_gpu and cuda:
        rows.append(
            {
                "step": "k-means (backend='auto')",
                "backend": "faiss (GPU) for CUDA runs, scikit-learn else",
                "why": faiss_why,
            }
        )
    else:
        rows.append(
            {
                "step": "k-means (backend='auto')",
                "backend": "scikit-learn",
                "why": f"{faiss_why}; on CPUs scikit-learn stops at convergence and was 1.2-4.7x faster "
                "than faiss from 3,000 to 200,000 points (bench/kmeans_crossover.py)",
            }
        )

    has_cuml, cuml_why = cuml_status()
    has_umap, umap_why = umap_learn_status()
    if has_cuml:
        rows.append({"step": "UMAP", "backend": "cuML", "why": cuml_why})
    elif has_umap:
        rows.append({"step": "UMAP", "backend": "umap-learn (CPU)", "why": f"{cuml_why}; {umap_why}"})
    else:
        rows.append({"step": "UMAP", "backend": "unavailable", "why": f"{cuml_why}; {umap_why}"})

    if has_cuml and cuda:
        rows.append({"step": "silhouette", "backend": "cuML", "why": cuml_why})
    else:
        where = "GPU via torch" if cuda else "CPU"
        rows.append(
            {
                "step": "silhouette",
                "backend": f"snnl exact row blocks ({where})",
                "why": cuml_why if not has_cuml else "no CUDA device for cuML",
            }
        )

    rows.append({"step": "Gaussian mixture", "backend": "scikit-learn (CPU)", "why": "cuML has no Gaussian mixture"})
    rows.append({"step": "Isomap, t-SNE", "backend": "scikit-learn (CPU)", "why": "the reference implementations"})
    return rows


def format_report(rows: list[dict]) -> str:
    width = max(len(r["step"]) for r in rows)
    backend_width = max(len(r["backend"]) for r in rows)
    return "\n".join(f"{r['step']:<{width}}  {r['backend']:<{backend_width}}  {r['why']}" for r in rows)
