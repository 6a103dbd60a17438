"""Model folders at the edges (issue 23): saving never removes what minisbert did not write, a model saves
after its source folder is gone, and malformed or mismatched folders get one message naming the file.

Where sentence-transformers is the reference (fp16/fp64 folders with a Dense layer, an invalid
default_prompt_name, the modes of a saved folder) it runs on the same folder in the same test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from minisbert import BiEncoder, CrossEncoder, ModelLoadError, checkpoint, run_state
from minisbert.bi_encoder import Dense
from minisbert.checkpoint import atomic_dir

TEXTS = ["hello world", "A man is playing a guitar.", "Der Hund läuft über die Wiese. " * 3]
PAIRS = [("what is the capital of France?", "Paris is the capital of France."), ("a man plays", "A man is playing a guitar.")]


def st():
    return pytest.importorskip("sentence_transformers")


def tree(folder) -> dict:
    """{relative path: bytes (files) | "dir" | "-> target" (symlinks)} of everything under `folder`."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir() else p.read_bytes()
    return out


USER_ENTRIES = (".git", ".gitattributes", "notes.txt", "latest")


def user_files(folder):
    """A user's own things in `folder`: a .git folder with a nested file, notes, a symlink."""
    (folder / ".git" / "objects").mkdir(parents=True)
    (folder / ".git" / "objects" / "ab12").write_bytes(b"\x00blob")
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (folder / "notes.txt").write_text("my results: 0.87\n")
    (folder / "latest").symlink_to("notes.txt")
    return tree(folder)


# ---------------------------------------------------------------------------- 1. never remove the user's files


def test_saving_into_a_folder_that_is_not_a_model_folder_is_refused_and_changes_nothing(tiny_model_dirs, tiny_classifier_dirs, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('hi')\n")
    (project / "data.csv").write_text("a,b\n1,2\n")
    before = tree(project)
    mode = stat.S_IMODE(project.stat().st_mode)
    bi = BiEncoder.from_pretrained(tiny_model_dirs["bert"])
    ce = CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"])
    monkeypatch.chdir(project)
    for save in (bi.save_pretrained, ce.save_pretrained):
        for where in (project, os.getcwd()):  # the save_pretrained(os.getcwd())
            with pytest.raises(ValueError, match=r"is not empty and is not a model folder \(it holds data\.csv, src\)"):
                save(where)
    assert tree(project) == before and stat.S_IMODE(project.stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # no temporary folder left beside it
    # An empty folder is fine, and becomes the model.
    (project / "empty").mkdir()
    bi.save_pretrained(project / "empty")
    assert BiEncoder.from_pretrained(project / "empty").embedding_dim == 32


@pytest.mark.parametrize("which", ["bi", "cross"])
def test_saving_over_a_model_folder_replaces_its_model_files_and_keeps_the_users(which, tiny_model_dirs, tiny_classifier_dirs, tmp_path):
    STm = st()
    if which == "bi":
        model, other = BiEncoder.from_pretrained(tiny_model_dirs["bert"]), BiEncoder.from_pretrained(tiny_model_dirs["xlmr"])
        run = lambda m: m.encode(TEXTS)  # noqa: E731
        reference = lambda folder: STm.SentenceTransformer(str(folder), device="cpu").encode(TEXTS)  # noqa: E731
    else:
        model, other = CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"]), CrossEncoder.from_pretrained(tiny_classifier_dirs["xlmr"])
        run = lambda m: m.predict(PAIRS)  # noqa: E731
        reference = lambda folder: STm.CrossEncoder(str(folder), device="cpu").predict(PAIRS)  # noqa: E731
    folder = tmp_path / "repo"
    other.save_pretrained(folder)  # a hub clone: a model, plus the user's .git and notes
    (folder / "model-00002-of-00002.safetensors").write_bytes((folder / "model.safetensors").read_bytes())  # a stale shard
    mine = user_files(folder)
    os.chmod(folder, 0o750)
    model.save_pretrained(folder)
    after = tree(folder)
    users = lambda t: {k: v for k, v in t.items() if k.split("/")[0] in USER_ENTRIES}  # noqa: E731
    assert users(after) == users(mine) and len(users(mine)) == 7
    assert "model-00002-of-00002.safetensors" not in after  # the previous model's files are gone ...
    assert (folder / ".git" / "objects" / "ab12").read_bytes() == b"\x00blob" and (folder / "latest").is_symlink()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750  # ... and the folder keeps its permissions
    loaded = (BiEncoder if which == "bi" else CrossEncoder).from_pretrained(folder)
    assert np.abs(run(loaded) - run(model)).max() <= 1e-6
    assert np.abs(reference(folder) - run(model)).max() <= 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_a_failed_save_over_a_model_folder_leaves_it_and_the_users_files_as_they_were(tiny_model_dirs, tmp_path):
    folder = tmp_path / "m"
    BiEncoder.from_pretrained(tiny_model_dirs["bert"]).save_pretrained(folder)
    before = user_files(folder)
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_dir(folder) as tmp:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("disk on fire")
    assert tree(folder) == before and sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_checkpoints_keep_the_users_files_and_refuse_a_folder_that_is_not_a_checkpoint(tiny_model_dirs, tmp_path):
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"])
    state = {k: 0 for k in run_state.LoopState.KEYS}
    first = checkpoint.save_run_checkpoint(tmp_path, 4, model, state)
    (first / "eval_notes.txt").write_text("dev 0.61\n")
    again = checkpoint.save_run_checkpoint(tmp_path, 4, model, {**state, "step": 4})
    assert (again / "eval_notes.txt").read_text() == "dev 0.61\n"
    assert torch.load(again / checkpoint.RUN_STATE_FILE, weights_only=True)["step"] == 4
    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "checkpoint-8" / "thesis.tex").write_text("\\begin{document}")
    with pytest.raises(ValueError, match="checkpoint-8: the folder is not empty and is not a model folder"):
        checkpoint.save_run_checkpoint(tmp_path, 8, model, state)
    assert (tmp_path / "checkpoint-8" / "thesis.tex").read_text() == "\\begin{document}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-8"]


# ---------------------------------------------------------------------------- 2. saving from memory


def test_a_model_saves_after_its_source_folder_is_deleted(minilm_path, tiny_classifier_dirs, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(minilm_path, src)
    model = BiEncoder.from_pretrained(src)  # native tokenizer: transformers' is built only when asked for
    expected = model.encode(TEXTS)
    shutil.rmtree(src)
    assert not src.exists()
    model.save_pretrained(tmp_path / "saved")
    checkpoint.save_run_checkpoint(tmp_path / "run", 1, model, {k: 0 for k in run_state.LoopState.KEYS})
    for folder in (tmp_path / "saved", tmp_path / "run" / "checkpoint-1"):
        assert np.abs(BiEncoder.from_pretrained(folder).encode(TEXTS) - expected).max() <= 1e-6
    assert np.abs(st().SentenceTransformer(str(tmp_path / "saved"), device="cpu").encode(TEXTS) - expected).max() <= 1e-5
    ce_src = tmp_path / "ce_src"
    shutil.copytree(tiny_classifier_dirs["bert"], ce_src)
    ce = CrossEncoder.from_pretrained(ce_src)
    scores = ce.predict(PAIRS)
    shutil.rmtree(ce_src)
    ce.save_pretrained(tmp_path / "ce")
    assert np.abs(CrossEncoder.from_pretrained(tmp_path / "ce").predict(PAIRS) - scores).max() <= 1e-6


def test_a_training_run_whose_model_folder_is_deleted_after_loading_saves_its_checkpoints_and_final(tiny_model_dirs, tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import train
    from minisbert import run

    src = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["bert"], src)

    class DeletedAfterLoading(BiEncoder):
        @classmethod
        def from_pretrained(cls, name_or_path, **kwargs):
            model = BiEncoder.from_pretrained(name_or_path, **kwargs)
            shutil.rmtree(name_or_path)  # the --model folder is gone before the first step
            return model

    monkeypatch.setattr(run, "BiEncoder", DeletedAfterLoading)  # run.model_loader loads the model
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"anchor": f"question {i}", "positive": f"answer {i}"}) + "\n" for i in range(16)))
    train.main(train.TrainConfig(model=str(src), data=str(data), output_dir=str(tmp_path / "run"), eval_data=[], batch_size=4,
                                 max_steps=4, save_steps=2, logging_steps=1, disable_tqdm=True))
    assert not src.exists()
    for folder in ("checkpoint-2", "checkpoint-4", "final"):
        assert BiEncoder.from_pretrained(tmp_path / "run" / folder).encode(TEXTS).shape == (3, 32), folder


# ---------------------------------------------------------------------------- 6. config.json against the weights


def _with_config(src, dst, **change):
    shutil.copytree(src, dst)
    path = dst / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    return dst


@pytest.mark.parametrize("layers,named", [(1, "unused weights ['encoder.layer.1."), (3, "missing weights ['encoder.layer.2.")])
def test_config_json_that_does_not_match_the_weights_is_refused_naming_them(layers, named, tiny_model_dirs, tiny_classifier_dirs, tmp_path):
    folder = _with_config(tiny_model_dirs["bert"], tmp_path / "bi", num_hidden_layers=layers)  # over 2 layers of weights
    for native in (True, False):
        with pytest.raises(ModelLoadError, match=rf"config.json does not match the weights .*{re.escape(named)}.*num_hidden_layers {layers}"):
            BiEncoder.from_pretrained(folder, native=native)
    ce = _with_config(tiny_classifier_dirs["bert"], tmp_path / "ce", num_hidden_layers=layers)
    in_head_model = named.replace("['", "['bert.")  # the classifier's own key names
    with pytest.raises(ModelLoadError, match=rf"config.json does not match the weights .*{re.escape(in_head_model)}"):
        CrossEncoder.from_pretrained(ce)
    # What stays allowed: a new head on a backbone, and a backbone taken from a classifier.
    assert CrossEncoder.from_pretrained(tiny_model_dirs["bert"]).num_labels == 1
    assert BiEncoder.from_pretrained(tiny_classifier_dirs["bert"]).embedding_dim == 32


def test_train_py_refuses_a_model_whose_config_does_not_match_its_weights(tiny_model_dirs, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    folder = _with_config(tiny_model_dirs["bert"], tmp_path / "m", num_hidden_layers=1)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"anchor": f"q{i}", "positive": f"d{i}"}) + "\n" for i in range(8)))
    out = subprocess.run([sys.executable, str(root / "train.py"), "--model", str(folder), "--data", str(data),
                          "--output_dir", str(tmp_path / "run"), "--max_steps", "1", "--batch_size", "4"],
                         capture_output=True, text=True, cwd=str(root), env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "does not match the weights" in out.stderr and "encoder.layer.1." in out.stderr
    assert not (tmp_path / "run" / "final").exists()


def test_dense_weights_that_do_not_match_its_config_are_refused_naming_them(tiny_model_dirs, tmp_path):
    base = BiEncoder.from_pretrained(tiny_model_dirs["bert"])
    model = BiEncoder(base.backbone, base.tokenizer, dense=[Dense(32, 8)], max_length=base.max_length)
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "2_Dense" / "model.safetensors"
    state = load_file(weights)
    save_file({**state, "linear2.weight": torch.zeros(8, 8)}, weights)
    with pytest.raises(ModelLoadError, match=r"2_Dense: the weights do not match config.json: unused \['linear2.weight'\]"):
        BiEncoder.from_pretrained(tmp_path / "m")
    save_file({"linear.weight": state["linear.weight"]}, weights)
    with pytest.raises(ModelLoadError, match=r"2_Dense: the weights do not match config.json: missing \['linear.bias'\]"):
        BiEncoder.from_pretrained(tmp_path / "m")
    save_file({**state, "linear.weight": torch.zeros(4, 32)}, weights)
    with pytest.raises(ModelLoadError, match=r"wrong shape \['linear.weight \(4, 32\) \(config.json: \(8, 32\)\)'\]"):
        BiEncoder.from_pretrained(tmp_path / "m")


# ---------------------------------------------------------------------------- 7. malformed metadata


def _edit(folder, name, edit):
    path = folder / name
    if callable(edit):
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    else:
        path.write_text(edit)


MALFORMED = {  # case -> (file, edit, the file and field the message must name)
    "zero_heads": ("config.json", lambda c: {**c, "num_attention_heads": 0}, r"config.json: 'num_attention_heads' must be a positive integer, got 0"),
    "hidden_size_string": ("config.json", lambda c: {**c, "hidden_size": "32"}, r"config.json: 'hidden_size' must be a positive integer, got '32'"),
    "module_is_a_string": ("modules.json", lambda m: ["sentence_transformers.models.Transformer"] + m[1:],
                           r"modules.json: entry 0 is 'sentence_transformers.models.Transformer'; expected an object"),
    "module_type_is_a_number": ("modules.json", lambda m: [{**m[0], "type": 5}] + m[1:], r"modules.json: entry 0 has \"type\": 5; expected a string"),
    "module_path_is_a_number": ("modules.json", lambda m: [m[0], {**m[1], "path": 1}] + m[2:], r"modules.json: entry 1 has \"path\": 1; expected a string"),
    "st_config_is_a_list": ("config_sentence_transformers.json", "[]", r"config_sentence_transformers.json must hold a JSON object, found list"),
    "prompts_is_a_string": ("config_sentence_transformers.json", lambda c: {**c, "prompts": "query: "},
                            r"config_sentence_transformers.json: \"prompts\" must be an object of name -> prompt string, got 'query: '"),
    "dense_without_in_features": ("2_Dense/config.json", lambda c: {k: v for k, v in c.items() if k != "in_features"},
                                  r"2_Dense/config.json: 'in_features' must be a positive integer, got None"),
    "pooling_mode_is_a_number": ("1_Pooling/config.json", lambda c: {"pooling_mode": 3}, r"1_Pooling/config.json: \"pooling_mode\" must be"),
    "bert_config_is_a_list": ("sentence_bert_config.json", "[1]", r"sentence_bert_config.json must hold a JSON object"),
}


@pytest.fixture(scope="module")
def saved_with_dense(tiny_model_dirs, tmp_path_factory):
    base = BiEncoder.from_pretrained(tiny_model_dirs["bert"])
    folder = tmp_path_factory.mktemp("dense") / "m"
    BiEncoder(base.backbone, base.tokenizer, dense=[Dense(32, 8)], max_length=base.max_length).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_model_folder_metadata_gets_one_message_naming_file_and_field(case, saved_with_dense, tmp_path):
    name, edit, message = MALFORMED[case]
    folder = tmp_path / "m"
    shutil.copytree(saved_with_dense, folder)
    _edit(folder, name, edit)
    for native in (True, False):
        with pytest.raises(ModelLoadError, match=message):
            BiEncoder.from_pretrained(folder, native=native)


def test_a_cross_encoder_config_json_that_is_not_json_is_named(tiny_classifier_dirs, tmp_path):
    folder = tmp_path / "ce"
    shutil.copytree(tiny_classifier_dirs["bert"], folder)
    (folder / "config.json").write_text('{"architectures": ["BertForSequenceClassification"],')
    with pytest.raises(ModelLoadError, match=r"ce/config.json is not valid JSON"):
        CrossEncoder.from_pretrained(folder)
    (folder / "config.json").write_text('["BertForSequenceClassification"]')
    with pytest.raises(ModelLoadError, match=r"ce/config.json must hold a JSON object, found list"):
        CrossEncoder.from_pretrained(folder)


# ---------------------------------------------------------------------------- 10. module paths out of the folder


@pytest.mark.parametrize("path", ["../other", "/etc", "sub/../../other"])
def test_both_models_refuse_a_module_path_out_of_the_folder_with_one_check(path, tiny_classifier_dirs, tmp_path):
    shutil.copytree(tiny_classifier_dirs["bert"], tmp_path / "other")  # a loadable model the path points at
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": path,
                                                      "type": "sentence_transformers.base.modules.transformer.Transformer"}]))
    messages = []
    for cls in (CrossEncoder, BiEncoder):
        with pytest.raises(ModelLoadError, match="leaves the model folder") as caught:
            cls.from_pretrained(folder)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] == f"{folder / 'modules.json'}: module path {path!r} leaves the model folder"


# ---------------------------------------------------------------------------- 11. fp16 / fp64 folders with a Dense layer


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_a_model_saved_in_fp16_or_fp64_with_a_dense_layer_loads_and_encodes_as_st(dtype, tiny_model_dirs, tmp_path):
    STm = st()
    base = BiEncoder.from_pretrained(tiny_model_dirs["bert"])
    model = BiEncoder(base.backbone, base.tokenizer, dense=[Dense(32, 8)], normalize=True, max_length=base.max_length)
    model.to(dtype).save_pretrained(tmp_path / "m")
    assert load_file(tmp_path / "m" / "2_Dense" / "model.safetensors")["linear.weight"].dtype == dtype
    reference = STm.SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert {p.dtype for p in reference.parameters()} == {dtype}  # ST casts the Dense to the backbone's dtype too
    expected = reference.encode(TEXTS)
    for native in (True, False):
        ours = BiEncoder.from_pretrained(tmp_path / "m", native=native)
        assert {p.dtype for p in ours.parameters()} == {dtype}
        got = ours.encode(TEXTS)
        assert got.dtype == np.float32 and got.shape == expected.shape == (3, 8)
        assert np.abs(got - expected.astype(np.float32)).max() <= (2e-3 if dtype == torch.float16 else 1e-6)


# ---------------------------------------------------------------------------- 13. default_prompt_name


def test_an_invalid_default_prompt_name_is_refused_at_construction_and_at_load_as_st_does(tiny_model_dirs, tmp_path):
    STm = st()
    base = BiEncoder.from_pretrained(tiny_model_dirs["bert"])
    with pytest.raises(ValueError, match=r"default_prompt_name 'query' is not one of the prompts \['doc'\]"):
        BiEncoder(base.backbone, base.tokenizer, prompts={"doc": "passage: "}, default_prompt_name="query")
    with pytest.raises(ValueError, match=r"default_prompt_name 'query' is not one of the prompts \[\]"):
        BiEncoder(base.backbone, base.tokenizer, default_prompt_name="query")
    with pytest.raises(ValueError, match=r"\"prompts\" must be an object of name -> prompt string"):
        BiEncoder(base.backbone, base.tokenizer, prompts={"query": 5})
    good = BiEncoder(base.backbone, base.tokenizer, prompts={"query": "query: ", "doc": "passage: "}, default_prompt_name="query")
    good.save_pretrained(tmp_path / "m")
    assert STm.SentenceTransformer(str(tmp_path / "m"), device="cpu").default_prompt_name == "query"
    _edit(tmp_path / "m", "config_sentence_transformers.json", lambda c: {**c, "default_prompt_name": "search"})
    with pytest.raises(ValueError, match="Default prompt name 'search' not found"):
        STm.SentenceTransformer(str(tmp_path / "m"), device="cpu")
    with pytest.raises(ModelLoadError, match=r"config_sentence_transformers.json: default_prompt_name 'search' is not one "
                                             r"of the prompts \['doc', 'query'\]"):
        BiEncoder.from_pretrained(tmp_path / "m")
    # A null prompt is an empty one for ST, so it can be the default.
    _edit(tmp_path / "m", "config_sentence_transformers.json", lambda c: {**c, "prompts": {"search": None}, "default_prompt_name": "search"})
    reference = STm.SentenceTransformer(str(tmp_path / "m"), device="cpu")
    ours = BiEncoder.from_pretrained(tmp_path / "m")
    assert ours.prompts["search"] == reference.prompts["search"] == "" and ours.default_prompt_name == reference.default_prompt_name
    assert np.abs(ours.encode(TEXTS) - reference.encode(TEXTS)).max() <= 1e-5


# ---------------------------------------------------------------------------- 15. permissions and symlinks


def test_saved_folders_get_the_umasks_permissions_as_st_gives_them(tiny_model_dirs, tmp_path):
    STm = st()
    old = os.umask(0o022)
    try:
        model = BiEncoder.from_pretrained(tiny_model_dirs["bert"], normalize=True)
        model.save_pretrained(tmp_path / "ours")
        checkpoint.save_run_checkpoint(tmp_path / "run", 2, model, {k: 0 for k in run_state.LoopState.KEYS})
        STm.SentenceTransformer(str(tmp_path / "ours"), device="cpu").save(str(tmp_path / "st"))
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "ours") == mode(tmp_path / "st") == mode(tmp_path / "run" / "checkpoint-2") == 0o755
    for sub in ("1_Pooling", "2_Normalize", "config.json", "model.safetensors", "tokenizer.json"):
        assert mode(tmp_path / "ours" / sub) == mode(tmp_path / "st" / sub), sub


def test_saving_onto_a_symlink_replaces_the_folder_it_points_to_and_keeps_the_link(tiny_model_dirs, tmp_path):
    real, link = tmp_path / "models" / "v1", tmp_path / "current"
    BiEncoder.from_pretrained(tiny_model_dirs["xlmr"]).save_pretrained(real)
    link.symlink_to(real, target_is_directory=True)
    model = BiEncoder.from_pretrained(tiny_model_dirs["bert"])
    model.save_pretrained(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "models"]
    assert sorted(p.name for p in real.parent.iterdir()) == ["v1"]  # no ".v1.old-<pid>" left behind
    assert np.abs(BiEncoder.from_pretrained(link).encode(TEXTS) - model.encode(TEXTS)).max() <= 1e-6


def test_cross_encoder_folders_carry_the_legacy_activation_key_that_st_before_4_reads(tiny_classifier_dirs, tmp_path):
    STm = st()
    identity = "torch.nn.modules.linear.Identity"
    CrossEncoder.from_pretrained(tiny_classifier_dirs["bert"], activation_fn=identity).save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["sentence_transformers"]["activation_fn"] == config["sbert_ce_default_activation_function"] == identity
    del config["sentence_transformers"]  # what ST < 4 reads: the legacy key alone
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    assert CrossEncoder.from_pretrained(tmp_path / "m").activation_fn_name == identity
    reference = STm.CrossEncoder(str(tmp_path / "m"), device="cpu")
    assert type(reference.activation_fn).__name__ == "Identity"
