"""Tests of recbole_llmesr.prep.text (item templates, user texts, the template a dataset gets)."""
import logging

import numpy as np
import pandas as pd
import pytest
from openai_stub_server import StubEmbeddingServer
from prep_helpers import ST_IDENTITY, run_prepare

from recbole_llmesr.prep import artifacts
from recbole_llmesr.prep import readers as R
from recbole_llmesr.prep import text as T
from recbole_llmesr.prep.embedders import EmbeddingCache
from recbole_llmesr.prep.text import choose_template

FAKE_KEY = "sk-test-FAKE-bad-input-0123456789"


def _items():
    return pd.DataFrame({
        "item_id": ["i1", "i2", "i3"],
        "title": ["Lip Balm", "", "Cream"],
        "brand": ["Acme", "   ", np.nan],
        "price": ["3.5", "[UNK]", None],
        "categories": [["Skin", "Lips"], [], "Face"],
        "description": ["Soft", "x", "y"],
    })


def test_beauty_template_missing_fields_and_lists():
    out = T.item_texts(_items(), "beauty")
    assert list(out) == ["i1", "i2", "i3"]
    assert out["i1"] == ("The beauty item has following attributes: name is Lip Balm; brand is Acme; price is 3.5. "
                         "The item has following features: Skin; Lips. The item has following descriptions: Soft.")
    assert out["i2"].startswith("The beauty item has following attributes: name is unknown; brand is unknown; "
                                "price is unknown. The item has following features: unknown.")
    assert "brand is unknown; price is unknown" in out["i3"]


def test_truncation_on_character_boundary():
    items = pd.DataFrame({"item_id": ["a"], "title": ["é" * 5000]})
    out = T.item_texts(items, "Title: {title}", max_chars=100)
    assert len(out["a"]) == 100 and out["a"] == ("Title: " + "é" * 5000)[:100]
    out["a"].encode("utf-8")  # a whole character sequence
    assert len(T.item_texts(items, "{title}", max_chars=None)["a"]) == 5000
    assert len(T.item_texts(items, "{title}")["a"]) == 2048
    with pytest.raises(ValueError):
        T.item_texts(items, "{title}", max_chars=0)


def test_override_string_and_unknown_field_error():
    items = _items()
    tpl = T.get_template("{title} by {brand} ({{literal}})")
    assert tpl == "{title} by {brand} ({{literal}})"
    assert T.item_texts(items, tpl)["i1"] == "Lip Balm by Acme ({literal})"
    assert T.get_template("movie") == T.TEMPLATES["movie"]
    with pytest.raises(KeyError) as ei:
        T.item_texts(items, "name is {titel}")
    msg = str(ei.value)
    assert "titel" in msg and "title" in msg and "brand" in msg
    assert T.item_texts(items, "{titel}|{title}", missing_fields="unknown")["i1"] == "unknown|Lip Balm"
    with pytest.raises(ValueError, match="unknown item text template"):
        T.get_template("beuty")
    with pytest.raises(ValueError):
        T.get_template("{title")
    assert T.template_fields("beauty") == ["title", "brand", "price", "categories", "description"]


def test_movie_yelp_generic_templates():
    movies = pd.DataFrame({"item_id": ["1"], "movie_title": ["Toy Story"], "release_year": ["1995"],
                           "class": ["Animation Children's Comedy"]})
    assert T.item_texts(movies, "movie")["1"] == ("The movie has following attributes: name is Toy Story; "
                                                  "release year is 1995; genre is Animation Children's Comedy.")
    assert T.item_texts(movies, "generic")["1"] == ("The item has following attributes: movie_title is Toy Story; "
                                                    "release_year is 1995; class is Animation Children's Comedy.")
    yelp = pd.DataFrame({"item_id": ["b"], "name": ["Cafe"], "city": ["Tampa"], "categories": ["Cafes"],
                         "stars": ["4.5"], "review_count": [""]})
    assert T.item_texts(yelp, "yelp")["b"].endswith("average score is 4.5; review count is unknown.")


def test_ml100k_movie_template_renders_every_item():
    ds = R.read_atomic(name="ml-100k")
    out = T.item_texts(ds.items, "movie")
    assert len(out) == 1682
    assert out["1"].startswith("The movie has following attributes: name is Toy Story; release year is 1995")


def test_template_hash():
    h = T.template_hash("beauty", 2048)
    assert h == T.template_hash(T.TEMPLATES["beauty"], 2048)
    assert h != T.template_hash("beauty", 1024)
    assert h != T.template_hash("movie", 2048)
    assert len(h) == 16 and int(h, 16) >= 0


def _inter(seqs):
    rows = [(u, i, float(t)) for u, items in seqs.items() for t, i in enumerate(items)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_user_text_format_and_holdout():
    names = {"a": "Alpha", "b": "Beta", "c": "Gamma", "d": "Delta", "n": ""}
    inter = _inter({"u1": ["a", "n", "b", "c", "d"], "u2": ["c", "d"], "u3": ["x", "a", "b"]})
    out = T.user_texts(inter, names)
    assert out["u1"] == (
        "The user has interacted with following items: Alpha, Beta Please conclude the user's preference."
    )
    assert out["u2"] == T.USER_PREFIX + T.EMPTY_HISTORY + T.USER_SUFFIX  # everything held out
    assert out["u3"] == T.USER_PREFIX + T.EMPTY_HISTORY + T.USER_SUFFIX  # the only training item has no name
    assert list(out) == ["u1", "u2", "u3"]
    assert T.user_texts(inter, names, holdout=0)["u2"] == T.USER_PREFIX + "Gamma, Delta" + T.USER_SUFFIX
    tail = T.user_texts(inter, names, holdout=0, max_chars=8, prefix="[", suffix="]")["u1"]
    assert tail == "[" + "Alpha, Beta, Gamma, Delta"[-8:] + "]"


def test_user_text_never_leaks_held_out_items():
    rng = np.random.default_rng(3)
    n_items = 80
    names = {f"i{k}": f"<item{k}>" for k in range(n_items)}
    seqs = {f"u{u}": [f"i{k}" for k in rng.integers(0, n_items, size=rng.integers(1, 15))] for u in range(200)}
    out = T.user_texts(_inter(seqs), names, holdout=2)
    for u, seq in seqs.items():
        train, held = seq[:-2], seq[-2:]
        for item in held:
            if item not in train:
                assert names[item] not in out[u]
        for item in train:
            assert names[item] in out[u]


def test_item_names():
    assert T.item_names(_items(), "title") == {"i1": "Lip Balm", "i2": "", "i3": "Cream"}
    with pytest.raises(KeyError, match="nope"):
        T.item_names(_items(), "nope")


def test_template_choice():
    assert choose_template(["movie_title", "release_year", "class"], "ml-100k", "atomic")[1] == "movie"
    assert choose_template(["title", "brand", "categories", "price", "description"], "x", "beauty")[1] == "beauty"
    amazon = ["title", "brand", "price", "categories", "description"]
    assert choose_template(amazon, "amazon_beauty", "atomic")[1] == "beauty"
    assert choose_template(amazon, "sports", "amazon2014")[1] == "amazon"
    assert choose_template(amazon + ["features"], "clothing", "amazon2018")[1] == "fashion"
    assert choose_template(["name", "city", "categories", "stars", "review_count"], "y", "yelp")[1] == "yelp"
    assert choose_template(["title"], "books", "csv") == (T.TEMPLATES["generic"], "generic", "unknown")
    assert choose_template(["title"], "books", "csv", "movie") == (T.TEMPLATES["movie"], "movie", "error")
    assert choose_template(["title"], "b", "csv", "Book: {title}")[:2] == ("Book: {title}", "custom")
    with pytest.raises(ValueError, match="unknown item text template"):
        choose_template(["title"], "b", "csv", "nonsense")


# ---------------------------------------------------------------- item text policy, through prepare


# Items with no text (no row in ``.item``, or only empty / whitespace fields) are embedded like any other
# item with every text field rendered as "unknown" (the paper's missing-field handling), and a warning names
# how many and which; the written ``.item`` holds ``[UNK]`` for them. A text longer than ``text_max_chars``
# (1 MB here) is cut to ``text_max_chars`` characters (user texts to their last ``user_text_max_chars``),
# never sent whole.


def items_unknown(caplog) -> str:
    (line,) = [r.getMessage() for r in caplog.records if "have no text" in r.getMessage()]
    return line


def test_items_without_text(outputs, caplog):
    # Policy: embedded, every field "unknown", with a warning naming them (here: no row in .item).
    item = outputs["raw"] / "tiny.item"
    lines = [ln for ln in item.read_text().splitlines() if not ln.startswith(("i3\t", "i17\t"))]
    item.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="recbole_llmesr"):
        m = run_prepare(item.with_suffix(".inter"), outputs)
    assert "2 of 25 items have no text" in items_unknown(caplog) and "i17, i3" in items_unknown(caplog)
    assert m["counts"]["items"] == 25  # nothing dropped (RecBole alone would drop their interactions)
    written = (outputs["out"] / "tiny" / "tiny.item").read_text().splitlines()
    assert "i3\t[UNK]" in written and "i17\t[UNK]" in written
    tokens, _ = artifacts.load_embeddings(outputs["out"] / "tiny" / "tiny.item_emb.npz", expected_dim=384)
    assert {"i3", "i17"} <= set(tokens.tolist())
    cache = EmbeddingCache(outputs["cache"], ST_IDENTITY)
    assert cache.get_many(["The item has following attributes: title is unknown."])


def test_empty_or_whitespace_titles(outputs, caplog):
    item = outputs["raw"] / "tiny.item"
    text = item.read_text().replace("i4\titem number 4\n", "i4\t\n")
    item.write_text(text.replace("i5\titem number 5\n", "i5\t   \n"))
    with caplog.at_level(logging.WARNING, logger="recbole_llmesr"):
        run_prepare(item.with_suffix(".inter"), outputs)
    assert "2 of 25 items have no text" in items_unknown(caplog) and "i4, i5" in items_unknown(caplog)
    written = (outputs["out"] / "tiny" / "tiny.item").read_text().splitlines()
    assert "i4\t[UNK]" in written and "i5\t[UNK]" in written


def test_text_of_one_megabyte_is_truncated(outputs, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    item = outputs["raw"] / "tiny.item"
    huge = "word " * 200_000  # 1 MB
    item.write_text(item.read_text().replace("i7\titem number 7\n", f"i7\t{huge}\n"))
    with StubEmbeddingServer() as srv:  # shows exactly what was sent
        m = run_prepare(item.with_suffix(".inter"), outputs, embedder="openai", base_url=srv.base_url, dim=16)
        sent = srv.inputs_sent()
    assert m["counts"]["items"] == 25 and (m["max_chars"], m["user_max_chars"]) == (2048, 8000)
    big = [t for t in sent if "word word" in t]
    item_text = [t for t in big if t.startswith("The item has following attributes: title is word")]
    assert len(item_text) == 1 and len(item_text[0]) == 2048
    assert max(map(len, sent)) <= 8000 + 100  # user texts: the last 8000 characters, plus prefix and suffix
