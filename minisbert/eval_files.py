"""The files evaluators read: BEIR folders, reranking samples, labelled texts, and split folders.

    read_jsonl, read_rows       rows of a .jsonl / .json / .csv / .tsv file
    split_file(data, split)     a file, or `<folder>/<split>.<ext>` of a folder
    read_beir(folder, split)    queries, corpus and graded qrels of a BEIR folder
    read_rerank_samples(path)   {"query", "positive", "negative" | "documents"} samples (list-valued columns)
    read_labelled(path)         (texts, labels) with string labels, repeated texts kept once

Every file is read by minisbert.data's one reader (`read_records`; STS and triplet files by its
load_dataset), and every error is a ValueError in its one format (`data.location`), naming the file,
the line (or row) and the column (the reader's own errors are its DataErrors, a ValueError too): `scifact/qrels/test.tsv, line 3, column 'corpus-id': 'd9' is not in
corpus.jsonl`. minisbert.evaluation re-exports these names.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from .data import describe_value, location, read_records, read_text


def read_jsonl(path) -> list[dict]:
    """Rows of a JSON-lines file (whatever its suffix); blank lines are skipped."""
    return [row for _, row in read_records(path, format="jsonl").rows]


def read_rows(path) -> list[dict]:
    """Rows of a .csv, .tsv (with a header line), .parquet (needs pyarrow) or JSON-lines file."""
    return [row for _, row in read_records(path).rows]


def split_file(data, split: str) -> Path:
    """`data` itself when it is a file, else `<data>/<split>.{jsonl,csv,tsv}`."""
    data = Path(data)
    if data.is_file():
        return data
    if not data.is_dir():
        raise ValueError(f"{data}: no such file or folder")
    for ext in (".jsonl", ".csv", ".tsv", ".parquet"):
        if (data / f"{split}{ext}").is_file():
            return data / f"{split}{ext}"
    found = sorted(p.name for p in data.iterdir() if p.suffix in (".jsonl", ".csv", ".tsv", ".parquet"))
    raise ValueError(f"{data}: no {split}.jsonl/.csv/.tsv/.parquet for split {split!r}; found {found or 'no data files'}")


def _pick_columns(path, records, names: list[str]) -> dict[str, list]:
    """Pick `names` from every row, with an error naming the file, the line and the missing column."""
    if not records.rows:
        raise ValueError(f"{path}: no rows")
    out = {n: [] for n in names}
    for number, row in records.rows:
        for n in names:
            if n not in row or row[n] is None:
                raise ValueError(f"{location(path, records.unit, number, n)}: missing (this row has {sorted(row)}); "
                                f"expected the columns {names}")
            out[n].append(row[n])
    return out


def read_beir(folder, split: str = "test") -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, float]]]:
    """A BEIR folder -> (queries {qid: text}, corpus {cid: text}, qrels {qid: {cid: grade}}).

    Documents are `(title + " " + text).strip()`. Qrels rows with grade <= 0 are dropped ("not
    relevant"); a qrels row naming a query or document that is not in queries.jsonl / corpus.jsonl
    raises a ValueError naming the file, the line and the id.
    """
    folder = Path(folder)
    corpus_path, queries_path, qrels_path = folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"
    corpus, queries = {}, {}
    for path, target in ((corpus_path, corpus), (queries_path, queries)):
        for line_no, row in read_records(path, format="jsonl").rows:
            for key in ("_id", "text"):
                if key not in row:
                    raise ValueError(f"{location(path, 'line', line_no, key)}: missing (this record has {sorted(row)})")
            if isinstance(row["_id"], bool) or not isinstance(row["_id"], (str, int)):
                raise ValueError(f"{location(path, 'line', line_no, '_id')}: expected a string or an integer, "
                                f"got {describe_value(row['_id'])}")
            for key in ("title", "text"):
                if row.get(key) is not None and not isinstance(row[key], str):
                    raise ValueError(f"{location(path, 'line', line_no, key)}: expected text (a string), "
                                    f"got {describe_value(row[key])}")
            title = row.get("title") or ""
            target[str(row["_id"])] = (title + " " + (row["text"] or "")).strip() if title else (row["text"] or "")
    if not corpus:
        raise ValueError(f"{corpus_path}: the corpus is empty")
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise ValueError(f"{qrels_path}: file not found (qrels splits available: {available})")
    qrels: dict[str, dict[str, float]] = {}
    for line_no, line in enumerate(read_text(qrels_path).split("\n"), 1):  # a header line is optional
        fields = line.rstrip("\r").split("\t")
        if line_no == 1 and fields[:2] == ["query-id", "corpus-id"]:
            continue
        if not line.strip():
            continue
        at = functools.partial(location, qrels_path, "line", line_no)
        if len(fields) < 2:
            raise ValueError(f"{at()}: expected 'query-id<TAB>corpus-id<TAB>score', got {describe_value(line.strip())}")
        qid, cid = fields[0], fields[1]
        try:
            grade = float(fields[2]) if len(fields) > 2 else 1.0
        except ValueError:
            grade = math.nan
        if not math.isfinite(grade):
            raise ValueError(f"{at('score')}: expected a finite number, got {describe_value(fields[2])}")
        if qid not in queries:
            raise ValueError(f"{at('query-id')}: {qid!r:.60} is not in {queries_path.name}")
        if cid not in corpus:
            raise ValueError(f"{at('corpus-id')}: {cid!r:.60} is not in {corpus_path.name}")
        if grade > 0:
            qrels.setdefault(qid, {})[cid] = grade
    return queries, corpus, qrels


def read_rerank_samples(path) -> list[dict]:
    """One query per line: {"query", "positive": str | list, "negative": list} or {..., "documents": list}."""
    records = read_records(path)
    if not records.rows:
        raise ValueError(f"{path}: no rows")
    rows = []
    for number, row in records.rows:
        check_rerank_sample(row, location(path, records.unit, number))
        for key in ("query", "positive", "negative", "documents"):
            value = row.get(key)
            if key in row and not (isinstance(value, str) or (key != "query" and isinstance(value, list)
                                                              and all(isinstance(v, str) for v in value))):
                expected = "text (a string)" if key == "query" else "a string or a list of strings"
                raise ValueError(f"{location(path, records.unit, number, key)}: expected {expected}, "
                                f"got {describe_value(value)}")
        for key in ("negative", "documents"):  # one candidate in a csv/tsv cell: a list of one, not of characters
            if isinstance(row.get(key), str):
                row[key] = [row[key]]
        rows.append(row)
    return rows


def check_rerank_sample(sample: dict, where: str) -> None:
    if "query" not in sample or "positive" not in sample:
        raise ValueError(f"{where}: a reranking sample needs 'query' and 'positive' (has {sorted(sample)})")
    if ("negative" in sample) == ("documents" in sample):
        raise ValueError(f"{where}: a reranking sample needs exactly one of 'negative' and 'documents'")


# (text, label) column pairs tried in order when none is named. ("anchor", "source") reads the
# nli-triplets files: premises labelled by the corpus they come from (SNLI captions vs MultiNLI's
# genres), the single-text labelled set the shared data offers.
_LABELLED_COLUMNS = (("text", "label"), ("sentence", "label"), ("anchor", "source"))


def read_labelled(path, text_column: str | None = None, label_column: str | None = None) -> tuple[list[str], list]:
    """(texts, labels) from a file; repeated texts are kept once (the nli-triplets anchors repeat)."""
    records = read_records(path)
    if not records.rows:
        raise ValueError(f"{path}: no rows")
    first = records.rows[0][1]
    if text_column is None or label_column is None:
        pair = next(((t, l) for t, l in _LABELLED_COLUMNS if t in first and l in first), None)
        if pair is None:
            raise ValueError(f"{path}: name the text and label columns (found {sorted(first)}; tried {list(_LABELLED_COLUMNS)})")
        text_column, label_column = text_column or pair[0], label_column or pair[1]
    c = _pick_columns(path, records, [text_column, label_column])
    for (number, _), t, l in zip(records.rows, c[text_column], c[label_column]):
        if not isinstance(t, str):
            raise ValueError(f"{location(path, records.unit, number, text_column)}: expected text (a string), "
                            f"got {describe_value(t)}")
        if isinstance(l, (list, dict)):
            raise ValueError(f"{location(path, records.unit, number, label_column)}: expected a label (a string or a "
                            f"number), got {describe_value(l)}")
    seen, texts, labels = set(), [], []
    for t, l in zip(c[text_column], c[label_column]):
        if t not in seen:
            seen.add(t)
            texts.append(t)
            labels.append(l)
    return texts, labels
