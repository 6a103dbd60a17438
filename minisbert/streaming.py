"""Encode a text file of any size: one text per line in, a .npy of embeddings out, memory O(chunk).

`BiEncoder.encode` holds every text and every embedding in memory and sorts all the texts by
length before batching. For a file of millions of lines, `encode_file` reads `chunk_size` lines at
a time, encodes each chunk with `model.encode` (so prompts, truncation, normalization are the same
code, and the chunk is length-sorted inside), and appends its rows to a .npy file whose header
(shape (N, D), float32) is written first. Memory then holds one chunk of texts and embeddings,
whatever the size of the file; row i of the output is line i + 1 of the input. (Plain writes, not a
memory map: every page written through a map stays in the process's resident memory until it is
unmapped, so RSS would grow with N.) Read the result with `numpy.load(path, mmap_mode="r")`.

Reading: UTF-8 (a leading BOM is dropped), lines split on "\\n" (a trailing "\\r" is removed), every
line is a text, including empty ones, so the rows stay aligned with the line numbers. A first pass
counts the lines (the .npy needs its shape up front) and checks the UTF-8: a bad byte raises one
ValueError naming the file and the line before anything is written. Writing: a temporary sibling
that is renamed onto `out_path` when every row is written; on any error (or Ctrl-C) it is removed,
so `out_path` is either the complete result or untouched. Truncation is reported once for the file.

Shapes: N lines, D embedding width (truncate_dim when given).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .backbone import logger, progress
from .checkpoint import atomic_write
from .tokenizer import Truncation


def _lines(path: Path):
    """(line number, text) of every line, decoded as UTF-8, one line in memory at a time."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            raw = raw[:-1] if raw.endswith(b"\n") else raw
            raw = raw[:-1] if raw.endswith(b"\r") else raw
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}, line {number}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte "
                                 f"{e.start + 1} of the line); save the file as UTF-8") from None


def count_lines(path: Path) -> int:
    """Lines of `path` as `encode_file` reads them, checking that each is UTF-8 (a first pass: errors come
    before anything is written)."""
    n = 0
    for n, _ in _lines(path):
        pass
    return n


def read_lines(path: Path, chunk_size: int):
    """Yield lists of at most `chunk_size` texts, in file order."""
    chunk = []
    for _, text in _lines(path):
        chunk.append(text)
        if len(chunk) == chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def encode_file(model, path, out_path, *, batch_size: int = 32, chunk_size: int = 10000, prompt: str | None = None,
                prompt_name: str | None = None, normalize_embeddings: bool | None = None, truncate_dim: int | None = None,
                show_progress_bar: bool | None = None) -> Path:
    """Encode every line of `path` with `model.encode` and write the (N, D) float32 rows to `out_path` (.npy).

    The arguments after `out_path` are `BiEncoder.encode`'s, plus `chunk_size`: lines read, encoded
    and written at a time (memory grows with it, not with N). Returns `out_path`; read the result
    with `numpy.load(out_path, mmap_mode="r")` to keep it out of memory too.
    """
    path, out_path = Path(path), Path(out_path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if out_path.is_dir():
        raise ValueError(f"{out_path} is a folder; out_path names the .npy file to write")
    n = count_lines(path)
    if n == 0:
        raise ValueError(f"{path}: the file is empty; expected one text per line")
    if truncate_dim is not None and truncate_dim < 1:
        raise ValueError(f"truncate_dim must be >= 1, got {truncate_dim}")
    width = min(truncate_dim or model.embedding_dim, model.embedding_dim)  # wider than the model: no cut, as encode
    model.resolve_prompt(prompt, prompt_name)  # an unknown prompt_name fails before anything is written

    truncation = Truncation(max_length=model.max_length)
    quiet = logger.level
    try:
        with atomic_write(out_path) as out:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (n, width)}
            np.lib.format.write_array_header_1_0(out, header)  # then N * D float32 values, row after row
            start = 0
            chunks = progress(read_lines(path, chunk_size), -(-n // chunk_size), show_progress_bar, "encode_file")
            logger.setLevel(logging.ERROR)  # one truncation report for the file, not one per chunk
            for texts in chunks:
                if start + len(texts) > n:
                    raise ValueError(f"{path}: more lines than the {n} counted before; was the file being written?")
                emb = model.encode(texts, batch_size=batch_size, prompt=prompt, prompt_name=prompt_name,
                                   normalize_embeddings=normalize_embeddings, truncate_dim=truncate_dim,
                                   show_progress_bar=False)  # (b, D)
                out.write(np.ascontiguousarray(emb, dtype="<f4").tobytes())
                start += len(texts)
                truncation.count += model.last_truncation.count
                truncation.total += model.last_truncation.total
            if start != n:
                raise ValueError(f"{path}: read {start} lines, but counted {n} before; was the file being written?")
    finally:
        logger.setLevel(quiet)
    truncation.report(f"encode_file {path}")
    return out_path
