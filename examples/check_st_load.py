"""Load trained model folders with sentence-transformers and with minisbert; print the largest difference.

    python examples/check_st_load.py runs/matryoshka_retrieval/train/final runs/reranker/train/final ...

A bi-encoder folder is compared on embeddings (SentenceTransformer.encode vs BiEncoder.encode), a
cross-encoder folder on scores (CrossEncoder.predict), over a few sentences / pairs. sentence-transformers
is needed here only (pip install sentence-transformers); minisbert never imports it. Exits 1 when a
difference exceeds --atol.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import recipe_common as common

TEXTS = ["A man is playing a guitar.", "Vitamin D deficiency is linked to a higher risk of fractures.",
         "What do practitioners of Wicca worship ?", "Three dogs run through the snow in a park."]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+")
    p.add_argument("--atol", type=float, default=1e-5)
    args = p.parse_args(argv)
    import sentence_transformers as st

    from minisbert import BiEncoder, CrossEncoder

    worst = 0.0
    for folder in map(Path, args.folders):
        if common.evaluate_py.is_cross_encoder(folder):
            pairs = [(TEXTS[2], t) for t in TEXTS]
            ours = CrossEncoder.from_pretrained(folder, device="cpu").predict(pairs)
            theirs = st.CrossEncoder(str(folder), device="cpu").predict(pairs)
            what = f"CrossEncoder scores of {len(pairs)} pairs"
        else:
            ours = BiEncoder.from_pretrained(folder, device="cpu").encode(TEXTS)
            theirs = st.SentenceTransformer(str(folder), device="cpu").encode(TEXTS)
            what = f"SentenceTransformer embeddings {tuple(np.shape(theirs))}"
        diff = float(np.max(np.abs(np.asarray(theirs) - np.asarray(ours))))
        worst = max(worst, diff)
        print(f"{folder}: {what}, max |sentence-transformers {st.__version__} - minisbert| = {diff:.2e}")
    return int(worst > args.atol)


if __name__ == "__main__":
    sys.exit(main())
