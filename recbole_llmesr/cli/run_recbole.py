"""``run_recbole`` console script: RecBole's ``run_recbole.py`` flags, plugin models first."""
import argparse
import sys
from typing import List, Optional

from recbole_llmesr.cli.common import add_debug_flag, run_tool
from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.launch import DEFAULT_IP, DEFAULT_PORT

PROG = "run_recbole"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train and test a RecBole or recbole-llmesr model. Any other --key=value is a RecBole "
        "config override (e.g. --epochs=5 --train_batch_size=256). Started by torchrun or srun, each process "
        "is one DDP rank as the launcher's environment says (RANK, WORLD_SIZE, LOCAL_RANK, ... or SLURM_PROCID, "
        "SLURM_NTASKS, ...).",
    )
    parser.add_argument("--model", "-m", type=str, default="BPR", help="model name, e.g. SASRec or LLMESR_SASRec")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated YAML config files")
    # Spawn flags; under torchrun or srun the environment says all this, and these flags are left out.
    parser.add_argument("--nproc", type=int, default=1, help="number of DDP processes to spawn on this node")
    parser.add_argument("--ip", type=str, default=DEFAULT_IP, help="master address for DDP")
    parser.add_argument("--port", type=str, default=DEFAULT_PORT, help="master port for DDP")
    parser.add_argument("--world_size", type=int, default=-1, help="total number of DDP processes")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank offset of this node's processes")
    add_debug_flag(parser)
    return parser


class ArgumentError(LLMESRError, ValueError):
    """A command-line setting that RecBole would silently ignore."""


def check_overrides(rest: List[str]) -> None:
    """RecBole reads only ``--key=value`` and drops anything else with a log line; refuse it instead, so
    that ``--alpha 0.1`` does not train with the default alpha."""
    for i, arg in enumerate(rest):
        if arg.startswith("--") and arg.count("=") == 1 and not arg.startswith("--="):
            continue
        if arg.startswith("--") and "=" not in arg:
            value = f" {rest[i + 1]}" if i + 1 < len(rest) and not rest[i + 1].startswith("--") else ""
            raise ArgumentError(f"'{arg}{value}': settings are written --key=value (e.g. {arg}=...); RecBole "
                                f"would ignore this one and train with the default")
        raise ArgumentError(f"'{arg}': not a setting (settings are written --key=value, with exactly one '=')")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, rest = build_parser().parse_known_args(argv)
    # RecBole's Config reads the --key=value overrides from sys.argv itself; --debug is ours alone.
    sys.argv = [sys.argv[0], *(a for a in argv if a != "--debug")]
    config_files = args.config_files.strip().split(" ") if args.config_files else None

    from recbole_llmesr.quick_start import run
    from recbole_llmesr.registry import get_model

    def body() -> int:
        check_overrides(rest)
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

    return run_tool(PROG, body, debug=args.debug,
                    interrupted="interrupted; run the same command with --resume=auto to continue from the last "
                                "finished epoch")


if __name__ == "__main__":
    sys.exit(main())
