"""``llmesr-prepare``: build a dataset's atomic files and LLM artefacts (see :mod:`recbole_llmesr.prep.pipeline`).

Examples::

    llmesr-prepare --dataset ml-100k                                   # RecBole's bundled copy
    llmesr-prepare --dataset amazon_beauty_5core --source beauty --inter /data/amazon_beauty_5core/
    llmesr-prepare --dataset beauty --source amazon2014 --reviews reviews_Beauty.json.gz \\
        --meta meta_Beauty.json.gz --filter single_pass --user-k 3 --item-k 3
    llmesr-prepare --dataset beauty ... --embedder openai --model text-embedding-3-small --dry-run
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

from recbole_llmesr.cli.common import add_debug_flag, run_tool
from recbole_llmesr.prep.inputs import DEFAULT_FILTERS, SOURCES
from recbole_llmesr.prep.pipeline import DEFAULT_OUT_ROOT, prepare
from recbole_llmesr.prep.readers import DEFAULT_CORE, FILTER_MODES
from recbole_llmesr.prep.settings import USER_TEXT_CHARS, PrepareSettings

__all__ = ["main", "build_parser"]

PROG = "llmesr-prepare"
_DEFAULTS = PrepareSettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Convert raw interaction data into RecBole atomic files and build the LLM-ESR artefacts "
                    "(item/user text embeddings and similar users) beside them. Does nothing when they are "
                    "already up to date.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("input")
    g.add_argument("--dataset", "-d", required=True, help="dataset name (output folder and file stem)")
    g.add_argument("--source", choices=SOURCES, default=_DEFAULTS.source, help="format of the input")
    g.add_argument("--inter", help="atomic/beauty: a .inter[.gz] file or its folder; csv: the interaction file "
                                   "(atomic without --inter and --dataset ml-100k: RecBole's bundled copy)")
    g.add_argument("--item", help="csv: optional item file (header row; first matching id column)")
    g.add_argument("--reviews", help="amazon2014/2018/2023 and yelp: the review file")
    g.add_argument("--meta", help="amazon2014/2018/2023: the metadata file")
    g.add_argument("--business", help="yelp: business.json")
    g.add_argument("--columns", help="csv: 'user_id=<col>,item_id=<col>,timestamp=<col>[,rating=<col>]' "
                                     "(default: columns named user_id, item_id, timestamp)")
    g.add_argument("--sep", default=",", help="csv: field separator ('\\t' or 'tab' for tab)")
    g.add_argument("--out", default=DEFAULT_OUT_ROOT, help="output root; files go to <out>/<dataset>/")

    f = p.add_argument_group(f"filtering (default: {DEFAULT_CORE}-core for amazon*/yelp, none for atomic/beauty/csv)")
    f.add_argument("--filter", choices=FILTER_MODES, default=None,
                   help="kcore: iterative k-core; single_pass: the LLM-ESR paper's one-pass filter")
    f.add_argument("--user-k", type=int, default=None, help=f"minimum interactions per user (default {DEFAULT_CORE})")
    f.add_argument("--item-k", type=int, default=None, help=f"minimum interactions per item (default {DEFAULT_CORE})")
    f.add_argument("--min-rating", type=float, default=None, help="keep interactions rated at least this")

    e = p.add_argument_group("embeddings")
    e.add_argument("--embedder", default=_DEFAULTS.embedder,
                   help="sentence-transformers (offline, bundled all-MiniLM-L6-v2), openai or openai-compatible "
                        "(key from OPENAI_API_KEY)")
    e.add_argument("--model", default=_DEFAULTS.embedder_model,
                   help="embedding model (local directory for sentence-transformers)")
    e.add_argument("--base-url", default=_DEFAULTS.base_url, help="API base URL (openai-compatible servers, proxies)")
    e.add_argument("--dim", type=int, default=_DEFAULTS.dim, help="embedding dimension (v3 OpenAI models can shrink)")
    e.add_argument("--template", default=_DEFAULTS.template,
                   help="item text template: auto, a name (beauty, fashion, amazon, movie, yelp, generic) or "
                        "a literal string with {column} fields")
    e.add_argument("--max-chars", type=int, default=_DEFAULTS.max_chars,
                   help="item texts are cut to this many characters")
    e.add_argument("--user-max-chars", type=int, default=_DEFAULTS.user_max_chars,
                   help="user texts keep this many last characters (default: "
                   f"{USER_TEXT_CHARS['sentence-transformers']} for the offline model, whose window is 256 word "
                   f"pieces; {USER_TEXT_CHARS['openai']} for OpenAI models)")
    e.add_argument("--holdout", type=int, default=_DEFAULTS.holdout,
                   help="last items of each user left out of the user text (validation + test)")
    e.add_argument("--top-k", type=int, default=_DEFAULTS.top_k, help="similar users stored per user")
    e.add_argument("--exact-max", type=int, default=_DEFAULTS.exact_max,
                   help="exact similar-user search up to this many users, HNSW above")
    e.add_argument("--cache-dir", default=_DEFAULTS.cache_dir,
                   help="embedding cache (default $RECBOLE_LLMESR_CACHE or ~/.cache/recbole_llmesr)")

    r = p.add_argument_group("run")
    r.add_argument("--dry-run", action="store_true",
                   help="only count texts/tokens and estimate the cost; write nothing")
    r.add_argument("--force", action="store_true", help="rebuild even if the outputs are up to date")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings and errors only")
    add_debug_flag(r)
    return p


def _parse_columns(spec: Optional[str]) -> Optional[Dict[str, str]]:
    if not spec:
        return None
    out: Dict[str, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"--columns: expected key=column pairs separated by commas, got {part!r}")
        key, col = (s.strip() for s in part.split("=", 1))
        if key not in ("user_id", "item_id", "timestamp", "rating") or not col:
            raise ValueError(f"--columns: keys are user_id, item_id, timestamp, rating; got {part!r}")
        out[key] = col
    return out


def _inputs(args: argparse.Namespace) -> Dict[str, object]:
    source = args.source
    if source in ("atomic", "beauty"):
        if source == "beauty" and not args.inter:
            raise ValueError("--source beauty needs --inter (the benchmark folder or its .inter.gz file)")
        if source == "atomic" and not args.inter and args.dataset != "ml-100k":
            raise ValueError("--source atomic needs --inter (a .inter file or its folder); only ml-100k has a default")
        return {"inter": args.inter} if args.inter else {}
    if source.startswith("amazon"):
        if not (args.reviews and args.meta):
            raise ValueError(f"--source {source} needs --reviews and --meta")
        return {"reviews": args.reviews, "meta": args.meta}
    if source == "yelp":
        if not (args.business and args.reviews):
            raise ValueError("--source yelp needs --business and --reviews")
        return {"business": args.business, "review": args.reviews}
    # csv
    if not args.inter:
        raise ValueError("--source csv needs --inter (the interaction file)")
    sep = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(args.sep, args.sep)
    return {"inter": args.inter, "item": args.item, "columns": _parse_columns(args.columns), "sep": sep}


def _filters(args: argparse.Namespace) -> Optional[Dict[str, object]]:
    if args.filter is None and args.user_k is None and args.item_k is None and args.min_rating is None:
        return None
    default = DEFAULT_FILTERS[args.source] or {"mode": "none"}
    return {"mode": args.filter or default["mode"],
            "user_k": args.user_k if args.user_k is not None else DEFAULT_CORE,
            "item_k": args.item_k if args.item_k is not None else DEFAULT_CORE, "min_rating": args.min_rating}


def _summary(manifest: dict, out_dir: Path, seconds: float, started: datetime) -> str:
    c = manifest["counts"]
    try:
        built = datetime.fromisoformat(manifest["created"]) >= started.replace(microsecond=0)
    except (KeyError, ValueError):
        built = True
    state = "built" if built else "up to date, nothing rebuilt"
    files = ", ".join(sorted(manifest.get("files", {})) + [f"{manifest['dataset']}.llmesr.json"])
    emb = manifest["embedder"]
    return (f"{PROG}: {manifest['dataset']}: {c['users']} users, {c['items']} items, {c['interactions']} "
            f"interactions; {manifest['dim']}-d {emb.get('kind')} {emb.get('model')} embeddings; "
            f"top-{manifest['top_k']} similar users; {state} in {seconds:.1f} s\n"
            f"{PROG}: files in {out_dir}: {files}")


def _dry_summary(est: dict, seconds: float) -> str:
    c = est["counts"]
    usd = "no cost (local model)" if not est.get("usd") and est["embedder"].get("kind") == "sentence-transformers" \
        else ("unknown price" if est.get("usd") is None else f"about ${est['usd']:.4f}")
    return (f"{PROG}: dry run for {est['dataset']}: {c['users']} users, {c['items']} items, "
            f"{c['interactions']} interactions; template {est['template_label']}; {est['item_texts']} item + "
            f"{est['user_texts']} user texts, {est['unique_texts']} unique, {est['uncached_texts']} not cached, "
            f"about {est['tokens']} tokens, {usd}; nothing written ({seconds:.1f} s)")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.quiet:  # read by huggingface_hub / transformers at import (their weight-loading bars)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()

    def body() -> int:
        settings = PrepareSettings(
            source=args.source, inputs=_inputs(args), embedder=args.embedder, embedder_model=args.model,
            base_url=args.base_url, dim=args.dim, template=args.template, max_chars=args.max_chars,
            user_max_chars=args.user_max_chars, holdout=args.holdout, filters=_filters(args), top_k=args.top_k,
            exact_max=args.exact_max, cache_dir=args.cache_dir, dry_run=args.dry_run, force=args.force,
            show_progress=not args.quiet,
        )
        result = prepare(args.dataset, settings, out_root=args.out)
        seconds = time.monotonic() - t0
        if args.dry_run:
            print(_dry_summary(result, seconds))
        else:
            print(_summary(result, Path(os.path.expanduser(args.out)) / args.dataset, seconds, started))
        return 0

    # Plain ValueError and KeyError too: the readers' and pandas' messages about a malformed input name it.
    return run_tool(PROG, body, also=(ValueError, KeyError), debug=args.debug,
                    interrupted="interrupted (embeddings finished so far are cached; rerun to resume)")


if __name__ == "__main__":
    sys.exit(main())
