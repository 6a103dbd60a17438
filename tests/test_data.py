"""Readers, validation errors, prompts and hard-negative mining (minisbert/data.py)."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from minisbert.data import DataError, TextDataset, from_columns, load_dataset, mine_hard_negatives, resolve_prompt

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def raises(path_or_none, *fragments, **kwargs):
    """Load and return the DataError message, checking it names every fragment."""
    with pytest.raises(DataError) as info:
        load_dataset(path_or_none, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ---------------------------------------------------------------------------------------------
# readers


def test_jsonl_columns_roles_and_labels(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"sentence1": "a cat", "sentence2": "a kitten", "score": 0.9, "raw_score": 4.5, "id": 7},
        {"sentence1": "a dog", "sentence2": "a car", "score": 0, "raw_score": 0, "id": 8},
    ])
    ds = load_dataset(path)
    assert isinstance(ds, TextDataset)
    assert (ds.name, ds.source, len(ds)) == ("pairs", str(path), 2)
    assert ds.column_names == ["sentence1", "sentence2"]  # numbers are neither text nor label
    assert ds.labels == [0.9, 0.0] and all(type(x) is float for x in ds.labels)
    assert ds.rows([1, 0]) == [("a dog", "a car"), ("a cat", "a kitten")]
    ds = load_dataset(path, columns=["sentence2", "sentence1"], label_column="raw_score", name="sts", limit=1)
    assert (ds.name, ds.column_names, ds.labels, len(ds)) == ("sts", ["sentence2", "sentence1"], [4.5], 1)
    assert load_dataset(path, label_column="").labels is None


def test_jsonl_blank_lines_bom_and_line_numbers(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('\ufeff{"a": "x", "b": "y"}\n\n   \n{"a": "z"}\n', encoding="utf-8")
    raises(path, f"{path}, line 4, column 'b': missing")
    path.write_text('{"a": "x\u2028y", "b": "y"}\r\n\r\n{"a": "z", "b": "w"}\r\n', encoding="utf-8")
    assert load_dataset(path).rows([0, 1]) == [("x\u2028y", "y"), ("z", "w")]


def test_csv_and_tsv(tmp_path):
    rows = [["a, quoted \"one\"\nover two lines", "p1", "0.5"], ["q2", "p2", "1"]]
    path = write_csv(tmp_path / "d.csv", ["anchor", "positive", "label"], rows)
    ds = load_dataset(path)
    assert ds.column_names == ["anchor", "positive"]
    assert ds.rows([0]) == [tuple(rows[0][:2])] and ds.labels == [0.5, 1.0]
    tsv = tmp_path / "d.tsv"
    tsv.write_text('query\tdoc\tscore\n"quoted" text\td1\t2\n\nq2\td2\t0\n', encoding="utf-8")
    ds = load_dataset(tsv)  # tabs only: quotes are literal text
    assert ds.rows([0, 1]) == [('"quoted" text', "d1"), ("q2", "d2")] and ds.labels == [2.0, 0.0]


def test_csv_numeric_columns_are_not_text_unless_asked(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["id", "text", "year"], [["1", "hello", "2001"], ["2", "42", "2002"]])
    ds = load_dataset(path)
    assert ds.column_names == ["text"]  # "42" in a text column stays text
    assert load_dataset(path, columns=["id", "text"]).rows([1]) == [("2", "42")]


def test_string_labels_need_a_label_map(tmp_path):
    path = write_jsonl(tmp_path / "nli.jsonl", [{"p": "a", "h": "b", "label": "entailment"},
                                                 {"p": "c", "h": "d", "label": "contradiction"}])
    raises(path, f"{path}, line 1, column 'label': expected a number as label, got 'entailment'", "label_map")
    ds = load_dataset(path, label_map={"entailment": 0, "neutral": 1, "contradiction": 2})
    assert ds.labels == [0.0, 2.0]
    raises(path, f"{path}, line 2, column 'label': label 'contradiction' is not in label_map",
           label_map={"entailment": 0})


def test_100k_character_text_is_fine(tmp_path):
    long = "word " * 20_000 + "end"  # 100,003 characters
    ds = load_dataset(write_jsonl(tmp_path / "l.jsonl", [{"a": long, "b": "x"}]))
    assert ds.rows([0]) == [(long, "x")]
    longer = long * 3  # beyond csv's default 131072-character field limit
    ds = load_dataset(write_csv(tmp_path / "l.csv", ["a", "b"], [[longer, "x"]]))
    assert ds.rows([0]) == [(longer, "x")]
    assert csv.field_size_limit() == 131072  # the process-wide limit is restored


def test_empty_strings_allowed_all_empty_column_is_an_error(tmp_path):
    ds = load_dataset(write_jsonl(tmp_path / "e.jsonl", [{"a": "", "b": "x"}, {"a": "y", "b": "z"}]))
    assert ds.rows([0]) == [("", "x")]
    path = write_jsonl(tmp_path / "e2.jsonl", [{"a": "", "b": "x"}, {"a": "  ", "b": "z"}])
    raises(path, f"{path}, column 'a': empty in all 2 rows")


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"anchor": ["a", "b"], "positive": ["c", None], "score": [1, 2]}), path)
    raises(path, f"{path}, row 2, column 'positive': expected text (a string), got null")
    pq.write_table(pa.table({"anchor": ["a", "b"], "positive": ["c", "d"], "score": [1, 2]}), path)
    ds = load_dataset(path)
    assert ds.column_names == ["anchor", "positive"] and ds.labels == [1.0, 2.0]


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path):
    try:
        import pyarrow  # noqa: F401
        pytest.skip("pyarrow is installed")
    except ImportError:
        pass
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    raises(path, str(path), "needs pyarrow")


@pytest.mark.skipif(not DATA.exists(), reason="shared data not present")
def test_shared_data_files():
    triplets = load_dataset(DATA / "nli-triplets" / "train.jsonl")
    assert triplets.column_names == ["anchor", "positive", "negative"]  # 'source' has 2 values: not text
    assert triplets.left_out == {"source": 2}
    triplets = load_dataset(DATA / "nli-triplets" / "train.jsonl", columns=["anchor", "positive", "negative"])
    assert len(triplets) == 5452 and triplets.labels is None
    stsb = load_dataset(DATA / "stsb" / "dev.jsonl")
    assert stsb.column_names == ["sentence1", "sentence2"] and len(stsb) == 1500
    assert min(stsb.labels) >= 0 and max(stsb.labels) <= 1
    snli = load_dataset(DATA / "nli-pairs" / "snli-dev.jsonl",
                        label_map={"entailment": 0, "neutral": 1, "contradiction": 2})
    assert len(snli) == 9842 and set(snli.labels) == {0.0, 1.0, 2.0}
    qrels = load_dataset(DATA / "scifact" / "qrels" / "test.tsv", columns=["query-id", "corpus-id"])
    assert len(qrels) == 339 and set(qrels.labels) == {1.0}
    corpus = load_dataset(DATA / "cranfield" / "corpus.jsonl", columns=["text"])
    assert len(corpus) == 1400 and sum(t == "" for t in corpus.columns["text"]) == 2  # blank docs load


# ---------------------------------------------------------------------------------------------
# errors: one DataError naming file, line and column


def test_missing_unknown_and_empty_files(tmp_path):
    raises(tmp_path / "nope.jsonl", f"{tmp_path / 'nope.jsonl'}: file not found")
    raises(tmp_path, "not a file")
    (tmp_path / "x.txt").write_text("a\n")
    raises(tmp_path / "x.txt", "unknown file type '.txt'")
    (tmp_path / "e.jsonl").write_text("\n \n")
    raises(tmp_path / "e.jsonl", f"{tmp_path / 'e.jsonl'}: the file has no rows")
    (tmp_path / "e.csv").write_text("")
    raises(tmp_path / "e.csv", "no rows")
    (tmp_path / "h.csv").write_text("a,b\n")
    raises(tmp_path / "h.csv", "no rows (only a header)")
    raises(write_jsonl(tmp_path / "ok.jsonl", [{"a": "x"}]), "limit", limit=0)


def test_malformed_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": "x"}\n\n{"a": "y",}\n', encoding="utf-8")
    raises(path, f"{path}, line 3: not valid JSON", "character 11")  # the "}" after the comma
    path.write_text('{"a": "x"}\n["a", "y"]\n', encoding="utf-8")
    raises(path, f"{path}, line 2: expected a JSON object", "a list")


def test_non_utf8_bytes(tmp_path):
    for suffix in (".jsonl", ".csv"):
        path = tmp_path / f"latin1{suffix}"
        path.write_bytes(b'{"a": "ok"}\n{"a": "caf\xe9"}\n' if suffix == ".jsonl" else b"a\nok\ncaf\xe9\n")
        line, byte = (2, 11) if suffix == ".jsonl" else (3, 4)
        raises(path, f"{path}, line {line}: not valid UTF-8", f"0xe9 at byte {byte} of the line")


@pytest.mark.parametrize("value, described", [(None, "null"), (3, "the number 3"), (["a"], "a list"),
                                              ({"x": 1}, "an object"), (True, "true")])
def test_non_string_text(tmp_path, value, described):
    path = write_jsonl(tmp_path / "t.jsonl", [{"a": "x", "b": "y"}, {"a": "z", "b": value}])
    raises(path, f"{path}, line 2, column 'b': expected text (a string), got {described}")


def test_missing_columns(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"a": "x", "b": "y"}, {"a": "z"}])
    raises(path, f"{path}, line 2, column 'b': missing (this row has ['a'])")
    raises(path, f"{path}, line 1, column 'c': missing", columns=["a", "c"])
    path = write_csv(tmp_path / "m.csv", ["a", "b"], [["x", "y"]])
    raises(path, f"{path}, line 1 (header): no column 'c'; the columns are ['a', 'b']", columns=["a", "c"])
    raises(path, f"{path}, line 1 (header): no label column 'score'", label_column="score")
    (tmp_path / "short.csv").write_text('a,b\nx,y\n"multi\nline",y\nz\n', encoding="utf-8")
    raises(tmp_path / "short.csv", f"{tmp_path / 'short.csv'}, line 5: expected 2 fields", "got 1")
    (tmp_path / "dup.csv").write_text("a,a\nx,y\n")
    raises(tmp_path / "dup.csv", "line 1: the header repeats a column name")


def test_no_text_columns_and_bad_column_arguments(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"id": 1, "label": 0}])
    raises(path, f"{path}: no text columns found among ['id', 'label']; pass columns=")
    path = write_jsonl(tmp_path / "c.jsonl", [{"a": "x", "label": 1}])
    raises(path, "'label' is the label column", columns=["a", "label"], label_column="label")
    raises(path, "columns repeats a name", columns=["a", "a"])
    raises(path, "non-empty list of column names", columns="a")


@pytest.mark.parametrize("label, message", [
    ("entailment", "expected a number as label, got 'entailment'"),
    (None, "expected a number as label, got null"),
    (True, "expected a number as label, got true"),
    ("nan", "label is nan; expected a finite number"),
    (float("nan"), "label is nan; expected a finite number"),  # json writes NaN, which json reads back
    (10 ** 400, "label is inf"),
])
def test_bad_labels(tmp_path, label, message):
    path = write_jsonl(tmp_path / "l.jsonl", [{"a": "x", "label": 1}, {"a": "y", "label": label}])
    raises(path, f"{path}, line 2, column 'label': {message}")


def test_bad_csv_labels(tmp_path):
    path = write_csv(tmp_path / "l.csv", ["a", "score"], [["x", "1"], ["y", "NaN"]])
    raises(path, f"{path}, line 3, column 'score': label is nan")
    path = write_csv(tmp_path / "l.csv", ["a", "score"], [["x", "1"], ["y", "high"]])
    raises(path, f"{path}, line 3, column 'score': expected a number as label, got 'high'")
    raises(path, "label_map['high'] must be a finite number", label_map={"high": "1"})


def test_from_columns_validates_like_files():
    ds = from_columns({"anchor": ["a", "b"], "positive": ["c", "d"], "score": [1, 0.5]}, name="mem")
    assert ds.column_names == ["anchor", "positive"] and ds.labels == [1.0, 0.5] and ds.source == "<memory>"
    assert from_columns({"a": ("x",)}, labels=[2]).labels == [2.0]
    with pytest.raises(DataError, match=r"<memory>, row 2, column 'a': expected text \(a string\), got the number 5"):
        from_columns({"a": ["x", 5]})
    with pytest.raises(DataError, match=r"q.jsonl, row 1, column 'label': label is nan"):
        from_columns({"a": ["x"]}, labels=[float("nan")], source="q.jsonl")
    with pytest.raises(DataError, match="different lengths"):
        from_columns({"a": ["x"], "b": ["y", "z"]})
    with pytest.raises(DataError, match="give one"):
        from_columns({"a": ["x"], "label": [1]}, labels=[1])
    with pytest.raises(DataError, match="no rows"):
        from_columns({"a": []})
    with pytest.raises(DataError, match="expected a list of texts"):
        from_columns({"a": "xyz"})
    with pytest.raises(DataError, match="empty in all 2 rows"):
        from_columns({"a": ["x", "y"], "b": ["", ""]})


# ---------------------------------------------------------------------------------------------
# fuzz: only DataError, never another exception; valid rows round-trip exactly


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([".jsonl", ".csv", ".tsv"]), st.booleans())
def test_arbitrary_bytes_give_data_or_data_error(tmp_path, data, suffix, with_columns):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        ds = load_dataset(path, columns=["a"] if with_columns else None)
    except DataError:
        return
    assert len(ds) >= 1 and all(isinstance(t, str) for texts in ds.columns.values() for t in texts)


@FUZZ
@given(st.sampled_from(["{", '{"a": ', "[", '{"a": "x", "label": ', "a,label\n", '"', "\t", "\x00", "\r"]),
       st.text(max_size=40), st.sampled_from([".jsonl", ".csv", ".tsv"]))
def test_near_valid_text_gives_data_or_data_error(tmp_path, prefix, text, suffix):
    path = tmp_path / f"near{suffix}"
    path.write_text(prefix + text, encoding="utf-8")
    try:
        load_dataset(path)
    except DataError:
        pass


texts = st.text(max_size=30)
valid_rows = st.lists(st.tuples(texts, texts, st.floats(allow_nan=False, allow_infinity=False)), min_size=1,
                      max_size=15)


@FUZZ
@given(valid_rows, st.sampled_from([".jsonl", ".csv", ".tsv"]))
def test_valid_rows_round_trip(tmp_path, rows, suffix):
    assume(any(r[0].strip() for r in rows) and any(r[1].strip() for r in rows))
    if suffix == ".tsv":
        assume(not any(c in t for r in rows for t in r[:2] for c in "\t\r\n"))
    path = tmp_path / f"rows{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, [{"a": a, "b": b, "label": x} for a, b, x in rows])
    elif suffix == ".csv":
        write_csv(path, ["a", "b", "label"], [[a, b, repr(x)] for a, b, x in rows])
    else:
        path.write_text("a\tb\tlabel\n" + "".join(f"{a}\t{b}\t{x!r}\n" for a, b, x in rows), encoding="utf-8")
    ds = load_dataset(path, columns=["a", "b"])
    assert ds.rows(range(len(rows))) == [(a, b) for a, b, _ in rows]
    assert ds.labels == [x for _, _, x in rows]


# ---------------------------------------------------------------------------------------------
# prompts

PROMPT_FORMS = [None, "", "query: ", {}, {"anchor": "query: ", "positive": "passage: "},
                {"nli": "x: ", "sts": "y: "}, {"nli": {"anchor": "q: "}, "sts": {"positive": "p: "}},
                {"nli": "x: ", "anchor": "a: "}]


def test_resolve_prompt_by_hand():
    assert resolve_prompt("query: ", "nli", "negative") == "query: "
    assert resolve_prompt({"anchor": "query: "}, None, "anchor") == "query: "
    assert resolve_prompt({"anchor": "query: "}, None, "positive") is None
    assert resolve_prompt({"nli": "x: ", "sts": "y: "}, "sts", "anchor") == "y: "
    assert resolve_prompt({"nli": {"anchor": "q: "}}, "nli", "anchor") == "q: "
    assert resolve_prompt({"nli": {"anchor": "q: "}}, "nli", "positive") is None
    assert resolve_prompt({"nli": {"anchor": "q: "}}, "other", "anchor") is None
    with pytest.raises(DataError, match="no dataset name"):
        resolve_prompt({"nli": {"anchor": "q: "}}, None, "anchor")
    with pytest.raises(DataError, match=r"prompts\['anchor'\] must be"):
        resolve_prompt({"anchor": 3}, None, "anchor")


@pytest.mark.parametrize("prompts", PROMPT_FORMS)
def test_resolve_prompt_equals_sentence_transformers_collator(prompts):
    collator_module = pytest.importorskip("sentence_transformers.base.data_collator")
    collator = collator_module.BaseDataCollator(preprocess_fn=lambda *a, **k: {}, prompts=prompts)
    for dataset in (None, "nli", "sts", "other"):
        for column in ("anchor", "positive", "negative"):
            try:
                expected = collator._get_prompt_for_column(
                    collator._resolve_prompts({"dataset_name": dataset} if dataset else {}), column)
            except ValueError:
                with pytest.raises(DataError):
                    resolve_prompt(prompts, dataset, column)
                continue
            assert resolve_prompt(prompts, dataset, column) == expected, (prompts, dataset, column)


# ---------------------------------------------------------------------------------------------
# hard-negative mining


def unit(degrees):
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


class FakeModel:
    """encode() looks texts up (prompt prepended) in a table of hand-made vectors."""

    def __init__(self, vectors):
        self.vectors, self.calls = vectors, []

    def encode(self, texts, batch_size=32, prompt=None, convert_to_tensor=False, normalize_embeddings=False):
        assert convert_to_tensor and normalize_embeddings
        self.calls.append((list(texts), prompt, batch_size))
        return F.normalize(torch.tensor([self.vectors[(prompt or "") + t] for t in texts]), dim=-1)


# Query "q" at 0 degrees; corpus texts named by their angle, so cos ranks them d10 > p20 > d30 > ...
ANGLES = {"q": 0, "d10": 10, "p20": 20, "d30": 30, "d40": 40, "d50": 50, "d90": 90}
CORPUS = ["d10", "d30", "d40", "d50", "d90"]


@pytest.mark.parametrize("kwargs, negatives", [
    ({}, ["d10", "d30"]),  # the positive p20 (rank 2) is skipped
    ({"range_min": 1}, ["d30", "d40"]),  # skip the nearest valid candidate
    ({"margin": 0.0}, ["d30", "d40"]),  # d10 scores above the positive
    ({"margin": 0.1}, ["d40", "d50"]),  # cos30 = .866 > cos20 - .1 = .840
    ({"max_score": 0.9}, ["d30", "d40"]),  # cos10 = .985 > .9
    ({"max_score": 0.5}, None),  # only d90 is left: one negative of two -> row dropped
    ({"range_max": 2}, ["d10", "d30"]),  # pool = top range_max + 1 positive = d10, p20, d30
    ({"range_max": 2, "range_min": 1, "num_negatives": 1}, ["d30"]),
    ({"range_max": 2, "range_min": 1, "num_negatives": 1, "margin": 0.0}, None),  # d40 is outside the pool
    ({"range_max": 3, "range_min": 1, "num_negatives": 1, "margin": 0.0}, ["d40"]),
])
def test_mining_by_hand(kwargs, negatives):
    model = FakeModel({t: unit(a) for t, a in ANGLES.items()})
    rows = mine_hard_negatives(model, ["q"], ["p20"], CORPUS, **{"num_negatives": 2, **kwargs})
    assert rows == ([] if negatives is None else [("q", "p20", *negatives)])


def test_mining_multiple_positives_duplicates_default_corpus_and_prompts():
    vectors = {"query: " + t: unit(a) for t, a in ANGLES.items()}
    vectors |= {"passage: " + t: unit(a) for t, a in ANGLES.items()}
    model = FakeModel(vectors)
    queries, positives = ["q", "q", "q", "d90"], ["p20", "d10", "p20", "d50"]
    rows = mine_hard_negatives(model, queries, positives, num_negatives=1, margin=0.0, batch_size=7,
                               query_prompt="query: ", corpus_prompt="passage: ")
    # corpus = unique positives [p20, d10, d50]; q's positives p20 and d10 are both excluded, and the
    # margin uses q's harder positive (cos20); d90's positive is d50, its best other text is p20.
    assert rows == [("q", "p20", "d50"), ("q", "d10", "d50"), ("d90", "d50", "p20")]
    assert model.calls == [(["q", "d90"], "query: ", 7), (["p20", "d10", "d50"], "passage: ", 7)]


def naive_mining(vectors, queries, positives, corpus, num_negatives, range_min, range_max, margin, max_score):
    """The documented rule, one query at a time, on float64 cosines."""
    corpus = list(dict.fromkeys(corpus + positives))
    unique = list(dict.fromkeys(queries))
    own = {q: list(dict.fromkeys(p for qq, p in zip(queries, positives) if qq == q)) for q in unique}
    max_positives = max(len(v) for v in own.values())
    if range_max is None:
        range_max = range_min + num_negatives * (10 if margin is not None or max_score is not None else 1) \
            + max_positives
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(vectors[a], vectors[b], dim=0))  # noqa: E731
    rows = []
    for q in unique:
        score = {c: cos(q, c) for c in corpus}
        pool = sorted(corpus, key=lambda c: -score[c])[:range_max + max_positives]
        hardest_positive = min(score[p] for p in own[q])
        valid = [c for c in pool if c not in own[q]
                 and not (margin is not None and score[c] + margin > hardest_positive)
                 and not (max_score is not None and score[c] > max_score)]
        negatives = valid[range_min:range_min + num_negatives]
        if len(negatives) == num_negatives:
            rows += [(q, p, *negatives) for p in own[q]]
    return rows


@pytest.mark.parametrize("seed", range(12))
def test_mining_matches_naive_rule(seed):
    g = torch.Generator().manual_seed(seed)
    names = [f"t{i}" for i in range(30)]
    vectors = {n: v for n, v in zip(names, torch.randn(30, 8, generator=g, dtype=torch.float64))}
    pick = lambda k: [names[i] for i in torch.randint(0, 30, (k,), generator=g).tolist()]  # noqa: E731
    queries, positives, corpus = pick(12), pick(12), pick(10)
    options = dict(num_negatives=1 + seed % 3, range_min=seed % 2, range_max=None if seed % 4 else 8,
                   margin=[None, 0.0, 0.2][seed % 3], max_score=[None, 0.5][seed % 2])
    model = FakeModel({n: v.tolist() for n, v in vectors.items()})
    expected = naive_mining(vectors, queries, positives, corpus, **options)
    assert mine_hard_negatives(model, queries, positives, corpus, **options) == expected


def test_mining_errors():
    model = FakeModel({})
    with pytest.raises(DataError, match="as many queries as positives"):
        mine_hard_negatives(model, ["a"], [])
    with pytest.raises(DataError, match="positives, row 2: expected text"):
        mine_hard_negatives(model, ["a", "b"], ["x", None])
    with pytest.raises(DataError, match="num_negatives"):
        mine_hard_negatives(model, ["a"], ["x"], num_negatives=0)
    with pytest.raises(DataError, match="room for fewer than num_negatives=3"):
        mine_hard_negatives(model, ["a"], ["x"], num_negatives=3, range_min=1, range_max=3)


def test_one_reader_for_training_and_evaluation_files(tmp_path):
    """load_dataset and the evaluators' readers (eval_files) read a file alike and fail with the same message."""
    from minisbert import eval_files

    tsv = tmp_path / "q.tsv"
    tsv.write_text('anchor\tpositive\n"quoted" text\tb\n', encoding="utf-8")
    assert eval_files.read_rows(tsv) == [{"anchor": '"quoted" text', "positive": "b"}]  # tsv quotes are text
    assert load_dataset(tsv).columns["anchor"] == ['"quoted" text']
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"anchor": "a", "positive": "b"}\n[1]\n', encoding="utf-8")
    with pytest.raises(DataError) as training_error:
        load_dataset(bad)
    with pytest.raises(DataError) as evaluation_error:
        eval_files.read_rows(bad)
    assert str(training_error.value) == str(evaluation_error.value) == f"{bad}, line 2: expected a JSON object {{...}}, got a list"
