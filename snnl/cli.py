"""The ``snnl`` command: parses arguments and calls library functions."""

from __future__ import annotations

import argparse
import sys


def _device(name: str):
    from .train.loop import resolve_device
    from .validate import device

    return resolve_device(device(name))


def cmd_loss(args) -> int:
    from .loss.compare import compare_backends

    device = _device(args.device)
    print(
        f"soft nearest neighbor loss, {args.distance} distance, b={args.batch} d={args.dim} "
        f"classes={args.classes} T={args.temperature} on {device}"
    )
    rows = compare_backends(args.batch, args.dim, args.classes, args.temperature, args.distance, device, args.seed)
    print(f"{'backend':<10} {'loss':>12} {'max |grad - ref|':>17} {'first call':>12} {'then (median)':>14}")
    for row in rows:
        print(
            f"{row['backend']:<10} {row['loss']:>12.6f} {row['max_grad_diff']:>17.2e} "
            f"{row['first_seconds'] * 1e3:>9.1f} ms {row['seconds'] * 1e3:>11.1f} ms"
        )
    print("(forward + backward; the first call in this process apart from the median of the next five)")
    return 0


def _integers(text: str, what: str) -> tuple[int, ...]:
    """A comma-separated list of integers, at least one ``what``."""
    try:
        values = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"needs at least one {what}")
    return values


def _seeds(text: str) -> tuple[int, ...]:
    return _integers(text, "seed")


def _epochs(text: str) -> tuple[int, ...]:
    epochs = _integers(text, "epoch")
    if min(epochs) < 1:
        raise argparse.ArgumentTypeError(f"takes positive epochs, got {text!r}")
    return epochs


def _labelled(text: str) -> int | str:
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--labelled takes a number or 'all', got {text!r}") from None


def _temperature(text: str) -> str:
    """--temperature 1.5 or annealing: checked here, turned into fields by
    snnl.train.config.temperature_fields."""
    from .train.config import temperature_fields

    try:
        temperature_fields(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _options(text: str) -> dict:
    """--dataset-options n_samples=5000,centers=10: numbers by name; the names and
    values are checked by snnl.data.dataset_options, which says what is allowed."""
    options = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(
                f"--dataset-options takes name=value pairs separated by commas, got {item!r}"
            )
        text = value.strip()
        try:  # "2" is the integer 2, "2.0" a float
            options[key.strip()] = int(text) if text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--dataset-options {key.strip()}: {value!r} is not a number") from None
    return options


def _given(args, mapping: dict) -> dict:
    """{field: value} of the options given on the command line (options left
    out are None, or False for flags: they keep the stored or default value)."""
    return {
        field: getattr(args, name)
        for name, field in mapping.items()
        if getattr(args, name) is not None and getattr(args, name) is not False
    }


def _stored(args, method: str) -> dict | None:
    """The configuration stored in --out when resuming (its options are the
    defaults of a resumed run: only what is given on the command line changes)."""
    from .runs.outdir import stored_config

    if not (args.resume and args.out):
        return None
    stored = stored_config(args.out)
    if stored is not None and stored["method"] != method:
        other = "snnl run" if stored["method"] == "snnl" else "snnl n2d"
        raise ValueError(f"{args.out} holds an `{other}` run: resume it with `{other} --resume`")
    return stored


# command-line option (argparse's dest) -> configuration field, per configuration class;
# tests/test_run_config.py checks that each side names a real option and field
SHARED_OPTIONS = {
    "dataset": "dataset",
    "seeds": "seeds",
    "kmeans_backend": "kmeans_backend",
    "device": "device",
    "data_dir": "data_dir",
    "download": "download",
    "dataset_options": "dataset_options",
    "projection": "projection",
    "silhouette_sample": "silhouette_sample",
}
TRAIN_OPTIONS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "init": "init",
    "adam_eps": "adam_eps",
}
RUN_OPTIONS = {
    **SHARED_OPTIONS,
    "labelled": "labelled",
    "kmeans_protocol": "kmeans_protocol",
    "kmeans_restarts": "kmeans_restarts",
    "protocol": "protocol",
}
RUN_TRAIN_OPTIONS = {
    **TRAIN_OPTIONS,  # and --alpha and --temperature, the SNNL term's (snnl.train.config.with_snnl_term)
    "code_dim": "code_dim",
    "loss_backend": "loss_backend",
    "amp": "amp",
}
N2D_OPTIONS = {
    **SHARED_OPTIONS,
    "n_clusters": "n_clusters",
    "cluster": "cluster",
    "codes_from": "codes_from",
    "raw": "raw",
    "snapshot_every": "snapshot_every",
}
N2D_TRAIN_OPTIONS = {**TRAIN_OPTIONS, "patience": "patience"}
MANIFOLD_OPTIONS = {
    "manifold": "method",
    "umap_neighbors": "umap_neighbors",
    "umap_min_dist": "umap_min_dist",
    "umap_backend": "umap_backend",
    "umap_fit_sample": "fit_sample",
}


def experiment_from_args(args):
    import dataclasses

    from .runs.config import ExperimentConfig
    from .train.config import preset, with_snnl_term

    stored = _stored(args, "snnl")
    base = ExperimentConfig.from_dict(stored) if stored else ExperimentConfig()
    # a preset's name starts from the preset, unless it is the stored run's own
    train = base.train if args.config in (None, base.train.name) else preset(args.config)
    train = with_snnl_term(
        train.replace(**_given(args, RUN_TRAIN_OPTIONS)), alpha=args.alpha, temperature=args.temperature
    )
    fields = _given(args, RUN_OPTIONS)
    return dataclasses.replace(base, train=train, **fields)


def n2d_from_args(args):
    import dataclasses

    from .runs.config import N2DConfig

    stored = _stored(args, "n2d")
    base = N2DConfig.from_dict(stored) if stored else N2DConfig()
    autoencoder = base.autoencoder.replace(**_given(args, N2D_TRAIN_OPTIONS))
    manifold = dataclasses.replace(base.manifold, **_given(args, MANIFOLD_OPTIONS))
    fields = _given(args, N2D_OPTIONS)
    return dataclasses.replace(base, autoencoder=autoencoder, manifold=manifold, **fields)


def _progress(args):
    return "lines" if args.quiet else True


def _print_result(result, out) -> int:
    from .report.tables import experiment_table

    if not result.summary:  # a torchrun process other than the main one
        return 0
    metrics = {"summary": result.summary, "seeds": [s.metrics for s in result.seeds]}
    print(experiment_table(metrics, f"{result.config.dataset} {result.config.label}"))
    if out:
        from pathlib import Path

        # what this run wrote: no checkpoints without training (--codes-from, --raw, PCA), no figures
        # directory when every figure was left out
        kinds = ["results", "embeddings"] + [name for name in ("checkpoints", "figures") if (Path(out) / name).is_dir()]
        print(f"{', '.join(kinds[:-1])} and {kinds[-1]} in {out}", file=sys.stderr)
    return 0


def _announce(args, config, header: str, *, changes: bool = True) -> None:
    """The run's header, once its options, the packages it needs and its
    output directory have passed their checks (before any data is read)."""
    from .runs.runner import check_output

    config.check_dependencies()
    check_output(config, args.out, args.resume, changes=changes)
    print(header, file=sys.stderr)
    if not args.out:
        print(
            f"snnl {args.command}: no --out given, so only the metrics are printed; nothing is written "
            "(pass --out DIR to keep metrics, codes, checkpoints and figures)",
            file=sys.stderr,
        )


def cmd_run(args) -> int:
    from .methods.agarap import run_experiment
    from .train.config import describe

    config = experiment_from_args(args)
    _announce(
        args,
        config,
        f"snnl run: {config.dataset}, {config.train.name} = {describe(config.train)}; seeds {list(config.seeds)}",
    )
    return _print_result(run_experiment(config, args.out, resume=args.resume, progress=_progress(args)), args.out)


def cmd_n2d(args) -> int:
    from .methods.n2d import run_n2d

    config = n2d_from_args(args)
    source = f"codes of {config.codes_from}" if config.codes_from else f"{config.dataset} (train + test)"
    _announce(args, config, f"snnl n2d: {source}: {config.label}; seeds {list(config.seeds)}", changes=False)
    return _print_result(run_n2d(config, args.out, resume=args.resume, progress=_progress(args)), args.out)


def cmd_snapshots(args) -> int:
    from .methods.snapshots import write_snapshot_scores

    write_snapshot_scores(
        args.run,
        args.output,
        force=args.force,
        silhouette_sample=args.silhouette_sample,
        scoring_seeds=args.scoring_seeds,
        epochs=args.epochs,
        progress=lambda line: print(line, file=sys.stderr),
    )
    print(f"wrote {args.output}")
    return 0


def cmd_kernels(args) -> int:
    """The compiled-code lab (``snnl.kernel_tools.lab``), in a child process
    without TRITON_INTERPRET, whatever this one has set (under the interpreter
    Triton compiles nothing), given the options parsed here."""
    import os
    import subprocess

    from .kernel_tools.options import to_argv

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.call([sys.executable, "-m", "snnl.kernel_tools.lab", *to_argv(args)], env=env)


def cmd_backends(args) -> int:
    from .report.backends import backend_report, format_report

    print(format_report(backend_report()))
    return 0


def cmd_plot_labels(args) -> int:
    from pathlib import Path

    from .report.figures import labels_study
    from .report.tables import collect_runs

    output = Path(args.output)
    if output.exists() and not args.force:
        raise FileExistsError(f"{output} exists: pass --force to replace it, or choose another --output")
    runs, skipped = collect_runs(args.runs)
    for run_dir, reason in skipped:
        print(f"snnl plot-labels: left out {run_dir}: {reason}", file=sys.stderr)
    labels_study(runs, output)
    print(f"wrote {output}")
    return 0


def cmd_table(args) -> int:
    from pathlib import Path

    from .report.tables import collect_runs, runs_table

    runs, skipped = collect_runs(args.runs)
    for run_dir, reason in skipped:
        print(f"snnl table: left out {run_dir}: {reason}", file=sys.stderr)
    if not runs:
        raise ValueError("none of the directories holds a finished run")
    table = runs_table(runs)
    if args.output:
        output = Path(args.output)
        if output.exists() and not args.force:
            raise FileExistsError(f"{output} exists: pass --force to replace it, or choose another --output")
        output.write_text(table + "\n")
    print(table)
    return 0


def _default(cls, name: str):
    """A configuration field's default, for the help texts (one source of defaults)."""
    import dataclasses

    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default is dataclasses.MISSING:
        return field.default_factory()  # type: ignore[operator]  # every field has one or the other
    return field.default


def build_parser() -> argparse.ArgumentParser:
    """Every option defaults to "not given" (None): a new run takes the
    configuration classes' defaults, a resumed one its stored configuration."""
    # choices and defaults from their one source, none of which imports torch: --help answers at once
    from . import choices
    from .cluster.manifold import ManifoldConfig
    from .data.builtin import BLOBS_DEFAULTS
    from .data.catalog import BUILTIN_DATASETS, IDX_DATASETS, TEXT_DATASETS, dataset_names
    from .kernel_tools import options as kernel_options
    from .runs.config import SNAPSHOT_SILHOUETTE_SAMPLE, ExperimentConfig, N2DConfig
    from .train.config import PRESET_MEANINGS, PRESETS

    run_training = _default(ExperimentConfig, ExperimentConfig.TRAINING_FIELD)

    parser = argparse.ArgumentParser(
        prog="snnl", description="Soft nearest neighbor loss and SNNL autoencoders for clustering."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    class _Commands:
        """``add_parser`` whose one-line help is also the subcommand's own
        description (``snnl backends --help`` showed only -h before)."""

        def add_parser(self, name, *, help, **options):
            options.setdefault("description", help[0].upper() + help[1:] + ".")
            return commands.add_parser(name, help=help, **options)

    sub = _Commands()

    def add_shared(parser, cls, of_preset=""):
        """Options `snnl run` and `snnl n2d` share (``of_preset``: where the
        training defaults come from, when not from ``cls`` itself)."""
        parser.add_argument(
            "--dataset",
            choices=dataset_names(),
            metavar="DATASET",
            help=f"the data: built in ({', '.join(BUILTIN_DATASETS)}), IDX files "
            f"({', '.join(IDX_DATASETS)}) or text files ({', '.join(TEXT_DATASETS)}) "
            f"(default: {_default(cls, 'dataset')})",
        )
        parser.add_argument(
            "--seeds",
            type=_seeds,
            help=f"comma-separated, distinct, e.g. 0,1,2,3 (default: {','.join(map(str, _default(cls, 'seeds')))})",
        )
        parser.add_argument(
            "--out",
            help="write metrics.json, embeddings.npz, checkpoints and figures here: a new or "
            "empty directory, or this run's own with --resume (default: none, nothing is written)",
        )
        parser.add_argument(
            "--resume",
            action="store_true",
            help="continue the run in --out where it stopped; options left out keep their stored "
            "values; only options of the stages after training, --epochs (more) and the seeds "
            "may change",
        )
        training = _default(cls, cls.TRAINING_FIELD)  # the default run's training configuration
        parser.add_argument("--epochs", type=int, help=f"training epochs (default: {training.epochs}{of_preset})")
        parser.add_argument(
            "--batch-size",
            type=int,
            help=f"the global batch, split across torchrun processes (default: {training.batch_size})",
        )
        parser.add_argument("--lr", type=float, help=f"Adam's learning rate (default: {training.learning_rate:g})")
        keras = ", as Keras, N2D's code" if training.init == "glorot" else ""
        parser.add_argument(
            "--init",
            choices=choices.INITS,
            help=f"weight initialisation: he (on the ReLU layers) or glorot (default: {training.init}{keras})",
        )
        parser.add_argument("--adam-eps", type=float, help=f"Adam's epsilon (default: {training.adam_eps:g}{keras})")
        parser.add_argument("--device", help=f"auto, cpu, cuda or cuda:N (default: {_default(cls, 'device')})")
        parser.add_argument(
            "--kmeans-backend",
            choices=choices.KMEANS_BACKENDS,
            help="k-means: sklearn (scikit-learn), faiss, or auto: scikit-learn on CPUs, faiss on GPUs "
            f"(default: {_default(cls, 'kmeans_backend')})",
        )
        parser.add_argument(
            "--projection",
            choices=choices.PROJECTIONS,
            help=f"2-D projection in figures/projection.png (default: {_default(cls, 'projection')})",
        )
        parser.add_argument(
            "--silhouette-sample",
            type=int,
            help="estimate the silhouette on this many points, >= 2 (default: exact, O(n^2))",
        )
        parser.add_argument(
            "--data-dir",
            help="where the dataset files are; used alone and whole when given "
            "(default: $SNNL_DATA, system dirs, cache)",
        )
        parser.add_argument(
            "--download", action="store_true", help="download missing IDX files from the official sources"
        )
        parser.add_argument(
            "--dataset-options",
            "--blobs",
            type=_options,
            help="a built-in dataset's options, name=value separated by commas (blobs, default "
            f"{','.join(f'{k}={v}' for k, v in BLOBS_DEFAULTS.items())})",
        )
        parser.add_argument("--quiet", action="store_true", help="no progress bars: one line per epoch")

    run = sub.add_parser("run", help="train, encode the test set, k-means, metrics (Agarap & Azcarraga)")
    add_shared(run, ExperimentConfig, of_preset=", the preset's")
    run.add_argument(
        "--config",
        choices=list(PRESETS),
        help="a preset: "
        + "; ".join(f"{name}: {meaning}" for name, meaning in PRESET_MEANINGS.items())
        + f" (default: {run_training.name})",
    )
    run.add_argument(
        "--labelled",
        type=_labelled,
        help="labelled training examples, or 'all' (default: the paper's: 10,000 for MNIST and "
        "Fashion-MNIST, 20,000 for EMNIST Balanced, all for the unsupervised presets)",
    )
    run.add_argument("--alpha", type=float, help=f"weight of the SNNL term (default: {run_training.alpha:g})")
    run.add_argument(
        "--temperature",
        type=_temperature,
        help="the SNNL temperature: a number (a fixed T, whatever the preset's schedule) or 'annealing' "
        "(the paper's T = 1/(1+epoch)^0.55) (default: the preset's)",
    )
    run.add_argument("--code-dim", type=int, help=f"width of the code layer (default: {run_training.code_dim})")
    run.add_argument(
        "--loss-backend",
        choices=choices.LOSS_BACKENDS,
        help="the SNNL's implementation (`snnl backends` says which runs here): reference, blocked (the CPU "
        "path), triton (the fused kernels), or auto: triton on CUDA, else blocked "
        f"(default: {run_training.loss_backend})",
    )
    run.add_argument(
        "--amp",
        action="store_true",
        help="bfloat16 autocast of the autoencoder (CUDA only: refused on a CPU) (default: off, fp32)",
    )
    run.add_argument(
        "--kmeans-protocol",
        choices=choices.KMEANS_PROTOCOLS,
        help="restarts: the best of --kmeans-restarts k-means++ runs; paper: the paper's nine runs of 10..90 "
        f"iterations (default: {_default(ExperimentConfig, 'kmeans_protocol')})",
    )
    run.add_argument(
        "--kmeans-restarts",
        type=int,
        help=f"k-means++ restarts, the best kept (default: {_default(ExperimentConfig, 'kmeans_restarts')})",
    )
    run.add_argument(
        "--protocol",
        choices=choices.RUN_PROTOCOLS,
        help="test: train on the training split, cluster the test split (the paper's Table IV); all: train on "
        "both splits without labels and cluster every image (N2D's protocol; configurations without labels) "
        f"(default: {_default(ExperimentConfig, 'protocol')})",
    )
    run.set_defaults(func=cmd_run)

    n2d = sub.add_parser(
        "n2d",
        help="N2D: autoencoder -> UMAP -> Gaussian mixture (McConville et al.); "
        "needs umap-learn (pip install 'snnl[umap]') or cuML",
    )
    add_shared(n2d, N2DConfig)
    n2d.add_argument(
        "--codes-from",
        help="cluster the test codes of this `snnl run --out` directory instead (default: train an autoencoder)",
    )
    n2d.add_argument(
        "--raw",
        action="store_true",
        help="no autoencoder: the manifold learner and clustering on the inputs (N2D's Table 1 baseline)",
    )
    n2d.add_argument(
        "--manifold",
        choices=choices.MANIFOLDS,
        help="the manifold learned on the codes before clustering: umap (N2D's), isomap, tsne, or none "
        f"(default: {ManifoldConfig.method})",
    )
    n2d.add_argument(
        "--cluster",
        choices=choices.CLUSTERERS,
        help=f"the last step: gmm (a Gaussian mixture, N2D's) or kmeans (default: {_default(N2DConfig, 'cluster')})",
    )
    n2d.add_argument("--n-clusters", type=int, help="at least 2 (default: the number of classes)")
    n2d.add_argument(
        "--patience", type=int, help="early stopping: stop after this many epochs without improvement (default: none)"
    )
    n2d.add_argument(
        "--umap-neighbors", type=int, help=f"UMAP's n_neighbors, at least 2 (default: {ManifoldConfig.umap_neighbors})"
    )
    n2d.add_argument(
        "--umap-min-dist", type=float, help=f"UMAP's min_dist (default: {ManifoldConfig.umap_min_dist}, N2D's)"
    )
    n2d.add_argument(
        "--umap-backend",
        choices=choices.UMAP_BACKENDS,
        help="UMAP: cuml, umap-learn, or auto: cuML when it imports, else umap-learn "
        f"(default: {ManifoldConfig.umap_backend})",
    )
    n2d.add_argument(
        "--umap-fit-sample",
        type=int,
        help="fit UMAP on this many points and transform the rest (default: fit on all of them)",
    )
    n2d.add_argument(
        "--snapshot-every",
        type=int,
        help="keep the autoencoder every N epochs beside the checkpoint, see `snnl snapshots` (default: none)",
    )
    n2d.set_defaults(func=cmd_n2d)

    kernels = sub.add_parser(
        "kernels",
        help="compile the fused kernels for sm_80/sm_90 without a GPU and report the code and a "
        "performance model (see `snnl kernels --help`)",
        description="Compile every launch of a loss call for sm_80 and sm_90 without a GPU and report the code "
        "(spills, shared memory, tensor-core instructions, exps per pair) and, with --model, a performance model "
        "(a model, not a measurement). Needs the triton package.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    kernel_options.add_arguments(kernels)
    kernels.set_defaults(func=cmd_kernels)

    backends = sub.add_parser("backends", help="which backend each step uses on this machine, and why")
    backends.set_defaults(func=cmd_backends)

    labels = sub.add_parser("plot-labels", help="ACC and NMI against the number of labels (the paper's Figures 3-4)")
    labels.add_argument(
        "runs",
        nargs="+",
        help="--out directories of runs: supervised SNNL runs with different --labelled, and label-free baselines",
    )
    labels.add_argument("--output", required=True, help="the PNG to write (a new file, unless --force)")
    labels.add_argument("--force", action="store_true", help="replace an existing --output file")
    labels.set_defaults(func=cmd_plot_labels)

    snapshots = sub.add_parser("snapshots", help="N2D's metrics at each snapshot of an `snnl n2d --snapshot-every` run")
    snapshots.add_argument("run", help="the --out directory of the snnl n2d run")
    snapshots.add_argument("--output", required=True, help="the JSON to write (a new file, unless --force)")
    snapshots.add_argument(
        "--scoring-seeds",
        type=_seeds,
        help="score each snapshot once per random state of UMAP and the mixture, e.g. 0,1,2 "
        "(default: once, with the training seed)",
    )
    snapshots.add_argument(
        "--epochs",
        type=_epochs,
        help="score only the snapshots of these epochs, e.g. 250,300 (default: every snapshot)",
    )
    snapshots.add_argument(
        "--silhouette-sample",
        type=int,
        default=SNAPSHOT_SILHOUETTE_SAMPLE,
        help=f"points of the sampled silhouette (default: {SNAPSHOT_SILHOUETTE_SAMPLE})",
    )
    snapshots.add_argument("--force", action="store_true", help="replace an existing --output file")
    snapshots.set_defaults(func=cmd_snapshots)

    table = sub.add_parser("table", help="collect runs into one Markdown table (the paper's Tables III-V)")
    table.add_argument("runs", nargs="+", help="--out directories of runs (unfinished ones are left out, with a note)")
    table.add_argument(
        "--output", help="also write the table to this file, a new file unless --force (default: print it only)"
    )
    table.add_argument("--force", action="store_true", help="replace an existing --output file")
    table.set_defaults(func=cmd_table)

    loss = sub.add_parser(
        "loss",
        help="compute the loss with every available backend on a random batch",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    loss.add_argument("--batch", type=int, default=2048, help="rows of the random batch")
    loss.add_argument("--dim", type=int, default=70, help="their dimension")
    loss.add_argument("--classes", type=int, default=10, help="labels drawn uniformly from this many classes")
    loss.add_argument("--temperature", type=float, default=0.5, help="T")
    loss.add_argument("--distance", choices=choices.DISTANCES, default=choices.DISTANCES[0], help="the pair distance")
    loss.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    loss.add_argument("--seed", type=int, default=0, help="of the random batch")
    loss.set_defaults(func=cmd_loss)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    from . import distributed

    if distributed.launched_by_torchrun() and hasattr(args, "device"):
        # torchrun --nproc-per-node N ...: one process per GPU (NCCL) or CPU worker (gloo)
        args.device = str(distributed.init_from_environment(args.device or "auto"))
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
