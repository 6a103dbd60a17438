"""Reliability sweep: bad input gets one message for people and writes nothing; long inputs, full disks,
NaN losses and fuzzed files never end in a traceback; a streamed encode equals encode().

* `BAD_INPUTS`: a table of bad inputs across every entry point (train.main, train.py in-process and as
  a real subprocess, evaluate.main, BiEncoder.from_pretrained, encode, CrossEncoder.predict,
  load_dataset, encode_file). Each row names the exception type and a regex of the message (which
  must name the file / line / column / flag), and the run checks that nothing was written: the
  output path does not exist and every input folder is byte-for-byte as before.
* Inputs that are NOT errors: a 100k-character text trains and encodes (truncated, reported once); a
  row with an empty string in every column trains (ST allows empty texts; only a column empty in
  EVERY row is refused, as a wrong column).
* A full disk (ENOSPC) during the second checkpoint: SaveError naming both checkpoints, the first
  intact, nothing half-written, and `--resume latest` then finishes exactly as an uninterrupted run.
* A NaN gradient stops the run naming the step (the NaN loss is pinned in test_train_e2e.py).
* hypothesis: arbitrary bytes and arbitrary JSON rows into the training and evaluation readers (with
  column selection) give data or the documented ValueError/DataError, never another exception.
* minisbert.streaming.encode_file: equal to encode() of all lines, O(chunk) batches, atomic output.

The crash-and-resume (SIGKILL) tests are in test_crash_resume.py.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402
import train  # noqa: E402
from train import TrainConfig  # noqa: E402

from minisbert import BiEncoder, CrossEncoder, ModelLoadError, checkpoint, evaluation  # noqa: E402
from minisbert.data import DataError, load_dataset  # noqa: E402
from minisbert.streaming import encode_file  # noqa: E402
from minisbert.errors import ConfigError, NonFiniteLoss, SaveError  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
TRACEBACK = "Traceback (most recent call last)"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, as the subprocesses run


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# the inputs: one tiny model, broken copies of it, good and bad data files, and a finished run


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import tiny_models

    root = tmp_path_factory.mktemp("world")
    model = tiny_models.build("bert", root / "models" / "tiny")
    ce = tiny_models.build("bert", root / "models" / "tiny-ce", classifier=True)
    m = SimpleNamespace(model=model, ce=ce)

    def broken(name, fix):
        folder = root / "models" / name
        shutil.copytree(model, folder)
        fix(folder)
        setattr(m, name, folder)

    def no_tokenizer(f):
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            (f / name).unlink(missing_ok=True)

    def truncate_weights(f):
        data = (f / "model.safetensors").read_bytes()
        (f / "model.safetensors").write_bytes(data[: len(data) // 2])

    def wrong_hidden(f):
        config = json.loads((f / "config.json").read_text())
        (f / "config.json").write_text(json.dumps(config | {"hidden_size": 48}))

    def st_folder_with(pooling_config):
        def fix(f):
            BiEncoder.from_pretrained(model, device="cpu").save_pretrained(f)
            (f / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
        return fix

    broken("no_tokenizer", no_tokenizer)
    broken("truncated", truncate_weights)
    broken("wrong_hidden", wrong_hidden)
    broken("no_weights", lambda f: (f / "model.safetensors").unlink())
    broken("median_pooling", st_folder_with({"embedding_dimension": 32, "pooling_mode": "median"}))
    broken("pooling_dim", st_folder_with({"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True}))
    broken("evil_module", st_folder_with({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    modules = json.loads((m.evil_module / "modules.json").read_text())
    (m.evil_module / "modules.json").write_text(json.dumps(modules + [{"idx": 2, "name": "2", "path": "", "type": "evil_package.Backdoor"}]))
    broken("pickle_only", lambda f: (torch.save(load_file(f / "model.safetensors"), f / "pytorch_model.bin"),
                                     (f / "model.safetensors").unlink()))

    rows = [json.loads(line) for line in (ROOT / "tests" / "data" / "stsb_test_500.jsonl").read_text().splitlines()]
    close = [r for r in rows if r["score"] >= 0.7][:24]
    far = [r for r in rows if r["score"] <= 0.3][:24]
    triplets = [{"anchor": a["sentence1"], "positive": a["sentence2"], "negative": b["sentence2"]} for a, b in zip(close, far)]
    data = root / "data"
    data.mkdir()
    bad_text = lambda value: [triplets[0], {**triplets[1], "positive": value}]  # noqa: E731
    d = SimpleNamespace(
        triplets=_jsonl(data / "triplets.jsonl", triplets),
        pairs=_jsonl(data / "pairs.jsonl", [{"anchor": t["anchor"], "positive": t["positive"]} for t in triplets]),
        scored=_jsonl(data / "scored.jsonl", [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "score": r["score"]}
                                              for r in rows[:24]]),
        text_none=_jsonl(data / "text_none.jsonl", bad_text(None)),
        text_number=_jsonl(data / "text_number.jsonl", bad_text(7)),
        text_list=_jsonl(data / "text_list.jsonl", bad_text(["a", "b"])),
        all_empty=_jsonl(data / "all_empty.jsonl", [{**t, "positive": ""} for t in triplets]),
        classes=_jsonl(data / "classes.jsonl", [{"sentence1": "a", "sentence2": "b", "label": "entailment"},
                                                {"sentence1": "c", "sentence2": "d", "label": "neutral"}]),
        bce_range=_jsonl(data / "bce_range.jsonl", [{"query": "a", "document": "b", "label": 1},
                                                    {"query": "c", "document": "d", "label": 3}]),
        listy=_jsonl(data / "listy.jsonl", [[1, 2]]),
        rerank_bad=_jsonl(data / "rerank_bad.jsonl", [{"query": "q", "positive": ["a"], "negative": ["b"]},
                                                      {"query": 5, "positive": ["a"], "negative": ["b"]}]),
        rerank_no_negative=_jsonl(data / "rerank_no_negative.jsonl", [{"query": "q", "positive": ["a"]}]),
        folder=data,
    )
    lines = {
        "malformed.jsonl": json.dumps(triplets[0]) + "\n" + json.dumps(triplets[1]) + '\n{"anchor": "a", "positive": \n',
        "empty.jsonl": "",
        "blank.jsonl": "\n  \n\n",
        "header_only.csv": "anchor,positive\n",
        "missing_column.csv": "anchor,positive\n" + "".join(f'"{t["anchor"]}","{t["positive"]}"\n' for t in triplets[:4]),
        "short_row.csv": "anchor,positive,negative\na,b,c\nd,e\nf,g,h\n",
        "label_text.jsonl": '{"sentence1": "a", "sentence2": "b", "score": 0.5}\n{"sentence1": "c", "sentence2": "d", "score": "high"}\n',
        "label_nan.jsonl": '{"sentence1": "a", "sentence2": "b", "score": 0.5}\n{"sentence1": "c", "sentence2": "d", "score": NaN}\n',
        "label_inf.csv": "sentence1,sentence2,score\na,b,0.5\nc,d,inf\n",
        "unknown.txt": "a\nb\n",
        "config_broken.json": '{"loss": "mnrl",\n "batch_size": }\n',
        "config_unknown.json": '{"loss": "mnrl", "epochs": 3}\n',
        "lines_latin1.txt": None,
        "sts_latin1.jsonl": None,
    }
    for name, text in lines.items():
        if text is not None:
            (data / name).write_text(text, encoding="utf-8")
        setattr(d, name.rsplit(".", 1)[0], data / name)
    (data / "latin1.jsonl").write_bytes(json.dumps(triplets[0]).encode() + b'\n{"anchor": "caf\xe9", "positive": "b", "negative": "c"}\n')
    d.latin1 = data / "latin1.jsonl"
    (data / "sts_latin1.jsonl").write_bytes(b'{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "\xff", "sentence2": "b", "score": 1}\n')
    (data / "lines_latin1.txt").write_bytes(b"fine\nalso fine\nna\xefve\n")
    d.lines = data / "lines.txt"
    d.lines.write_text("one\ntwo\nthree\n", encoding="utf-8")

    beir = data / "beir"
    (beir / "qrels").mkdir(parents=True)
    _jsonl(beir / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": t["positive"]} for i, t in enumerate(triplets)])
    _jsonl(beir / "queries.jsonl", [{"_id": f"q{i}", "text": t["anchor"]} for i, t in enumerate(triplets)])
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td99\t1\n")
    d.beir = beir
    d.readonly_file = data / "a_file"
    d.readonly_file.write_text("not a folder\n")

    # a finished 2-step mnrl run with its checkpoint, to resume (wrongly) from
    run = root / "run"
    train.main(TrainConfig(model=str(model), data=str(d.triplets), output_dir=str(run), eval_data=[], batch_size=8,
                           max_steps=2, save_steps=2, logging_steps=1, disable_tqdm=True))
    broken_state = root / "broken-state"
    shutil.copytree(run, broken_state)
    state = broken_state / "checkpoint-2" / checkpoint.RUN_STATE_FILE
    state.write_bytes(state.read_bytes()[:100])
    return SimpleNamespace(root=root, m=m, d=d, run=run, broken_state=broken_state)


# ----------------------------------------------------------------------------------------------
# the table


@dataclass
class Bad:
    entry: str  # train | cli | subprocess | evaluate | evaluate_cli | from_pretrained | encode | predict | load_dataset | encode_file
    args: object  # TrainConfig overrides | argv | (path, kwargs) | kwargs, with {placeholders}
    error: type  # the exception type (SystemExit code for the CLIs: 2)
    message: str  # regex the message must match (it names the file / line / column / flag)


BASE = dict(model="{m.model}", data="{d.triplets}", output_dir="{out}", eval_data=[], batch_size=8, max_steps=2,
            logging_steps=1, save_steps=0, disable_tqdm=True)
CLI = ["--model", "{m.model}", "--data", "{d.triplets}", "--output_dir", "{out}", "--eval_data", "none", "--batch_size", "8",
       "--max_steps", "2", "--disable_tqdm"]

BAD_INPUTS = {
    # ---- training data, through train.main(TrainConfig(...))
    "malformed jsonl line": Bad("train", dict(data="{d.malformed}"),
                                DataError, r"malformed\.jsonl, line 3: not valid JSON \(Expecting value"),
    "csv missing a column": Bad("train", dict(data="{d.missing_column}", columns=["anchor", "positive", "negative"]), DataError,
                                r"missing_column\.csv, line 1 \(header\): no column 'negative'; the columns are \['anchor', 'positive'\]"),
    "csv row with too few fields": Bad("train", dict(data="{d.short_row}"),
                                       DataError, r"short_row\.csv, line 3: expected 3 fields .*got 2"),
    "non-UTF-8 bytes": Bad("train", dict(data="{d.latin1}"),
                           DataError, r"latin1\.jsonl, line 2: not valid UTF-8 \(byte 0xe9 .*save the file as UTF-8"),
    "empty file": Bad("train", dict(data="{d.empty}"), DataError, r"empty\.jsonl: the file has no rows$"),
    "only blank lines": Bad("train", dict(data="{d.blank}"), DataError, r"blank\.jsonl: the file has no rows$"),
    "csv with only a header": Bad("train", dict(data="{d.header_only}"),
                                  DataError, r"header_only\.csv: the file has no rows \(only a header\)"),
    "label that is not a number": Bad("train", dict(data="{d.label_text}", loss="cosent", batch_size=1), DataError,
                                      r"label_text\.jsonl, line 2, column 'score': expected a number as label, got 'high'; pass label_map"),
    "NaN label": Bad("train", dict(data="{d.label_nan}", loss="cosent", batch_size=1), DataError,
                     r"label_nan\.jsonl, line 2, column 'score': label is nan; expected a finite number"),
    "inf label in a csv": Bad("train", dict(data="{d.label_inf}", loss="cosent", batch_size=1), DataError,
                              r"label_inf\.csv, line 3, column 'score': label is inf"),
    "class label not in label_map": Bad("train", dict(data="{d.classes}", loss="cosent", batch_size=1, label_map={"entailment": 1}),
                                        DataError, r"classes\.jsonl, line 2, column 'label': label 'neutral' is not in label_map"),
    "text that is None": Bad("train", dict(data="{d.text_none}", batch_size=1), DataError,
                             r"text_none\.jsonl, line 2, column 'positive': expected text \(a string\), got null"),
    "text that is a number": Bad("train", dict(data="{d.text_number}", batch_size=1), DataError,
                                 r"text_number\.jsonl, line 2, column 'positive': expected text \(a string\), got the number 7"),
    "text that is a list": Bad("train", dict(data="{d.text_list}", batch_size=1),
                               DataError, r"text_list\.jsonl, line 2, column 'positive': .*got a list"),
    "a column empty in every row": Bad("train", dict(data="{d.all_empty}"), DataError,
                                       r"all_empty\.jsonl, column 'positive': empty in all 24 rows; is it the right column\?"),
    "a line that is not an object": Bad("train", dict(data="{d.listy}"),
                                        DataError, r"listy\.jsonl, line 1: expected a JSON object \{\.\.\.\}, got a list"),
    "unknown file type": Bad("train", dict(data="{d.unknown}"),
                             DataError, r"unknown\.txt: unknown file type '\.txt'; expected \.jsonl, \.csv"),
    "data is a folder": Bad("train", dict(data="{d.folder}"), DataError, r"data: not a file"),
    "bce label outside [0, 1]": Bad("train", dict(data="{d.bce_range}", loss="bce", batch_size=1), ConfigError,
                                    r"bce_range\.jsonl, row 2: bce labels must be in \[0, 1\], got 3\.0"),
    "loss that needs other columns": Bad("train", dict(data="{d.pairs}", loss="triplet"), ConfigError,
                                         r"pairs\.jsonl \(columns \['anchor', 'positive'\]\): --loss triplet needs exactly anchor, positive, negative"),
    # ---- models, through train.main
    "model folder missing tokenizer files": Bad("train", dict(model="{m.no_tokenizer}"), ModelLoadError,
                                                r"no_tokenizer has no tokenizer files: expected one of tokenizer\.json"),
    "truncated model.safetensors": Bad("train", dict(model="{m.truncated}"), ModelLoadError,
                                       r"truncated/model\.safetensors is not a complete safetensors file .*truncated or corrupted"),
    "config.json with a wrong hidden size": Bad("train", dict(model="{m.wrong_hidden}"), ModelLoadError,
                                                r"could not load the transformers model in .*wrong_hidden.*check that config\.json matches the weights"),
    "model folder that does not exist": Bad("train", dict(model="{tmp}/no/such/model"),
                                            ModelLoadError, r"model folder .*no/such/model does not exist"),
    "matryoshka dims larger than the model": Bad("train", dict(loss="matryoshka", matryoshka_dims=[64, 32]), ConfigError,
                                                 r"--matryoshka_dims \[64\] exceed the model's embedding width 32"),
    # ---- flags and settings
    "mini-batch larger than the batch": Bad("train", dict(loss="cached_mnrl", mini_batch_size=16), ConfigError,
                                            r"--mini_batch_size 16 is larger than --batch_size 8"),
    "negative learning rate": Bad("train", dict(learning_rate=-1e-5), ConfigError, r"--learning_rate must be > 0, got -1e-05"),
    "zero batch size": Bad("train", dict(batch_size=0), ConfigError, r"--batch_size must be > 0, got 0"),
    "warmup ratio above 1": Bad("train", dict(warmup_ratio=1.5), ConfigError, r"--warmup_ratio must be in \[0, 1\), got 1\.5"),
    "unknown loss": Bad("train", dict(loss="contrastive"), ConfigError, r"--loss 'contrastive' is unknown; expected one of mnrl"),
    "unknown dataset key": Bad("train", dict(data=None, datasets=[{"path": "{d.triplets}", "colums": ["anchor"]}]), ConfigError,
                               r"--datasets\[0\] has unknown key\(s\) \['colums'\]"),
    "eval data that does not exist": Bad("train", dict(eval_data=["dev={tmp}/nope.jsonl"]),
                                         ConfigError, r"--eval_data dev=.*nope\.jsonl does not exist"),
    "qrels naming unknown ids (train --eval_data)": Bad("train", dict(eval_data=["{d.beir}"]), ValueError,
                                                        r"beir/qrels/test\.tsv, line 3, column 'corpus-id': 'd99' is not in corpus\.jsonl"),
    "output_dir that is a file": Bad("train", dict(output_dir="{d.readonly_file}"),
                                     ConfigError, r"--output_dir .*a_file exists and is a file, not a folder"),
    "read-only output_dir": Bad("train", dict(output_dir="{ro}/run"),
                                ConfigError, r"--output_dir .*/run: .* is not writable \(Permission denied\); pick another"),
    "output_dir inside a file": Bad("train", dict(output_dir="{d.readonly_file}/run"),
                                    ConfigError, r"--output_dir .*a_file/run: .*a_file is not writable"),
    "resume from a run with another loss": Bad("train", dict(output_dir="{run}", resume="latest", loss="triplet"), ConfigError,
                                               r"--resume .*checkpoint-2: that checkpoint was trained with --loss mnrl, this run asks for triplet; "
                                               r"resume with the run's own settings \(--config .*train_config\.json\)"),
    "resume from a run of another model": Bad("train", dict(output_dir="{run}", resume="latest", model="{m.ce}"), ConfigError,
                                              r"--resume .*checkpoint-2: that checkpoint continues a run of --model .*tiny, not .*tiny-ce"),
    "resume with another model type": Bad("train", dict(output_dir="{run}", resume="latest", loss="bce", data="{d.bce_range}"), ConfigError,
                                          r"that checkpoint was trained with --loss mnrl, this run asks for bce"),
    "resume latest without checkpoints": Bad("train", dict(resume="latest"),
                                             ConfigError, r"--resume latest: .*out has no complete checkpoint-<step> folder"),
    "resume from a truncated state file": Bad("train", dict(output_dir="{tmp}/state-copy", resume="{broken_state}/checkpoint-2"), ConfigError,
                                              r"--resume .*checkpoint-2: cannot read training_state\.pt"),
    "new run into a finished run's folder": Bad("train", dict(output_dir="{run}"),
                                                ConfigError, r"--output_dir .*run already holds a run; pass --resume latest"),
    # ---- train.py's command line (in-process: train.cli(argv) returns the exit code)
    "unknown flag": Bad("cli", CLI + ["--lerning_rate", "1e-5"], SystemExit, r"unrecognized arguments: --lerning_rate 1e-5"),
    "flag value of the wrong type": Bad("cli", CLI + ["--batch_size", "big"],
                                        SystemExit, r"argument --batch_size: invalid int value: 'big'"),
    "--config that is not JSON": Bad("cli", ["--config", "{d.config_broken}"],
                                     SystemExit, r"^error: --config .*config_broken\.json: not valid JSON \(Expecting value, line 2\)"),
    "--config with an unknown field": Bad("cli", ["--config", "{d.config_unknown}"],
                                          SystemExit, r"^error: --config .*config_unknown\.json: unknown field\(s\) \['epochs'\]"),
    "--prompts that is broken JSON": Bad("cli", CLI + ["--prompts", '{{"anchor": '],
                                         SystemExit, r"argument --prompts: not valid JSON"),
    "cli: malformed jsonl": Bad("cli", CLI + ["--data", "{d.malformed}"],
                                SystemExit, r"^error: .*malformed\.jsonl, line 3: not valid JSON"),
    # ---- train.py as a real process: exit 2, the message on stderr, no traceback
    "process: unknown flag": Bad("subprocess", CLI + ["--epochs", "3"], SystemExit, r"unrecognized arguments: --epochs 3"),
    "process: non-UTF-8 data": Bad("subprocess", CLI + ["--data", "{d.latin1}"],
                                   SystemExit, r"^error: .*latin1\.jsonl, line 2: not valid UTF-8"),
    "process: truncated weights": Bad("subprocess", CLI + ["--model", "{m.truncated}"],
                                      SystemExit, r"^error: .*model\.safetensors is not a complete safetensors file"),
    "process: resume with another loss": Bad("subprocess", CLI + ["--output_dir", "{run}", "--resume", "latest", "--loss", "triplet"], SystemExit,
                                             r"^error: --resume .*trained with --loss mnrl, this run asks for triplet"),
    # ---- evaluate.py
    "evaluate: qrels naming unknown ids": Bad("evaluate", ["--model", "{m.model}", "--task", "retrieval", "--data", "{d.beir}"], ValueError,
                                              r"beir/qrels/test\.tsv, line 3, column 'corpus-id': 'd99' is not in corpus\.jsonl"),
    "evaluate: rerank query that is not text": Bad("evaluate", ["--model", "{m.model}", "--task", "rerank", "--data", "{d.rerank_bad}"], ValueError,
                                                   r"rerank_bad\.jsonl, line 2, column 'query': expected text \(a string\), got the number 5"),
    "evaluate: rerank sample without negatives": Bad("evaluate", ["--model", "{m.model}", "--task", "rerank", "--data", "{d.rerank_no_negative}"],
                                                     ValueError, r"rerank_no_negative\.jsonl, line 1: .*exactly one of 'negative' and 'documents'"),
    "evaluate: non-UTF-8 STS file": Bad("evaluate", ["--model", "{m.model}", "--task", "sts", "--data", "{d.sts_latin1}"], DataError,
                                        r"sts_latin1\.jsonl, line 2: not valid UTF-8 \(byte 0xff"),
    "evaluate: model missing tokenizer files": Bad("evaluate", ["--model", "{m.no_tokenizer}", "--task", "triplet", "--data", "{d.triplets}"],
                                                   ModelLoadError, r"no_tokenizer has no tokenizer files"),
    "evaluate: unknown task": Bad("evaluate", ["--model", "{m.model}", "--task", "nope", "--data", "{d.triplets}"], ValueError,
                                  r"unknown --task 'nope'; expected one of retrieval"),
    "evaluate: bad matryoshka dims": Bad("evaluate", ["--model", "{m.model}", "--task", "sts", "--data", "{d.scored}", "--matryoshka_dims", "32,x"],
                                         ValueError, r"--matryoshka_dims '32,x': expected comma-separated integers"),
    "evaluate process: qrels naming unknown ids": Bad("evaluate_cli", ["--model", "{m.model}", "--task", "retrieval", "--data", "{d.beir}"],
                                                      SystemExit, r"^error: .*test\.tsv, line 3, column 'corpus-id': 'd99' is not in corpus\.jsonl"),
    # ---- loading models
    "load: missing tokenizer files": Bad("from_pretrained", ("{m.no_tokenizer}", {}),
                                         ModelLoadError, r"no_tokenizer has no tokenizer files"),
    "load: truncated model.safetensors": Bad("from_pretrained", ("{m.truncated}", {}),
                                             ModelLoadError, r"model\.safetensors is not a complete safetensors file"),
    "load: wrong hidden size": Bad("from_pretrained", ("{m.wrong_hidden}", {}),
                                   ModelLoadError, r"wrong_hidden: .*check that config\.json matches"),
    "load: no weights": Bad("from_pretrained", ("{m.no_weights}", {}),
                            ModelLoadError, r"no_weights has no weights: expected model\.safetensors"),
    "load: pickle weights": Bad("from_pretrained", ("{m.pickle_only}", {}),
                                ModelLoadError, r"pickle_only has only pickle weights \(pytorch_model\.bin\).*allow_pickle=True"),
    "load: unknown pooling mode in the folder": Bad("from_pretrained", ("{m.median_pooling}", {}), ModelLoadError,
                                                    r"median_pooling/1_Pooling/config\.json: unknown pooling mode \['median'\]"),
    "load: pooling width not the model's": Bad("from_pretrained", ("{m.pooling_dim}", {}), ModelLoadError,
                                               r"pooling_dim: the pooling config says embedding dimension 64, but the backbone .* hidden_size 32"),
    "load: unknown pooling mode argument": Bad("from_pretrained", ("{m.model}", {"pooling": "median"}),
                                               ValueError, r"unknown pooling mode \['median'\]"),
    "load: a module type minisbert does not know": Bad("from_pretrained", ("{m.evil_module}", {}), ModelLoadError,
                                                       r"evil_module/modules\.json names module type 'evil_package\.Backdoor', which "
                                                       r"minisbert does not support"),
    # ---- encode / predict
    "encode: None among the texts": Bad("encode", dict(texts=["ok", None]),
                                        TypeError, r"texts\[1\] is NoneType None; expected a string"),
    "encode: a number among the texts": Bad("encode", dict(texts=["ok", 3.5]),
                                            TypeError, r"texts\[1\] is float 3\.5; expected a string"),
    "encode: truncate_dim 0": Bad("encode", dict(texts=["a"], truncate_dim=0), ValueError, r"truncate_dim must be >= 1, got 0"),
    "encode: unknown prompt name": Bad("encode", dict(texts=["a"], prompt_name="query"),
                                       ValueError, r"prompt_name 'query' is not one of this model's prompts \[\]"),
    "encode: batch size 0": Bad("encode", dict(texts=["a"], batch_size=0), ValueError, r"batch_size must be >= 1, got 0"),
    "predict: a pair with None": Bad("predict", dict(pairs=[("q", "d"), ("q", None)]), TypeError, r"pairs\[1\]"),
    # ---- load_dataset directly
    "load_dataset: limit 0": Bad("load_dataset", ("{d.triplets}", {"limit": 0}),
                                 DataError, r"triplets\.jsonl: limit must be a positive integer, got 0"),
    "load_dataset: label column absent": Bad("load_dataset", ("{d.missing_column}", {"label_column": "score"}), DataError,
                                             r"missing_column\.csv, line 1 \(header\): no label column 'score'"),
    "load_dataset: text column repeated": Bad("load_dataset", ("{d.triplets}", {"columns": ["anchor", "anchor"]}), DataError,
                                              r"triplets\.jsonl: columns repeats a name: \['anchor', 'anchor'\]"),
    "load_dataset: missing file": Bad("load_dataset", ("{tmp}/nope.csv", {}), DataError, r"nope\.csv: file not found"),
    # ---- encode_file (streaming)
    "encode_file: non-UTF-8 line": Bad("encode_file", dict(path="{d.lines_latin1}"),
                                       ValueError, r"lines_latin1\.txt, line 3: not valid UTF-8 \(byte 0xef at byte 3"),
    "encode_file: empty file": Bad("encode_file", dict(path="{d.empty}"),
                                   ValueError, r"empty\.jsonl: the file is empty; expected one text per line"),
    "encode_file: missing file": Bad("encode_file", dict(path="{tmp}/nope.txt"), ValueError, r"nope\.txt: file not found"),
    "encode_file: truncate_dim 0": Bad("encode_file", dict(path="{d.lines}", truncate_dim=0),
                                       ValueError, r"truncate_dim must be >= 1, got 0"),
    "encode_file: chunk_size 0": Bad("encode_file", dict(path="{d.lines}", chunk_size=0),
                                     ValueError, r"chunk_size must be a positive integer, got 0"),
    "encode_file: unknown prompt name": Bad("encode_file", dict(path="{d.lines}", prompt_name="doc"),
                                            ValueError, r"prompt_name 'doc' is not one"),
}


def _fill(value, names: dict):
    if isinstance(value, str):
        return value.format_map(names)
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    if isinstance(value, tuple):
        return tuple(_fill(v, names) for v in value)
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    return value


def _snapshot(*roots) -> dict:
    """Every file and folder under `roots` with its size and modification time: equal means nothing was written."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            stat = p.lstat()
            out[str(p)] = (p.is_dir(), stat.st_size, stat.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def readonly_dir(tmp_path_factory):
    """A folder no file can be created in. chmod does not stop root, so as root: /sys (sysfs refuses new
    files to everyone); otherwise a folder with mode 0o500."""
    if os.geteuid() == 0:
        folder = Path("/sys")
    else:
        folder = tmp_path_factory.mktemp("readonly")
        folder.chmod(0o500)
    try:
        probe = folder / "minisbert-probe"
        probe.touch()
    except OSError:
        return folder
    probe.unlink()
    pytest.skip(f"{folder} is writable here; no read-only folder to test with")


def test_the_table_is_long_enough():
    assert len(BAD_INPUTS) >= 30
    entries = {row.entry for row in BAD_INPUTS.values()}
    assert entries == {"train", "cli", "subprocess", "evaluate", "evaluate_cli", "from_pretrained", "encode", "predict",
                       "load_dataset", "encode_file"}


@pytest.fixture(scope="module")
def loaded(world):
    """Models for the encode / predict rows, loaded once."""
    return SimpleNamespace(bi=BiEncoder.from_pretrained(world.m.model, device="cpu"),
                           ce=CrossEncoder.from_pretrained(world.m.ce, device="cpu"))


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(case, world, loaded, readonly_dir, tmp_path, capsys, request):
    row = BAD_INPUTS[case]
    out = tmp_path / "out"
    names = {"m": world.m, "d": world.d, "tmp": tmp_path, "out": out, "run": world.run, "ro": readonly_dir,
             "broken_state": world.broken_state}
    args = _fill(row.args, names)
    before = _snapshot(world.root, tmp_path)
    capsys.readouterr()

    if row.entry == "train":
        with pytest.raises(row.error) as info:
            train.main(TrainConfig(**(_fill(BASE, names) | args)))
        message = str(info.value)
    elif row.entry == "cli":
        try:
            code = train.cli([str(a) for a in args])
        except SystemExit as e:  # argparse exits by itself
            code = e.code
        err = capsys.readouterr().err
        assert code == 2, err
        message = err.strip().splitlines()[-1]
    elif row.entry in ("subprocess", "evaluate_cli"):
        script = "train.py" if row.entry == "subprocess" else "evaluate.py"
        proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], env=ENV, capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
        assert TRACEBACK not in proc.stderr, proc.stderr
        assert proc.returncode == 2, (proc.returncode, proc.stderr)
        message = proc.stderr.strip().splitlines()[-1]
    elif row.entry == "evaluate":
        evaluate.load_model.cache_clear()
        with pytest.raises(row.error) as info:
            evaluate.main([*map(str, args), "--output", str(out / "metrics.json")])
        message = str(info.value)
    elif row.entry == "from_pretrained":
        path, kwargs = args
        with pytest.raises(row.error) as info:
            BiEncoder.from_pretrained(path, device="cpu", **kwargs)
        message = str(info.value)
    elif row.entry == "encode":
        with pytest.raises(row.error) as info:
            loaded.bi.encode(**args)
        message = str(info.value)
    elif row.entry == "predict":
        with pytest.raises(row.error) as info:
            loaded.ce.predict(**args)
        message = str(info.value)
    elif row.entry == "load_dataset":
        path, kwargs = args
        with pytest.raises(row.error) as info:
            load_dataset(path, **kwargs)
        message = str(info.value)
    else:
        assert row.entry == "encode_file"
        with pytest.raises(row.error) as info:
            encode_file(loaded.bi, out_path=out / "emb.npy", **args)
        message = str(info.value)

    if row.entry not in ("cli", "subprocess", "evaluate_cli"):
        assert type(info.value) is row.error, f"{case}: {type(info.value).__name__}, expected {row.error.__name__}"
    assert re.search(row.message, message), f"{case}: {message!r} does not match {row.message!r}"
    assert "\n" not in message.strip(), f"{case}: one message, one line: {message!r}"
    assert not out.exists(), f"{case}: wrote {sorted(p.name for p in out.rglob('*'))}"
    assert _snapshot(world.root, tmp_path) == before, f"{case}: something was written next to the inputs"


# ----------------------------------------------------------------------------------------------
# inputs that are not errors


def _config(world, out, **overrides) -> TrainConfig:
    base = dict(model=str(world.m.model), data=str(world.d.triplets), output_dir=str(out), eval_data=[], batch_size=8,
                max_steps=2, logging_steps=1, save_steps=0, disable_tqdm=True)
    return TrainConfig(**(base | overrides))


def _logged(output_dir, key="loss") -> list:
    records = [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines()]
    return [r[key] for r in records if key in r]


def test_a_100k_character_text_trains_and_encodes_truncated_and_reported(world, loaded, tmp_path, capsys, caplog):
    long_text = ("The quick brown fox jumps over the lazy dog. " * 2300)[:100_000]
    rows = [json.loads(line) for line in world.d.triplets.read_text().splitlines()]
    rows[3]["positive"] = long_text
    data = _jsonl(tmp_path / "long.jsonl", rows)
    train.main(_config(world, tmp_path / "run", data=str(data)))
    out = capsys.readouterr().out
    assert out.count("truncation:") == 1 and "1 of 72 training inputs were longer than max_length=128" in out
    assert all(np.isfinite(_logged(tmp_path / "run")))

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="minisbert"):
        emb = loaded.bi.encode(["short", long_text, long_text * 3])
    assert emb.shape == (3, 32) and np.isfinite(emb).all()
    assert np.allclose(emb[1], emb[2], atol=1e-6)  # both cut to the same first 128 tokens
    assert [r.getMessage() for r in caplog.records] == [
        "encode: 2 of 3 inputs were longer than max_length=128 tokens and were truncated to it"]
    scores = loaded.ce.predict([("q", long_text), ("q", "short")])
    assert np.isfinite(scores).all()


def test_empty_strings_in_every_column_of_a_row_train(world, tmp_path):
    # ST trains on empty texts (Cranfield has blank documents); only a column empty in EVERY row is an
    # error (see the table), because that is a wrong column, not data.
    rows = [json.loads(line) for line in world.d.triplets.read_text().splitlines()]
    rows[5] = {"anchor": "", "positive": "", "negative": ""}
    rows[9] = {"anchor": " ", "positive": "", "negative": "\t"}
    data = _jsonl(tmp_path / "blanks.jsonl", rows)
    assert load_dataset(data).rows([5]) == [("", "", "")]
    cfg = _config(world, tmp_path / "run", data=str(data), loss="triplet", batch_sampler="shuffled", batch_size=24, max_steps=2)
    train.main(cfg)
    assert all(np.isfinite(_logged(cfg.output_dir)))
    assert np.isfinite(BiEncoder.from_pretrained(Path(cfg.output_dir) / "final").encode(["", " ", "\t"])).all()


# ----------------------------------------------------------------------------------------------
# a full disk during a save, a NaN gradient


def test_full_disk_during_the_second_save_keeps_the_first_and_resumes_exactly(world, tmp_path, monkeypatch, capsys):
    straight = _config(world, tmp_path / "straight", max_steps=6, save_steps=2)
    train.main(straight)

    out = tmp_path / "run"
    real_save = torch.save
    calls = []

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:  # the second checkpoint's state file: half of it lands, then ENOSPC
            f.write(b"\0" * 4096)  # checkpoint.save_run_state passes an open file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    argv = ["--model", str(world.m.model), "--data", str(world.d.triplets), "--output_dir", str(out), "--eval_data", "none",
            "--batch_size", "8", "--max_steps", "6", "--save_steps", "2", "--logging_steps", "1", "--disable_tqdm"]
    capsys.readouterr()
    assert train.cli(argv) == 1  # a failure of the machine, not of the input: exit 1, and no traceback
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: could not write ") and "\n" not in err
    assert f"{out / 'checkpoint-4'}: No space left on device (errno {errno.ENOSPC}). Nothing was half-written: " \
           f"the last complete checkpoint is {out / 'checkpoint-2'}" in err and "--resume latest" in err
    monkeypatch.undo()

    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "log.jsonl", "train_config.json"]
    assert checkpoint.load_run_state(out / "checkpoint-2")["step"] == 2
    train.main(_config(world, out, max_steps=6, save_steps=2, resume="latest"))
    a, b = load_file(out / "final" / "model.safetensors"), load_file(tmp_path / "straight" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _logged(out) == _logged(straight.output_dir)


def test_full_disk_while_writing_final_names_the_folder(world, tmp_path, monkeypatch):
    from minisbert import bi_encoder

    real = bi_encoder.BiEncoder.save_pretrained

    def full(self, path, **kwargs):
        if Path(path).name == "final":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, path, **kwargs)

    monkeypatch.setattr(bi_encoder.BiEncoder, "save_pretrained", full)
    cfg = _config(world, tmp_path / "run", max_steps=2, save_steps=2)
    with pytest.raises(SaveError, match=r"could not write .*run/final: No space left on device .*checkpoint-2"):
        train.main(cfg)
    assert [s for s, _ in checkpoint.run_checkpoints(cfg.output_dir)] == [2]


def test_nan_gradient_stops_naming_the_step(world, tmp_path, monkeypatch, capsys):
    from minisbert import losses

    mnrl, calls = losses.mnrl, []

    def nan_gradient_at_step_3(anchors, candidates, **kwargs):
        calls.append(1)
        loss = mnrl(anchors, candidates, **kwargs)
        if len(calls) == 3:  # a finite loss whose gradient is NaN: sqrt'(0) * 0
            loss = loss + (anchors[0, 0] * 0).sqrt()
        return loss

    monkeypatch.setattr(losses, "mnrl", nan_gradient_at_step_3)
    argv = ["--model", str(world.m.model), "--data", str(world.d.triplets), "--output_dir", str(tmp_path / "run"),
            "--eval_data", "none", "--batch_size", "8", "--max_steps", "6", "--save_steps", "2", "--disable_tqdm"]
    capsys.readouterr()
    assert train.cli(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: training stopped at step 3: the gradient norm is nan.") and TRACEBACK not in err
    assert f"the last good checkpoint is {tmp_path / 'run' / 'checkpoint-2'}" in err
    assert [s for s, _ in checkpoint.run_checkpoints(tmp_path / "run")] == [2]
    assert not (tmp_path / "run" / "final").exists() and issubclass(NonFiniteLoss, RuntimeError)


# ----------------------------------------------------------------------------------------------
# fuzz: the readers give data or their documented error, never another exception
#
# Besides raw bytes, the strategies build VALID tables and then mutate a few cells (another type, a
# missing key, a short row) with a hypothesis-controlled random, so that the valid path is reached
# about as often as the errors (hypothesis's own choices lean to the first error).

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                           max_leaves=6)
texts = st.text(max_size=8)
labels = st.one_of(st.floats(-2, 2), st.integers(-1, 3))
KEYS = ["a", "b", "label", "score", "query", "positive", "negative", "documents", "_id", "text", "title"]


@st.composite
def mutated_rows(draw, valid: dict, n_rows=(1, 6), rate=0.05):
    """Rows of {key: value drawn from valid[key]}; each cell, with probability `rate`, becomes any JSON
    value or disappears."""
    rnd = draw(st.randoms(use_true_random=False))
    rows = []
    for _ in range(draw(st.integers(*n_rows))):
        row = {}
        for key, strategy in valid.items():
            r = 1 - rnd.random()  # hypothesis's simplest random() is 0.0: make that "no mutation"
            if r < rate / 2:
                continue  # a missing key
            row[key] = draw(json_values) if r < rate else draw(strategy)
        rows.append(row)
    return rows


@st.composite
def jsonl_cases(draw):
    columns = draw(st.sampled_from([None, ["a"], ["a", "b"], ["query", "positive", "negative"]]))
    label_column = draw(st.sampled_from([None, "", "label", "score"]))
    extra = draw(st.lists(st.sampled_from(KEYS), max_size=2))  # other fields, maybe a label column
    keys = list(dict.fromkeys([*(columns or ["a", "b"]), *([label_column] if label_column else []), *extra]))
    valid = {k: labels if k in ("label", "score") else texts for k in keys}
    return draw(mutated_rows(valid)), columns, label_column


def _check_dataset(ds):
    assert len(ds) >= 1
    for column in ds.columns.values():
        assert len(column) == len(ds) and all(isinstance(t, str) for t in column)
    if ds.labels is not None:
        assert len(ds.labels) == len(ds) and all(isinstance(x, float) and np.isfinite(x) for x in ds.labels)


@FUZZ
@given(jsonl_cases(), st.booleans())
def test_fuzz_jsonl_rows_with_column_selection(tmp_path, case, with_map):
    rows, columns, label_column = case
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    label_map = {"yes": 1, "no": 0} if with_map else None
    try:
        ds = load_dataset(path, columns=columns, label_column=label_column, label_map=label_map)
    except DataError as e:
        event(f"DataError: {str(e).split(': ')[-1][:20]}")
        return
    event("loaded")
    _check_dataset(ds)
    if columns:
        assert ds.column_names == columns


cells = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
label_cells = st.one_of(st.floats(allow_nan=False).map(repr), st.integers(-5, 5).map(str))


@st.composite
def csv_tables(draw):
    """Header a, b, label and rows of two texts and a number; now and then a cell is any text or a row is cut."""
    rnd = draw(st.randoms(use_true_random=False))
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        row = [draw(cells), draw(cells), draw(label_cells)]
        if 1 - rnd.random() < 0.05:  # (hypothesis's simplest random() is 0.0: no mutation)
            row[rnd.randrange(3)] = draw(cells)
        if 1 - rnd.random() < 0.03:
            row = row[:rnd.randrange(3)]
        rows.append(row)
    return rows


@FUZZ
@given(csv_tables(), st.sampled_from([".csv", ".tsv"]),
       st.sampled_from([None, ["a"], ["b", "a"], ["c"]]), st.sampled_from([None, "", "label", "b"]))
def test_fuzz_csv_and_tsv_with_column_selection(tmp_path, table, suffix, columns, label_column):
    import csv

    path = tmp_path / f"table{suffix}"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t" if suffix == ".tsv" else ",")
        writer.writerow(["a", "b", "label"])
        writer.writerows(table)
    try:
        ds = load_dataset(path, columns=columns, label_column=label_column)
    except DataError as e:
        event(f"DataError: {str(e).split(': ')[-1][:20]}")
        return
    event("loaded")
    _check_dataset(ds)


@FUZZ
@given(st.binary(max_size=120), st.binary(max_size=120), st.binary(max_size=120), st.booleans())
def test_fuzz_beir_bytes(tmp_path, corpus, queries, qrels, valid_corpus):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_bytes(b'{"_id": "1", "text": "a"}\n' if valid_corpus else corpus)
    (folder / "queries.jsonl").write_bytes(queries)
    (folder / "qrels" / "test.tsv").write_bytes(qrels)
    try:
        q, c, r = evaluation.read_beir(folder)
    except ValueError as e:
        event(f"ValueError: {str(e).split(': ')[-1][:20]}")
        return
    event("read")
    assert all(isinstance(t, str) for t in [*q.values(), *c.values()])
    assert all(qid in q and set(docs) <= set(c) for qid, docs in r.items())


@FUZZ
@given(mutated_rows({"_id": st.one_of(st.sampled_from(["1", "2", "x"]), st.integers(1, 2)), "text": texts,
                     "title": st.one_of(texts, st.none())}, n_rows=(1, 4), rate=0.1),
       st.lists(st.tuples(st.sampled_from(["q", "q", "q", "x"]), st.sampled_from(["1", "2", "y"]),
                          st.sampled_from(["1", "0", "-1", "2.5", "nan", "inf", "high", ""])), max_size=4))
def test_fuzz_beir_records(tmp_path, corpus, qrels):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    _jsonl(folder / "corpus.jsonl", corpus)
    _jsonl(folder / "queries.jsonl", [{"_id": "q", "text": "question"}])
    (folder / "qrels" / "test.tsv").write_text("".join("\t".join(r) + "\n" for r in qrels))
    try:
        q, c, r = evaluation.read_beir(folder)
    except ValueError as e:
        event(f"ValueError: {str(e).split(': ')[-1][:20]}")
        return
    event("read")
    assert all(isinstance(t, str) for t in c.values())
    assert all(np.isfinite(g) and g > 0 for docs in r.values() for g in docs.values())


@st.composite
def rerank_tables(draw):
    candidates = st.one_of(texts, st.lists(texts, max_size=3))
    keys = ["query", "positive", "negative"]
    if 1 - draw(st.randoms(use_true_random=False)).random() < 0.3:  # the other layout, or a broken one
        keys = draw(st.sampled_from([["query", "positive", "documents"], ["query", "negative"],
                                     ["query", "positive", "negative", "documents"]]))
    return draw(mutated_rows({k: texts if k == "query" else candidates for k in keys}, rate=0.05))


@FUZZ
@given(st.one_of(st.binary(max_size=150).map(lambda b: ("bytes", b)), rerank_tables().map(lambda r: ("rows", r))),
       st.sampled_from([".jsonl", ".jsonl", ".csv", ".tsv"]))
def test_fuzz_rerank_samples(tmp_path, content, suffix):
    kind, value = content
    path = tmp_path / f"rerank{suffix}"
    if kind == "bytes":
        path.write_bytes(value)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in value), encoding="utf-8")
    else:  # a table with the first row's keys as the header; cells are the values as text
        import csv

        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t" if suffix == ".tsv" else ",")
            for i, r in enumerate(value):
                if i == 0:
                    writer.writerow(list(r))
                writer.writerow([v if isinstance(v, str) else json.dumps(v) for v in r.values()])
    try:
        samples = evaluation.read_rerank_samples(path)
    except ValueError as e:
        event(f"ValueError: {str(e).split(': ')[-1][:20]}")
        return
    event(f"read {suffix}")
    for s in samples:
        assert isinstance(s["query"], str)
        assert isinstance(s["positive"], str) or all(isinstance(t, str) for t in s["positive"])
        candidates = s.get("negative", s.get("documents"))
        assert isinstance(candidates, list) and all(isinstance(t, str) for t in candidates)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=200), st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_fuzz_encode_file_bytes(tmp_path, loaded, data):
    path, out = tmp_path / "lines.txt", tmp_path / "emb.npy"
    path.write_bytes(data)
    out.unlink(missing_ok=True)
    try:
        encode_file(loaded.bi, path, out, chunk_size=3)
    except ValueError:
        event("ValueError")
        assert not out.exists()
        return
    event("encoded")
    emb = np.load(out)
    assert emb.shape == (len(data.split(b"\n")) - data.endswith(b"\n"), 32) and np.isfinite(emb).all()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

# ----------------------------------------------------------------------------------------------
# streaming encode: encode_file == encode, O(chunk) memory, atomic output


def test_encode_file_equals_encode_and_batches_by_chunk(world, loaded, tmp_path, monkeypatch, caplog):
    import tiny_models

    texts = [tiny_models.CORPUS[i % len(tiny_models.CORPUS)] * (1 + i % 5) for i in range(250)]
    texts[17], texts[101], texts[180] = "", "many words " * 300, "Émoji 😀 and ünïcode\u2028inside"
    path = tmp_path / "texts.txt"
    path.write_bytes(("\ufeff" + "\n".join(texts) + "\n").encode())  # a BOM, a U+2028 that is not a line break
    expected = loaded.bi.encode(texts, batch_size=16)

    sizes = []
    real = type(loaded.bi).encode
    monkeypatch.setattr(type(loaded.bi), "encode", lambda self, t, **kw: sizes.append(len(t)) or real(self, t, **kw))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="minisbert"):
        out = encode_file(loaded.bi, path, tmp_path / "emb" / "all.npy", batch_size=16, chunk_size=64)
    assert sizes == [64, 64, 64, 58]  # memory holds one chunk of texts and embeddings
    assert [r.getMessage() for r in caplog.records] == [
        f"encode_file {path}: 1 of 250 inputs were longer than max_length=128 tokens and were truncated to it"]
    got = np.load(out, mmap_mode="r")
    assert got.dtype == np.float32 and got.shape == (250, 32)
    assert np.abs(got - expected).max() <= 1e-6

    monkeypatch.undo()
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"a\r\nb\r\nlast line without newline")
    truncated = encode_file(loaded.bi, crlf, tmp_path / "crlf.npy", truncate_dim=8, normalize_embeddings=True)
    assert np.abs(np.load(truncated) - loaded.bi.encode(["a", "b", "last line without newline"], truncate_dim=8,
                                                        normalize_embeddings=True)).max() <= 1e-6


def test_encode_file_failure_leaves_the_previous_output_untouched(world, loaded, tmp_path, monkeypatch):
    path = tmp_path / "texts.txt"
    path.write_text("".join(f"sentence number {i}\n" for i in range(50)), encoding="utf-8")
    out = tmp_path / "emb.npy"
    out.write_bytes(b"the previous result")
    real, calls = type(loaded.bi).encode, []

    def fail_on_the_third_chunk(self, texts, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C (or any error) mid-file
        return real(self, texts, **kwargs)

    monkeypatch.setattr(type(loaded.bi), "encode", fail_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        encode_file(loaded.bi, path, out, chunk_size=10)
    assert out.read_bytes() == b"the previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "texts.txt"]  # no temporary file left
