"""The `cellops` command: data generation and analyses of users' own images.

    cellops generate-data [--params params.yaml] [--out data]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from cellops.telemetry import disable_telemetry


def generate_data(params_file: Path, out: Path, *, force: bool = False) -> None:
    """Write the built-in default datasets described in ``params_file`` under ``out``."""
    from cellops.synthetic.em import write_lucchi_dataset

    params = yaml.safe_load(params_file.read_text())
    em = params["em"]
    paths = write_lucchi_dataset(
        out / "em",
        tuple(em["shape"]),
        seed=int(em["seed"]),
        voxel_nm=float(em["voxel_nm"]),
        mitochondria_fraction=float(em["mitochondria_fraction"]),
        overwrite=force,
    )
    for path in paths.values():
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    disable_telemetry()
    parser = argparse.ArgumentParser(prog="cellops", description="cellops: MLOps for cell imaging")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate-data", help="write the deterministic built-in datasets")
    gen.add_argument("--params", type=Path, default=Path("params.yaml"))
    gen.add_argument("--out", type=Path, default=Path("data"))
    gen.add_argument("--force", action="store_true", help="overwrite files that differ (your own data!)")
    args = parser.parse_args(argv)
    if args.command == "generate-data":
        if not args.params.is_file():
            parser.error(f"{args.params}: no such parameter file")
        try:
            generate_data(args.params, args.out, force=args.force)
        except FileExistsError as error:
            print(f"cellops generate-data: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
