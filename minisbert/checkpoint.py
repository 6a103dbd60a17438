"""Everything on disk: model folders (ST's format, read in every generation, written in the legacy one)
and run checkpoints (a model folder + training_state.pt, to resume a run; at the end of this file).

Reading (spec section 1): modules.json written by ST 2.x-5.3 (`sentence_transformers.models.X`),
5.4-5.7 and 6.x (`sentence_transformers.base.modules...X`); pooling configs of all three key
schemas; Dense; Normalize (a missing or empty folder is fine); prompts, similarity function and
truncate_dim from config_sentence_transformers.json. A module type minisbert does not know is
refused with the list of supported ones: nothing named in a folder is ever imported (ST #3801).

Writing: the 2.4-5.3 layout, which every ST version from 2.4 to 6.2 loads (spec 1.9), with a real
ST version string (ST 6 parses it with packaging and crashes on anything else). Every folder is
written to a temporary sibling and renamed into place, so a crash never leaves half a model; saving
over a model folder keeps what in it is not the model's, and any other non-empty folder is refused.

Weights are read from safetensors only. Pickle files (pytorch_model.bin) are loaded only with
`allow_pickle=True`, and then with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import struct
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError

from .errors import ConfigError, ModelLoadError, SaveError

# The ST version whose folder layout we write; every ST from 2.4 to 6.2 loads it.
ST_FORMAT_VERSION = "3.4.1"
SUPPORTED_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
LEGACY_TYPE = {name: f"sentence_transformers.models.{name}" for name in SUPPORTED_MODULES}
# ST <= 2.3 named these files after the architecture (st/base/modules/transformer.py:2713-2750).
TRANSFORMER_CONFIGS = (
    "sentence_bert_config.json", "sentence_roberta_config.json", "sentence_distilbert_config.json",
    "sentence_camembert_config.json", "sentence_albert_config.json", "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


# ---------------------------------------------------------------------------- finding a model

def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a hub name, downloaded (or found in the cache when offline)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{path.resolve()} is a file, not a model folder; pass the folder that holds config.json")
    name = str(name_or_path)
    looks_like_repo = name.count("/") <= 1 and not name.startswith((".", "/", "~")) and not path.exists()
    if not looks_like_repo:
        raise ModelLoadError(f"model folder {path.resolve()} does not exist")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.constants import HF_HUB_CACHE

        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        return Path(snapshot_download(name, local_files_only=offline))
    except Exception as e:  # network, missing repo, offline cache miss: one message for all
        cache = locals().get("HF_HUB_CACHE", "the Hugging Face cache")
        raise ModelLoadError(
            f"model {name!r} not found: there is no local folder {path.resolve()} and the hub copy could "
            f"not be fetched or found in {cache} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            f"Pass a local folder, or go online (unset HF_HUB_OFFLINE) to download it."
        ) from None


# ---------------------------------------------------------------------------- weights

def check_safetensors(path: Path) -> None:
    """Raise ModelLoadError unless `path` is a complete safetensors file (header parses, data fits)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("header length exceeds the file")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ValueError(f"tensors need {8 + n + end} bytes, file has {size}")
    except Exception as e:
        raise ModelLoadError(
            f"{path} is not a complete safetensors file ({e}); it may be truncated or corrupted: "
            f"re-download or re-save the model"
        ) from None


def weight_files(folder: Path, allow_pickle: bool) -> list[Path]:
    """The weight files of a module folder, validated; refuses pickle unless allowed."""
    safe = sorted(folder.glob("*.safetensors"))
    if safe:
        for p in safe:
            check_safetensors(p)
        return safe
    pickles = sorted(folder.glob("pytorch_model*.bin"))
    if pickles and not allow_pickle:
        raise ModelLoadError(
            f"{folder} has only pickle weights ({pickles[0].name}); pickle files can run arbitrary code, so "
            f"minisbert does not load them by default. If you trust this folder, pass allow_pickle=True "
            f"(or convert it to model.safetensors)."
        )
    if pickles:
        return pickles
    raise ModelLoadError(f"{folder} has no weights: expected model.safetensors (or pytorch_model.bin)")


def load_state_dict(folder: Path, allow_pickle: bool) -> dict:
    import torch
    from safetensors.torch import load_file

    state = {}
    for p in weight_files(folder, allow_pickle):
        state.update(load_file(p) if p.suffix == ".safetensors" else torch.load(p, map_location="cpu", weights_only=True))
    return state


# ---------------------------------------------------------------------------- reading a folder

def read_json(path: Path, default=None):
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}") from None


def module_kind(type_name: str, folder: Path) -> str:
    """Map a modules.json `type` of any ST generation to one of SUPPORTED_MODULES, or refuse it."""
    last = type_name.rsplit(".", 1)[-1]
    if type_name.startswith("sentence_transformers.") and last in SUPPORTED_MODULES:
        return last
    raise ModelLoadError(
        f"{folder / 'modules.json'} names module type {type_name!r}, which minisbert does not support "
        f"(it never imports code named in a model folder). Supported: "
        + ", ".join(f"sentence_transformers[...].{m}" for m in SUPPORTED_MODULES)
    )


def read_pooling_config(cfg: dict, path: Path) -> dict:
    """Any of the three pooling config schemas -> {"modes": [...], "include_prompt": bool, "dim": int}."""
    if "pooling_mode" in cfg:  # ST >= 5.4
        modes = cfg["pooling_mode"]
        if not (isinstance(modes, str) or (isinstance(modes, list) and all(isinstance(m, str) for m in modes))):
            raise ModelLoadError(f"{path}: \"pooling_mode\" must be a mode name or a list of them, got {modes!r:.60}")
        modes = [modes] if isinstance(modes, str) else list(modes)
        modes = ["mean_sqrt_len_tokens" if m == "mean_sqrt_len" else m for m in modes]
    else:
        modes = [mode for key, mode in LEGACY_POOLING_KEYS.items() if cfg.get(key)] or ["mean"]
    from .pooling import MODES

    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ModelLoadError(f"{path}: unknown pooling mode {bad}; expected one of {list(MODES)}")
    dim = cfg.get("embedding_dimension", cfg.get("word_embedding_dimension"))
    # ST 5.4+ concatenates in the listed order; the legacy booleans imply MODES order.
    return {"modes": modes, "include_prompt": bool(cfg.get("include_prompt", True)), "dim": dim}


def read_modules(folder: Path) -> list[tuple[str, Path]]:
    """modules.json as (kind, module folder) pairs, every entry checked: an object whose "type" is a module
    minisbert supports and whose "path" stays inside the model folder. BiEncoder and CrossEncoder both read
    modules.json through here, so a path such as "../other" is refused the same way by both."""
    path = folder / "modules.json"
    modules = read_json(path)
    if not isinstance(modules, list) or not modules:
        raise ModelLoadError(f"{path} must be a non-empty JSON list of modules")
    found = []
    for i, entry in enumerate(modules):
        if not isinstance(entry, dict):
            raise ModelLoadError(f"{path}: entry {i} is {entry!r:.60}; expected an object with \"type\" and \"path\"")
        for key in ("type", "path"):
            if not isinstance(entry.get(key, ""), str):
                raise ModelLoadError(f"{path}: entry {i} has \"{key}\": {entry[key]!r:.60}; expected a string")
        rel = entry.get("path", "")
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ModelLoadError(f"{path}: module path {rel!r} leaves the model folder")
        found.append((module_kind(entry.get("type", ""), folder), folder / rel))
    return found


def json_object(path: Path, default=None) -> dict:
    """A JSON file that must hold an object (or be absent: `default`)."""
    if not path.exists():
        return default
    value = read_json(path)
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, found {type(value).__name__} {value!r:.60}")
    return value


def check_prompts(prompts, default_prompt_name, where: str, error: type = ModelLoadError) -> dict:
    """prompts must map names to strings, and default_prompt_name name one of them (ST refuses the folder
    otherwise); returns the prompts with a null prompt as "", as ST reads it. `where` names the file or argument."""
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in prompts.items()):
        raise error(f"{where}: \"prompts\" must be an object of name -> prompt string, got {prompts!r:.80}")
    prompts = {k: "" if v is None else v for k, v in prompts.items()}
    if default_prompt_name is not None and default_prompt_name not in prompts:
        raise error(
            f"{where}: default_prompt_name {default_prompt_name!r} is not one of the prompts {list(prompts)}"
        )
    return prompts


def activation_from_path(path: str | None):
    """A torch.nn activation module from ST's dotted path (Dense's and CrossEncoder's configs); only classes
    inside torch.nn are accepted, None is the identity."""
    from torch import nn

    if path is None:
        return nn.Identity()
    cls = getattr(nn, path.rsplit(".", 1)[-1], None)
    if not path.startswith("torch.") or not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelLoadError(
            f"activation {path!r} is not a torch.nn module; minisbert never imports code named in a model folder"
        )
    return cls()


def read_sentence_transformer(folder: Path, allow_pickle: bool = False) -> dict:
    """Parse an ST folder into a plain description the BiEncoder is built from."""
    modules = read_modules(folder)
    st_path = folder / "config_sentence_transformers.json"
    st_cfg = json_object(st_path, {})
    spec = {
        "transformer_path": None, "max_length": None, "do_lower_case": False, "pooling": None,
        "dense": [], "normalize": False,
        "prompts": check_prompts(st_cfg.get("prompts") or {}, st_cfg.get("default_prompt_name"), str(st_path)),
        "default_prompt_name": st_cfg.get("default_prompt_name"),
        "similarity_fn_name": st_cfg.get("similarity_fn_name") or "cosine",
        "truncate_dim": st_cfg.get("truncate_dim"),
    }
    for kind, sub in modules:
        if kind == "Transformer":
            name = next((n for n in TRANSFORMER_CONFIGS if (sub / n).exists()), None)
            cfg = json_object(sub / name, {}) if name else {}
            spec["transformer_path"] = sub
            spec["max_length"] = cfg.get("max_seq_length")
            spec["do_lower_case"] = bool(cfg.get("do_lower_case", False))
            spec["transformer_task"] = cfg.get("transformer_task", "feature-extraction")
        elif kind == "Pooling":
            spec["pooling"] = read_pooling_config(json_object(sub / "config.json", {}), sub / "config.json")
        elif kind == "Dense":
            cfg = json_object(sub / "config.json")
            if cfg is None:
                raise ModelLoadError(f"{sub} is a Dense module without config.json")
            for key in ("in_features", "out_features"):
                if not (isinstance(cfg.get(key), int) and not isinstance(cfg.get(key), bool) and cfg[key] > 0):
                    raise ModelLoadError(f"{sub / 'config.json'}: {key!r} must be a positive integer, got {cfg.get(key)!r}")
            spec["dense"].append({"config": cfg, "state": load_state_dict(sub, allow_pickle), "path": sub})
        else:
            spec["normalize"] = True
    if spec["transformer_path"] is None:
        raise ModelLoadError(f"{folder / 'modules.json'} has no Transformer module")
    return spec


# ---------------------------------------------------------------------------- writing a folder

# What a model folder consists of: the files minisbert, sentence-transformers and transformers write there (and
# a run checkpoint's state file). Saving over a model folder replaces these; anything else in it belongs to the
# user (a .git folder, notes, evaluation results) and is kept.
MODEL_FILES = re.compile(
    r"(config|modules|config_sentence_transformers|sentence_\w+_config|generation_config|tokenizer_config"
    r"|special_tokens_map|added_tokens|tokenizer|vocab)\.json|README\.md|vocab\.txt|merges\.txt"
    r"|(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)|(model|pytorch_model)\.(safetensors|bin)\.index\.json"
    r"|sentencepiece\.bpe\.model|spiece\.model|tokenizer\.model|chat_template\.jinja|training_state\.pt"
    r"|\d+_[A-Za-z]+"  # module folders: 1_Pooling, 2_Dense, 3_Normalize
)


def is_model_folder(folder: Path) -> bool:
    """A folder holding an ST model (modules.json) or a transformers model (config.json beside weights)."""
    weights = any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin")) or any(folder.glob("*.index.json"))
    return (folder / "modules.json").is_file() or ((folder / "config.json").is_file() and weights)


def user_entries(target: Path) -> list[str]:
    """The names in an existing `target` that saving a model there keeps (everything but model files); raises
    ValueError for a non-empty folder that is not a model folder, which minisbert will not write into."""
    names = sorted(p.name for p in target.iterdir()) if target.is_dir() else []
    if names and not is_model_folder(target):
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} entries)" if len(names) > 5 else "")
        raise ValueError(
            f"cannot save a model to {target}: the folder is not empty and is not a model folder (it holds {shown}). "
            f"minisbert replaces only model folders and never deletes files it did not write: save into a new or "
            f"empty folder, or a model folder saved before"
        )
    return [n for n in names if not MODEL_FILES.fullmatch(n)]


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike):
    """Yield a temporary folder beside `target`; on success it replaces `target` in one rename.

    An existing `target` must be empty or a model folder (see `user_entries`): its model files are replaced as a
    whole, and every other entry in it is carried into the new folder (hard-linked, or copied where the
    filesystem cannot link) before the rename, so a crash at any moment leaves the old folder or the new one,
    each with the user's files. A symlink is followed: the folder it points to is replaced, the link stays.
    The new folder gets the old one's permissions, or those of the umask (as mkdir would) when there was none.
    On any exception the temporary folder is removed and an existing `target` is left untouched.
    """
    target = Path(target)
    if target.is_symlink():
        target = target.resolve()
    if target.exists() and not target.is_dir():
        raise ValueError(f"cannot save to {target}: it exists and is not a folder")
    user_entries(target)  # refuse before any work is done
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(target.stat().st_mode) if target.is_dir() else 0o777 & ~_umask()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))  # mode 0700 while written
    try:
        yield tmp
        _fsync_tree(tmp)
        os.chmod(tmp, mode)
        keep = [n for n in user_entries(target) if not (tmp / n).exists()]
        for name in keep:
            _carry(target / name, tmp / name)
        if target.exists() and any(target.iterdir()):
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:  # rename(2) replaces a missing or empty folder in one step
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Yield a file opened for writing beside `path`; on success it is fsynced and renamed over `path`.

    The one-file counterpart of `atomic_dir`: a reader (or a crash at any moment) sees the old file or
    the whole new one, never part of it. On any exception the temporary file is removed. The file gets
    the umask's permissions, as open() gives them (mkstemp would make it 0600). Text modes write UTF-8.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(src, dst, follow_symlinks=False)


def _carry(src: Path, dst: Path) -> None:
    """Recreate `src` at `dst` without touching `src`: files hard-linked, symlinks as symlinks, folders with their modes."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(src, dst)


def _fsync_tree(root: Path) -> None:
    # Data must be on disk before the rename makes the folder visible.
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def write_json(path: Path, obj, indent: int = 2, sort_keys: bool = False) -> None:
    path.write_text(json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n", encoding="utf-8")


def versions() -> dict:
    from importlib import metadata

    import torch

    return {"sentence_transformers": ST_FORMAT_VERSION, "transformers": metadata.version("transformers"), "pytorch": torch.__version__}


# ----------------------------------------------------------------------------------------------
# run checkpoints: what a training run writes into its output_dir to be resumed
#
# output_dir/checkpoint-<step>/ = the ST model folder + training_state.pt, written together into a
# temporary sibling and renamed into place, so a crash (even SIGKILL) mid-save leaves the previous
# checkpoints intact and never a folder without its state.

# What a failed write raises: OSError from Python's files, SafetensorError from safetensors (a full disk
# while writing model.safetensors is "Error while serializing: I/O error: No space left on device").
WRITE_ERRORS = (OSError, SafetensorError)
# The training state's keys are run_state.LoopState.KEYS: the loop owns what it needs to resume.
RUN_STATE_FILE = "training_state.pt"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# What killed saves leave in output_dir: atomic_dir's temporary folders (".checkpoint-8.tmp-x", and
# "..checkpoint-8.tmp-x.tmp-y" from the model's own atomic save inside it, ".final.tmp-x"), the previous
# version it was replacing (".checkpoint-8.old-<pid>") and rotation's trash (".checkpoint-4.deleted-<pid>").
_PARTIAL = re.compile(r"^\.+(checkpoint-\d+|final)\.(tmp|old|deleted)-")
_REPLACED = re.compile(r"^\.(checkpoint-\d+|final)\.old-\d+$")
# Test hook: the step whose checkpoint save kills its own process after writing the model but
# before the training state, to prove that `--resume latest` then finds the previous checkpoint.
KILL_DURING_SAVE = "MINISBERT_KILL_DURING_SAVE"


def save_run_checkpoint(output_dir: Path, step: int, model, state: dict) -> Path:
    """Write checkpoint-<step>/ (model folder + training_state.pt) atomically; returns its path."""
    target = Path(output_dir) / f"checkpoint-{step}"
    try:
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            if os.environ.get(KILL_DURING_SAVE) == str(step):
                os.kill(os.getpid(), signal.SIGKILL)
            save_run_state(state, tmp / RUN_STATE_FILE)
    except WRITE_ERRORS as e:  # disk full, quota, permissions: atomic_dir has removed the partial folder
        raise SaveError(save_failed_message(target, e, output_dir)) from e
    return target


def save_run_state(state: dict, path: Path) -> None:
    """torch.save into `path`; a failed write (a full disk) raises its OSError, not the RuntimeError
    ("unexpected pos ...") torch's zip writer makes of it."""
    try:
        with open(path, "wb") as f:
            torch.save(state, f)
    except RuntimeError as e:
        if isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise


def save_failed_message(target: Path, error: Exception, output_dir: Path) -> str:
    """The message for a save that failed with `error`: what, why, and where the run can continue from."""
    found = run_checkpoints(output_dir)
    last = f"the last complete checkpoint is {found[-1][1]}" if found else "no checkpoint was saved before"
    why = f"{error.strerror} (errno {error.errno})" if getattr(error, "strerror", None) else str(error)
    then = "continue with --resume latest" if found else "run again"
    return (f"could not write {target}: {why}. Nothing was half-written: {last}; free space (or fix the "
            f"permissions) and {then}")


def load_run_state(folder: Path, keys=()) -> dict:
    """The training state of a checkpoint, unpickled with weights_only=True (tensors + primitives only);
    a ConfigError unless it has every one of `keys`."""
    path = Path(folder) / RUN_STATE_FILE
    if not path.is_file():
        raise ConfigError(f"--resume {folder}: no {RUN_STATE_FILE} there; it is not a complete minisbert checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise ConfigError(f"--resume {folder}: cannot read {path.name} ({type(e).__name__}: {e})") from None
    missing = set(keys) - set(state)
    if missing:
        raise ConfigError(f"--resume {folder}: {path.name} lacks {sorted(missing)}")
    return state


def run_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (with their state file) in output_dir, oldest first."""
    found = []
    if Path(output_dir).is_dir():
        for p in Path(output_dir).iterdir():
            m = _CHECKPOINT.match(p.name)
            if m and p.is_dir() and (p / RUN_STATE_FILE).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def find_resume(resume: str, output_dir: Path) -> Path:
    """`latest` -> the newest complete checkpoint in output_dir; otherwise the given folder."""
    if resume == "latest":
        found = run_checkpoints(output_dir)
        if not found:
            raise ConfigError(f"--resume latest: {output_dir} has no complete checkpoint-<step> folder")
        return found[-1][1]
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"--resume {resume}: no such checkpoint folder (pass a checkpoint-<step> folder or 'latest')")
    return path


def remove_partial_saves(output_dir: Path) -> None:
    """Clean up after killed saves: delete their temporary folders, and put back a folder that atomic_dir
    had moved aside to replace it (`.checkpoint-8.old-<pid>` without `checkpoint-8`: the kill fell between
    its two renames, so that is the last complete version)."""
    if Path(output_dir).is_dir():
        for p in sorted(Path(output_dir).iterdir()):
            if not (p.is_dir() and _PARTIAL.match(p.name)):
                continue
            replaced = _REPLACED.match(p.name)
            if replaced and not p.with_name(replaced.group(1)).exists():
                os.rename(p, p.with_name(replaced.group(1)))
            else:
                shutil.rmtree(p, ignore_errors=True)


def rotate_run_checkpoints(output_dir: Path, save_total_limit: int | None, keep_step: int | None = None) -> list[int]:
    """Delete the oldest checkpoints beyond `save_total_limit`, never the one at `keep_step` (the best)."""
    if not save_total_limit:
        return []
    found = run_checkpoints(output_dir)
    newest = {step for step, _ in found[-save_total_limit:]}
    deleted = []
    for step, path in found:
        if step not in newest and step != keep_step:
            # Renamed first: a kill mid-delete leaves a hidden folder (removed at the next start), never
            # a checkpoint-<step> that lost its weights but kept its state file and so looks complete.
            trash = path.with_name(f".{path.name}.deleted-{os.getpid()}")
            os.rename(path, trash)
            shutil.rmtree(trash)
            deleted.append(step)
    return deleted


def write_run_file(path: Path, text: str, append: bool = False) -> None:
    """Write (or append to) train_config.json or log.jsonl; a failed write (a full disk) is a SaveError
    naming the file and the last complete checkpoint. The records also travel in each checkpoint's state,
    so a resumed run rewrites log.jsonl whole."""
    try:
        with open(path, "a" if append else "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise SaveError(save_failed_message(path, e, path.parent)) from e


# ----------------------------------------------------------------------------------------------
# the output_dir lock: one run at a time writes run checkpoints there
#
# output_dir/.lock holds {"pid", "host"} of the run writing there, under an advisory flock: the kernel
# drops the flock when its process dies, so a lock file left by a killed run is stale and taken over.

LOCK_FILE = ".lock"


def check_writable(output_dir: Path) -> None:
    """Fail before any work when output_dir (or the folder it would be made in) cannot take files."""
    folder = next(p for p in (output_dir, *output_dir.absolute().parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=folder):  # an unnamed file (O_TMPFILE): nothing appears in the folder
            pass
    except OSError as e:
        why = f"{folder} is not writable" if folder != output_dir else "it is not writable"
        raise ConfigError(f"--output_dir {output_dir}: {why} ({e.strerror or e}); pick another --output_dir") from None


def output_dir_holder(output_dir: Path) -> str | None:
    """Who holds output_dir's lock ("pid 123 on host"), or None when nobody (no file, or a stale one)."""
    lock = OutputDirLock(output_dir)
    if not lock.path.is_file():
        return None
    try:
        if lock.acquire(create=False):
            lock.release(remove=False)  # only looking: a stale file stays for the run that takes it
            return None
    except OSError:
        return None
    return lock.holder()


class OutputDirLock:
    """`with OutputDirLock(output_dir):` holds output_dir for this process, or raises ConfigError naming
    the run (pid, host) that holds it. Systems without fcntl (Windows) run unlocked."""

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILE
        self.fd = None

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on {info['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self, create: bool = True) -> bool:
        """Take the flock; False when another process holds it."""
        try:
            import fcntl
        except ImportError:
            return True
        while True:
            fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:  # the holder may have removed the file between our open and our flock: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return True
            os.close(fd)
            if not create:
                return True

    def release(self, remove: bool = True) -> None:
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)  # before the unlock: nobody can lock a file that is about to vanish
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self):
        if not self.acquire():
            raise ConfigError(f"--output_dir {self.output_dir} is in use by another run ({self.holder()}); wait for it "
                              "to finish, or pick another --output_dir")
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
                os.write(self.fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
            except OSError:  # a full disk: the flock still holds, a second run just cannot name us
                pass
        return self

    def __exit__(self, *exc):
        self.release()
