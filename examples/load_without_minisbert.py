"""Read a minisbert (or sentence-transformers) folder with safetensors + json alone, no minisbert import.

    python examples/load_without_minisbert.py MODEL_FOLDER "a sentence to embed"

The folder is plain files: modules.json lists the pipeline, 1_Pooling/config.json says how to
pool, model.safetensors holds the backbone's tensors under transformers' names, and
tokenizer.json is a `tokenizers` tokenizer. transformers is used only for the backbone's
architecture (built from config.json, filled with load_file's tensors). Prints the embedding as
a JSON list on the last line.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModel

folder, text = Path(sys.argv[1]), sys.argv[2]
modules = json.loads((folder / "modules.json").read_text())
kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
pool_cfg = json.loads((folder / "1_Pooling" / "config.json").read_text())
max_len = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]

state = load_file(folder / "model.safetensors")  # {transformers parameter name: tensor}
backbone = AutoModel.from_config(AutoConfig.from_pretrained(folder))
missing, unexpected = backbone.load_state_dict(state, strict=False)
assert not [k for k in missing if "position_ids" not in k], missing
backbone.eval()

tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
tokenizer.enable_truncation(max_len)
enc = tokenizer.encode(text)
ids = torch.tensor([enc.ids])
mask = torch.tensor([enc.attention_mask])
with torch.no_grad():
    hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state  # (1, L, H)
if pool_cfg.get("pooling_mode_cls_token"):
    emb = hidden[:, 0]
else:  # mean over attended tokens
    emb = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
if "Normalize" in kinds:
    emb = torch.nn.functional.normalize(emb, dim=-1)
print(json.dumps(emb[0].tolist()))
