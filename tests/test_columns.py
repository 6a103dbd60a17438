"""How train.py chooses text columns and says so: a low-cardinality string column (a `source` field)
is left out when columns are inferred, with a notice; `--columns` keeps the user's choice; start-up
names every column's role and the batches the sampler really makes; and no-duplicates batches that
a repeated text underfills are an error naming the column and the fix (`--allow_small_batches` goes on).

Data: triplets built from the committed STSb slice (tests/data/stsb_test_500.jsonl) plus a `source`
column of two values, as the nli-triplets files have.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train import TrainConfig, main  # noqa: E402

from minisbert import training  # noqa: E402
from minisbert.data import DataError, load_dataset  # noqa: E402
from minisbert.sampler import NoDuplicatesBatchSampler  # noqa: E402
from minisbert.sampler import BatchFill  # noqa: E402

ROWS = 400  # two source values are 0.5% of the rows: under the 1% rule


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _triplets(n=ROWS, sources=("snli-dev", "mnli-dev-matched")):
    rows = [json.loads(line) for line in (ROOT / "tests" / "data" / "stsb_test_500.jsonl").read_text().splitlines()]
    return [{"anchor": f"{i}: {r['sentence1']}", "positive": f"{i}: {r['sentence2']}",
             "negative": f"{i}: {rows[(i + 7) % len(rows)]['sentence2']}", "source": sources[i % len(sources)]}
            for i, r in enumerate(rows[:n])]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("columns")
    return {"sourced": _write(root / "sourced.jsonl", _triplets()),
            "small": _write(root / "small.jsonl", _triplets(64))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import tiny_models

    return tiny_models.build("bert", tmp_path_factory.mktemp("models") / "tiny")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, as the subprocesses run


def _string_columns(path: Path) -> list[str]:
    """The naive reference: every column whose first value is a string, but the label."""
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    return [c for c, v in first.items() if isinstance(v, str) and c not in ("label", "labels", "score", "scores")]


# ----------------------------------------------------------------------------------------------
# which columns are text


def test_source_column_is_left_out_when_inferred_and_kept_when_chosen(files):
    inferred = load_dataset(files["sourced"])
    assert inferred.column_names == ["anchor", "positive", "negative"]
    assert inferred.left_out == {"source": 2}
    chosen = load_dataset(files["sourced"], columns=["anchor", "positive", "negative", "source"])
    assert chosen.column_names == ["anchor", "positive", "negative", "source"] and chosen.left_out == {}
    assert chosen.columns["source"][:2] == ["snli-dev", "mnli-dev-matched"]


def test_threshold_is_at_most_100_values_and_at_most_one_percent_of_rows(tmp_path):
    def inferred(n, values):
        rows = [{"a": f"anchor {i}", "p": f"positive {i}", "tag": f"tag {i % values}"} for i in range(n)]
        return load_dataset(_write(tmp_path / f"{n}-{values}.jsonl", rows)).column_names

    assert inferred(400, 4) == ["a", "p"]  # 4 values = 1% of 400 rows
    assert inferred(400, 5) == ["a", "p", "tag"]  # 1.25%
    assert inferred(10_000, 100) == ["a", "p"]
    assert inferred(20_000, 101) == ["a", "p", "tag"]  # 0.5%, but more than 100 values


def test_small_and_committed_files_keep_every_text_column(files):
    # 1% of 64 rows is under one value, so nothing can be left out of a small file
    assert load_dataset(files["small"]).column_names == ["anchor", "positive", "negative", "source"]
    committed = [*(ROOT / "examples" / "data").rglob("*.jsonl"), *(ROOT / "tests" / "data").glob("*.jsonl")]
    assert len(committed) >= 5
    for path in committed:
        try:
            ds = load_dataset(path)
        except DataError:
            continue  # layouts that are not training data (reranking lists)
        assert ds.column_names == _string_columns(path), path
        assert ds.left_out == {}


def test_nothing_is_left_out_when_one_text_column_would_remain(tmp_path):
    rows = [{"text": f"sentence {i}", "lang": "en" if i % 2 else "de"} for i in range(ROWS)]
    ds = load_dataset(_write(tmp_path / "langs.jsonl", rows))
    assert ds.column_names == ["text", "lang"] and ds.left_out == {}  # a pair, not SimCSE: the batch check decides


def test_csv_source_column_is_left_out_and_the_label_is_no_text(tmp_path):
    path = tmp_path / "scored.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence1", "sentence2", "score", "genre"])
        for i in range(ROWS):
            writer.writerow([f"first {i}", f"second {i}", i / ROWS, "news" if i % 3 else "forum"])
    ds = load_dataset(path)
    assert ds.column_names == ["sentence1", "sentence2"] and ds.label_column == "score"
    assert ds.left_out == {"genre": 2} and ds.labels[1] == 1 / ROWS


# ----------------------------------------------------------------------------------------------
# batch fill, the repeated text, roles


def test_batch_fill_and_most_repeated_text(files):
    fill = BatchFill.of([[0, 1, 2], [3], [4, 5]], 4)
    assert (fill.batches, fill.rows, fill.smallest, fill.largest, fill.mean) == (3, 6, 1, 3, 2.0)
    assert str(fill) == "3, rows per batch mean 2.00 (min 1, max 3) of 4 asked"
    ds = load_dataset(files["sourced"], columns=["anchor", "positive", "negative", "source"])
    sampler = NoDuplicatesBatchSampler(ds, 32, seed=42)
    assert sampler.most_repeated() == ("source", "snli-dev", ROWS // 2)
    batches = sampler.batches(0)
    assert len(batches) == ROWS // 2 and max(len(b) for b in batches) == 2  # one row per source per batch


def test_column_roles():
    assert training.column_roles("mnrl", ["a", "p", "n", "s"]) == (
        "a -> anchor, p -> positive, n -> hard negative 1, s -> hard negative 2")
    assert training.column_roles("mnrl", ["text"]) == "text -> anchor and positive (SimCSE: two dropout masks)"
    assert training.column_roles("triplet", ["a", "p", "n"]) == "a -> anchor, p -> positive, n -> negative"
    assert training.column_roles("cosent", ["s1", "s2"]) == "s1 -> text 1, s2 -> text 2"
    assert training.column_roles("bce", ["q", "d"]) == "q -> query, d -> document"


# ----------------------------------------------------------------------------------------------
# train.py


def _config(tiny, data, out, **overrides):
    return TrainConfig(**{**dict(model=str(tiny), data=data and str(data), output_dir=str(out), eval_data=[], batch_size=32,
                                 learning_rate=1e-3, max_steps=3, logging_steps=1, save_steps=0, disable_tqdm=True),
                          **overrides})


def _losses(out):
    return [r["loss"] for r in map(json.loads, (Path(out) / "log.jsonl").read_text().splitlines()) if "loss" in r]


def test_default_run_leaves_source_out_with_a_notice_and_equals_the_columns_run(tiny, files, tmp_path, capsys):
    main(_config(tiny, files["sourced"], tmp_path / "default"))
    out = capsys.readouterr().out
    notice = [line for line in out.splitlines() if "left out" in line]
    assert notice == [f"column 'source' of {files['sourced']} left out as not text: 2 distinct value(s) in {ROWS} rows; "
                      "to train on it, pass --columns anchor positive negative source"]
    assert "columns (sourced): anchor -> anchor, positive -> positive, negative -> hard negative 1; label: none" in out
    expected = BatchFill.of(NoDuplicatesBatchSampler(load_dataset(files["sourced"], columns=["anchor", "positive", "negative"]),
                                                     32, seed=42).batches(0), 32)
    assert f"batches (sourced): {expected}\n" in out and expected.mean > 30

    main(_config(tiny, files["sourced"], tmp_path / "chosen", columns=["anchor", "positive", "negative"]))
    out = capsys.readouterr().out
    assert "left out" not in out and f"batches (sourced): {expected}\n" in out
    assert _losses(tmp_path / "chosen") == _losses(tmp_path / "default")  # the same training


def test_underfilled_batches_are_an_error_naming_the_column_and_the_fix(tiny, files, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = _config(tiny, files["sourced"], out, columns=["anchor", "positive", "negative", "source"])
    with pytest.raises(DataError) as e:
        main(cfg)
    message = str(e.value)
    assert message.startswith(f"{files['sourced']}: the no-duplicates sampler can only make batches of 2.00 rows on "
                              f"average for --batch_size 32 ({ROWS // 2} batches)")
    assert f"column 'source' has 2 distinct values in {ROWS} rows, and 'snli-dev' alone is in {ROWS // 2} rows" in message
    assert ("is 'source' a text column? If not, pass --columns anchor positive negative; if it is, pass --batch_sampler "
            "shuffled --mask_duplicates, or --allow_small_batches to train on these batches anyway") in message
    assert "source -> hard negative 2" in capsys.readouterr().out  # the roles were said before the error
    assert not out.exists()  # stopped before anything was written

    with pytest.raises(DataError, match=r'pass "columns": \["anchor", "positive", "negative"\] in --datasets\[0\]'):
        main(_config(tiny, None, out, datasets=[{"path": str(files["sourced"]), "columns": cfg.columns}]))
    # a small file keeps its source column, and the batch check catches it there too
    with pytest.raises(DataError, match=r"column 'source' has 2 distinct values in 64 rows"):
        main(_config(tiny, files["small"], out))


def test_allow_small_batches_trains_on_the_sampler_batches(tiny, files, tmp_path, capsys):
    cfg = _config(tiny, files["sourced"], tmp_path / "run", columns=["anchor", "positive", "negative", "source"],
                  allow_small_batches=True, max_steps=-1, logging_steps=0)
    main(cfg)
    assert f"batches (sourced): {ROWS // 2}, rows per batch mean 2.00 (min 2, max 2) of 32 asked" in capsys.readouterr().out
    records = [json.loads(line) for line in (Path(cfg.output_dir) / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == ROWS // 2  # one optimizer step per two-row batch
    # the shuffled sampler is not checked: its batches are full
    main(_config(tiny, files["sourced"], tmp_path / "shuffled", columns=cfg.columns, batch_sampler="shuffled",
                 mask_duplicates=True))
