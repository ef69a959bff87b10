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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snnl", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

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
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
