"""The ``snnl`` command: parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import sys

import torch


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("snnl: --device cuda was asked for, but torch sees no CUDA device")
    return device


def cmd_loss(args) -> int:
    from .loss.compare import compare_backends

    device = _device(args.device)
    print(
        f"soft nearest neighbor loss, {args.distance} distance, b={args.batch} d={args.dim} "
        f"classes={args.classes} T={args.temperature} on {device}"
    )
    rows = compare_backends(args.batch, args.dim, args.classes, args.temperature, args.distance, device, args.seed)
    print(f"{'backend':<10} {'loss':>12} {'max |grad - ref|':>17} {'forward+backward':>17}")
    for row in rows:
        print(f"{row['backend']:<10} {row['loss']:>12.6f} {row['max_grad_diff']:>17.2e} {row['seconds'] * 1e3:>14.1f} ms")
    return 0


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds needs at least one seed")
    return seeds


def _labelled(text: str) -> int | None:
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--labelled takes a number or 'all', got {text!r}") from None


def _options(text: str) -> dict:
    options = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        options[key.strip()] = float(value) if key.strip() == "cluster_std" else int(value)
    return options


def experiment_from_args(args):
    from .config import preset
    from .pipeline import ExperimentConfig

    overrides = {
        key: value
        for key, value in {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "alpha": args.alpha,
            "code_dim": args.code_dim,
            "loss_backend": args.loss_backend,
            "amp": args.amp or None,
            "init": args.init,
            "adam_eps": args.adam_eps,
        }.items()
        if value is not None
    }
    return ExperimentConfig(
        train=preset(args.config, **overrides),
        labelled=args.labelled,
        kmeans_protocol=args.kmeans_protocol,
        kmeans_restarts=args.kmeans_restarts,
        **_shared_fields(args),
    )


def _shared_fields(args) -> dict:
    """Configuration fields `snnl run` and `snnl n2d` share."""
    return dict(
        dataset=args.dataset,
        seeds=args.seeds,
        kmeans_backend=args.kmeans_backend,
        device=args.device,
        data_dir=args.data_dir,
        download=args.download,
        dataset_options=args.blobs or {},
        projection=args.projection,
        silhouette_sample=args.silhouette_sample,
    )


def _print_result(result, out) -> int:
    from .report import experiment_table

    if not result.summary:  # a torchrun process other than the main one
        return 0
    metrics = {"summary": result.summary, "seeds": [s.metrics for s in result.seeds]}
    print(experiment_table(metrics, f"{result.config.dataset} {result.config.label}"))
    if out:
        print(f"results, embeddings, checkpoints and figures in {out}", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    from .config import describe
    from .pipeline import run_experiment

    config = experiment_from_args(args)
    print(f"snnl run: {config.dataset}, {config.train.name} = {describe(config.train)}; seeds {list(config.seeds)}",
          file=sys.stderr)
    return _print_result(run_experiment(config, args.out, resume=args.resume, progress=not args.quiet), args.out)


def cmd_n2d(args) -> int:
    from .manifold import ManifoldConfig
    from .n2d import AUTOENCODER, N2DConfig, run_n2d

    overrides = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.lr,
                                   "patience": args.patience, "init": args.init, "adam_eps": args.adam_eps}.items()
                 if v is not None}
    config = N2DConfig(
        n_clusters=args.n_clusters,
        autoencoder=AUTOENCODER.replace(**overrides),
        manifold=ManifoldConfig(method=args.manifold, umap_neighbors=args.umap_neighbors,
                                umap_min_dist=args.umap_min_dist, umap_backend=args.umap_backend,
                                fit_sample=args.umap_fit_sample),
        cluster=args.cluster,
        codes_from=args.codes_from,
        raw=args.raw,
        snapshot_every=args.snapshot_every,
        **_shared_fields(args),
    )
    source = f"codes of {args.codes_from}" if args.codes_from else f"{config.dataset} (train + test)"
    print(f"snnl n2d: {source}: {config.label}; seeds {list(config.seeds)}", file=sys.stderr)
    return _print_result(run_n2d(config, args.out, resume=args.resume, progress=not args.quiet), args.out)


def cmd_backends(args) -> int:
    from .backends import backend_report, format_report

    print(format_report(backend_report()))
    return 0


def cmd_table(args) -> int:
    from pathlib import Path

    from .pipeline import read_metrics
    from .report import runs_table

    runs = [(Path(d).name, read_metrics(d)) for d in args.runs]
    table = runs_table(runs)
    if args.output:
        Path(args.output).write_text(table + "\n")
    print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .cluster import KMEANS_BACKENDS, PROTOCOLS
    from .config import PRESETS
    from .loss.validation import BACKENDS
    from .data import dataset_names

    parser = argparse.ArgumentParser(prog="snnl", description="Soft nearest neighbor loss and SNNL autoencoders for clustering.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_shared(parser):
        """Options `snnl run` and `snnl n2d` share."""
        parser.add_argument("--dataset", default="digits", choices=dataset_names())
        parser.add_argument("--seeds", type=_seeds, default=(0,), help="comma-separated, e.g. 0,1,2,3")
        parser.add_argument("--out", default=None, help="write metrics.json, embeddings.npz, checkpoints and figures here")
        parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
        parser.add_argument("--epochs", type=int, default=None)
        parser.add_argument("--batch-size", type=int, default=None, help="the global batch (split across torchrun processes)")
        parser.add_argument("--lr", type=float, default=None)
        parser.add_argument("--init", default=None, choices=["he", "glorot"],
                            help="weight initialisation (default: the preset's; N2D: glorot, as Keras)")
        parser.add_argument("--adam-eps", type=float, default=None, help="Adam's epsilon (default 1e-8; N2D: 1e-7, as Keras)")
        parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        parser.add_argument("--kmeans-backend", default="auto", choices=KMEANS_BACKENDS)
        parser.add_argument("--projection", default="tsne", choices=["tsne", "pca", "none"],
                            help="2-D projection in figures/projection.png")
        parser.add_argument("--silhouette-sample", type=int, default=None,
                            help="estimate the silhouette on this many points (default: exact, O(n^2))")
        parser.add_argument("--data-dir", default=None, help="where the dataset files are (default: $SNNL_DATA, system dirs, cache)")
        parser.add_argument("--download", action="store_true", help="download missing IDX files from the official sources")
        parser.add_argument("--blobs", type=_options, default=None, help="blobs options, e.g. n_samples=5000,n_features=32,centers=10")
        parser.add_argument("--quiet", action="store_true", help="no progress bars")

    run = sub.add_parser("run", help="train, encode the test set, k-means, metrics (Agarap & Azcarraga)")
    add_shared(run)
    run.add_argument("--config", default="snnl-5", choices=list(PRESETS), help="a preset of the paper's Table I, or a baseline")
    run.add_argument("--labelled", type=_labelled, default=None,
                     help="labelled training examples (default: the paper's subset, else all); 'all' for all")
    run.add_argument("--alpha", type=float, default=None)
    run.add_argument("--code-dim", type=int, default=None)
    run.add_argument("--loss-backend", default=None, choices=list(BACKENDS))
    run.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    run.add_argument("--kmeans-protocol", default="restarts", choices=PROTOCOLS)
    run.add_argument("--kmeans-restarts", type=int, default=10)
    run.set_defaults(func=cmd_run)

    n2d = sub.add_parser("n2d", help="N2D: autoencoder -> UMAP -> Gaussian mixture (McConville et al.)")
    add_shared(n2d)
    n2d.add_argument("--codes-from", default=None, help="cluster the test codes of this `snnl run --out` directory instead")
    n2d.add_argument("--raw", action="store_true",
                     help="no autoencoder: the manifold learner and clustering on the inputs (N2D's Table 1 baseline)")
    n2d.add_argument("--manifold", default="umap", choices=["umap", "isomap", "tsne", "none"])
    n2d.add_argument("--cluster", default="gmm", choices=["gmm", "kmeans"])
    n2d.add_argument("--n-clusters", type=int, default=None, help="default: the number of classes")
    n2d.add_argument("--patience", type=int, default=None, help="early stopping: epochs without improvement")
    n2d.add_argument("--umap-neighbors", type=int, default=20)
    n2d.add_argument("--umap-min-dist", type=float, default=0.0)
    n2d.add_argument("--umap-backend", default="auto", choices=["auto", "cuml", "umap-learn"])
    n2d.add_argument("--snapshot-every", type=int, default=None,
                     help="keep the autoencoder every N epochs beside the checkpoint (see `snnl snapshots`)")
    n2d.add_argument("--umap-fit-sample", type=int, default=None, help="fit UMAP on this many points, transform the rest")
    n2d.set_defaults(func=cmd_n2d)

    backends = sub.add_parser("backends", help="which backend each step uses on this machine, and why")
    backends.set_defaults(func=cmd_backends)

    table = sub.add_parser("table", help="collect runs into one Markdown table (the paper's Tables III-V)")
    table.add_argument("runs", nargs="+", help="--out directories of finished runs")
    table.add_argument("--output", default=None, help="also write the table to this file")
    table.set_defaults(func=cmd_table)

    loss = sub.add_parser("loss", help="compute the loss with every available backend on a random batch")
    loss.add_argument("--batch", type=int, default=2048)
    loss.add_argument("--dim", type=int, default=70)
    loss.add_argument("--classes", type=int, default=10)
    loss.add_argument("--temperature", type=float, default=0.5)
    loss.add_argument("--distance", choices=["cosine", "euclidean"], default="cosine")
    loss.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    loss.add_argument("--seed", type=int, default=0)
    loss.set_defaults(func=cmd_loss)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import distributed

    if distributed.launched_by_torchrun() and hasattr(args, "device"):
        # torchrun --nproc-per-node N ...: one process per GPU (NCCL) or CPU worker (gloo)
        args.device = str(distributed.init_from_environment(args.device))
        if not distributed.is_main_process():
            args.quiet = True
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, ImportError, FloatingPointError) as error:
        # Problems with the user's input or environment: say what, without a traceback.
        print(f"snnl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"snnl {args.command}: interrupted (--resume continues from the last checkpoint)", file=sys.stderr)
        return 130
    finally:
        if distributed.is_initialized():
            distributed.destroy()


if __name__ == "__main__":
    sys.exit(main())
