"""Every choice list of the package, in a leaf that imports nothing.

The modules that implement the choices import their list from here (the
loss registry checks that its backends are these), the configurations
validate against them, and the ``snnl`` command builds its options from them
without importing torch, so that ``snnl --help`` answers at once.
"""

# the loss (snnl.loss): backend= ("auto" picks one; snnl.loss.registry), distance=, reduction=
LOSS_BACKENDS = ("auto", "reference", "blocked", "triton")
DISTANCES = ("cosine", "euclidean")
REDUCTIONS = ("mean", "sum", "none", "mean_over_positives")
# the contrastive forms (snnl.loss.forms): their means are over the rows or pairs that have a positive
FORM_REDUCTIONS = ("mean", "sum", "none")
# how the fused kernels (snnl.kernels) multiply fp32 operands on the tensor cores: three TF32
# products (fp32-level accuracy, the default), one (about 1e-3 relative), or the FMA units
PRECISIONS = ("tf32x3", "tf32", "ieee")

# the autoencoder (snnl.autoencoder) and its training (snnl.train.config.TrainConfig)
CODE_ACTIVATIONS = ("sigmoid", "linear", "unit")
OUTPUT_ACTIVATIONS = ("sigmoid", "linear")
INITS = ("he", "glorot")
METHODS = ("autoencoder", "pca")  # "pca": the ``original`` baseline
TEMPERATURES = ("annealing", "fixed")
COMBINE = ("sum", "min")  # over layers: Eq. 5, Eq. 4 (the paper's argmin)
POSITIVES = ("classes", "views", "neighbours", "neighbour-views")  # snnl.train.positives
LABEL_FREE = POSITIVES[1:]
NEIGHBOUR_POSITIVES = LABEL_FREE[1:]  # the label-free positives that search nearest neighbours
LAYERS = ("all", "code")  # where the SNNL term applies
# where a label-free partner's nearest neighbours are searched: the inputs themselves, or their UMAP embedding
NEIGHBOUR_SPACES = ("inputs", "umap")

# clustering, manifolds, figures
KMEANS_BACKENDS = ("auto", "sklearn", "faiss")
KMEANS_PROTOCOLS = ("restarts", "paper")
# which images `snnl run` trains on and clusters: the training split, then the test split (the
# paper's Table IV), or both, without labels, all of them clustered (N2D's protocol)
RUN_PROTOCOLS = ("test", "all")
MANIFOLDS = ("umap", "isomap", "tsne", "none")
UMAP_BACKENDS = ("auto", "cuml", "umap-learn")
CLUSTERERS = ("gmm", "kmeans")  # N2D's last step
PROJECTIONS = ("tsne", "pca", "none")  # the 2-D projection in the figures
