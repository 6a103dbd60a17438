"""README.md model cards: YAML front matter the Hub understands, then how to load the model.

Loading never depends on the card (spec section 8); it only needs valid YAML with
`library_name: sentence-transformers` and a `pipeline_tag`.
"""

from __future__ import annotations

import json


def _front_matter(tags: list[str], pipeline_tag: str, base_model: str | None) -> str:
    lines = ["---", "tags:"] + [f"- {t}" for t in tags]
    if base_model:
        lines.append(f"base_model: {base_model}")
    lines += [f"pipeline_tag: {pipeline_tag}", "library_name: sentence-transformers", "---", ""]
    return "\n".join(lines)


def _training_section(training: dict | None) -> str:
    if not training:
        return ""
    parts = ["## Training", ""]
    if training.get("losses"):
        parts.append("Losses: " + ", ".join(f"`{x}`" for x in training["losses"]))
    if training.get("data"):
        parts.append("")
        parts.append("| dataset | rows |\n|---|---|")
        parts += [f"| {name} | {n} |" for name, n in training["data"].items()]
    if training.get("metrics"):
        parts += ["", "### Final metrics", "", "| metric | value |", "|---|---|"]
        parts += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in training["metrics"].items()]
    if training.get("config"):
        parts += ["", "### Full training configuration", "", "```json", json.dumps(training["config"], indent=2, default=str), "```"]
    return "\n".join(parts) + "\n\n"


def bi_encoder_card(model, training: dict | None = None) -> str:
    base = (training or {}).get("base_model") or getattr(model, "name_or_path", None)
    tags = ["sentence-transformers", "sentence-similarity", "feature-extraction", "minisbert"]
    tags += [f"loss:{x}" for x in (training or {}).get("losses", [])]
    return (
        _front_matter(tags, "sentence-similarity", base)
        + "# minisbert bi-encoder\n\n"
        + f"- Base model: {base}\n- Maximum sequence length: {model.max_length} tokens\n"
        + f"- Output dimensionality: {model.embedding_dim}\n- Pooling: {', '.join(model.pooling)}\n"
        + f"- Normalized: {model.normalize}\n- Similarity function: {model.similarity_fn_name}\n\n"
        + _training_section(training)
        + "## Usage\n\n```python\nfrom minisbert import BiEncoder\n\nmodel = BiEncoder.from_pretrained(\"PATH\")\n"
        + "embeddings = model.encode([\"first sentence\", \"second sentence\"])\n"
        + "print(model.similarity(embeddings, embeddings))\n```\n\n"
        + "With sentence-transformers (any version from 2.4):\n\n```python\n"
        + "from sentence_transformers import SentenceTransformer\n\nmodel = SentenceTransformer(\"PATH\")\n```\n"
    )


def cross_encoder_card(model, training: dict | None = None) -> str:
    base = (training or {}).get("base_model") or getattr(model, "name_or_path", None)
    tags = ["sentence-transformers", "cross-encoder", "reranker", "minisbert"]
    tags += [f"loss:{x}" for x in (training or {}).get("losses", [])]
    pipeline = "text-ranking" if model.num_labels == 1 else "text-classification"
    return (
        _front_matter(tags, pipeline, base)
        + "# minisbert cross-encoder\n\n"
        + f"- Base model: {base}\n- Maximum sequence length: {model.max_length} tokens\n"
        + f"- Labels: {model.num_labels}\n- Activation: {model.activation_fn_name}\n\n"
        + _training_section(training)
        + "## Usage\n\n```python\nfrom minisbert import CrossEncoder\n\nmodel = CrossEncoder.from_pretrained(\"PATH\")\n"
        + "scores = model.predict([(\"a query\", \"a passage\")])\n"
        + "ranked = model.rank(\"a query\", [\"passage one\", \"passage two\"])\n```\n\n"
        + "With sentence-transformers:\n\n```python\n"
        + "from sentence_transformers import CrossEncoder\n\nmodel = CrossEncoder(\"PATH\")\n```\n"
    )
