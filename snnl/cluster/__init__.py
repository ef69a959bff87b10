"""Clustering the codes (the fifth step of the data flow).

- ``kmeans``: k-means on scikit-learn or faiss (CPU or GPU), the paper's protocol or restarts;
- ``manifold``: the manifold learners of N2D (UMAP on cuML or umap-learn, Isomap, t-SNE) and their configuration;
- ``assign``: N2D's last step, a Gaussian mixture (or k-means) on the embedding.

Training uses the manifold too: label-free SNNL can search each point's
neighbours in a UMAP embedding (``snnl.train.positives``).
"""
