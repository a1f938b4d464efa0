"""``llmesr-compare``: RecBole baselines and LLM-ESR models over several seeds (see :mod:`recbole_llmesr.compare`)."""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from recbole_llmesr.cli.common import add_debug_flag, run_tool

PROG = "llmesr-compare"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare models over several seeds on one dataset and split. Any other --key=value is a "
        "RecBole config override for every run (e.g. --epochs=5).",
    )
    parser.add_argument("--models", required=True, help="comma-separated, e.g. SASRec,LLMESR_SASRec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3: 42, 43, 44 as in the paper)")
    parser.add_argument("--first_seed", type=int, default=42)
    parser.add_argument("--baseline", default=None, help="model the p-values compare against (default: the first)")
    parser.add_argument("--eval_mode", default="paper100", help="paper100 (the paper's protocol), full, uni100, ...")
    parser.add_argument("--output", default=None, help="output folder (default: compare/<dataset>)")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files for every run")
    parser.add_argument("--override", action="append", default=[], metavar="MODEL:KEY=VALUE",
                        help="setting for one model only, repeatable, e.g. --override=SASRec:epochs=3")
    add_debug_flag(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from recbole_llmesr.compare import markdown_table, parse_overrides, protocol, run_comparison
    from recbole_llmesr.registry import get_model

    argv = sys.argv[1:] if argv is None else argv
    args, rest = build_parser().parse_known_args(argv)

    def body() -> int:
        common = {**protocol(args.eval_mode), **parse_overrides(rest)}
        per_model = parse_overrides(args.override, per_model=True)
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        for model in models:
            get_model(model)  # fail before hours of training, not after
        report = run_comparison(
            models,
            args.dataset,
            seeds=[args.first_seed + i for i in range(args.seeds)],
            output=Path(args.output or Path("compare") / args.dataset),
            baseline=args.baseline,
            config_dict=common,
            model_overrides=per_model,
            config_file_list=args.config_files.split() if args.config_files else None,
        )
        print(markdown_table(report))
        return 0

    return run_tool(PROG, body, debug=args.debug,
                    interrupted="interrupted; finished runs are saved, run the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
