"""Training data: files -> named text columns (+ labels), prompts per column, hard-negative mining.

Owns `load_dataset` (jsonl/csv/tsv/parquet), `from_columns` (in-memory lists), the `TextDataset`
they return, `resolve_prompt` and `mine_hard_negatives`; the samplers are in sampler.py (minisbert.data's old
names for them still work, with a DeprecationWarning).

Column roles follow sentence-transformers: text columns in order are (anchor, positive,
negative_1, ...), and a column named `label`, `labels`, `score` or `scores` (the first present,
in that order, as ST's collator) is the label. Without `columns=`, the text columns are the
string-valued columns in file order, except the label: for jsonl/parquet a column whose value in
the first row is a string; for csv/tsv (where every cell is a string) a column that is not
numeric in every row. Of those, a column with few distinct values (at most 100, and at most 1% of
the rows: a source, language or category field such as the `source` of the nli-triplets files,
not text) is left out when at least two text columns remain, and listed in `TextDataset.left_out`;
one text column would turn a pair into SimCSE, so then nothing is left out (train.py's batch
check catches it instead). Pass `columns=[...]` to select and order them; extra columns are then
ignored and nothing is left out.

Validation happens at load, before training: bad input raises ONE `DataError` naming the file,
the line (1-based, as an editor shows it; "row" for parquet and in-memory data) and the column:
    data/train.jsonl, line 7, column 'positive': expected text (a string), got null
Texts are strings (None, numbers, lists are errors); an empty string is allowed (as in ST, e.g.
Cranfield's blank documents) but a column empty in EVERY row is an error (a wrong column, most
likely). Labels are finite numbers, stored as float; class names like "entailment" need
`label_map={"entailment": 0, ...}`, and then every label must be one of its keys.
Readers (`read_records`, the one reader of the package: eval_files.py reads the evaluators' files
with it too, and `location` spells every error's place): jsonl (one object per line, blank lines
skipped), csv (python csv module, header row, standard quoting), tsv (header row, split on tabs only:
quotes are literal text, as in MS MARCO files), parquet (needs pyarrow). UTF-8; a leading BOM is ignored.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from .errors import DataError  # noqa: F401  (re-exported: minisbert.data.DataError)

LABEL_COLUMNS = ("label", "labels", "score", "scores")  # ST's DEFAULT_LABEL_COLUMNS, same order
# An inferred string column with at most this many distinct values, and at most this share of the
# rows, is a source/language/category field rather than text (real text columns repeat far less).
FEW_VALUES_MAX, FEW_VALUES_SHARE = 100, 0.01

__all__ = ["DataError", "TextDataset", "load_dataset", "from_columns", "resolve_prompt", "mine_hard_negatives",
           "LABEL_COLUMNS", "Records", "read_records", "read_text", "location", "describe_value"]


# The samplers' old home, documented in the README until issue 21: kept one release, with a warning.
_MOVED_TO_SAMPLER = ("NoDuplicatesBatchSampler", "ShuffledBatchSampler", "MultiDatasetSchedule")


def __getattr__(name):
    if name in _MOVED_TO_SAMPLER:  # sampler.py imports errors.py, not this module: no circle
        from . import sampler

        warnings.warn(f"minisbert.data.{name} is deprecated; import it from minisbert.sampler",
                      DeprecationWarning, stacklevel=2)
        return getattr(sampler, name)
    raise AttributeError(f"module 'minisbert.data' has no attribute {name!r}")


@dataclass
class TextDataset:
    """Text columns in role order (anchor, positive, negative_1, ...) plus optional float labels.

    label_column: the column the labels came from (None: no labels). left_out: {column: distinct
    values} of string columns not taken as text because they have few distinct values.
    """

    name: str
    columns: dict[str, list[str]]
    labels: list[float] | None
    source: str
    label_column: str | None = None
    left_out: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        lengths = {len(texts) for texts in self.columns.values()}
        if len(lengths) > 1 or (self.labels is not None and lengths and len(self.labels) not in lengths):
            sizes = {c: len(t) for c, t in self.columns.items()}
            raise DataError(f"{self.source}: columns have different lengths {sizes}, labels {len(self.labels or [])}")

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def rows(self, indices) -> list[tuple[str, ...]]:
        columns = list(self.columns.values())
        return [tuple(texts[i] for texts in columns) for i in indices]


# ---------------------------------------------------------------------------------------------
# readers: the one reader of jsonl / csv / tsv / parquet files, for training data and evaluators alike


def location(source, unit: str, number: int, column: str | None = None) -> str:
    """The one way an error names a place: "data/train.jsonl, line 7, column 'positive'" (unit "line" for
    text files, "row" for parquet and in-memory data)."""
    return f"{source}, {unit} {number}" + (f", column {column!r}" if column is not None else "")


class Records(NamedTuple):
    """A file's rows as read: `header` (csv / tsv / parquet column names; None for jsonl), `rows`
    [(line or row number, {column: value}), ...] and the `unit` those numbers count ("line" or "row")."""

    header: list[str] | None
    rows: list[tuple[int, dict]]
    unit: str


def read_records(path, *, limit=None, format: str | None = None) -> Records:
    """The rows of a .csv, .tsv or .parquet file, or of JSON lines (any other suffix); `format`
    ("jsonl", "csv", "tsv", "parquet") overrides the suffix. Stops after `limit` rows. Errors are
    DataErrors naming the file and the line (see the module docstring for each format's rules)."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise DataError(f"{source}: file not found")
    if not path.is_file():
        raise DataError(f"{source}: not a file")
    format = format or {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}.get(path.suffix.lower(), "jsonl")
    if format == "jsonl":
        return Records(None, _read_jsonl(path, source, limit), "line")
    if format in ("csv", "tsv"):
        return Records(*_read_delimited(path, source, limit, "\t" if format == "tsv" else ","), "line")
    if format == "parquet":
        return Records(*_read_parquet(path, source, limit), "row")
    raise ValueError(f"unknown format {format!r}; expected jsonl, csv, tsv or parquet")


def load_dataset(path, *, columns=None, label_column=None, name=None, limit=None, label_map=None) -> TextDataset:
    """Read a .jsonl, .csv, .tsv or .parquet file into a validated TextDataset.

    columns: text columns to keep, in role order (None = every string-valued column but the label).
    label_column: None = the first of label/labels/score/scores present; "" = no label; or a name.
    name: dataset name (default: the file stem). limit: read only the first `limit` rows.
    label_map: {class name: number} for string labels such as "entailment".
    """
    path = Path(path)
    source = str(path)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"{source}: limit must be a positive integer, got {limit!r}")
    suffix = path.suffix.lower()
    if path.is_file() and suffix not in (".jsonl", ".ndjson", ".csv", ".tsv", ".parquet"):
        raise DataError(f"{source}: unknown file type {suffix!r}; expected .jsonl, .csv, .tsv or .parquet")
    header, records, unit = read_records(path, limit=limit)
    if not records:
        raise DataError(f"{source}: the file has no rows" + (" (only a header)" if header else ""))
    typed = suffix not in (".csv", ".tsv")  # csv / tsv cells are all strings
    return _build(records, header, unit, source, name or path.stem, columns, label_column, label_map, typed)


def read_text(path) -> str:
    """The file as text: UTF-8, a leading BOM dropped; a DataError names the line and byte of bad UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}, line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at byte {column} of the line); "
            "save the file as UTF-8"
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def _read_jsonl(path: Path, source: str, limit) -> list:
    records = []
    # Split on "\n" only: str.splitlines would also split on U+2028 etc., legal inside JSON strings.
    for number, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as e:  # also: an integer of >4300 digits, absurd nesting
            why = (f"{e.msg} at character {e.colno}" if isinstance(e, json.JSONDecodeError)
                   else "nested too deeply" if isinstance(e, RecursionError) else "a number too long to read")
            raise DataError(f"{source}, line {number}: not valid JSON ({why})") from None
        if not isinstance(record, dict):
            raise DataError(f"{source}, line {number}: expected a JSON object {{...}}, got {describe_value(record)}")
        records.append((number, record))
        if limit is not None and len(records) >= limit:
            break
    return records


def _read_delimited(path: Path, source: str, limit, delimiter: str):
    text = read_text(path)
    if delimiter == "\t":
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    header, records = None, []
    previous_limit = csv.field_size_limit(2**31 - 1)  # the default (131072 chars) rejects long texts
    try:
        while limit is None or len(records) < limit:
            start = reader.line_num + 1  # a quoted field may span lines: report where the row starts
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise DataError(f"{source}, line {start}: malformed {path.suffix[1:]} ({e})") from None
            if not row:
                continue  # blank line
            if header is None:
                if len(set(row)) != len(row):
                    raise DataError(f"{source}, line {start}: the header repeats a column name: {row}")
                header = row
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{source}, line {start}: expected {len(header)} fields (columns {header}), got {len(row)}"
                )
            records.append((start, dict(zip(header, row))))
    finally:
        csv.field_size_limit(previous_limit)
    return header, records


def _read_parquet(path: Path, source: str, limit):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{source}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own error types for corrupt files
        raise DataError(f"{source}: not a readable parquet file ({e})") from None
    if limit is not None:
        table = table.slice(0, limit)
    return table.column_names, list(enumerate(table.to_pylist(), 1))


# ---------------------------------------------------------------------------------------------
# validation shared by files and in-memory columns


def _build(records, header, unit, source, name, columns, label_column, label_map, typed) -> TextDataset:
    first = records[0][1]
    available = header if header is not None else list(first)
    at_header = f"{source}, line 1 (header)" if unit == "line" else source
    label = _pick_label(available, label_column, columns, at_header if header is not None else None)
    left_out = {}
    if columns is None:
        if typed:  # jsonl / parquet / memory: value types tell which columns are text
            text_columns = [c for c in available if c != label and isinstance(first.get(c), str)]
        else:  # csv / tsv: every cell is a string; a column of numbers only is not text
            text_columns = [c for c in available if c != label and not all(_is_number(r[c]) for _, r in records)]
        if not text_columns:
            raise DataError(f"{source}: no text columns found among {available}; pass columns=[...]")
        left_out = _few_values(records, text_columns)
        if len(text_columns) - len(left_out) >= 2:
            text_columns = [c for c in text_columns if c not in left_out]
        else:
            left_out = {}
    else:
        text_columns = _check_columns(columns, label, source)
        if header is not None:
            for c in text_columns:
                if c not in header:
                    raise DataError(f"{at_header}: no column {c!r}; the columns are {header}")
    label_map = _check_label_map(label_map, source)
    texts = {c: [] for c in text_columns}
    labels = [] if label else None
    for number, record in records:
        for c in text_columns:
            at = location(source, unit, number, c)
            if c not in record:
                raise DataError(f"{at}: missing (this row has {list(record)})")
            value = record[c]
            if not isinstance(value, str):
                raise DataError(f"{at}: expected text (a string), got {describe_value(value)}")
            bad = _SURROGATE.search(value)
            if bad:  # JSON can escape half of a UTF-16 pair ("\ud800"); the tokenizer cannot take it
                raise DataError(f"{at}: character {bad.start() + 1} is a lone surrogate "
                                f"({bad.group()!r}), which is not Unicode text; fix the escape or drop the row")
            texts[c].append(value)
        if label:
            at = location(source, unit, number, label)
            if label not in record:
                raise DataError(f"{at}: missing (this row has {list(record)})")
            labels.append(_parse_label(record[label], at, label_map))
    _check_not_all_empty(texts, source)
    return TextDataset(name=name, columns=texts, labels=labels, source=source, label_column=label, left_out=left_out)


def _few_values(records, candidates) -> dict[str, int]:
    """{column: distinct values} of the candidate columns with few distinct values (FEW_VALUES_*)."""
    limit = min(FEW_VALUES_MAX, FEW_VALUES_SHARE * len(records))
    found = {}
    for c in candidates:
        values = set()
        for _, record in records:
            value = record.get(c)
            if isinstance(value, str):  # other values are errors, raised later only if the column is kept
                values.add(value)
                if len(values) > limit:
                    break
        else:
            found[c] = len(values)
    return found


_SURROGATE = re.compile("[\ud800-\udfff]")


def from_columns(columns: dict[str, list], labels=None, name="data", source="<memory>") -> TextDataset:
    """Build a TextDataset from in-memory lists, validated like a file ("row" = 1-based index).

    A column named label/labels/score/scores is taken as the labels when `labels` is None.
    """
    if not isinstance(columns, dict) or not columns:
        raise DataError(f"{source}: columns must be a non-empty dict {{name: list of texts}}")
    columns = dict(columns)
    present = [c for c in LABEL_COLUMNS if c in columns]
    if present and labels is not None:
        raise DataError(f"{source}: got labels= and a label column {present[0]!r}; give one")
    label_name = present[0] if present else "label"
    if present:
        labels = columns.pop(label_name)
        if not columns:
            raise DataError(f"{source}: no text columns, only the label column {present[0]!r}")
    for c, values in columns.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise DataError(f"{source}, column {c!r}: expected a list of texts, got {type(values).__name__}")
    lengths = {c: len(v) for c, v in columns.items()}
    if labels is not None:
        lengths["labels"] = len(labels)
    if len(set(lengths.values())) != 1:
        raise DataError(f"{source}: columns have different lengths {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise DataError(f"{source}: no rows")
    records = [(i + 1, {c: v[i] for c, v in columns.items()}) for i in range(n)]
    if labels is not None:
        for (_, record), value in zip(records, labels):
            record[label_name] = value
    label_column = label_name if labels is not None else ""
    return _build(records, None, "row", source, name, list(columns), label_column, None, typed=True)


def _pick_label(available, label_column, columns, at_header):
    if label_column is None:
        chosen = columns or ()
        return next((c for c in LABEL_COLUMNS if c in available and c not in chosen), None)
    if not isinstance(label_column, str):
        raise DataError(f"label_column must be a column name, None or '', got {label_column!r}")
    if label_column and at_header is not None and label_column not in available:
        raise DataError(f"{at_header}: no label column {label_column!r}; the columns are {available}")
    return label_column or None


def _check_columns(columns, label, source) -> list[str]:
    if not isinstance(columns, (list, tuple)) or not columns or not all(isinstance(c, str) for c in columns):
        raise DataError(f"{source}: columns must be a non-empty list of column names, got {columns!r}")
    columns = list(columns)
    if len(set(columns)) != len(columns):
        raise DataError(f"{source}: columns repeats a name: {columns}")
    if label in columns:
        raise DataError(f"{source}: {label!r} is the label column and cannot also be a text column")
    return columns


def _check_label_map(label_map, source):
    if label_map is None:
        return None
    if not isinstance(label_map, dict) or not label_map:
        raise DataError(f"{source}: label_map must be a non-empty dict {{class name: number}}, got {label_map!r}")
    for key, value in label_map.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise DataError(f"{source}: label_map[{key!r}] must be a finite number, got {value!r}")
    return {key: float(value) for key, value in label_map.items()}


def _parse_label(value, where, label_map) -> float:
    if label_map is not None:
        if isinstance(value, (str, int, float)) and value in label_map:
            return label_map[value]
        raise DataError(f"{where}: label {describe_value(value)} is not in label_map (keys {list(label_map)})")
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _is_number(value):
        number = float(value)
    else:
        hint = "; pass label_map={name: number} for class labels" if isinstance(value, str) else ""
        raise DataError(f"{where}: expected a number as label, got {describe_value(value)}{hint}")
    try:
        number = float(number)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise DataError(f"{where}: label is {number}; expected a finite number")
    return number


def _check_not_all_empty(texts, source):
    for c, values in texts.items():
        if not any(v.strip() for v in values):
            raise DataError(f"{source}, column {c!r}: empty in all {len(values)} rows; is it the right column?")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def describe_value(value) -> str:
    """A value as an error message shows it: null, the number 7, 'text...', a list."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)  # null, true, false: as the file spells them
    if isinstance(value, numbers.Number):
        return f"the number {value}"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    return {list: "a list", tuple: "a list", dict: "an object"}.get(type(value), f"a {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# prompts


def resolve_prompt(prompts, dataset_name, column) -> str | None:
    """The training prompt (prefix) of `column` in dataset `dataset_name`, from any of ST's forms.

    prompts: None | "query: " (every column) | {column: prompt} | {dataset: prompt}
             | {dataset: {column: prompt}}.
    Resolution is ST's collator's (`data_collator.py:52-80`): a dataset-level entry wins when the
    dataset's name is a key; otherwise a dict whose first value is a dict is per-dataset (None for
    unknown datasets, an error without a dataset name) and a flat dict is per-column. The model
    prepends the returned text; None means no prompt.
    """
    if prompts is None or isinstance(prompts, str):
        return prompts
    if not isinstance(prompts, dict):
        raise DataError(f"prompts must be a str or a dict, got {type(prompts).__name__}")
    for key, value in prompts.items():
        inner = value.values() if isinstance(value, dict) else [value]
        if not all(isinstance(v, str) for v in inner):
            raise DataError(f"prompts[{key!r}] must be a prompt string or a {{column: prompt}} dict, got {value!r}")
    if not prompts:
        return None
    if dataset_name is not None and dataset_name in prompts:
        selected = prompts[dataset_name]
    elif isinstance(next(iter(prompts.values())), dict):
        if dataset_name is None:
            raise DataError(
                f"prompts are nested {{dataset: {{column: prompt}}}} (keys {list(prompts)}) but no dataset name "
                "was given; train on named datasets or give {column: prompt}"
            )
        return None
    else:
        selected = prompts
    return selected if isinstance(selected, str) else selected.get(column)


# ---------------------------------------------------------------------------------------------
# hard-negative mining


def mine_hard_negatives(model, queries, positives, corpus=None, *, num_negatives=1, range_min=0, range_max=None,
                        margin=None, max_score=None, batch_size=32, query_prompt=None, corpus_prompt=None):
    """(query, positive) pairs -> (query, positive, negative_1, ..., negative_n) rows, ST's n-tuple
    `util.mine_hard_negatives` with sampling_strategy="top".

    The corpus is `corpus + positives`, de-duplicated (None = the unique positives). Unique queries
    and the corpus are embedded by `model.encode(texts, batch_size=, prompt=, convert_to_tensor=True,
    normalize_embeddings=True)`, ranked by cosine s(q, c) = q . c.
    For each query, from its `range_max + max_positives` nearest corpus texts, candidates are
    dropped when they are one of the query's positives (by text), when s > min_p s(q, p) - margin
    (margin given; min over the query's positives, as ST's absolute_margin) or when s > max_score.
    Of the remaining, in rank order, positions [range_min, range_min + num_negatives) are the
    negatives. range_max defaults to range_min + num_negatives (x10 with margin / max_score) +
    max_positives, as ST. A query with fewer valid negatives gets no rows (ST drops them too).
    Rows come in first-seen query order, one per distinct (query, positive), sharing negatives.
    Unlike ST's encode_query/encode_document, no saved model prompt is applied implicitly.

    Reference: NV-Retriever (Moreira et al., 2024, arXiv:2407.15831) for margin-based filtering.
    """
    import torch

    queries, positives = list(queries), list(positives)
    if len(queries) != len(positives) or not queries:
        raise DataError(f"need as many queries as positives (at least one), got {len(queries)} and {len(positives)}")
    corpus = [] if corpus is None else list(corpus)
    for what, texts in (("queries", queries), ("positives", positives), ("corpus", corpus)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"{what}, row {i + 1}: expected text (a string), got {describe_value(text)}")
    if isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or num_negatives < 1:
        raise DataError(f"num_negatives must be an integer >= 1, got {num_negatives!r}")
    if range_min < 0:
        raise DataError(f"range_min must be >= 0, got {range_min}")

    corpus = list(dict.fromkeys(corpus + positives))
    corpus_index = {text: i for i, text in enumerate(corpus)}
    unique_queries = list(dict.fromkeys(queries))
    query_index = {text: i for i, text in enumerate(unique_queries)}
    positives_of: list[list[int]] = [[] for _ in unique_queries]
    for query, positive in zip(queries, positives):
        own = positives_of[query_index[query]]
        if corpus_index[positive] not in own:
            own.append(corpus_index[positive])
    max_positives = max(len(p) for p in positives_of)
    if range_max is None:
        spread = 10 if margin is not None or max_score is not None else 1
        range_max = range_min + num_negatives * spread + max_positives
    if range_min >= range_max or num_negatives > range_max - range_min:
        raise DataError(f"range [{range_min}, {range_max}) has room for fewer than num_negatives={num_negatives}")

    def embed(texts, prompt):
        emb = model.encode(texts, batch_size=batch_size, prompt=prompt, convert_to_tensor=True,
                           normalize_embeddings=True)
        return torch.as_tensor(emb).float()

    query_emb = embed(unique_queries, query_prompt)  # (Q, D)
    corpus_emb = embed(corpus, corpus_prompt).to(query_emb.device)  # (C, D)
    k = min(range_max + max_positives, len(corpus))
    padded = torch.tensor([p + [-1] * (max_positives - len(p)) for p in positives_of], device=query_emb.device)
    chunk = max(1, 2**24 // len(corpus))  # bounds the (chunk, C) score matrix to 64 MB
    negatives_of = []
    for start in range(0, len(unique_queries), chunk):
        scores = query_emb[start:start + chunk] @ corpus_emb.T  # (Q, C)
        own = padded[start:start + chunk]  # (Q, P), -1 = padding
        positive_scores = scores.gather(1, own.clamp(min=0)).masked_fill(own < 0, math.inf)  # (Q, P)
        top_scores, top_index = scores.topk(k, dim=1)  # (Q, k), descending
        drop = (top_index[:, :, None] == own[:, None, :]).any(-1)  # (Q, k): a positive of this query
        if margin is not None:
            drop |= top_scores + margin > positive_scores.min(1, keepdim=True).values  # ST's form, same rounding
        if max_score is not None:
            drop |= top_scores > max_score
        # Stable sort moves dropped candidates to the end and keeps the rank order of the others.
        keep_first = torch.sort(drop.to(torch.int8), dim=1, stable=True).indices  # (Q, k)
        ranked = top_index.gather(1, keep_first)[:, range_min:range_min + num_negatives]  # (Q, n)
        valid = (~drop).sum(1) >= range_min + num_negatives  # (Q,)
        negatives_of += [row if ok else None for row, ok in zip(ranked.tolist(), valid.tolist())]
    rows = []
    for query, own, negatives in zip(unique_queries, positives_of, negatives_of):
        if negatives is not None:
            rows += [(query, corpus[p], *(corpus[j] for j in negatives)) for p in own]
    return rows
