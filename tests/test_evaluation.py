"""Evaluators and evaluate.py against sentence-transformers' evaluators on the same inputs.

Three layers:
1. Fake encoders (seeded random vectors per text, duplicate texts for exact ties): our evaluators and
   ST's evaluators see identical embeddings, so every number must agree to float precision. Fast.
2. Readers and bad input: each a ValueError naming the file / id / column.
3. The real all-MiniLM-L6-v2 through evaluate.py (minisbert.BiEncoder) vs ST's evaluators with ST's
   own SentenceTransformer, on documented subsets of the shared data (2 CPU cores: a full SciFact
   encode takes minutes). Equal to 1e-6 under the same key names.
"""

from __future__ import annotations

import json
import random
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minisbert import evaluation as E
from minisbert.similarity import similarity

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
import evaluate  # noqa: E402

FNS = ["cosine", "dot", "euclidean", "manhattan"]


def _st_version() -> tuple[int, ...]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return tuple(int(p) for p in version("sentence-transformers").split(".")[:2])
    except PackageNotFoundError:
        return (0, 0)


# The evaluators follow sentence-transformers 6.3 (the `test` extra's pin); its 5.x (the `test-tf4` reference,
# for transformers 4) breaks ties, applies margins and orders float sums otherwise, which these tests pin exactly.
AS_ST_6_3 = pytest.mark.skipif(_st_version() < (6, 3), reason="pins sentence-transformers 6.3's evaluators")


# ----------------------------------------------------------------------------------------------
# Fake models usable by both libraries


class FakeEncoder:
    """A seeded random vector per (prompt + text): same text, same vector. Speaks both minisbert's
    encode and the parts of ST's SentenceTransformer its evaluators call."""

    def __init__(self, dim: int = 16, similarity_fn_name: str = "cosine", prompts: dict | None = None, normalize: bool = False,
                 integer: bool = False):
        self.dim, self.similarity_fn_name, self.prompts, self.normalize = dim, similarity_fn_name, prompts or {}, normalize
        # `integer`: four entries of +-1, the rest 0. Norms are exactly 2, so cosine and dot scores are
        # exact in any summation order and chunking, and ties are many and exact.
        self.integer = integer
        self.prompts_seen: list[str | None] = []
        self.model_card_data = SimpleNamespace(set_evaluation_metrics=lambda *a, **k: None)

    def vector(self, text: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        v = torch.randn(self.dim, generator=g)
        if self.integer:
            v = torch.zeros(self.dim).index_fill_(0, torch.randperm(self.dim, generator=g)[:4], 1.0) * torch.sign(v)
            v[v == 0] = 0.0  # no -0.0
        return F.normalize(v, dim=0) if self.normalize else v

    def encode(self, texts, batch_size=32, prompt=None, prompt_name=None, convert_to_tensor=False, truncate_dim=None,
               normalize_embeddings=False, **kwargs):
        if prompt is None and prompt_name is not None:
            prompt = self.prompts[prompt_name]
        self.prompts_seen.append(prompt)
        emb = torch.stack([self.vector((prompt or "") + t) for t in texts])
        if truncate_dim:
            emb = emb[:, :truncate_dim]
        if normalize_embeddings:
            emb = F.normalize(emb, dim=-1)
        return emb if convert_to_tensor else emb.numpy()

    def encode_query(self, texts, prompt_name=None, prompt=None, **kwargs):  # ST's encode_query rule
        if prompt_name is None and prompt is None and "query" in self.prompts:
            prompt_name = "query"
        return self.encode(texts, prompt=prompt, prompt_name=prompt_name, **kwargs)

    def encode_document(self, texts, prompt_name=None, prompt=None, **kwargs):
        if prompt_name is None and prompt is None:
            prompt_name = next((n for n in ("document", "passage", "corpus") if n in self.prompts), None)
        return self.encode(texts, prompt=prompt, prompt_name=prompt_name, **kwargs)

    def similarity(self, a, b):
        return similarity(self.similarity_fn_name)(a, b)


class FakeCrossEncoder:
    """A seeded random score per (query, document) pair; `levels` rounds scores to create ties."""

    model_card_data = SimpleNamespace(set_evaluation_metrics=lambda *a, **k: None)

    def __init__(self, levels: int | None = None):
        self.levels = levels

    def predict(self, pairs, batch_size=32, **kwargs):
        scores = np.array([torch.rand(1, generator=torch.Generator().manual_seed(zlib.crc32("|".join(p).encode()))).item()
                           for p in pairs], dtype=np.float32)
        return np.round(scores * self.levels).astype(np.float32) / self.levels if self.levels else scores


def assert_same_metrics(ours: dict, ref: dict, atol: float = 1e-9, extra_ok: tuple = ()):
    assert set(ref) <= set(ours), f"missing ST keys: {sorted(set(ref) - set(ours))}"
    extra = {k for k in set(ours) - set(ref) if not any(x in k for x in extra_ok)}
    assert not extra, f"keys ST does not have: {sorted(extra)}"
    for key in ref:
        assert ours[key] == pytest.approx(float(ref[key]), abs=atol), key


def st_eval():
    pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer import evaluation

    return evaluation


def _ir_data(n_queries=25, n_docs=120, seed=0, duplicates=True):
    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    corpus = {f"d{i}": " ".join(rng.choices(words, k=5)) for i in range(n_docs)}
    for i in range(0, n_docs if duplicates else 0, 6):  # duplicate texts -> exactly tied scores, ids "d12" < "d6" as strings
        corpus[f"d{i + 1}"] = corpus[f"d{i}"]
    queries = {f"q{i}": " ".join(rng.choices(words, k=3)) for i in range(n_queries)}
    qrels = {q: set(rng.sample(sorted(corpus), rng.randint(1, 4))) for q in list(queries)[:-3]}  # 3 without qrels
    return queries, corpus, qrels


# ----------------------------------------------------------------------------------------------
# 1. Same embeddings, same numbers as ST


@AS_ST_6_3
@pytest.mark.parametrize("chunk", [7, 1000])
def test_retrieval_equals_st_with_ties_and_chunks(chunk):
    ev = st_eval()
    from sentence_transformers.util import cos_sim, dot_score

    queries, corpus, qrels = _ir_data()
    model = FakeEncoder(integer=True)
    ours = E.RetrievalEvaluator(queries, corpus, qrels, similarity_fn_names=["cosine", "dot"], corpus_chunk_size=chunk,
                                name="fake")(model)
    st = ev.InformationRetrievalEvaluator(queries, corpus, qrels, score_functions={"cosine": cos_sim, "dot": dot_score},
                                          name="fake", write_csv=False)
    assert_same_metrics(ours, st(model), atol=1e-12)
    assert list(ours)[:3] == ["fake_cosine_accuracy@1", "fake_cosine_accuracy@3", "fake_cosine_accuracy@5"]


@AS_ST_6_3
def test_retrieval_model_similarity_prompts_and_primary_metric_like_st():
    ev = st_eval()
    queries, corpus, qrels = _ir_data(seed=1)
    model = FakeEncoder(similarity_fn_name="dot", prompts={"query": "Q: ", "passage": "P: "})
    ours_ev = E.RetrievalEvaluator(queries, corpus, qrels, corpus_chunk_size=50)
    ours = ours_ev(model)
    assert set(model.prompts_seen) == {"Q: ", "P: "}  # saved prompts applied per role
    st = ev.InformationRetrievalEvaluator(queries, corpus, qrels, write_csv=False)
    assert_same_metrics(ours, st(model), atol=1e-12)
    assert ours_ev.primary_metric == st.primary_metric == "dot_ndcg@10"
    # explicit prompts win over saved ones
    model.prompts_seen.clear()
    E.RetrievalEvaluator(queries, corpus, qrels, query_prompt="x: ", corpus_prompt="y: ")(model)
    assert set(model.prompts_seen) == {"x: ", "y: "}


@AS_ST_6_3
def test_retrieval_matryoshka_encodes_once_and_matches_st_per_dim():
    ev = st_eval()
    from sentence_transformers.util import cos_sim, dot_score

    queries, corpus, qrels = _ir_data(seed=2)
    model = FakeEncoder(dim=32, normalize=True)
    ours_ev = E.RetrievalEvaluator(queries, corpus, qrels, similarity_fn_names=["cosine", "dot"], matryoshka_dims=[32, 8])
    ours = ours_ev(model)
    assert len(model.prompts_seen) == 2  # one query encode, one corpus chunk: not once per dimension
    ref = {}
    for d in (32, 8):
        st = ev.InformationRetrievalEvaluator(queries, corpus, qrels, score_functions={"cosine": cos_sim, "dot": dot_score},
                                              name=f"dim_{d}", truncate_dim=d, write_csv=False)
        ref |= st(model)
    assert_same_metrics(ours, ref, atol=1e-12)
    assert ours_ev.primary_metric.startswith("dim_32_")
    assert ours["dim_8_dot_ndcg@10"] != ours["dim_8_cosine_ndcg@10"]  # truncated, not re-normalised, as ST


def test_retrieval_graded_ndcg_is_extra_and_binary_keys_stay_st():
    ev = st_eval()
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    queries, corpus, qrels = _ir_data(seed=3, duplicates=False)
    graded = {q: {c: 1 + (zlib.crc32((q + c).encode()) % 3) for c in rel} for q, rel in qrels.items()}
    model = FakeEncoder()
    ours = E.RetrievalEvaluator(queries, corpus, graded)(model)
    st = ev.InformationRetrievalEvaluator(queries, corpus, qrels, write_csv=False)(model)
    assert_same_metrics(ours, st, atol=1e-12, extra_ok=("graded_ndcg",))
    # graded ndcg against sklearn over the whole corpus
    ids = sorted(corpus)
    q_ids = [q for q in queries if q in graded]
    scores = similarity("cosine")(model.encode([queries[q] for q in q_ids], convert_to_tensor=True),
                                  model.encode([corpus[c] for c in ids], convert_to_tensor=True))
    want = np.mean([sklearn_metrics.ndcg_score([[graded[q].get(c, 0) for c in ids]], [scores[i].numpy()], k=10)
                    for i, q in enumerate(q_ids)])
    assert ours["cosine_graded_ndcg@10"] == pytest.approx(want, abs=1e-12)


@AS_ST_6_3
def test_sts_equals_st_all_functions_and_matryoshka():
    ev = st_eval()
    rng = random.Random(0)
    s1 = [f"sentence {i} {rng.random()}" for i in range(80)]
    s2 = [f"other {i} {rng.random()}" for i in range(80)]
    gold = [rng.choice([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]) for _ in range(80)]  # tied gold scores
    model = FakeEncoder(dim=24)
    ours = E.STSEvaluator(s1, s2, gold, similarity_fn_names=FNS, name="sts")(model)
    st = ev.EmbeddingSimilarityEvaluator(s1, s2, gold, similarity_fn_names=FNS, name="sts", write_csv=False)
    assert_same_metrics(ours, st(model), atol=1e-9)
    single = E.STSEvaluator(s1, s2, gold)
    assert set(single(model)) == {"pearson_cosine", "spearman_cosine"} and single.primary_metric == "spearman_cosine"
    ours = E.STSEvaluator(s1, s2, gold, matryoshka_dims=[24, 6])(model)
    ref = ev.EmbeddingSimilarityEvaluator(s1, s2, gold, name="dim_6", truncate_dim=6, write_csv=False)(model)
    assert_same_metrics({k: v for k, v in ours.items() if k.startswith("dim_6")}, ref)


@AS_ST_6_3
def test_triplet_equals_st_all_functions_with_margin():
    ev = st_eval()
    a = [f"anchor {i}" for i in range(60)]
    p = [f"pos {i}" for i in range(60)]
    n = [f"neg {i}" for i in range(60)]
    n[:5] = p[:5]  # sim(a, p) == sim(a, n): a strict comparison counts these as wrong
    model = FakeEncoder(prompts={"query": "q: "})
    for margin in (0.0, 0.1):
        ours_ev = E.TripletEvaluator(a, p, n, similarity_fn_names=FNS, margin=margin, name="trip")
        st = ev.TripletEvaluator(a, p, n, similarity_fn_names=FNS, margin=margin, name="trip", write_csv=False)
        assert_same_metrics(ours_ev(model), st(model), atol=1e-7)  # ST's mean is float32
        assert ours_ev.primary_metric == st.primary_metric == "trip_max_accuracy"


def _rerank_samples(n=15, seed=0):
    rng = random.Random(seed)
    return [{"query": f"query {i}", "positive": [f"pos {i} {j}" for j in range(rng.randint(1, 3))],
             "negative": [f"neg {i} {j}" for j in range(rng.randint(1, 14))]} for i in range(n)]


@pytest.mark.parametrize("integer", [False, True])
def test_bi_encoder_reranking_equals_st(integer):
    ev = st_eval()
    samples = _rerank_samples()
    samples.append({"query": "no negatives", "positive": ["x"], "negative": []})  # dropped by both
    model = FakeEncoder(dim=8, integer=integer)  # integer: many exactly tied cosine scores
    ours = E.RerankingEvaluator(samples, at_k=5, name="rr")(model)
    assert_same_metrics(ours, ev.RerankingEvaluator(samples, at_k=5, name="rr", write_csv=False)(model), atol=1e-12)


def test_cross_encoder_reranking_counts_positives_the_first_stage_missed():
    """Hand-computed: positives p1, p2; the first stage returned n1, p1, n2 (p2 missed). A reranker that
    puts p1 first still misses p2, so ndcg@10 = 1 / (1 + 1/log2 3) and map = AP over the candidates (1)
    times the recall 1/2; the base order has p1 second: ndcg 1/log2 3 / (1 + 1/log2 3), map 1/2 * 1/2."""
    scores = {"n1": 0.2, "p1": 0.9, "n2": 0.1, "p2": 0.5}
    model = SimpleNamespace(predict=lambda pairs, **kw: np.array([scores[d] for _, d in pairs], dtype=np.float32))
    sample = {"query": "q", "positive": ["p1", "p2"], "documents": ["n1", "p1", "n2"]}
    ideal = 1 + 1 / np.log2(3)
    out = E.CrossEncoderRerankingEvaluator([sample], always_rerank_positives=False).compute(model)
    assert out["mrr@10"] == pytest.approx(1.0)
    assert out["ndcg@10"] == pytest.approx(1 / ideal)
    assert out["map"] == pytest.approx(0.5)
    assert out["base_mrr@10"] == pytest.approx(0.5)
    assert out["base_ndcg@10"] == pytest.approx(1 / np.log2(3) / ideal)
    assert out["base_map"] == pytest.approx(0.25)
    # Reranking the missed positive too (the default): p1, p2 on top, a perfect 1.
    out = E.CrossEncoderRerankingEvaluator([sample]).compute(model)
    assert out["ndcg@10"] == pytest.approx(1.0) and out["map"] == pytest.approx(1.0)


@pytest.mark.parametrize("always", [True, False])
@pytest.mark.parametrize("levels", [None, 2])
def test_cross_encoder_reranking_equals_st_in_both_sample_layouts(always, levels):
    pytest.importorskip("sentence_transformers", minversion="6.3")  # 6.3 counts missed positives
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator as STCE

    samples = _rerank_samples(seed=1)
    rng = random.Random(2)
    documents = []
    for s in samples:  # a first-stage list that sometimes misses positives
        docs = s["negative"] + s["positive"][: rng.randint(0, len(s["positive"]))]
        rng.shuffle(docs)
        documents.append({"query": s["query"], "positive": s["positive"], "documents": docs})
    documents.append({"query": "nothing relevant", "positive": "p", "documents": ["a", "b"]})
    model = FakeCrossEncoder(levels)  # levels=2: scores in {0, 0.5, 1}, ties everywhere
    for data in (samples, documents):
        ours = E.CrossEncoderRerankingEvaluator(data, always_rerank_positives=always, name="ce")(model)
        ref = STCE(data, always_rerank_positives=always, name="ce", write_csv=False)(model)
        assert_same_metrics(ours, ref, atol=1e-12)
    assert "ce_base_map" in ours


def test_sequential_evaluator_like_st():
    ev = st_eval()
    from sentence_transformers.base.evaluation import SequentialEvaluator as STSeq

    s1, s2, gold = ["a b", "c d", "e f", "g h"], ["a c", "c e", "e g", "g a"], [0.1, 0.9, 0.3, 0.5]
    a, p, n = ["x", "y", "z"], ["x1", "y1", "z1"], ["x2", "y2", "z2"]
    model = FakeEncoder()
    ours = E.SequentialEvaluator([E.STSEvaluator(s1, s2, gold, name="sts"), E.TripletEvaluator(a, p, n, name="trip")])
    ref = STSeq([ev.EmbeddingSimilarityEvaluator(s1, s2, gold, name="sts", write_csv=False),
                 ev.TripletEvaluator(a, p, n, name="trip", write_csv=False)])
    got = ours(model)
    assert_same_metrics(got, ref(model), atol=1e-7)
    assert ours.primary_metric == "sequential_score" and got["sequential_score"] == got["trip_cosine_accuracy"]
    mean = E.SequentialEvaluator(ours.evaluators, main_score_function=lambda s: sum(s) / len(s))(model)
    assert mean["sequential_score"] == pytest.approx((got["sts_spearman_cosine"] + got["trip_cosine_accuracy"]) / 2)


def test_classification_probe_and_clustering_on_separable_fake_embeddings():
    class Topics(FakeEncoder):  # the embedding is the topic's centre plus noise: a probe must find it
        def vector(self, text):
            topic = int(text.split()[0])
            g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
            return torch.eye(self.dim)[topic] * 4 + torch.randn(self.dim, generator=g)

    texts = [f"{i % 3} text {i}" for i in range(150)]
    labels = [["sports", "cooking", "travel"][i % 3] for i in range(150)]
    ev = E.ClassificationEvaluator(texts[:100], labels[:100], texts[100:], labels[100:], name="cls")
    out = ev(Topics())
    assert out["cls_accuracy"] > 0.9 and out["cls_f1_macro"] > 0.9 and ev.primary_metric == "cls_accuracy"
    assert out == ev(Topics())  # deterministic
    cl = E.ClusteringEvaluator(texts, labels, seed=0)
    assert cl(Topics())["v_measure"] > 0.8 and cl(Topics()) == cl(Topics())


def test_classification_matches_sklearn_logistic_regression():
    linear_model = pytest.importorskip("sklearn.linear_model")
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    model = FakeEncoder(dim=8)
    rng = random.Random(0)
    train = [f"t{i}" for i in range(120)]
    test = [f"s{i}" for i in range(60)]
    train_y = [rng.choice("abc") for _ in train]
    test_y = [rng.choice("abc") for _ in test]
    out = E.ClassificationEvaluator(train, train_y, test, test_y, max_iter=300)(model)
    clf = linear_model.LogisticRegression(C=1.0, tol=1e-10, max_iter=2000).fit(model.encode(train), train_y)
    pred = clf.predict(model.encode(test))
    assert out["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(test_y, pred))
    assert out["f1_macro"] == pytest.approx(sklearn_metrics.f1_score(test_y, pred, average="macro"))


# ----------------------------------------------------------------------------------------------
# 2. Readers and bad input


def _write_beir(folder: Path, corpus: list[dict], queries: list[dict], qrels: list[tuple], split: str = "test") -> Path:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{c}\t{s}\n" for q, c, s in qrels))
    return folder


def test_read_beir_title_text_and_grades(tmp_path):
    folder = _write_beir(tmp_path, [{"_id": "1", "title": "T", "text": "body"}, {"_id": "2", "title": "", "text": "x"}],
                         [{"_id": "q", "text": "question"}], [("q", "1", 2), ("q", "2", 0)])
    queries, corpus, qrels = E.read_beir(folder)
    assert corpus == {"1": "T body", "2": "x"} and queries == {"q": "question"}
    assert qrels == {"q": {"1": 2.0}}  # grade 0 = judged not relevant


def test_bad_qrels_ids_name_file_line_and_id(tmp_path):
    corpus, queries = [{"_id": "1", "text": "a"}], [{"_id": "q", "text": "b"}]
    folder = _write_beir(tmp_path / "a", corpus, queries, [("q", "1", 1), ("q", "404", 1)])
    with pytest.raises(ValueError, match=r"test\.tsv, line 3, column 'corpus-id': '404' is not in corpus\.jsonl"):
        E.read_beir(folder)
    folder = _write_beir(tmp_path / "b", corpus, queries, [("nope", "1", 1)])
    with pytest.raises(ValueError, match=r"test\.tsv, line 2, column 'query-id': 'nope' is not in queries\.jsonl"):
        E.RetrievalEvaluator.from_beir(folder)
    with pytest.raises(ValueError, match=r"qrels splits available: \['test'\]"):
        E.read_beir(folder, "dev")
    with pytest.raises(ValueError, match="corpus id 'zz'"):
        E.RetrievalEvaluator({"q": "b"}, {"1": "a"}, {"q": {"zz"}})


def test_empty_corpus_and_mismatched_columns(tmp_path):
    folder = _write_beir(tmp_path, [], [{"_id": "q", "text": "b"}], [])
    with pytest.raises(ValueError, match=r"corpus\.jsonl: the corpus is empty"):
        E.read_beir(folder)
    with pytest.raises(ValueError, match="corpus is empty"):
        E.RetrievalEvaluator({"q": "b"}, {}, {"q": {"1"}})
    with pytest.raises(ValueError, match=r"different lengths \{'sentences1': 2, 'sentences2': 1, 'scores': 2\}"):
        E.STSEvaluator(["a", "b"], ["c"], [0.1, 0.2])
    with pytest.raises(ValueError, match="different lengths"):
        E.TripletEvaluator(["a"], ["b"], [])


def test_bad_rows_name_file_and_line(tmp_path):
    path = tmp_path / "sts.jsonl"
    path.write_text('{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "a"\n')
    with pytest.raises(ValueError, match=r"sts\.jsonl, line 2: not valid JSON"):
        E.STSEvaluator.from_file(path)
    path.write_text('{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "a", "score": 2}\n')
    with pytest.raises(ValueError, match=r"sts\.jsonl, line 2, column 'sentence2': missing"):
        E.STSEvaluator.from_file(path)
    csv_path = tmp_path / "t.tsv"
    csv_path.write_text("anchor\tpositive\tnegative\na\tb\tc\nd\te\n")
    with pytest.raises(ValueError, match=r"t\.tsv, line 3: expected 3 fields"):
        E.TripletEvaluator.from_file(csv_path)
    with pytest.raises(ValueError, match=r"no test\.jsonl/\.csv/\.tsv/\.parquet for split 'test'; found \['sts\.jsonl', 't\.tsv'\]"):
        E.STSEvaluator.from_file(tmp_path)
    rr = tmp_path / "rr.jsonl"
    rr.write_text('{"query": "q", "positive": ["a"]}\n')
    with pytest.raises(ValueError, match=r"rr\.jsonl, line 1: .*exactly one of 'negative' and 'documents'"):
        E.CrossEncoderRerankingEvaluator.from_file(rr)


def test_unknown_task_and_similarity_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown --task 'nope'; expected one of retrieval, sts"):
        evaluate.main(["--task", "nope", "--data", str(tmp_path), "--model", "x"])
    with pytest.raises(ValueError, match="similarity_fn_names"):
        E.STSEvaluator(["a"], ["b"], [1.0], similarity_fn_names=["cosine", "jaccard"])


def test_plot_log_reads_curves(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1 / s, "lr": 2e-5, **({"eval_sts_spearman_cosine": 0.5 + s / 100} if s % 2 == 0 else {})}) + "\n"
                           for s in range(1, 7)))
    plot = tmp_path / "curves.png" if _has_matplotlib() else None
    out = evaluate.main(["--task", "plot_log", "--data", str(log)] + (["--plot", str(plot)] if plot else []))
    assert out == {"loss": pytest.approx(1 / 6), "eval_sts_spearman_cosine": pytest.approx(0.56)}
    if plot:
        assert plot.stat().st_size > 1000


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# 3. The real all-MiniLM-L6-v2: evaluate.py (minisbert) vs ST's evaluators (SentenceTransformer)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def st_model(minilm_path):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(minilm_path), device="cpu")


def _beir_subset(src: Path, dst: Path, n_queries: int, n_other: int, max_chars: int) -> Path:
    """The first `n_queries` test queries (qrels order), a corpus of their relevant documents plus the
    first `n_other` other documents, texts cut at `max_chars` characters: identical input for both
    libraries, small enough for 2 CPU cores."""
    qrels_lines = (src / "qrels" / "test.tsv").read_text().splitlines()[1:]
    qids = list(dict.fromkeys(line.split("\t")[0] for line in qrels_lines))[:n_queries]
    keep_lines = [line for line in qrels_lines if line.split("\t")[0] in qids]
    relevant = {line.split("\t")[1] for line in keep_lines}
    corpus = [json.loads(line) for line in (src / "corpus.jsonl").read_text().splitlines()]
    others = [r["_id"] for r in corpus if r["_id"] not in relevant][:n_other]
    keep = relevant | set(others)
    rows = [{**r, "text": r["text"][:max_chars]} for r in corpus if r["_id"] in keep]
    queries = [json.loads(line) for line in (src / "queries.jsonl").read_text().splitlines()]
    return _write_beir(dst, rows, [q for q in queries if q["_id"] in qids],
                       [tuple(line.split("\t")) for line in keep_lines])


def _st_ir_inputs(folder: Path):
    """Read a BEIR folder the way ST's IR example does, independently of minisbert's reader."""
    corpus = {}
    for line in (folder / "corpus.jsonl").read_text().splitlines():
        r = json.loads(line)
        corpus[r["_id"]] = (r.get("title", "") + " " + r["text"]).strip()
    queries = {(r := json.loads(line))["_id"]: r["text"] for line in (folder / "queries.jsonl").read_text().splitlines()}
    relevant: dict[str, set] = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, c, s = line.split("\t")
        if float(s) > 0:
            relevant.setdefault(q, set()).add(c)
    return queries, corpus, relevant


class _CachedST:
    """ST's model behind a per-text cache of full-width outputs, so ST's one-evaluator-per-dimension
    Matryoshka setup does not re-encode the corpus per dimension (its truncation is a slice)."""

    def __init__(self, model):
        self.model, self.cache = model, {}
        self.similarity_fn_name, self.similarity, self.model_card_data = model.similarity_fn_name, model.similarity, model.model_card_data

    def _encode(self, fn, texts, truncate_dim=None, prompt=None, prompt_name=None, **kwargs):
        key = lambda t: (fn, prompt, prompt_name, t)  # noqa: E731
        missing = [t for t in dict.fromkeys(texts) if key(t) not in self.cache]
        if missing:
            out = getattr(self.model, fn)(missing, prompt=prompt, prompt_name=prompt_name, batch_size=32, convert_to_tensor=True)
            self.cache.update({key(t): e for t, e in zip(missing, out)})
        return torch.stack([self.cache[key(t)] for t in texts])[:, :truncate_dim]

    def encode_query(self, texts, **kwargs):
        return self._encode("encode_query", texts, **kwargs)

    def encode_document(self, texts, **kwargs):
        return self._encode("encode_document", texts, **kwargs)


@pytest.mark.slow
def test_real_model_scifact_retrieval_with_matryoshka_equals_st(minilm_path, st_model, data_dir, tmp_path):
    ev = st_eval()
    from sentence_transformers.util import cos_sim, dot_score

    folder = _beir_subset(data_dir / "scifact", tmp_path / "scifact", n_queries=25, n_other=100, max_chars=300)
    out_json = tmp_path / "m.json"
    plot = ["--plot", str(tmp_path / "dims.png")] if _has_matplotlib() else []
    ours = evaluate.main(["--model", str(minilm_path), "--task", "retrieval", "--data", str(folder),
                          "--matryoshka_dims", "384,128", "--output", str(out_json)] + plot)
    assert json.loads(out_json.read_text()) == ours
    if plot:
        assert Path(plot[1]).stat().st_size > 1000
    queries, corpus, relevant = _st_ir_inputs(folder)
    cached, ref = _CachedST(st_model), {}
    for d in (384, 128):
        ref |= ev.InformationRetrievalEvaluator(queries, corpus, relevant, score_functions={"cosine": cos_sim, "dot": dot_score},
                                                name=f"dim_{d}", truncate_dim=d, write_csv=False)(cached)
    assert_same_metrics(ours, ref, atol=1e-6)
    assert 0.3 < ours["dim_384_cosine_ndcg@10"] < 1.0


@pytest.mark.slow
def test_real_model_cranfield_graded_retrieval_equals_st(minilm_path, st_model, data_dir, tmp_path):
    ev = st_eval()
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    folder = _beir_subset(data_dir / "cranfield", tmp_path / "cranfield", n_queries=20, n_other=100, max_chars=300)
    ours = evaluate.main(["--model", str(minilm_path), "--task", "retrieval", "--data", str(folder),
                          "--similarity_fn_names", "cosine"])
    queries, corpus, relevant = _st_ir_inputs(folder)
    cached = _CachedST(st_model)  # the reference below reuses ST's embeddings instead of encoding again
    st = ev.InformationRetrievalEvaluator(queries, corpus, relevant, write_csv=False)
    assert_same_metrics(ours, st(cached), atol=1e-6, extra_ok=("graded_ndcg",))
    # graded NDCG@10: sklearn over the whole (subset) corpus with ST's own embeddings as the reference
    grades: dict[str, dict[str, float]] = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, c, s = line.split("\t")
        grades.setdefault(q, {})[c] = float(s)
    ids = list(corpus)
    q_ids = [q for q in queries if q in grades]
    scores = st_model.similarity(cached.encode_query([queries[q] for q in q_ids]), cached.encode_document([corpus[c] for c in ids]))
    want = np.mean([sklearn_metrics.ndcg_score([[grades[q].get(c, 0) for c in ids]], [scores[i].numpy()], k=10)
                    for i, q in enumerate(q_ids)])
    assert ours["cosine_graded_ndcg@10"] == pytest.approx(want, abs=1e-6)


def _first_rows(src: Path, dst: Path, n: int) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return dst


@pytest.mark.slow
def test_real_model_sts_and_triplet_equal_st(minilm_path, st_model, data_dir, tmp_path):
    """STSb test (first 600 pairs) and nli-triplets dev (first 200 triplets), all four similarities.

    minisbert's and ST's embeddings differ by ~1e-7 (ST's depend on batch composition). STSb test holds
    a pair in both orders ("A man is dancing." / "A woman is exercising."): its two cosines tie exactly
    in minisbert, and differ by one float32 step in ST when the sentences sit in different batches,
    which moves Spearman by ~3e-6 on 300 pairs (by 6e-8 on all 1379; 0 on these 600). A failure of
    that size here means encode's numerics moved, not the metric code (pinned above on fake encoders).
    """
    ev = st_eval()
    sts = _first_rows(data_dir / "stsb" / "test.jsonl", tmp_path / "stsb" / "test.jsonl", 600)
    ours = evaluate.main(["--model", str(minilm_path), "--task", "sts", "--data", str(sts.parent), "--name", "stsb"])
    rows = [json.loads(line) for line in sts.read_text().splitlines()]
    ref = ev.EmbeddingSimilarityEvaluator([r["sentence1"] for r in rows], [r["sentence2"] for r in rows],
                                          [r["score"] for r in rows], similarity_fn_names=FNS, name="stsb", write_csv=False)
    assert_same_metrics(ours, ref(st_model), atol=1e-6)

    trip = _first_rows(data_dir / "nli-triplets" / "dev.jsonl", tmp_path / "nli" / "dev.jsonl", 200)
    ours = evaluate.main(["--model", str(minilm_path), "--task", "triplet", "--data", str(trip.parent), "--split", "dev"])
    rows = [json.loads(line) for line in trip.read_text().splitlines()]
    ref = ev.TripletEvaluator([r["anchor"] for r in rows], [r["positive"] for r in rows], [r["negative"] for r in rows],
                              similarity_fn_names=FNS, write_csv=False)
    assert_same_metrics(ours, ref(st_model), atol=1e-6)


@pytest.mark.slow
def test_real_model_trecqa_bi_encoder_reranking_equals_st(minilm_path, st_model, data_dir, tmp_path):
    """TrecQA test, first 15 queries, ranked by MiniLM cosine similarity (the folder is no cross-encoder)."""
    ev = st_eval()
    path = _first_rows(data_dir / "trecqa-rerank" / "test.jsonl", tmp_path / "trecqa.jsonl", 15)
    ours = evaluate.main(["--model", str(minilm_path), "--task", "rerank", "--data", str(path)])
    samples = [json.loads(line) for line in path.read_text().splitlines()]
    assert_same_metrics(ours, ev.RerankingEvaluator(samples, write_csv=False)(st_model), atol=1e-6)


@pytest.fixture(scope="session")
def tiny_cross_encoder(minilm_path, tmp_path_factory) -> Path:
    """A random 2-layer BertForSequenceClassification (num_labels=1) with MiniLM's tokenizer."""
    import transformers as tf

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_ce")
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_path)
    config = tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=512, num_labels=1)
    tf.BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_real_cross_encoder_trecqa_reranking_equals_st(tiny_cross_encoder, data_dir, tmp_path):
    st = pytest.importorskip("sentence_transformers", minversion="6.3")  # 6.3 counts missed positives
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator as STCE

    test = data_dir / "trecqa-rerank" / "test.jsonl"
    ours = evaluate.main(["--model", str(tiny_cross_encoder), "--task", "rerank", "--data", str(test), "--name", "trecqa"])
    st_ce = st.CrossEncoder(str(tiny_cross_encoder), device="cpu")
    samples = E.read_rerank_samples(test)
    assert_same_metrics(ours, STCE(samples, name="trecqa", write_csv=False)(st_ce), atol=1e-6)
    # a first-stage list missing some positives: base_* metrics, with and without reranking the positives
    rng = random.Random(0)
    documents = []
    for s in samples[:30]:
        docs = s["negative"] + s["positive"][1:]
        rng.shuffle(docs)
        documents.append({"query": s["query"], "positive": s["positive"], "documents": docs})
    ours_ce = evaluate.load_model(str(tiny_cross_encoder), True)
    for always in (True, False):
        got = E.CrossEncoderRerankingEvaluator(documents, always_rerank_positives=always)(ours_ce)
        assert_same_metrics(got, STCE(documents, always_rerank_positives=always, write_csv=False)(st_ce), atol=1e-6)


@pytest.mark.slow
def test_real_model_classification_and_clustering_run(minilm_path, data_dir, tmp_path):
    """nli-triplets premises labelled snli-dev / mnli-dev-matched: a probe on MiniLM tells them apart."""
    folder = tmp_path / "nli"
    for split, n in (("train", 300), ("dev", 150)):
        rows = [json.loads(line) for line in (data_dir / "nli-triplets" / f"{split}.jsonl").read_text().splitlines()]
        random.Random(0).shuffle(rows)
        (folder).mkdir(exist_ok=True)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    out = evaluate.main(["--model", str(minilm_path), "--task", "classification", "--data", str(folder), "--split", "dev"])
    assert set(out) == {"accuracy", "f1_macro"} and out["accuracy"] > 0.7
    out = evaluate.main(["--model", str(minilm_path), "--task", "clustering", "--data", str(folder), "--split", "dev"])
    assert set(out) == {"v_measure"} and 0.0 <= out["v_measure"] <= 1.0
