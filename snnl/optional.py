"""Probes of the optional packages: Triton (the fused loss kernels) and the
manifold learners (cuML, umap-learn): whether each imports and why not, and
which UMAP ``auto`` picks.  Imports neither until asked, and nothing of snnl, so that a
configuration can check what a run needs before any work starts.
"""

from __future__ import annotations


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def cuml_status() -> tuple[bool, str]:
    try:
        import cuml  # noqa: F401
    except ImportError:
        return False, "cuML is not installed (RAPIDS, CUDA only)"
    except Exception as error:  # cuML present but unusable, e.g. no GPU
        return False, f"cuML is installed but failed to import: {error}"
    return True, f"cuML {cuml.__version__}"


def umap_learn_status() -> tuple[bool, str]:
    try:
        import umap
    except ImportError:
        return False, "umap-learn is not installed (pip install 'snnl[umap]')"
    return True, f"umap-learn {umap.__version__}"


def resolve_umap_backend(backend: str = "auto") -> str:
    if backend == "auto":
        if cuml_status()[0]:
            return "cuml"
        if umap_learn_status()[0]:
            return "umap-learn"
        raise ImportError("UMAP needs cuML or umap-learn: " + umap_learn_status()[1])
    available, why = cuml_status() if backend == "cuml" else umap_learn_status()
    if not available:
        raise ImportError(why)
    return backend
