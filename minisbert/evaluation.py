"""Evaluators: encode (or score) an evaluation set with a model and report sentence-transformers' numbers.

Every evaluator is a callable `evaluator(model) -> dict[str, float]` with `name`, `primary_metric`
(a key of the returned dict) and `greater_is_better = True`, which is all the trainer needs. Keys
are spelled as ST 6.2 spells them, prefixed `f"{name}_"` when a name is given (spec section 6):

    RetrievalEvaluator               ST InformationRetrievalEvaluator   cosine_ndcg@10, dim_256_cosine_ndcg@10
    STSEvaluator                     ST EmbeddingSimilarityEvaluator    pearson_cosine, spearman_cosine
    TripletEvaluator                 ST TripletEvaluator                cosine_accuracy
    RerankingEvaluator               ST RerankingEvaluator (bi-encoder) map, mrr@10, ndcg@10
    CrossEncoderRerankingEvaluator   ST CrossEncoderRerankingEvaluator  map, mrr@10, ndcg@10 (+ base_*)
    ClassificationEvaluator          logistic-regression probe          accuracy, f1_macro
    ClusteringEvaluator              k-means                            v_measure
    SequentialEvaluator              ST SequentialEvaluator             all of the above + sequential_score

The numbers come from minisbert.metrics (functions of tensors); this module owns text, files, models
and key names. STS and triplet files are read by minisbert.data.load_dataset; BEIR folders, reranking
samples (list-valued columns) and labelled texts (string labels) by the readers of eval_files.py
(`read_beir`, `read_rerank_samples`, `read_labelled`, re-exported here). Every reader's errors name the
file and line.

Choices where ST leaves room, and why:
* Retrieval ranks by (-score, corpus_id) like ST, over the corpus sorted by id, scored chunk by chunk
  with only the top max_k per query kept between chunks (memory: one (queries x chunk) score block).
* Matryoshka: the corpus is encoded once at full width and truncated per dimension. A truncated
  embedding is exactly what ST's evaluators get from `encode(truncate_dim=d)`: the first d values,
  L2-normalised again only with `normalize_embeddings=True` (ST's default does not re-normalise, so
  `dim_d_dot_*` matches ST; cosine is the same either way).
* Graded qrels: ST's IR evaluator treats every listed document as relevant (binary gains), so the ST
  keys are computed that way and match ST. When some grade is > 1, a graded NDCG (linear gain, as
  trec_eval) is reported as well, under `{fn}_graded_ndcg@{k}`. Qrels rows with grade <= 0 mean "not
  relevant" (BEIR/trec_eval) and are dropped.
* BEIR documents are `(title + " " + text).strip()`, as ST's IR example and BEIR's own models do.
* Reranking MRR ties: ST's np.argsort / torch.argsort leave the order of tied scores unspecified (and
  numpy's is not stable); the rerankers make the same sort call as ST so tied scores (common with
  small or untrained models) give ST's number. metrics.reciprocal_rank also offers a pessimistic order.

Shapes: Q queries, C corpus chunk, K retrieved per query, N texts, D width.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics as M
# The readers live in eval_files.py; callers keep reaching them as evaluation.read_* (train.py, evaluate.py).
from .eval_files import (  # noqa: F401
    check_rerank_sample, read_beir, read_jsonl, read_labelled, read_rerank_samples, read_rows, split_file,
)
from .similarity import SIMILARITY_FUNCTIONS, normalize, pairwise_similarity, similarity

# ----------------------------------------------------------------------------------------------
# Base class and encoding


class Evaluator:
    """What the trainer relies on: `__call__(model) -> dict`, `name`, `primary_metric`, `greater_is_better`."""

    greater_is_better = True

    def __init__(self, name: str = ""):
        self.name = name
        self.primary_metric = ""

    def key(self, metric: str) -> str:
        """ST's prefixing (base/evaluation/evaluator.py:48-64): `f"{name}_{metric}"` when named."""
        return f"{self.name}_{metric}" if self.name else metric

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        # output_path/epoch/steps are accepted so ST-style callers work; results are returned, not written.
        with torch.no_grad():
            metrics = self.compute(model)
        return {self.key(k): float(v) for k, v in metrics.items()}

    def compute(self, model) -> dict[str, float]:
        raise NotImplementedError


_ROLE_PROMPTS = {"query": ("query",), "document": ("document", "passage", "corpus")}


def encode(model, texts, *, role: str | None = None, prompt: str | None = None, prompt_name: str | None = None,
           batch_size: int = 32, show_progress_bar: bool = False) -> torch.Tensor:
    """(N, D) float32 embeddings from `model.encode`. With no prompt given, a query (document) is
    encoded with the model's saved "query" (first of "document"/"passage"/"corpus") prompt, as ST's
    encode_query / encode_document do."""
    if prompt is None and prompt_name is None and role is not None:
        saved = getattr(model, "prompts", None) or {}
        prompt_name = next((n for n in _ROLE_PROMPTS[role] if n in saved), None)
    kwargs = {"prompt": prompt} if prompt is not None else {}
    if prompt_name is not None:
        kwargs["prompt_name"] = prompt_name
    emb = model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar, **kwargs)
    return emb.float()


def truncate(emb: torch.Tensor, dim: int | None, normalize: bool = False) -> torch.Tensor:
    """The first `dim` values of each row (all when None), L2-normalised only when asked, as ST's
    encode(truncate_dim=dim, normalize_embeddings=normalize) returns them."""
    if dim is not None:
        if not 0 < dim <= emb.shape[-1]:
            raise ValueError(f"matryoshka dimension {dim} is outside 1..{emb.shape[-1]} (the embedding width)")
        emb = emb[..., :dim]
    return F.normalize(emb, p=2, dim=-1) if normalize else emb


def _check_fn_names(names) -> list[str] | None:
    if names is None:
        return None
    names = list(names)
    unknown = [n for n in names if n not in SIMILARITY_FUNCTIONS]
    if unknown or not names:
        raise ValueError(f"similarity_fn_names {names} must be a non-empty subset of {list(SIMILARITY_FUNCTIONS)}")
    return names


def _dims_prefixes(dims) -> list[tuple[int | None, str]]:
    """[(None, "")] without Matryoshka dims, else [(d, "dim_{d}_") ...] (ST's example naming)."""
    if not dims:
        return [(None, "")]
    return [(int(d), f"dim_{int(d)}_") for d in dims]


def _check_lengths(where: str, **cols) -> None:
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{where}: columns have different lengths {lengths}; expected one value per row in each")
    if not next(iter(lengths.values())):
        raise ValueError(f"{where}: no rows to evaluate")


# ----------------------------------------------------------------------------------------------
# Retrieval


class RetrievalEvaluator(Evaluator):
    """ST's InformationRetrievalEvaluator: retrieve the top documents of a corpus for each query.

    `relevant_docs` maps a query id to a set of relevant corpus ids, or to {corpus id: grade}.
    Keys: `{fn}_{accuracy,precision,recall}@k`, `{fn}_ndcg@k`, `{fn}_mrr@k`, `{fn}_map@k` per
    similarity function fn (default: the model's own, as ST 6.2), prefixed `dim_{d}_` per
    Matryoshka dimension, plus `{fn}_graded_ndcg@k` when some grade is > 1. Primary metric:
    `{main_similarity or best fn}_ndcg@{max ndcg k}` (of the first dimension), as ST picks it.
    Queries with no relevant document are left out, as in ST.
    """

    def __init__(
        self, queries: dict[str, str], corpus: dict[str, str], relevant_docs: dict, *, name: str = "",
        similarity_fn_names=None, main_similarity: str | None = None, matryoshka_dims=None,
        normalize_embeddings: bool = False, corpus_chunk_size: int = 50000, batch_size: int = 32,
        query_prompt: str | None = None, query_prompt_name: str | None = None,
        corpus_prompt: str | None = None, corpus_prompt_name: str | None = None,
        accuracy_at_k=(1, 3, 5, 10), precision_recall_at_k=(1, 3, 5, 10), mrr_at_k=(10,), ndcg_at_k=(10,),
        map_at_k=(100,), show_progress_bar: bool = False,
    ):
        super().__init__(name)
        if not corpus:
            raise ValueError("RetrievalEvaluator: the corpus is empty; expected at least one document")
        self.corpus_ids = sorted(corpus)  # ST breaks score ties by ascending corpus id
        self.corpus = [corpus[c] for c in self.corpus_ids]
        position = {cid: i for i, cid in enumerate(self.corpus_ids)}
        self.query_ids, keys, grades = [], [], []
        for qid, rel in relevant_docs.items():
            if qid not in queries:
                raise ValueError(f"RetrievalEvaluator: relevant_docs names query id {qid!r}, which is not in queries")
            rel = rel if isinstance(rel, dict) else dict.fromkeys(rel, 1)
            for cid in rel:
                if cid not in position:
                    raise ValueError(f"RetrievalEvaluator: relevant_docs[{qid!r}] names corpus id {cid!r}, which is not in the corpus")
        for qid in queries:  # ST keeps the queries' order and drops those with nothing relevant
            rel = relevant_docs.get(qid) or {}
            rel = rel if isinstance(rel, dict) else dict.fromkeys(rel, 1)
            rel = {c: float(g) for c, g in rel.items() if float(g) > 0}
            if rel:
                q = len(self.query_ids)
                self.query_ids.append(qid)
                for cid, g in rel.items():
                    keys.append(q * len(self.corpus_ids) + position[cid])
                    grades.append(g)
        if not self.query_ids:
            raise ValueError("RetrievalEvaluator: no query has a relevant document in relevant_docs")
        self.queries = [queries[q] for q in self.query_ids]
        keys = torch.tensor(keys, dtype=torch.long)
        order = keys.argsort()
        self._rel_keys, self._rel_grades = keys[order], torch.tensor(grades, dtype=torch.float64)[order]  # (R,), sorted
        per_query = torch.bincount(self._rel_keys // len(self.corpus_ids), minlength=len(self.query_ids))
        self.num_relevant = per_query  # (Q,)
        self._ideal = torch.zeros(len(self.query_ids), int(per_query.max()), dtype=torch.float64)  # (Q, R) grades
        rank_in_query = torch.arange(len(keys)) - (per_query.cumsum(0) - per_query).repeat_interleave(per_query)
        self._ideal[self._rel_keys // len(self.corpus_ids), rank_in_query] = self._rel_grades
        self.graded = bool((self._rel_grades > 1).any())

        self.similarity_fn_names = _check_fn_names(similarity_fn_names)
        self.main_similarity = main_similarity
        self.dims = _dims_prefixes(matryoshka_dims)
        self.normalize_embeddings = normalize_embeddings
        self.corpus_chunk_size = corpus_chunk_size
        self.batch_size = batch_size
        self.query_prompt, self.query_prompt_name = query_prompt, query_prompt_name
        self.corpus_prompt, self.corpus_prompt_name = corpus_prompt, corpus_prompt_name
        self.accuracy_at_k, self.precision_recall_at_k = list(accuracy_at_k), list(precision_recall_at_k)
        self.mrr_at_k, self.ndcg_at_k, self.map_at_k = list(mrr_at_k), list(ndcg_at_k), list(map_at_k)
        self.max_k = max(self.accuracy_at_k + self.precision_recall_at_k + self.mrr_at_k + self.ndcg_at_k + self.map_at_k)
        self.show_progress_bar = show_progress_bar
        guess = main_similarity or (self.similarity_fn_names or ["cosine"])[0]
        self.primary_metric = self.key(f"{self.dims[0][1]}{guess}_ndcg@{max(self.ndcg_at_k)}")  # final after a call
        self._primary_resolved = False

    @classmethod
    def from_beir(cls, folder, split: str = "test", **kwargs) -> "RetrievalEvaluator":
        """From a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv (see `read_beir`)."""
        queries, corpus, qrels = read_beir(folder, split)
        if not qrels:
            raise ValueError(f"{Path(folder) / 'qrels' / f'{split}.tsv'}: no qrels row with a grade > 0")
        return cls(queries, corpus, qrels, **kwargs)

    def search(self, model, fn_names: list[str]) -> dict[tuple[int | None, str], torch.Tensor]:
        """Top `max_k` corpus positions (Q, K) per (dimension, similarity), under (-score, corpus id)."""
        encode_kwargs = {"batch_size": self.batch_size, "show_progress_bar": self.show_progress_bar}
        q_emb = encode(model, self.queries, role="query", prompt=self.query_prompt, prompt_name=self.query_prompt_name, **encode_kwargs)
        q_by_dim = {d: truncate(q_emb, d, self.normalize_embeddings) for d, _ in self.dims}
        empty = (q_emb.new_empty(len(q_emb), 0), torch.empty(len(q_emb), 0, dtype=torch.long, device=q_emb.device))
        top = {(d, fn): empty for d, _ in self.dims for fn in fn_names}
        for start in range(0, len(self.corpus), self.corpus_chunk_size):
            c_emb = encode(model, self.corpus[start:start + self.corpus_chunk_size], role="document",
                           prompt=self.corpus_prompt, prompt_name=self.corpus_prompt_name, **encode_kwargs)
            # Score queries in slices so the (queries x chunk) score block stays under ~2^24 floats.
            rows = max(1, 2**24 // len(c_emb))
            for d, _ in self.dims:
                c = truncate(c_emb.to(q_emb.device), d, self.normalize_embeddings)  # (C, d)
                for fn in fn_names:
                    # cosine(q, c) is dot(normalize(q), normalize(c)) (similarity.py): normalise the chunk once,
                    # not once per slice of queries, for the same floats.
                    q_fn, c_fn, fn_score = (normalize(q_by_dim[d]), normalize(c), "dot") if fn == "cosine" else (q_by_dim[d], c, fn)
                    values, indices = [], []
                    for r in range(0, len(q_emb), rows):
                        scores = similarity(fn_score)(q_fn[r:r + rows], c_fn)  # (rows, C)
                        v, i = M.topk_by_score_then_index(scores, self.max_k, offset=start)
                        del scores
                        values.append(v)
                        indices.append(i)
                    del c_fn
                    top[d, fn] = M.merge_topk(*top[d, fn], torch.cat(values), torch.cat(indices), self.max_k)
            del c_emb, c
        return {key: idx.cpu() for key, (_, idx) in top.items()}

    def gains(self, indices: torch.Tensor) -> torch.Tensor:
        """(Q, K) relevance grade of each retrieved corpus position (0 when not relevant)."""
        flat = torch.arange(len(indices))[:, None] * len(self.corpus_ids) + indices  # (Q, K)
        pos = torch.searchsorted(self._rel_keys, flat).clamp(max=len(self._rel_keys) - 1)
        return torch.where(self._rel_keys[pos] == flat, self._rel_grades[pos], 0.0)

    def scores(self, gains: torch.Tensor) -> dict[str, float]:
        """ST's metric dict for one ranking, in ST's key order."""
        hit = (gains > 0).double()
        out = {}
        for k in self.accuracy_at_k:
            out[f"accuracy@{k}"] = M.accuracy_at_k(hit, k).mean().item()
        for k in self.precision_recall_at_k:
            out[f"precision@{k}"] = M.precision_at_k(hit, k).mean().item()
        for k in self.precision_recall_at_k:
            out[f"recall@{k}"] = M.recall_at_k(hit, self.num_relevant, k).mean().item()
        for k in self.ndcg_at_k:
            out[f"ndcg@{k}"] = M.ndcg_at_k(hit, (self._ideal > 0).double(), k).mean().item()
        for k in self.mrr_at_k:
            out[f"mrr@{k}"] = M.mrr_at_k(hit, k).mean().item()
        for k in self.map_at_k:
            out[f"map@{k}"] = M.map_at_k(hit, self.num_relevant, k).mean().item()
        if self.graded:
            for k in self.ndcg_at_k:
                out[f"graded_ndcg@{k}"] = M.ndcg_at_k(gains, self._ideal, k).mean().item()
        return out

    def compute(self, model) -> dict[str, float]:
        fn_names = self.similarity_fn_names or [model.similarity_fn_name]
        top = self.search(model, fn_names)
        out = {}
        for d, prefix in self.dims:
            for fn in fn_names:
                for metric, value in self.scores(self.gains(top[d, fn])).items():
                    out[f"{prefix}{fn}_{metric}"] = value
        if not self._primary_resolved:  # like ST, fixed at the first call so checkpoints compare one key
            ndcg, first = f"ndcg@{max(self.ndcg_at_k)}", self.dims[0][1]
            main = self.main_similarity or max(fn_names, key=lambda fn: out[f"{first}{fn}_{ndcg}"])
            self.primary_metric = self.key(f"{first}{main}_{ndcg}")
            self._primary_resolved = True
        return out


# ----------------------------------------------------------------------------------------------
# Pairs with gold scores, and triplets


def _main_key(names: list[str], main: str | None, per_fn: str, best: str) -> str:
    if main:
        return per_fn.format(main)
    return best if len(names) > 1 else per_fn.format(names[0])


class STSEvaluator(Evaluator):
    """ST's EmbeddingSimilarityEvaluator: Pearson and Spearman correlation between the similarity of
    each pair's embeddings and its gold score. Keys `pearson_{fn}`, `spearman_{fn}` (+ `_max` over
    several fns); primary `spearman_{main or fn}` (`spearman_max` for several)."""

    def __init__(self, sentences1, sentences2, scores, *, name: str = "", similarity_fn_names=None,
                 main_similarity: str | None = None, matryoshka_dims=None, normalize_embeddings: bool = False,
                 batch_size: int = 16, show_progress_bar: bool = False):
        super().__init__(name)
        _check_lengths("STSEvaluator", sentences1=sentences1, sentences2=sentences2, scores=scores)
        self.sentences1, self.sentences2 = list(sentences1), list(sentences2)
        self.gold = [float(s) for s in scores]
        self.similarity_fn_names = _check_fn_names(similarity_fn_names) or ([main_similarity] if main_similarity else None)
        self.main_similarity = main_similarity
        self.dims = _dims_prefixes(matryoshka_dims)
        self.normalize_embeddings = normalize_embeddings
        self.batch_size, self.show_progress_bar = batch_size, show_progress_bar
        self.primary_metric = self.key(self.dims[0][1] + _main_key(self.similarity_fn_names or ["cosine"], main_similarity, "spearman_{}", "spearman_max"))

    @classmethod
    def from_file(cls, path, split: str = "test", *, score_column: str = "score", **kwargs) -> "STSEvaluator":
        """From a .jsonl/.csv/.tsv/.parquet file, or `<folder>/<split>.*`, with sentence1, sentence2 and
        score columns (read by minisbert.data.load_dataset, whose errors name file, line and column)."""
        from .data import load_dataset

        data = load_dataset(split_file(path, split), columns=["sentence1", "sentence2"], label_column=score_column)
        return cls(data.columns["sentence1"], data.columns["sentence2"], data.labels, **kwargs)

    def compute(self, model) -> dict[str, float]:
        names = self.similarity_fn_names or [model.similarity_fn_name]
        kw = {"batch_size": self.batch_size, "show_progress_bar": self.show_progress_bar}
        e1, e2 = encode(model, self.sentences1, **kw), encode(model, self.sentences2, **kw)  # ST: model.encode, no role prompts
        out = {}
        for d, prefix in self.dims:
            a, b = truncate(e1, d, self.normalize_embeddings), truncate(e2, d, self.normalize_embeddings)
            for fn in names:
                sims = pairwise_similarity(fn)(a, b).cpu()  # (N,)
                out[f"{prefix}pearson_{fn}"] = M.pearson(self.gold, sims)
                out[f"{prefix}spearman_{fn}"] = M.spearman(self.gold, sims)
            if len(names) > 1:
                out[f"{prefix}pearson_max"] = max(out[f"{prefix}pearson_{fn}"] for fn in names)
                out[f"{prefix}spearman_max"] = max(out[f"{prefix}spearman_{fn}"] for fn in names)
        self.primary_metric = self.key(self.dims[0][1] + _main_key(names, self.main_similarity, "spearman_{}", "spearman_max"))
        return out


class TripletEvaluator(Evaluator):
    """ST's TripletEvaluator: the fraction of (anchor, positive, negative) with
    sim(a, p) > sim(a, n) + margin (strict, in float32 as ST). Anchors are encoded as queries,
    positives and negatives as documents. Keys `{fn}_accuracy` (+ `max_accuracy`)."""

    def __init__(self, anchors, positives, negatives, *, name: str = "", similarity_fn_names=None,
                 main_similarity: str | None = None, margin: float | dict = 0.0, matryoshka_dims=None,
                 normalize_embeddings: bool = False, batch_size: int = 16, show_progress_bar: bool = False):
        super().__init__(name)
        _check_lengths("TripletEvaluator", anchors=anchors, positives=positives, negatives=negatives)
        self.anchors, self.positives, self.negatives = list(anchors), list(positives), list(negatives)
        self.similarity_fn_names = _check_fn_names(similarity_fn_names) or ([main_similarity] if main_similarity else None)
        self.main_similarity = main_similarity
        if isinstance(margin, dict) and set(margin) - set(SIMILARITY_FUNCTIONS):
            raise ValueError(f"margin keys {sorted(set(margin) - set(SIMILARITY_FUNCTIONS))} are not similarity functions")
        self.margin = margin
        self.dims = _dims_prefixes(matryoshka_dims)
        self.normalize_embeddings = normalize_embeddings
        self.batch_size, self.show_progress_bar = batch_size, show_progress_bar
        self.primary_metric = self.key(self.dims[0][1] + _main_key(self.similarity_fn_names or ["cosine"], main_similarity, "{}_accuracy", "max_accuracy"))

    @classmethod
    def from_file(cls, path, split: str = "test", **kwargs) -> "TripletEvaluator":
        """From a file, or `<folder>/<split>.*`, with anchor, positive and negative columns (load_dataset)."""
        from .data import load_dataset

        data = load_dataset(split_file(path, split), columns=["anchor", "positive", "negative"], label_column="")
        return cls(data.columns["anchor"], data.columns["positive"], data.columns["negative"], **kwargs)

    def compute(self, model) -> dict[str, float]:
        names = self.similarity_fn_names or [model.similarity_fn_name]
        kw = {"batch_size": self.batch_size, "show_progress_bar": self.show_progress_bar}
        a = encode(model, self.anchors, role="query", **kw)
        p = encode(model, self.positives, role="document", **kw)
        n = encode(model, self.negatives, role="document", **kw)
        out = {}
        for d, prefix in self.dims:
            ad, pd, nd = (truncate(x, d, self.normalize_embeddings) for x in (a, p, n))
            for fn in names:
                margin = self.margin.get(fn, 0.0) if isinstance(self.margin, dict) else self.margin
                pos, neg = pairwise_similarity(fn)(ad, pd), pairwise_similarity(fn)(ad, nd)  # (N,), (N,)
                out[f"{prefix}{fn}_accuracy"] = (pos > neg + margin).double().mean().item()
            if len(names) > 1:
                out[f"{prefix}max_accuracy"] = max(out[f"{prefix}{fn}_accuracy"] for fn in names)
        self.primary_metric = self.key(self.dims[0][1] + _main_key(names, self.main_similarity, "{}_accuracy", "max_accuracy"))
        return out


# ----------------------------------------------------------------------------------------------
# Reranking a given candidate list


def _as_list(x) -> list:
    return [x] if isinstance(x, str) else list(x)


def _rerank_scores(at_k: int, relevance: list[int], scores, tie_order: str,
                   positives: int = 0) -> tuple[float, float, float]:
    """(mrr@k, ndcg@k, map) for one query's candidates, as ST's rerankers compute them (sklearn for ndcg
    and AP). `positives`: how many positives the query has, counting those missing from the candidates
    (a first stage that did not retrieve them). As in ST 6.3, they count in the ideal ranking of ndcg and
    in the recall of AP, so a query whose candidates miss a positive scores below 1 even when ranked
    perfectly (ST 6.2 left them out of the reranked metrics and appended them to the base ranking)."""
    retrieved = sum(relevance)
    if retrieved == 0:
        return 0.0, 0.0, 0.0
    missing = max(positives - retrieved, 0)
    mrr = M.reciprocal_rank(relevance, scores, at_k, tie_order=tie_order)
    return mrr, M.ndcg(relevance, scores, at_k, missing), M.average_precision(relevance, scores, missing)


class RerankingEvaluator(Evaluator):
    """ST's RerankingEvaluator for bi-encoders: score each query's positives + negatives by embedding
    similarity (cosine by default, as ST) and report `map`, `mrr@{at_k}`, `ndcg@{at_k}` averaged over
    queries. Samples with no positive or no negative are left out, as in ST."""

    def __init__(self, samples: list[dict], *, at_k: int = 10, name: str = "", similarity_fn_name: str = "cosine",
                 batch_size: int = 64, truncate_dim: int | None = None, show_progress_bar: bool = False):
        super().__init__(name)
        _check_fn_names([similarity_fn_name])
        for i, s in enumerate(samples):
            if "query" not in s or "positive" not in s or "negative" not in s:
                raise ValueError(f"RerankingEvaluator: sample {i} needs 'query', 'positive' and 'negative' (has {sorted(s)})")
        self.samples = [
            {"query": s["query"], "positive": _as_list(s["positive"]), "negative": _as_list(s["negative"])} for s in samples
        ]
        self.samples = [s for s in self.samples if s["positive"] and s["negative"]]
        if not self.samples:
            raise ValueError("RerankingEvaluator: no sample has both a positive and a negative")
        self.at_k, self.similarity_fn_name, self.truncate_dim = at_k, similarity_fn_name, truncate_dim
        self.batch_size, self.show_progress_bar = batch_size, show_progress_bar
        self.primary_metric = self.key(f"ndcg@{at_k}")

    @classmethod
    def from_file(cls, path, split: str = "test", **kwargs) -> "RerankingEvaluator":
        return cls(read_rerank_samples(split_file(path, split)), **kwargs)

    def compute(self, model) -> dict[str, float]:
        kw = {"batch_size": self.batch_size, "show_progress_bar": self.show_progress_bar}
        q = truncate(encode(model, [s["query"] for s in self.samples], role="query", **kw), self.truncate_dim)
        docs = [d for s in self.samples for d in s["positive"] + s["negative"]]
        c = truncate(encode(model, docs, role="document", **kw), self.truncate_dim)
        mrr, ndcg, ap, start = [], [], [], 0
        for i, s in enumerate(self.samples):
            n_pos, n = len(s["positive"]), len(s["positive"]) + len(s["negative"])
            scores = similarity(self.similarity_fn_name)(q[i:i + 1], c[start:start + n])[0].cpu()  # (n,)
            start += n
            r = _rerank_scores(self.at_k, [1] * n_pos + [0] * (n - n_pos), scores, "torch")  # ST: torch.argsort(-scores)
            mrr.append(r[0])
            ndcg.append(r[1])
            ap.append(r[2])
        return {"map": _mean(ap), f"mrr@{self.at_k}": _mean(mrr), f"ndcg@{self.at_k}": _mean(ndcg)}


def _mean(values: list[float]) -> float:
    return float(torch.tensor(values, dtype=torch.float64).mean())


class CrossEncoderRerankingEvaluator(Evaluator):
    """ST's CrossEncoderRerankingEvaluator: score every (query, candidate) pair with
    `model.predict` (activation applied) and report `map`, `mrr@{at_k}`, `ndcg@{at_k}`.

    A sample is {"query", "positive": str | list, "negative": list}, or {"query", "positive",
    "documents": list} for a first-stage ranking to rerank. With "documents", the metrics of the given
    order are reported as well (`base_*`), and `always_rerank_positives=True` adds the positives the
    first stage missed to the candidates; with False, those positives still count as relevant documents
    ranked nowhere, so neither metric can reach 1 (ST 6.3; see `_rerank_scores`). A sample whose
    candidates hold no positive scores 0.
    """

    def __init__(self, samples: list[dict], *, at_k: int = 10, always_rerank_positives: bool = True, name: str = "",
                 batch_size: int = 64, show_progress_bar: bool = False):
        super().__init__(name)
        if not samples:
            raise ValueError("CrossEncoderRerankingEvaluator: no samples")
        for i, s in enumerate(samples):
            check_rerank_sample(s, f"CrossEncoderRerankingEvaluator: sample {i}")
        self.samples = list(samples)
        self.at_k, self.always_rerank_positives = at_k, always_rerank_positives
        self.batch_size, self.show_progress_bar = batch_size, show_progress_bar
        self.primary_metric = self.key(f"ndcg@{at_k}")

    @classmethod
    def from_file(cls, path, split: str = "test", **kwargs) -> "CrossEncoderRerankingEvaluator":
        return cls(read_rerank_samples(split_file(path, split)), **kwargs)

    def candidates(self) -> tuple[list, list[tuple[list[int], int] | None], list[tuple[float, float, float]]]:
        """All (query, doc) pairs, each sample's (relevance list, number of positives) (None when its
        candidates hold no positive), base metrics."""
        pairs, relevance, base = [], [], []
        for s in self.samples:
            positive = _as_list(s["positive"])
            if "documents" in s:
                documents = _as_list(s["documents"])
                in_order = [int(d in positive) for d in documents]
                base.append(_rerank_scores(self.at_k, in_order, np.arange(len(in_order), 0, -1), "numpy", len(positive)))
                if self.always_rerank_positives:
                    docs = positive + [d for d in documents if d not in positive]
                    rel = [1] * len(positive) + [0] * (len(docs) - len(positive))
                else:
                    docs, rel = documents, [int(d in positive) for d in documents]
            else:
                negative = _as_list(s["negative"])  # a string is one candidate, not a list of characters
                docs = positive + negative
                rel = [1] * len(positive) + [0] * len(negative)
            if sum(rel) == 0:
                relevance.append(None)
                continue
            relevance.append((rel, len(positive)))
            pairs.extend([s["query"], d] for d in docs)
        return pairs, relevance, base

    def compute(self, model) -> dict[str, float]:
        pairs, relevance, base = self.candidates()
        scores = np.asarray(model.predict(pairs, batch_size=self.batch_size, show_progress_bar=self.show_progress_bar)).reshape(-1) if pairs else np.empty(0)
        per_query, start = [], 0
        for entry in relevance:
            if entry is None:
                per_query.append((0.0, 0.0, 0.0))
                continue
            rel, positives = entry
            per_query.append(_rerank_scores(self.at_k, rel, scores[start:start + len(rel)], "numpy", positives))  # ST: np.argsort
            start += len(rel)
        out = {"map": _mean([r[2] for r in per_query]), f"mrr@{self.at_k}": _mean([r[0] for r in per_query]),
               f"ndcg@{self.at_k}": _mean([r[1] for r in per_query])}
        if base:
            out |= {"base_map": _mean([r[2] for r in base]), f"base_mrr@{self.at_k}": _mean([r[0] for r in base]),
                    f"base_ndcg@{self.at_k}": _mean([r[1] for r in base])}
        return out


# ----------------------------------------------------------------------------------------------
# Probes on frozen embeddings: classification and clustering


def _label_ids(labels: list) -> tuple[list, torch.Tensor]:
    classes = sorted(set(labels), key=str)
    index = {c: i for i, c in enumerate(classes)}
    return classes, torch.tensor([index[x] for x in labels], dtype=torch.long)


class ClassificationEvaluator(Evaluator):
    """MTEB-style linear probe: fit a multinomial logistic regression (sklearn's objective, C=1,
    full-batch L-BFGS, deterministic) on the train texts' embeddings, report `accuracy` and
    `f1_macro` on the test texts. Labels may be any hashable values (strings included)."""

    def __init__(self, train_texts, train_labels, test_texts, test_labels, *, name: str = "", C: float = 1.0,
                 max_iter: int = 100, batch_size: int = 32, show_progress_bar: bool = False):
        super().__init__(name)
        _check_lengths("ClassificationEvaluator (train)", texts=train_texts, labels=train_labels)
        _check_lengths("ClassificationEvaluator (test)", texts=test_texts, labels=test_labels)
        self.train_texts, self.test_texts = list(train_texts), list(test_texts)
        self.classes, self.train_y = _label_ids(list(train_labels))
        known = set(self.classes)
        unseen = sorted({x for x in test_labels if x not in known}, key=str)
        if unseen:
            kinds = " (labels are compared with their type: 1 and '1' differ)" if {str(x) for x in unseen} & {str(c) for c in self.classes} else ""
            raise ValueError(f"ClassificationEvaluator: test labels {unseen!r:.200} never occur in the train labels "
                             f"{self.classes!r:.200}{kinds}")
        index = {c: i for i, c in enumerate(self.classes)}
        self.test_y = torch.tensor([index[x] for x in test_labels], dtype=torch.long)
        self.C, self.max_iter = C, max_iter
        self.batch_size, self.show_progress_bar = batch_size, show_progress_bar
        self.primary_metric = self.key("accuracy")

    @classmethod
    def from_file(cls, path, split: str = "test", *, train_split: str = "train", text_column: str | None = None,
                  label_column: str | None = None, **kwargs) -> "ClassificationEvaluator":
        """From `<folder>/<train_split>.jsonl` and `<folder>/<split>.jsonl` (see `read_labelled`)."""
        train_texts, train_labels = read_labelled(split_file(path, train_split), text_column, label_column)
        test_texts, test_labels = read_labelled(split_file(path, split), text_column, label_column)
        return cls(train_texts, train_labels, test_texts, test_labels, **kwargs)

    def compute(self, model) -> dict[str, float]:
        kw = {"batch_size": self.batch_size, "show_progress_bar": self.show_progress_bar}
        x_train = encode(model, self.train_texts, **kw).cpu().double().clone()  # clone: a normal tensor, not an inference one
        x_test = encode(model, self.test_texts, **kw).cpu().double()
        weight, bias = M.logistic_regression(x_train, self.train_y, C=self.C, max_iter=self.max_iter)
        pred = (x_test @ weight.T + bias).argmax(dim=1)  # (N,)
        return {"accuracy": M.accuracy(self.test_y, pred), "f1_macro": M.f1_macro(self.test_y, pred)}


class ClusteringEvaluator(Evaluator):
    """MTEB-style clustering: k-means (k = number of distinct labels unless given, k-means++ seeded
    by `seed`) on the texts' embeddings, scored by `v_measure` against the labels."""

    def __init__(self, texts, labels, *, name: str = "", n_clusters: int | None = None, seed: int = 0,
                 batch_size: int = 32, show_progress_bar: bool = False):
        super().__init__(name)
        _check_lengths("ClusteringEvaluator", texts=texts, labels=labels)
        self.texts = list(texts)
        self.classes, self.labels = _label_ids(list(labels))
        self.n_clusters = n_clusters or len(self.classes)
        self.seed, self.batch_size, self.show_progress_bar = seed, batch_size, show_progress_bar
        self.primary_metric = self.key("v_measure")

    @classmethod
    def from_file(cls, path, split: str = "test", *, text_column: str | None = None, label_column: str | None = None,
                  **kwargs) -> "ClusteringEvaluator":
        texts, labels = read_labelled(split_file(path, split), text_column, label_column)
        return cls(texts, labels, **kwargs)

    def compute(self, model) -> dict[str, float]:
        x = encode(model, self.texts, batch_size=self.batch_size, show_progress_bar=self.show_progress_bar).cpu()
        return {"v_measure": M.v_measure(self.labels, M.kmeans(x, self.n_clusters, seed=self.seed))}


# ----------------------------------------------------------------------------------------------
# Several evaluators as one


class SequentialEvaluator(Evaluator):
    """ST's SequentialEvaluator: run each evaluator, merge their dicts and add `sequential_score`
    = main_score_function([each evaluator's primary metric value]) (default: the last one)."""

    def __init__(self, evaluators, main_score_function=lambda scores: scores[-1], name: str = ""):
        super().__init__(name)
        self.evaluators = list(evaluators)
        self.main_score_function = main_score_function
        self.primary_metric = "sequential_score"

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        results, scores = {}, []
        for evaluator in self.evaluators:
            metrics = evaluator(model, output_path, epoch, steps)
            primary = getattr(evaluator, "primary_metric", None)
            scores.append(metrics[primary] if primary in metrics else next(iter(metrics.values())))
            results.update(metrics)
        results["sequential_score"] = float(self.main_score_function(scores)) if scores else 0.0
        return results
