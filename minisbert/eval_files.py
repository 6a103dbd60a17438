"""The files evaluators read: BEIR folders, reranking samples, labelled texts, and split folders.

    read_jsonl, read_rows       rows of a .jsonl / .json / .csv / .tsv file
    split_file(data, split)     a file, or `<folder>/<split>.<ext>` of a folder
    read_beir(folder, split)    queries, corpus and graded qrels of a BEIR folder
    read_rerank_samples(path)   {"query", "positive", "negative" | "documents"} samples (list-valued columns)
    read_labelled(path)         (texts, labels) with string labels, repeated texts kept once

STS and triplet files are read by minisbert.data.load_dataset. Every reader's errors name the file and
line; minisbert.evaluation re-exports these names.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path


def _read_text(path: Path) -> str:
    """The file as text: UTF-8 (a BOM is dropped), or a ValueError naming the file and the line of the bad byte."""
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    from .data import _read_text

    return _read_text(path, str(path))


def read_jsonl(path) -> list[dict]:
    """Rows of a JSON-lines file; blank lines are skipped."""
    path = Path(path)
    rows = []
    # Split on "\n" only: U+2028 and friends are legal inside JSON strings.
    for line_no, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:  # also: an integer of >4300 digits, absurd nesting
            why = (e.msg if isinstance(e, json.JSONDecodeError)
                   else "nested too deeply" if isinstance(e, RecursionError) else "a number too long to read")
            raise ValueError(f"{path}:{line_no}: not valid JSON ({why})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def read_rows(path) -> list[dict]:
    """Rows of a .jsonl, .csv, .tsv (with a header line) or .parquet (needs pyarrow) file."""
    path = Path(path)
    if path.suffix == ".parquet":
        from .data import _read_parquet

        return [row for _, row in _read_parquet(path, str(path), None)[1]]
    if path.suffix in (".csv", ".tsv"):
        text = _read_text(path)
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix == ".tsv" else ",",
                                quoting=csv.QUOTE_MINIMAL)
        rows = []
        previous_limit = csv.field_size_limit(2**31 - 1)  # the default (131072 chars) rejects long texts
        try:
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    raise ValueError(f"{path}:{reader.line_num}: malformed {path.suffix[1:]} ({e})") from None
                if None in row or None in row.values():
                    raise ValueError(
                        f"{path}:{reader.line_num}: expected {len(reader.fieldnames)} fields "
                        f"({', '.join(reader.fieldnames)}), got a different number"
                    )
                rows.append(row)
        finally:
            csv.field_size_limit(previous_limit)
        return rows
    return read_jsonl(path)


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


def _pick_columns(path, rows: list[dict], names: list[str]) -> dict[str, list]:
    """Pick `names` from every row, with an error naming the file, the line and the missing column."""
    if not rows:
        raise ValueError(f"{path}: no rows")
    out = {n: [] for n in names}
    for i, row in enumerate(rows):
        for n in names:
            if n not in row or row[n] is None:
                raise ValueError(f"{path}: row {i + 1} has no {n!r} column (has {sorted(row)}); expected {names}")
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
    for path, target, keys in ((corpus_path, corpus, ("_id", "text")), (queries_path, queries, ("_id", "text"))):
        for line_no, row in enumerate(read_jsonl(path), 1):
            for key in keys:
                if key not in row:
                    raise ValueError(f"{path}: record {line_no} has no {key!r} field (has {sorted(row)})")
            if isinstance(row["_id"], bool) or not isinstance(row["_id"], (str, int)):
                raise ValueError(f"{path}: record {line_no}: '_id' must be a string or an integer, got {row['_id']!r:.60}")
            for key in ("title", "text"):
                if row.get(key) is not None and not isinstance(row[key], str):
                    raise ValueError(f"{path}: record {line_no}: {key!r} must be a string, got {row[key]!r:.60}")
            title = row.get("title") or ""
            target[str(row["_id"])] = (title + " " + (row["text"] or "")).strip() if title else (row["text"] or "")
    if not corpus:
        raise ValueError(f"{corpus_path}: the corpus is empty")
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise ValueError(f"{qrels_path}: file not found (qrels splits available: {available})")
    qrels: dict[str, dict[str, float]] = {}
    for line_no, line in enumerate(_read_text(qrels_path).split("\n"), 1):
        fields = line.rstrip("\r").split("\t")
        if line_no == 1 and fields[:2] == ["query-id", "corpus-id"]:
            continue
        if not line.strip():
            continue
        if len(fields) < 2:
            raise ValueError(f"{qrels_path}:{line_no}: expected 'query-id<TAB>corpus-id<TAB>score', got {line.strip()!r:.80}")
        qid, cid = fields[0], fields[1]
        try:
            grade = float(fields[2]) if len(fields) > 2 else 1.0
        except ValueError:
            grade = math.nan
        if not math.isfinite(grade):
            raise ValueError(f"{qrels_path}:{line_no}: score {fields[2]!r:.40} is not a finite number")
        if qid not in queries:
            raise ValueError(f"{qrels_path}:{line_no}: query-id {qid!r:.60} is not in {queries_path.name}")
        if cid not in corpus:
            raise ValueError(f"{qrels_path}:{line_no}: corpus-id {cid!r:.60} is not in {corpus_path.name}")
        if grade > 0:
            qrels.setdefault(qid, {})[cid] = grade
    return queries, corpus, qrels


def read_rerank_samples(path) -> list[dict]:
    """One query per line: {"query", "positive": str | list, "negative": list} or {..., "documents": list}."""
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    for i, row in enumerate(rows, 1):
        where = f"{path}: row {i}"
        check_rerank_sample(row, where)
        for key in ("query", "positive", "negative", "documents"):
            value = row.get(key)
            if key in row and not (isinstance(value, str) or (key != "query" and isinstance(value, list)
                                                              and all(isinstance(v, str) for v in value))):
                expected = "a string" if key == "query" else "a string or a list of strings"
                raise ValueError(f"{where}: {key!r} must be {expected}, got {value!r:.60}")
        for key in ("negative", "documents"):  # one candidate in a csv/tsv cell: a list of one, not of characters
            if isinstance(row.get(key), str):
                row[key] = [row[key]]
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
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    if text_column is None or label_column is None:
        pair = next(((t, l) for t, l in _LABELLED_COLUMNS if t in rows[0] and l in rows[0]), None)
        if pair is None:
            raise ValueError(f"{path}: name the text and label columns (found {sorted(rows[0])}; tried {list(_LABELLED_COLUMNS)})")
        text_column, label_column = text_column or pair[0], label_column or pair[1]
    c = _pick_columns(path, rows, [text_column, label_column])
    for i, (t, l) in enumerate(zip(c[text_column], c[label_column]), 1):
        if not isinstance(t, str):
            raise ValueError(f"{path}: row {i}, column {text_column!r}: expected text (a string), got {type(t).__name__} {t!r:.60}")
        if isinstance(l, (list, dict)):
            raise ValueError(f"{path}: row {i}, column {label_column!r}: expected a label (a string or a number), "
                             f"got {type(l).__name__} {l!r:.60}")
    seen, texts, labels = set(), [], []
    for t, l in zip(c[text_column], c[label_column]):
        if t not in seen:
            seen.add(t)
            texts.append(t)
            labels.append(l)
    return texts, labels
