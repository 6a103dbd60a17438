"""minisbert: sentence-transformers' bi-encoders, cross-encoders, losses, training and evaluation
in plain PyTorch.

    from minisbert import BiEncoder, CrossEncoder
    model = BiEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    embeddings = model.encode(["a sentence", "another one"])

Names are imported lazily, so `import minisbert` stays cheap (torch and transformers load on
first use).
"""

__version__ = "0.1.0"

_LAZY = {
    "BiEncoder": "bi_encoder",
    "Dense": "bi_encoder",
    "CrossEncoder": "cross_encoder",
    "ModelLoadError": "checkpoint",
    "pool": "pooling",
    "similarity": "similarity",
    "encode_file": "streaming",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'minisbert' has no attribute {name!r}")
