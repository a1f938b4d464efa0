"""``llmesr-recommend``: top-K items per user from a checkpoint (see :mod:`recbole_llmesr.recommend`)."""
import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from recbole_llmesr.cli.common import add_debug_flag, run_tool

PROG = "llmesr-recommend"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Write the top-K items of each user from a trained checkpoint, excluding the items in the "
        "user's history. No LLM call for known items; cold-start items (--cold-items) are embedded once.",
    )
    p.add_argument("--checkpoint", required=True, help="a .pth written by run_recbole (saved/<Model>-<date>.pth)")
    p.add_argument("--output", "-o", default="recommendations.csv",
                   help=".csv (user_id,rank,item_id,score) or .jsonl")
    p.add_argument("--format", choices=("csv", "jsonl"), default=None, help="default: from the --output suffix")
    p.add_argument("--k", "-k", type=int, default=10, help="items per user (default 10)")
    p.add_argument("--users", default=None, help="comma-separated user ids (default: every user)")
    p.add_argument("--users-file", default=None, help="file with one user id per line")
    p.add_argument("--data_path", default=None, help="folder holding <dataset>/ (default: the one used in training)")
    p.add_argument("--cold-items", default=None,
                   help="atomic .item file (or .items.jsonl) of items with text but no interactions, to add as "
                   "candidates")
    p.add_argument("--cold-collab", choices=("regression", "pca", "zero"), default="regression",
                   help="collaborative-view vector of cold-start items (default: regression; see README)")
    p.add_argument("--embedder-base-url", default=None,
                   help="server of an openai-compatible embedder for --cold-items (default: the training config's; "
                   "give it here when it carries credentials, which checkpoints store redacted)")
    p.add_argument("--cache-dir", default=None, help="embedding cache (default: the training config's, else ~/.cache)")
    p.add_argument("--include-history", action="store_true", help="do not exclude the user's own items")
    p.add_argument("--batch-size", type=int, default=1024, help="users scored per batch")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_debug_flag(p)
    return p


def _read_users(args: argparse.Namespace) -> Optional[List[str]]:
    from recbole_llmesr.recommend import RecommendError

    users: List[str] = []
    if args.users:
        users += [u.strip() for u in args.users.split(",") if u.strip()]
    if args.users_file:
        path = Path(args.users_file)
        if not path.is_file():
            raise RecommendError(f"{path}: file not found")
        users += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return users or None


def main(argv: Optional[List[str]] = None) -> int:
    from recbole_llmesr import recommend
    from recbole_llmesr.prep.from_config import settings_from_config

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def body() -> int:
        rec = recommend.load_recommender(args.checkpoint, args.data_path)
        if args.cold_items:
            data_dir, dataset = rec.config["data_path"], rec.config["dataset"]
            trained = settings_from_config(rec.config)  # the embedder server and cache used in training
            texts = recommend.cold_item_texts(args.cold_items, dataset, data_dir)
            vectors = recommend.embed_cold_items(texts, dataset, data_dir,
                                                 base_url=args.embedder_base_url or trained.base_url,
                                                 cache_dir=args.cache_dir or trained.cache_dir,
                                                 show_progress=not args.quiet)
            recommend.add_cold_items(rec, list(texts), vectors, collab=args.cold_collab)
            logging.getLogger().info("llmesr-recommend: %d cold-start items added as candidates", len(texts))
        stats = recommend.export(rec, args.output, k=args.k, users=_read_users(args), fmt=args.format,
                                 batch_size=args.batch_size, exclude_history=not args.include_history,
                                 show_progress=not args.quiet)
        print(f"wrote top-{args.k} items for {stats['users']} users to {args.output} "
              f"({stats['users_per_s']:.0f} users/s)")
        return 0

    # KeyError: a manifest or checkpoint config without a key the request needs.
    return run_tool(PROG, body, also=(KeyError,), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
