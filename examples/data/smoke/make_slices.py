"""Write the smoke-test slices in this folder from the shared data (../shared/data from the repo root).

    python examples/data/smoke/make_slices.py [--data_dir ../shared/data]

Each slice keeps the shared data's layout, so a recipe reads it with `--data_dir examples/data/smoke`
exactly as it reads the full data. Rows are drawn with random.Random(SEED) and written in file
order; what is cut is listed in LICENSE-data.md beside this script.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 20250101
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def pick(rows: list, n: int, rng: random.Random) -> list:
    """n rows drawn at random, kept in file order."""
    return [rows[i] for i in sorted(rng.sample(range(len(rows)), n))]


def nli_triplets(src: Path, rng) -> None:
    for split, n in (("train", 64), ("dev", 32)):
        rows = pick(read_jsonl(src / "nli-triplets" / f"{split}.jsonl"), n, rng)
        assert len({r["source"] for r in rows}) == 2, "both sources are needed by the classification probe"
        write_jsonl(HERE / "nli-triplets" / f"{split}.jsonl", rows)


def stsb(src: Path, rng) -> None:
    for split, n in (("train", 48), ("dev", 24), ("test", 24)):
        write_jsonl(HERE / "stsb" / f"{split}.jsonl", pick(read_jsonl(src / "stsb" / f"{split}.jsonl"), n, rng))


def read_qrels(path: Path) -> list[tuple[str, str, str]]:
    return [tuple(line.split("\t")) for line in path.read_text().splitlines()[1:] if line.strip()]


def scifact(src: Path, rng) -> None:
    out = HERE / "scifact"
    queries = {q["_id"]: q for q in read_jsonl(src / "scifact" / "queries.jsonl")}
    corpus = read_jsonl(src / "scifact" / "corpus.jsonl")
    kept_queries, kept_docs = set(), set()
    for split, n in (("train", 16), ("test", 8)):
        qrels = read_qrels(src / "scifact" / "qrels" / f"{split}.tsv")
        chosen = set(rng.sample(sorted({q for q, _, _ in qrels}), n))
        rows = [r for r in qrels if r[0] in chosen]
        kept_queries |= chosen
        kept_docs |= {d for _, d, _ in rows}
        (out / "qrels").mkdir(parents=True, exist_ok=True)
        (out / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in rows))
    others = [d["_id"] for d in corpus if d["_id"] not in kept_docs]
    kept_docs |= set(rng.sample(others, 16))
    docs = [dict(d, text=" ".join(d["text"].split()[:60])) for d in corpus if d["_id"] in kept_docs]
    write_jsonl(out / "corpus.jsonl", docs)
    write_jsonl(out / "queries.jsonl", [q for qid, q in queries.items() if qid in kept_queries])


def trecqa(src: Path, rng) -> None:
    for split, n in (("train", 6), ("test", 4)):
        rows = pick(read_jsonl(src / "trecqa-rerank" / f"{split}.jsonl"), n, rng)
        write_jsonl(HERE / "trecqa-rerank" / f"{split}.jsonl",
                    [dict(r, positive=r["positive"][:3], negative=r["negative"][:6]) for r in rows])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data"))
    src = Path(parser.parse_args(argv).data_dir)
    for make in (nli_triplets, stsb, scifact, trecqa):
        make(src, random.Random(SEED))
    print(f"wrote the slices under {HERE}")


if __name__ == "__main__":
    main()
