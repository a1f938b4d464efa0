"""Raw interaction data -> a normalised in-memory form (:class:`RawDataset`) -> RecBole atomic files.

Pipeline::

    ds = read_amazon2014("reviews_Beauty.json.gz", "meta_Beauty.json.gz", "beauty")   # any reader
    ds = apply_filters(ds, min_rating=None, user_k=5, item_k=5, mode="kcore")
    write_atomic(ds, "dataset/beauty")              # beauty.inter + beauty.item
    ds = read_written("dataset/beauty", "beauty")   # later stages load it back

Modules: :mod:`.lines` (line I/O, the bad-line policy, field parsing), :mod:`.normal` (the normal form),
:mod:`.atomic` (RecBole atomic files, read and written),
:mod:`.check` (what RecBole would misread in them), :mod:`.sources` (raw public datasets and CSV),
:mod:`.filters`. Every reader takes ``on_bad_line="raise"`` (default) or ``"skip"``.
"""
from recbole_llmesr.prep.readers.atomic import (
    find_data_file,
    inter_stem,
    inter_stems,
    ml100k_dir,
    read_atomic,
    read_item_file,
    read_items_jsonl,
    read_written,
    write_atomic,
)
from recbole_llmesr.prep.readers.check import check_atomic_file
from recbole_llmesr.prep.readers.filters import (
    DEFAULT_CORE,
    FILTER_MODES,
    apply_filters,
    dedupe,
    filter_rating,
    kcore,
    single_pass_filter,
)
from recbole_llmesr.prep.readers.lines import PROGRESS_MIN_BYTES, BadLineWarning, DataFormatError
from recbole_llmesr.prep.readers.normal import (
    ITEM,
    MISSING_TEXT,
    RATING,
    TIME,
    USER,
    EmptyDatasetError,
    RawDataset,
    items_frame,
    normalize,
)
from recbole_llmesr.prep.readers.sources import (
    read_amazon2014,
    read_amazon2018,
    read_amazon2023,
    read_beauty_benchmark,
    read_csv,
    read_yelp,
)

__all__ = [
    "RawDataset",
    "DataFormatError",
    "EmptyDatasetError",
    "BadLineWarning",
    "MISSING_TEXT",
    "PROGRESS_MIN_BYTES",
    "USER",
    "ITEM",
    "TIME",
    "RATING",
    "DEFAULT_CORE",
    "FILTER_MODES",
    "read_atomic",
    "check_atomic_file",
    "read_item_file",
    "read_items_jsonl",
    "items_frame",
    "find_data_file",
    "inter_stem",
    "inter_stems",
    "read_beauty_benchmark",
    "read_amazon2014",
    "read_amazon2018",
    "read_amazon2023",
    "read_yelp",
    "read_csv",
    "normalize",
    "dedupe",
    "filter_rating",
    "kcore",
    "single_pass_filter",
    "apply_filters",
    "write_atomic",
    "read_written",
    "ml100k_dir",
]
