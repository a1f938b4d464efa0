"""``run_recbole`` console script: RecBole's ``run_recbole.py`` flags, plugin models first."""
import argparse
import sys
from typing import List, Optional

from recbole_llmesr.cli.common import run_tool

PROG = "run_recbole"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train and test a RecBole or recbole-llmesr model. Any other --key=value is a RecBole "
        "config override (e.g. --epochs=5 --train_batch_size=256).",
    )
    parser.add_argument("--model", "-m", type=str, default="BPR", help="model name, e.g. SASRec or LLMESR_SASRec")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated YAML config files")
    parser.add_argument("--nproc", type=int, default=1, help="number of processes (DDP)")
    parser.add_argument("--ip", type=str, default="localhost", help="master address for DDP")
    parser.add_argument("--port", type=str, default="5678", help="master port for DDP")
    parser.add_argument("--world_size", type=int, default=-1, help="total number of DDP processes")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank offset of this node's processes")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # RecBole's Config reads the --key=value overrides from sys.argv itself.
    sys.argv = [sys.argv[0], *argv]
    args, _ = build_parser().parse_known_args(argv)
    config_files = args.config_files.strip().split(" ") if args.config_files else None

    from recbole_llmesr.quick_start import run
    from recbole_llmesr.registry import get_model

    def body() -> int:
        get_model(args.model)  # fail fast, before any data is loaded
        run(
            args.model,
            args.dataset,
            config_file_list=config_files,
            nproc=args.nproc,
            world_size=args.world_size,
            ip=args.ip,
            port=args.port,
            group_offset=args.group_offset,
        )
        return 0

    return run_tool(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
