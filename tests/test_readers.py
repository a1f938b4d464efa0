"""Tests of recbole_llmesr.prep.readers on small files written into tmp_path (no /work/shared)."""
import calendar
import gzip
import importlib
import inspect
import json
import os
import pkgutil
import re

import numpy as np
import pandas as pd
import pytest

from prep_helpers import HEADER, assert_prepare_fails, good_rows, prepare_cli_error, spoil

from recbole_llmesr.prep import readers as R
from recbole_llmesr.prep.readers import (
    BadLineWarning,
    DataFormatError,
    EmptyDatasetError,
    RawDataset,
)


# ------------------------------------------------------------------------------------------------ helpers
def _write_lines(path, lines):
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)
    return str(path)


def _check_inter_dtypes(ds, rating=True):
    cols = ["user_id", "item_id", "timestamp"] + (["rating"] if rating else [])
    assert list(ds.inter.columns) == cols
    assert ds.inter["user_id"].map(type).eq(str).all()
    assert ds.inter["item_id"].map(type).eq(str).all()
    assert ds.inter["timestamp"].dtype == np.float64
    if rating:
        assert ds.inter["rating"].dtype == np.float64
    # sorted by (user, timestamp)
    key = list(zip(ds.inter["user_id"], ds.inter["timestamp"]))
    assert key == sorted(key)
    # items: sorted, one row per interacted item, text columns are str
    assert ds.items["item_id"].tolist() == sorted(set(ds.inter["item_id"]))
    for c in ds.text_columns:
        assert ds.items[c].map(type).eq(str).all()


def _seqs(ds):
    return {u: g["item_id"].tolist() for u, g in ds.inter.groupby("user_id", sort=True)}


# ------------------------------------------------------------------------------------------------ Amazon 2014
AMAZON14_REVIEWS = [
    {"reviewerID": "U1", "asin": "I1", "overall": 5.0, "unixReviewTime": 300},
    {"reviewerID": "U1", "asin": "I2", "overall": 4.0, "unixReviewTime": 100},
    {"reviewerID": "U1", "asin": "I3", "overall": 2.0, "unixReviewTime": 200},
    {"reviewerID": "U2", "asin": "I1", "overall": 3.0, "unixReviewTime": 50},
    {"reviewerID": "U2", "asin": "I4", "overall": 1.0, "unixReviewTime": 60},
]


def _amazon14(tmp_path, malicious=True):
    reviews = _write_lines(tmp_path / "reviews_Beauty.json.gz", [json.dumps(r) for r in AMAZON14_REVIEWS])
    sentinel = tmp_path / "PWNED"
    meta_lines = [
        "{'asin': 'I1', 'title': 'Lip Balm', 'brand': 'Acme', 'price': 3.5, "
        "'categories': [['Beauty', 'Skin Care', 'Lips'], ['Beauty', 'Other']], 'description': 'Soft.'}",
        "{'asin': 'I2', 'title': \"Jane's Cream\", 'related': {'also_bought': ['I1']}, 'salesRank': {'Beauty': 3}}",
    ]
    if malicious:
        meta_lines.append("{'asin': 'I3', 'title': __import__('os').system('touch %s')}" % sentinel)
    meta_lines.append("{'asin': 'I9', 'title': 'not interacted'}")
    meta = _write_lines(tmp_path / "meta_Beauty.json.gz", meta_lines)
    return reviews, meta, sentinel


def test_amazon2014_malicious_meta_raises_names_file_and_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reviews, meta, sentinel = _amazon14(tmp_path)
    with pytest.raises(DataFormatError) as ei:
        R.read_amazon2014(reviews, meta, "beauty")
    assert ei.value.path == meta and ei.value.line == 3
    assert meta in str(ei.value) and "line 3" in str(ei.value)
    assert not sentinel.exists() and not (tmp_path / "PWNED").exists()


def test_amazon2014_malicious_meta_skip_warns_and_never_executes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reviews, meta, sentinel = _amazon14(tmp_path)
    with pytest.warns(BadLineWarning) as rec:
        ds = R.read_amazon2014(reviews, meta, "beauty", on_bad_line="skip")
    assert any(meta in str(w.message) and "line 3" in str(w.message) for w in rec)
    assert not sentinel.exists()
    _check_inter_dtypes(ds)
    assert ds.text_columns == ["title", "brand", "price", "categories", "description"]
    items = ds.items.set_index("item_id")
    assert items.loc["I1", "title"] == "Lip Balm"
    assert items.loc["I1", "price"] == "3.5"
    assert items.loc["I1", "categories"] == "Beauty; Skin Care; Lips"  # first category path
    assert items.loc["I2", "title"] == "Jane's Cream"
    # interacted but without (readable) metadata: a row of empty strings
    assert items.loc["I3"].tolist() == [""] * 5 and items.loc["I4"].tolist() == [""] * 5
    assert "I9" not in items.index
    assert _seqs(ds) == {"U1": ["I2", "I3", "I1"], "U2": ["I1", "I4"]}
    assert ds.inter["rating"].tolist() == [4.0, 2.0, 5.0, 3.0, 1.0]


def test_readers_never_call_eval():
    modules = [R] + [importlib.import_module(f"{R.__name__}.{m.name}") for m in pkgutil.iter_modules(R.__path__)]
    src = "".join(inspect.getsource(m) for m in modules)
    assert re.search(r"(?<![\w.])eval\s*\(", src) is None
    assert "literal_eval" in src


def test_bad_json_review_line_names_file_and_line(tmp_path):
    reviews = _write_lines(tmp_path / "r.json", [json.dumps(AMAZON14_REVIEWS[0]), "{not json", ""])
    meta = _write_lines(tmp_path / "m.json", ["{}"])
    with pytest.raises(DataFormatError, match=r"r\.json, line 2"):
        R.read_amazon2018(reviews, meta, "x")
    reviews = _write_lines(tmp_path / "r2.json", [json.dumps({"reviewerID": "U", "asin": "I"})])
    with pytest.raises(DataFormatError, match=r"r2\.json, line 1: missing field 'unixReviewTime'"):
        R.read_amazon2018(reviews, meta, "x")


# ------------------------------------------------------------------------------------------------ Amazon 2018 / 2023
def test_amazon2018(tmp_path):
    reviews = _write_lines(tmp_path / "Fashion.json", [  # plain, not gzip
        json.dumps({"reviewerID": "B", "asin": "X2", "overall": 5.0, "unixReviewTime": 20, "reviewText": "ok"}),
        json.dumps({"reviewerID": "A", "asin": "X1", "overall": 4.0, "unixReviewTime": 10}),
        json.dumps({"reviewerID": "A", "asin": "X2", "overall": 3.0, "unixReviewTime": 5}),
    ])
    meta = _write_lines(tmp_path / "meta_Fashion.json.gz", [
        json.dumps({"asin": "X1", "title": "Shoe", "brand": "Nike", "price": "$12.99",
                    "category": ["Clothing", "Shoes"], "description": ["Red.", "Light."],
                    "feature": ["Rubber sole", "Lace"]}),
        json.dumps({"asin": "X1", "title": "DUPLICATE, ignored"}),
        json.dumps({"asin": "X2", "title": "Hat", "description": "Warm\that\nfor winter"}),
    ])
    ds = R.read_amazon2018(reviews, meta, "fashion")
    _check_inter_dtypes(ds)
    assert ds.text_columns == ["title", "brand", "price", "categories", "description", "features"]
    assert ds.inter.values.tolist() == [["A", "X2", 5.0, 3.0], ["A", "X1", 10.0, 4.0], ["B", "X2", 20.0, 5.0]]
    x1 = ds.items.set_index("item_id").loc["X1"]
    assert (x1["title"], x1["price"], x1["categories"], x1["description"], x1["features"]) == \
        ("Shoe", "$12.99", "Clothing; Shoes", "Red. Light.", "Rubber sole; Lace")
    assert ds.items.set_index("item_id").loc["X2", "brand"] == ""


def test_amazon2023(tmp_path):
    reviews = _write_lines(tmp_path / "Beauty.jsonl.gz", [
        json.dumps({"user_id": "U", "parent_asin": "P2", "asin": "C2", "rating": 5.0, "timestamp": 1588687728923}),
        json.dumps({"user_id": "U", "parent_asin": "P1", "asin": "C1", "rating": 2.0, "timestamp": 1588600000000}),
    ])
    meta = _write_lines(tmp_path / "meta_Beauty.jsonl.gz", [
        json.dumps({"parent_asin": "P1", "title": "Brush", "store": "BrushCo", "price": None,
                    "categories": [], "features": ["Soft", "Long"], "description": ["Nice", "brush"],
                    "main_category": "All Beauty"}),
        json.dumps({"parent_asin": "P2", "title": "Comb", "store": None, "price": 7.5,
                    "categories": ["Beauty", "Tools"], "features": [], "description": []}),
    ])
    ds = R.read_amazon2023(reviews, meta, "beauty23")
    _check_inter_dtypes(ds)
    assert ds.inter["item_id"].tolist() == ["P1", "P2"]
    assert ds.inter["timestamp"].tolist() == [1588600000.0, 1588687728.923]
    items = ds.items.set_index("item_id")
    assert items.loc["P1", "brand"] == "BrushCo" and items.loc["P1", "price"] == ""
    assert items.loc["P1", "features"] == "Soft; Long" and items.loc["P1", "description"] == "Nice brush"
    assert items.loc["P2", "categories"] == "Beauty; Tools" and items.loc["P2", "price"] == "7.5"
    assert items.loc["P2", "brand"] == ""


# ------------------------------------------------------------------------------------------------ Yelp
def test_yelp(tmp_path):
    business = _write_lines(tmp_path / "business.json", [
        json.dumps({"business_id": "b1", "name": "Cafe", "city": "Tampa", "categories": "Coffee & Tea, Cafes",
                    "stars": 4.5, "review_count": 12, "is_open": 1}),
        json.dumps({"business_id": "b2", "name": "Gym", "city": "Reno", "categories": None,
                    "stars": 3.0, "review_count": 5, "is_open": 0}),
    ])
    review = _write_lines(tmp_path / "review.json", [
        json.dumps({"review_id": "r1", "user_id": "u1", "business_id": "b2", "stars": 4,
                    "date": "2019-01-02 03:04:05", "text": "x"}),
        json.dumps({"review_id": "r2", "user_id": "u1", "business_id": "b1", "stars": 5,
                    "date": "2018-06-01 00:00:00"}),
    ])
    ds = R.read_yelp(business, review, "yelp")
    _check_inter_dtypes(ds)
    assert ds.inter["item_id"].tolist() == ["b1", "b2"]
    assert ds.inter["timestamp"].tolist() == [float(calendar.timegm((2018, 6, 1, 0, 0, 0))),
                                              float(calendar.timegm((2019, 1, 2, 3, 4, 5)))]
    assert ds.inter["rating"].tolist() == [5.0, 4.0]
    assert ds.text_columns == ["name", "city", "categories", "stars", "review_count"]
    assert ds.items.values.tolist() == [["b1", "Cafe", "Tampa", "Coffee & Tea; Cafes", "4.5", "12"],
                                        ["b2", "Gym", "Reno", "", "3.0", "5"]]


# ------------------------------------------------------------------------------------------------ CSV
def test_csv_with_dates_and_item_file(tmp_path):
    inter = _write_lines(tmp_path / "ratings.csv", [
        "uid,mid,score,when",
        "7,m2,4,2020-01-02",
        "7,m1,5,1577836800",
        '8,m1,3,"2020-01-01T12:00:00+01:00"',
    ])
    items = _write_lines(tmp_path / "movies.tsv", [
        "mid\tname\tgenres\tunused",
        "m1\tAlpha\tDrama|War\tz",
        'm2\t"Beta ""quoted"""\t\tz',
    ])
    ds = R.read_csv(inter, "mv", {"user_id": "uid", "item_id": "mid", "timestamp": "when", "rating": "score"},
                    item_path=items, item_columns={"item_id": "mid", "title": "name", "genre": "genres"},
                    item_sep="\t")
    _check_inter_dtypes(ds)
    assert ds.inter.values.tolist() == [
        ["7", "m1", 1577836800.0, 5.0],
        ["7", "m2", float(calendar.timegm((2020, 1, 2, 0, 0, 0))), 4.0],
        ["8", "m1", float(calendar.timegm((2020, 1, 1, 11, 0, 0))), 3.0],
    ]
    assert ds.text_columns == ["title", "genre"]
    assert ds.items.values.tolist() == [["m1", "Alpha", "Drama|War"], ["m2", 'Beta "quoted"', ""]]


def test_csv_tsv_without_rating_and_default_item_mapping(tmp_path):
    inter = _write_lines(tmp_path / "a.tsv", ["u\ti\tt", "x\tp\t2", "x\tq\t1"])
    items = _write_lines(tmp_path / "i.tsv", ["i\tlabel", "p\tP!"])
    ds = R.read_csv(inter, "a", {"user_id": "u", "item_id": "i", "timestamp": "t"}, sep="\t", item_path=items)
    _check_inter_dtypes(ds, rating=False)
    assert ds.inter["item_id"].tolist() == ["q", "p"]
    assert ds.items.values.tolist() == [["p", "P!"], ["q", ""]]


def test_csv_errors_name_file_and_line(tmp_path):
    cols = {"user_id": "u", "item_id": "i", "timestamp": "t"}
    p = _write_lines(tmp_path / "bad.csv", ["u,i,t", "a,b,1", "a,c,yesterday-ish"])
    with pytest.raises(DataFormatError, match=r"bad\.csv, line 3: .*yesterday-ish"):
        R.read_csv(p, "x", cols)
    p = _write_lines(tmp_path / "short.csv", ["u,i,t", "a,b"])
    with pytest.raises(DataFormatError, match=r"short\.csv, line 2: expected 3 fields"):
        R.read_csv(p, "x", cols)
    with pytest.raises(DataFormatError, match=r"short\.csv, line 1: column 'zz'"):
        R.read_csv(p, "x", {**cols, "timestamp": "zz"})
    with pytest.warns(BadLineWarning, match=r"short\.csv, line 2"):
        with pytest.raises(EmptyDatasetError):
            R.read_csv(p, "x", cols, on_bad_line="skip")


# ------------------------------------------------------------------------------------------------ atomic input
def test_ml100k_from_recbole_wheel(tmp_path):
    ds = R.read_atomic(name="ml-100k")
    assert ds.counts() == {"users": 943, "items": 1682, "interactions": 100000}
    _check_inter_dtypes(ds)
    assert ds.text_columns == ["movie_title", "release_year", "class"]
    toy = ds.items.set_index("item_id").loc["1"]
    assert toy.tolist() == ["Toy Story", "1995", "Animation Children's Comedy"]
    info = R.write_atomic(ds, tmp_path)
    assert (info["users"], info["items"], info["interactions"]) == (943, 1682, 100000)
    with open(info["inter_path"]) as f:
        assert f.readline() == "user_id:token\titem_id:token\ttimestamp:float\trating:float\n"
    with open(info["item_path"]) as f:
        assert f.readline() == "item_id:token\tmovie_title:token\trelease_year:token\tclass:token\n"


def test_read_atomic_gzip_prefers_items_jsonl(tmp_path):
    _write_lines(tmp_path / "bench.inter.gz", [
        "user_id:token\titem_id:token\ttimestamp:float", "u1\tA\t10", "u1\tB\t10", "u1\tC\t5", "u2\tB\t1"])
    _write_lines(tmp_path / "bench.item.gz", [
        "item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq", "A\tApple Pie\t\tFood Sweet_Stuff"])
    _write_lines(tmp_path / "bench.items.jsonl.gz", [
        json.dumps({"item_id": "A", "title": "Apple Pie", "brand": "", "categories": ["Food", "Sweet Stuff"]}),
        json.dumps({"item_id": "B", "title": "Bread", "brand": "Baker", "categories": []}),
    ])
    ds = R.read_atomic(tmp_path, "bench")
    _check_inter_dtypes(ds, rating=False)
    assert "rating" not in ds.inter.columns
    assert _seqs(ds) == {"u1": ["C", "A", "B"], "u2": ["B"]}  # tie at t=10 keeps file order A, B
    assert ds.items.values.tolist() == [["A", "Apple Pie", "", "Food; Sweet Stuff"], ["B", "Bread", "Baker", ""],
                                        ["C", "", "", ""]]
    ds2 = R.read_atomic(tmp_path, "bench", text_source="item")
    assert ds2.items.set_index("item_id").loc["A", "categories"] == "Food Sweet_Stuff"
    bench = R.read_beauty_benchmark(tmp_path, "bench")
    assert bench.text_columns == ["title", "brand", "categories", "price", "description"]
    assert (bench.items["price"] == "").all()


def test_read_atomic_errors(tmp_path):
    _write_lines(tmp_path / "x.inter", ["user_id:token\titem_id:token\ttimestamp:float", "u\ti\t1", "u\ti"])
    with pytest.raises(DataFormatError, match=r"x\.inter, line 3"):
        R.read_atomic(tmp_path / "x.inter")
    _write_lines(tmp_path / "y.inter", ["user\titem"])
    with pytest.raises(DataFormatError, match=r"y\.inter, line 1"):
        R.read_atomic(tmp_path, "y")
    with pytest.raises(FileNotFoundError):
        R.read_atomic(tmp_path, "nope")


# ------------------------------------------------------------------------------------------------ filters
def _ds(rows, name="t", rating=None):
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    if rating is not None:
        inter["rating"] = rating
    items = pd.DataFrame({"item_id": sorted(set(inter["item_id"])), "title": "t"})
    return R.normalize(RawDataset(name, inter, items))


def _pairs(ds):
    return sorted(zip(ds.inter["user_id"], ds.inter["item_id"]))


def test_kcore_vs_single_pass():
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u2", "c", 2), ("u3", "b", 1),
            ("u4", "a", 1), ("u4", "b", 2), ("u5", "a", 1), ("u5", "b", 2)]
    ds = _ds(rows)
    core = R.kcore(ds, 2, 2)
    single = R.single_pass_filter(ds, 2, 2)
    assert _pairs(core) == sorted([(u, i) for u in ("u1", "u4", "u5") for i in ("a", "b")])
    assert _pairs(single) == sorted(_pairs(core) + [("u2", "a")])
    assert core.inter.groupby("user_id").size().min() >= 2
    assert core.inter.groupby("item_id").size().min() >= 2
    assert single.inter.groupby("user_id").size().min() == 1  # one pass can violate the threshold
    assert _pairs(R.single_pass_filter(ds, 2, 2, min_user_len=2)) == _pairs(core)
    # items table follows the interactions
    assert core.items["item_id"].tolist() == ["a", "b"]


def test_kcore_random_satisfies_constraint():
    rng = np.random.default_rng(0)
    rows = [(f"u{rng.integers(60)}", f"i{rng.integers(40)}", int(rng.integers(1000))) for _ in range(600)]
    ds = R.dedupe(_ds(rows))
    core = R.kcore(ds, 5, 4)
    assert core.inter.groupby("user_id").size().min() >= 5
    assert core.inter.groupby("item_id").size().min() >= 4
    assert R.kcore(core, 5, 4).inter.equals(core.inter)  # stable


def test_dedupe_rating_and_empty_errors():
    ds = _ds([("u", "a", 1), ("u", "a", 1), ("u", "a", 2), ("v", "b", 3)], rating=[5.0, 5.0, 1.0, 2.0])
    d = R.dedupe(ds)
    assert d.inter.values.tolist() == [["u", "a", 1.0, 5.0], ["u", "a", 2.0, 1.0], ["v", "b", 3.0, 2.0]]
    r = R.filter_rating(d, 2)
    assert r.inter.values.tolist() == [["u", "a", 1.0, 5.0], ["v", "b", 3.0, 2.0]]
    with pytest.raises(
        EmptyDatasetError, match=r"filter_rating\(min_rating=9\).*before: 3 interactions, 2 users, 2 items"
    ):
        R.filter_rating(d, 9)
    with pytest.raises(EmptyDatasetError, match=r"kcore\(user_k=5, item_k=5\).*before: 3 interactions"):
        R.kcore(d, 5, 5)
    with pytest.raises(EmptyDatasetError, match=r"single_pass_filter"):
        R.single_pass_filter(d, 5, 1)
    with pytest.raises(ValueError, match="rating"):
        R.filter_rating(_ds([("u", "a", 1)]), 3)
    out = R.apply_filters(ds, min_rating=2, user_k=1, item_k=1)
    assert len(out.inter) == 2


# ------------------------------------------------------------------------------------------------ writing
def test_write_atomic_deterministic_and_shuffle_invariant(tmp_path):
    rng = np.random.default_rng(1)
    rows = [(f"u{k % 7}", f"i{rng.integers(20)}", float(k * 10 + rng.integers(5)), float(1 + k % 5))
            for k in range(120)]  # all (user, timestamp) distinct
    header = "uid,iid,ts,r"

    def convert(order, out):
        lines = [header] + [",".join(map(str, rows[k])) for k in order]
        p = _write_lines(tmp_path / f"in_{out}.csv", lines)
        ds = R.read_csv(p, "d", {"user_id": "uid", "item_id": "iid", "timestamp": "ts", "rating": "r"})
        R.write_atomic(ds, tmp_path / out)
        R.write_atomic(ds, tmp_path / (out + "_again"))
        files = {}
        for d in (out, out + "_again"):
            for s in ("inter", "item"):
                files[(d == out, s)] = (tmp_path / d / f"d.{s}").read_bytes()
        assert files[(True, "inter")] == files[(False, "inter")]
        assert files[(True, "item")] == files[(False, "item")]
        return files[(True, "inter")], files[(True, "item")]

    a = convert(range(len(rows)), "a")
    b = convert(rng.permutation(len(rows)), "b")
    assert a == b
    # no temporary files left behind
    assert sorted(os.listdir(tmp_path / "a")) == ["d.inter", "d.item"]


def test_write_atomic_sanitises_and_round_trips(tmp_path):
    inter = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["A", "B", "C"],
                          "timestamp": [1.5, 2.0, 3.0], "rating": [5.0, 4.0, 3.0]})
    items = pd.DataFrame({"item_id": ["A", "B", "X"],
                          "title": ['Tab\there\nnew "quoted" line', "   ", "unused"],
                          "brand": ["", "Acme", "?"]})
    ds = R.normalize(RawDataset("w", inter, items))
    info = R.write_atomic(ds, tmp_path / "out")
    assert (info["users"], info["items"], info["interactions"]) == (2, 3, 3)
    inter_text = (tmp_path / "out" / "w.inter").read_text()
    assert inter_text == ("user_id:token\titem_id:token\ttimestamp:float\trating:float\n"
                          "u1\tA\t1.5\t5\nu1\tB\t2\t4\nu2\tC\t3\t3\n")
    lines = (tmp_path / "out" / "w.item").read_text().splitlines()
    assert lines[0] == "item_id:token\ttitle:token\tbrand:token"
    assert len(lines) == 4 and all(len(line.split("\t")) == 3 for line in lines)
    assert lines[2] == "B\t[UNK]\tAcme" and lines[3] == "C\t[UNK]\t[UNK]"
    # what RecBole sees (pandas, default quoting): no NaN, quotes intact
    df = pd.read_csv(tmp_path / "out" / "w.item", sep="\t", dtype=str, engine="python")
    assert not df.isna().any().any()
    assert df["title:token"].tolist() == ['Tab here new "quoted" line', "[UNK]", "[UNK]"]
    back = R.read_written(tmp_path / "out", "w")
    pd.testing.assert_frame_equal(back.inter, ds.inter)
    assert back.items.values.tolist() == [["A", 'Tab here new "quoted" line', ""], ["B", "", "Acme"], ["C", "", ""]]


def test_write_atomic_rejects_bad_columns(tmp_path):
    ds = _ds([("u", "a", 1)])
    bad = RawDataset("t", ds.inter, ds.items.rename(columns={"title": "my:title"}))
    with pytest.raises(ValueError, match="my:title"):
        R.write_atomic(bad, tmp_path)
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------------------- through prepare


# A bad input file stops ``prepare`` (and ``llmesr-prepare``) with the file and line, and leaves what was
# built before (atomic files, artefacts, manifest, embedding cache) byte for byte unchanged.


def test_inter_wrong_column_count(outputs, capsys):
    inter = spoil(outputs, "\n".join([HEADER, "u1\ti1\t1", "u1\ti2"]) + "\n")
    assert_prepare_fails(inter, outputs, DataFormatError,
                         r"tiny\.inter, line 3: expected 3 tab-separated fields, found 2")
    line = prepare_cli_error(capsys, "--inter", str(inter), "--out", str(outputs["out"]))
    assert line.endswith(f"{inter}, line 3: expected 3 tab-separated fields, found 2")


def test_inter_header_without_types(outputs):
    inter = spoil(outputs, "\n".join(["user_id\titem_id:token\ttimestamp:float", *good_rows()]) + "\n")
    assert_prepare_fails(inter, outputs, DataFormatError,
                         r"tiny\.inter, line 1: header field 'user_id' is not 'name:type'")


def test_inter_header_without_item_column(outputs):
    inter = spoil(outputs, "\n".join(["user_id:token\titem:token\ttimestamp:float", *good_rows()]) + "\n")
    assert_prepare_fails(inter, outputs, DataFormatError, r"tiny\.inter, line 1: no 'item_id' column in header")


@pytest.mark.parametrize("file", ["inter", "item"])
def test_non_utf8_bytes(file, outputs):
    path = outputs["raw"] / f"tiny.{file}"
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3][:4] + b"\xff\xfe caf\xe9" + lines[3][4:]  # Latin-1 bytes in a UTF-8 file
    path.write_bytes(b"\n".join(lines))
    assert_prepare_fails(outputs["raw"] / "tiny.inter", outputs, DataFormatError,
                         rf"tiny\.{file}, line 4: not valid UTF-8")


@pytest.mark.parametrize("file", ["inter", "item"])
def test_empty_file(file, outputs):
    (outputs["raw"] / f"tiny.{file}").write_bytes(b"")
    assert_prepare_fails(outputs["raw"] / "tiny.inter", outputs, DataFormatError,
                         rf"tiny\.{file}, line 1: empty file \(no header\)")


def test_inter_with_header_only(outputs):
    inter = spoil(outputs, HEADER + "\n")
    assert_prepare_fails(inter, outputs, EmptyDatasetError, r"tiny\.inter: no interactions were read")


def test_bad_timestamp(outputs):
    inter = spoil(outputs, "\n".join([HEADER, "u1\ti1\tyesterday", *good_rows()]) + "\n")
    assert_prepare_fails(inter, outputs, DataFormatError,
                         r"tiny\.inter, line 2: timestamp is neither a number nor a date: 'yesterday'")


def test_truncated_gzip(outputs):
    data = gzip.compress("\n".join([HEADER, *good_rows(400)]).encode())
    (outputs["raw"] / "tiny.inter").unlink()
    gz = outputs["raw"] / "tiny.inter.gz"
    gz.write_bytes(data[: len(data) // 2])
    assert_prepare_fails(gz, outputs, DataFormatError, r"tiny\.inter\.gz, line \d+: cannot read compressed data")


def test_duplicate_item_ids_in_item_file(outputs, capsys):
    item = outputs["raw"] / "tiny.item"
    lines = item.read_text().splitlines()
    lines.insert(5, "i3\ta second title for item 3")  # line 6; i3 is on line 5
    item.write_text("\n".join(lines) + "\n")
    assert_prepare_fails(outputs["raw"] / "tiny.inter", outputs, DataFormatError,
                         r"tiny\.item, line 6: duplicate item_id 'i3' \(first on line 5\)")
    line = prepare_cli_error(capsys, "--inter", str(outputs["raw"]), "--out", str(outputs["out"]))
    assert "duplicate item_id 'i3'" in line


def test_empty_after_filtering(outputs, capsys):
    inter = outputs["raw"] / "tiny.inter"
    assert_prepare_fails(inter, outputs, EmptyDatasetError,
                         r"dataset 'tiny': kcore\(user_k=50, item_k=5\) removed every interaction \(before: \d+ inter",
                         filters={"mode": "kcore", "user_k": 50})
    line = prepare_cli_error(capsys, "--inter", str(inter), "--out", str(outputs["out"]), "--filter", "kcore",
                             "--user-k", "50")
    assert "removed every interaction" in line
