"""``run_hyper`` console script: RecBole's ``run_hyper.py`` flags, for plugin and RecBole models alike.

Any other ``--key=value`` is a RecBole setting that every trial trains with (the trial's own values win).
"""
import argparse
import sys
from typing import Dict, List, Optional

from recbole_llmesr.cli.common import add_debug_flag, run_tool
from recbole_llmesr.cli.run_recbole import check_overrides

PROG = "run_hyper"


def build_parser() -> argparse.ArgumentParser:
    from recbole_llmesr.tuning import ALGOS, DEFAULT_EARLY_STOP, DEFAULT_MAX_EVALS

    parser = argparse.ArgumentParser(
        prog=PROG,
        allow_abbrev=False,  # --epoch=3 is a RecBole setting, not an abbreviation of one of these flags
        description="Search hyperparameters of a RecBole or recbole-llmesr model: one training per trial. Any "
        "other --key=value is a RecBole setting for every trial (e.g. --epochs=20). Running the same command "
        "again continues the search from its journal (<output_file>.journal.jsonl).",
    )
    parser.add_argument("--model", "-m", type=str, default="BPR", help="model name, e.g. SASRec or LLMESR_SASRec")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated YAML config files")
    parser.add_argument("--params_file", type=str, required=True,
                        help="search space, one 'name choice [a,b]' / 'name uniform low,high' / "
                             "'name loguniform low,high' / 'name quniform low,high,q' per line")
    parser.add_argument("--output_file", type=str, default="hyper_example.result",
                        help="results table (also <stem>.best.yaml and <output_file>.journal.jsonl)")
    parser.add_argument("--tool", type=str, default="Hyperopt", help="tuning tool (only Hyperopt)")
    parser.add_argument("--algo", type=str, default="exhaustive", choices=ALGOS,
                        help="exhaustive: every combination of the choices; random; bayes: TPE")
    parser.add_argument("--max_evals", type=int, default=None,
                        help=f"trials in all, journal included (default {DEFAULT_MAX_EVALS}; exhaustive: the "
                             f"whole grid)")
    parser.add_argument("--early_stop", type=int, default=DEFAULT_EARLY_STOP,
                        help="stop after this many trials without a better validation score (0: never)")
    parser.add_argument("--fresh", action="store_true", help="discard the journal and search from the start")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar over the trials")
    add_debug_flag(parser)
    return parser


def parse_overrides(rest: List[str]) -> Dict[str, str]:
    """``--key=value`` settings as RecBole's command line gives them (strings; RecBole converts them)."""
    check_overrides(rest)
    return dict(arg[2:].split("=", 1) for arg in rest)


def report(result) -> None:
    from recbole.utils import set_color

    best, (table, best_file, journal) = result.best, result.files
    print(f"{result.new} trial{'s' * (result.new != 1)} run"
          + (f", {result.skipped} skipped (already in {journal})" if result.skipped else "")
          + ("; stopped early: no better validation score lately (--early_stop)" if result.stopped_early else ""))
    if best is None:
        return
    print(set_color("best params", "yellow") + f": {best.params}")
    print(set_color("best valid ", "yellow") + f": {result.valid_metric}={best.score:.4f} {best.valid_result}")
    print(set_color("test result", "yellow") + f": {best.test_result}")
    print(f"results: {table}; best settings: {best_file} (pass it back with --config_files)")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, rest = build_parser().parse_known_args(argv)
    config_files = args.config_files.strip().split() if args.config_files else None

    def body() -> int:
        from recbole_llmesr.tuning import search

        result = search(args.model, args.dataset, args.params_file, config_file_list=config_files,
                        overrides=parse_overrides(rest), algo=args.algo, max_evals=args.max_evals,
                        early_stop=args.early_stop, output_file=args.output_file, fresh=args.fresh,
                        tool=args.tool, show_progress=not args.no_progress)
        report(result)
        return 0

    from recbole_llmesr.tuning import output_paths

    journal = output_paths(args.output_file)[2]
    return run_tool(PROG, body, debug=args.debug,
                    interrupted=f"interrupted; the finished trials are kept in {journal}: run the same command "
                                f"again to continue")


if __name__ == "__main__":
    sys.exit(main())
