"""Adapters on MMSRModel: adding, loading, switching, merging and saving named LoRA and side adapters.

peft does the work of LoRA (injection, trainable marking, state dicts; where it goes is in `lora.py`); this module
is what lets several named adapters, LoRA or side, live on one base model and checks that each belongs to it.
"""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from . import side
from .checkpoints import read_json, read_pickle_weights
from .errors import CheckpointError
from .files import check_finite, is_local_path
from .lora import keep_attention_weights_exact, set_lora_dropout
from .side import SIDE_CONFIG_FILE, SIDE_WEIGHTS_FILE, SideAdapterConfig

ADAPTER_RECORD = "mmsr_adapter.json"  # the base an adapter belongs to, and its metadata
BASE_FIELDS = ("adapter_name", "base_model", "base_sha256")  # the fields of the record that describe the base
PEFT_PREFIX = "base_model.model."  # how PeftModel names weights in adapter files; plain peft users load ours
ADAPTER_CONFIGS = ("adapter_config.json", SIDE_CONFIG_FILE)  # a LoRA (peft) adapter folder, a side adapter folder
LORA_WEIGHTS, LORA_PICKLE = "adapter_model.safetensors", "adapter_model.bin"  # peft's weights files
# the files an adapter save writes (or an earlier save of another kind wrote): a new save replaces them all
ADAPTER_FILES = (*ADAPTER_CONFIGS, LORA_WEIGHTS, LORA_PICKLE, SIDE_WEIGHTS_FILE, ADAPTER_RECORD)


def is_adapter_key(key: str) -> bool:
    return "lora_" in key or ".modules_to_save." in key or key.startswith("item_tower.side_adapters.")


def adapter_config_file(folder: Path) -> Path | None:
    """The adapter config in `folder` (peft's `adapter_config.json` or a side adapter's), None when it has none."""
    return next((folder / name for name in ADAPTER_CONFIGS if (folder / name).is_file()), None)


def check_adapter_name(name: str) -> None:
    """An adapter's name becomes a module name in the model (`lora_A.<name>`): non-empty, without a '.'."""
    if not isinstance(name, str) or not name or "." in name:
        hint = f", e.g. {name.replace('.', '_')!r}" if isinstance(name, str) and name.strip(".") else ""
        raise ValueError(f"adapter name {name!r}: must be a non-empty string without '.' (a module name){hint}")


def _owns_key(key: str, adapter_name: str) -> bool:
    """Whether a state-dict key is a weight of `adapter_name` (`…lora_A.<name>.weight`, `…modules_to_save.<name>.…`),
    not of an adapter whose name happens to be a module's (`fusion`, `text`)."""
    return re.search(rf"\.(lora_\w+|modules_to_save)\.{re.escape(adapter_name)}(\.|$)", key) is not None


def _base_key(key: str) -> str:
    # peft moves an adapted layer's weights under `base_layer`, and a module to save under `original_module`
    return key.replace(".base_layer", "").replace(".original_module", "")


def base_state_dict(model: nn.Module, merged_adapter: str | None = None) -> dict[str, torch.Tensor]:
    """The model's own weights under their plain names, without any adapter weights. With `merged_adapter`, that
    adapter's trained copies of its `modules_to_save` stand in for the originals (a merged export)."""
    if getattr(model, "quantization", None):
        raise ValueError(
            f"this model's encoders are quantized ({model.quantization}): it cannot be saved as a base; save its "
            "adapters, or load them onto the unquantized base and save (or merge) from there"
        )
    state = {_base_key(k): v for k, v in model.state_dict().items() if not is_adapter_key(k)}
    if merged_adapter is not None:
        copy = f".modules_to_save.{merged_adapter}."
        state.update({k.replace(copy, "."): v for k, v in model.state_dict().items() if copy in k})
    return state


def base_key_map(model: nn.Module) -> dict[str, str]:
    """Plain name -> current name of every base weight."""
    return {_base_key(k): k for k in model.state_dict() if not is_adapter_key(k)}


def _adapter_file(name_or_path, filename: str, revision=None) -> Path | None:
    """`filename` of an adapter (local folder or Hub repo, downloaded), None when the adapter has no such file."""
    local = Path(str(name_or_path))
    if local.is_dir():
        return local / filename if (local / filename).is_file() else None
    if is_local_path(name_or_path):
        raise CheckpointError(f"{name_or_path}: no adapter folder at {local.expanduser().resolve()}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(str(name_or_path), filename, revision=revision))
    except LocalEntryNotFoundError as err:  # offline (HF_HUB_OFFLINE=1, no connection): a subclass of the next one
        if _cached_repo(str(name_or_path)):
            return None  # the repo was downloaded, without this file
        raise CheckpointError(
            f"{name_or_path}: not in the local Hugging Face cache, and the Hub cannot be reached (offline: "
            "HF_HUB_OFFLINE=1, or no connection); load it once online, or pass a local folder"
        ) from err
    except EntryNotFoundError:  # the Hub says the repo has no such file
        return None
    except (HfHubHTTPError, OSError) as err:
        raise CheckpointError(f"{name_or_path}: cannot read the adapter from the Hub ({err})") from err


def _cached_repo(repo_id: str) -> bool:
    """Whether some revision of the Hub model repo `repo_id` is in the local Hugging Face cache."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    snapshots = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def _lora_weights(name_or_path, revision=None, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A LoRA adapter's weights, read like a base's: `adapter_model.safetensors` (every float tensor finite); peft's
    pickled `adapter_model.bin` only with `allow_pickle=True` (pickle can run code), and then tensors only."""
    from safetensors.torch import load_file

    path = _adapter_file(name_or_path, LORA_WEIGHTS, revision)
    if path is not None:
        return check_finite(load_file(path), path)  # an unreadable file: SafetensorError, reported by the caller
    if not allow_pickle:
        raise CheckpointError(
            f"{name_or_path}: no {LORA_WEIGHTS}; a pickled {LORA_PICKLE} can run arbitrary code, so it is only read "
            "with allow_pickle=True (if you trust its author; or convert it to safetensors)"
        )
    path = _adapter_file(name_or_path, LORA_PICKLE, revision)
    if path is None:
        raise CheckpointError(f"{name_or_path}: no adapter weights ({LORA_WEIGHTS} or {LORA_PICKLE})")
    return read_pickle_weights(path)


def _adapter_record(name_or_path, revision=None) -> dict:
    """The adapter's `mmsr_adapter.json` (local folder or Hub repo), `{}` when it has none (e.g. made by plain peft)."""
    path = _adapter_file(name_or_path, ADAPTER_RECORD, revision)
    return _read_record(path) if path is not None else {}


def _read_record(path: Path) -> dict:
    record = read_json(path)
    problem = _record_problem(record)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return record


def _record_problem(record) -> str | None:
    """What is wrong with an adapter record (`mmsr_adapter.json`, or the metadata given to `add_adapter`): the
    fields read here must have the types they are saved with. None when nothing is."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__} {str(record)[:200]}"
    trained_on = record.get("base_sha256")
    if trained_on is not None and not isinstance(trained_on, str):
        return f"base_sha256 is {trained_on!r}, expected a string (the sha256 of the base's weights) or null"
    lora = record.get("lora", {})
    if not isinstance(lora, dict):
        return f"lora is {str(lora)[:200]!r}, expected an object (the adapter's LoRA settings)"
    pattern = lora.get("dropout_pattern")
    pattern = {} if pattern is None else pattern
    if not isinstance(pattern, dict):
        return (
            f"lora.dropout_pattern is {str(pattern)[:200]!r}, expected an object (module pattern -> dropout) or null"
        )
    bad = {key: p for key, p in pattern.items() if isinstance(p, bool) or not isinstance(p, (int, float))}
    bad.update({key: p for key, p in pattern.items() if key not in bad and not 0 <= p <= 1})
    if bad:
        return f"lora.dropout_pattern has {bad}, expected dropout probabilities in [0, 1]"
    return None


# the fields of a LoRA `adapter_config.json` checked before peft reads them (peft fails on a wrong type deep inside)
LORA_FIELDS = {
    "r": ((int,), "an integer"),
    "lora_alpha": ((int, float), "a number"),
    "lora_dropout": ((int, float), "a number"),
    "target_modules": ((str, list, type(None)), "a regex string, a list of module names or null"),
    "modules_to_save": ((list, type(None)), "a list of module names or null"),
    "rank_pattern": ((dict, type(None)), "an object or null"),
    "alpha_pattern": ((dict, type(None)), "an object or null"),
}


def _check_peft_config(path: Path) -> None:
    """A peft `adapter_config.json` that peft would fail on with a bare KeyError or TypeError is an error naming the
    file, the field and the value: not a JSON object, an unknown `peft_type`, a LoRA field of the wrong type."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    settings = read_json(path)
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(settings).__name__} {str(settings)[:200]}")
    peft_type = settings.get("peft_type")
    if not isinstance(peft_type, str) or peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise CheckpointError(f"{path}: peft_type is {peft_type!r}, expected a peft method such as 'LORA'")
    if peft_type != "LORA":
        return
    for key, (types, expected) in LORA_FIELDS.items():
        value = settings.get(key)
        if key in settings and (isinstance(value, bool) or not isinstance(value, types)):
            raise CheckpointError(f"{path}: {key} is {value!r}, expected {expected}")
        if isinstance(value, list) and not all(isinstance(name, str) for name in value):
            raise CheckpointError(f"{path}: {key} is {value!r}, expected {expected}")


class AdapterMixin:
    """Several named adapters on one model, in place (the model stays an `MMSRModel`): peft's (LoRA) and side
    adapters (`mmsr_peft.side`), one active at a time.

    Each adapter keeps its config and its metadata (what `mmsr_adapter.json` records: target domain, data,
    metrics, method, LoRA settings); adapters whose `modules_to_save` differ live side by side (peft issue #2422).
    """

    def add_adapter(self, peft_config, adapter_name: str = "default", metadata: dict | None = None) -> None:
        """Adds a new adapter (a peft config such as `LoraConfig`, or a `SideAdapterConfig`) and makes it the
        active, trainable one.

        `metadata` is kept with it and written to `mmsr_adapter.json` by `save_adapter`; its
        `metadata["lora"]["dropout_pattern"]` (LoRA dropout per module pattern, which peft's config cannot hold)
        is applied to the new layers.
        """
        import warnings

        from peft import inject_adapter_in_model

        self._check_new_adapter(adapter_name)
        problem = _record_problem(metadata or {})
        if problem:
            raise ValueError(f"metadata of adapter {adapter_name!r}: {problem}")
        peft_config.base_model_name_or_path = self.name_or_path
        if isinstance(peft_config, SideAdapterConfig):
            self._add_side_adapter(peft_config, adapter_name, metadata)
            return
        previous, trainable = self.active_adapter(), self._trainable()  # both back if the injection fails
        try:
            with warnings.catch_warnings():  # several adapters on one model are the point here
                warnings.filterwarnings("ignore", "Already found a `peft_config` attribute")
                inject_adapter_in_model(peft_config, self, adapter_name=adapter_name)
        except Exception:  # a config peft cannot apply (a wrong type, no module matched): undo what it injected
            self._peft_configs()[adapter_name], self._metadata()[adapter_name] = peft_config, {}
            self._delete_adapter(adapter_name, previous, trainable)
            raise
        self._peft_configs()[adapter_name] = peft_config
        self._metadata()[adapter_name] = dict(metadata or {})
        dropout_pattern = self._metadata()[adapter_name].get("lora", {}).get("dropout_pattern")
        if dropout_pattern:
            set_lora_dropout(self, adapter_name, dropout_pattern)
        keep_attention_weights_exact(self)
        self.set_adapter(adapter_name)

    def _add_side_adapter(self, config: SideAdapterConfig, adapter_name: str, metadata: dict | None) -> None:
        """A side network beside the encoders (see `mmsr_peft.side.attach`); only it trains (the base is frozen)."""
        side.attach(self, config, adapter_name)
        self._peft_configs()[adapter_name] = config
        self._metadata()[adapter_name] = dict(metadata or {})
        self.requires_grad_(False)
        self.set_adapter(adapter_name)

    def _check_new_adapter(self, adapter_name: str) -> None:
        check_adapter_name(adapter_name)
        if adapter_name in self.list_adapters():
            raise ValueError(f"adapter {adapter_name!r} already exists; loaded adapters: {self.list_adapters()}")

    def _is_side(self, adapter_name: str) -> bool:
        return isinstance(self._peft_configs().get(adapter_name), SideAdapterConfig)

    def load_adapter(
        self,
        name_or_path: str | os.PathLike,
        adapter_name: str | None = None,
        revision=None,
        force: bool = False,
        allow_pickle: bool = False,
    ) -> str:
        """Loads an adapter saved in peft's layout (local folder or Hub repo id) and activates it.

        An adapter records the base weights it was trained on (`mmsr_adapter.json`); loading it onto another
        base, or loading one without that record (plain peft), is an error unless `force=True`. Weights are read
        from safetensors and must be finite; a pickled `adapter_model.bin` is refused unless `allow_pickle=True`.
        Returns the adapter's name (default: the folder or repo name, its dots made underscores: `lora-office-v1.0`
        loads as `lora-office-v1_0`, since a name becomes a module name).
        """
        from peft import PeftConfig, set_peft_model_state_dict

        adapter_name = adapter_name or Path(str(name_or_path)).name.replace(".", "_")
        self._check_new_adapter(adapter_name)
        record = _adapter_record(name_or_path, revision)
        trained_on = record.get("base_sha256")
        if not trained_on and self.base_fingerprint and not force:
            raise CheckpointError(
                f"{name_or_path}: no {ADAPTER_RECORD} with the base it was trained on, so it cannot be checked "
                f"against this model ({self.name_or_path!r}); pass force=True to load it anyway"
            )
        if trained_on and self.base_fingerprint and trained_on != self.base_fingerprint and not force:
            raise CheckpointError(
                f"{name_or_path}: adapter was trained on base {record.get('base_model')!r} (weights sha256 "
                f"{trained_on[:12]}…), but this model is {self.name_or_path!r} (sha256 {self.base_fingerprint[:12]}…); "
                "pass force=True to load it anyway"
            )
        metadata = {k: v for k, v in record.items() if k not in BASE_FIELDS}
        side_config = _adapter_file(name_or_path, SIDE_CONFIG_FILE, revision)
        if side_config is not None:
            return self._load_side_adapter(name_or_path, side_config, adapter_name, metadata, revision)
        from safetensors import SafetensorError

        config_path = _adapter_file(name_or_path, ADAPTER_CONFIGS[0], revision)
        if config_path is not None:
            _check_peft_config(config_path)
        try:
            peft_config = PeftConfig.from_pretrained(str(name_or_path), revision=revision)
            weights = _lora_weights(name_or_path, revision, allow_pickle)
        except CheckpointError:  # refused pickle, non-finite weights: the message says it already
            raise
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:  # missing files, a bad config
            where = config_path or name_or_path
            raise CheckpointError(f"{where}: cannot read a peft adapter ({type(err).__name__}: {err})") from err
        weights = {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items()}
        previous, trainable = self.active_adapter(), self._trainable()  # both back if the load fails
        try:
            self.add_adapter(peft_config, adapter_name, metadata)  # undoes its own injection if it fails
        except (KeyError, TypeError, ValueError) as err:  # a config value peft cannot apply to this model
            detail = " ".join(f"{type(err).__name__}: {err}".split())[:500]
            raise CheckpointError(
                f"{config_path or name_or_path}: cannot apply the adapter config ({detail})"
            ) from None
        try:
            result = set_peft_model_state_dict(self, weights, adapter_name=adapter_name)
        except (RuntimeError, KeyError) as err:  # shape mismatch or missing module: another architecture or rank
            self._delete_adapter(adapter_name, previous, trainable)
            mismatches = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
            detail = f"{mismatches[0]} (and {len(mismatches) - 1} more)" if mismatches else repr(err)
            raise CheckpointError(f"{name_or_path}: adapter does not fit this base model: {detail}") from None
        unexpected = [k for k in result.unexpected_keys if is_adapter_key(k)]
        expected = {k for k in self.state_dict() if is_adapter_key(k) and _owns_key(k, adapter_name)}
        missing = sorted(k for k in result.missing_keys if k in expected)
        if unexpected or missing:
            self._delete_adapter(adapter_name, previous, trainable)
            raise CheckpointError(
                f"{name_or_path}: adapter does not fit this base model: unexpected keys {unexpected[:10]}, "
                f"missing keys {missing[:10]}"
            )
        self.eval()
        return adapter_name

    def _load_side_adapter(self, name_or_path, config_path: Path, adapter_name: str, metadata: dict, revision) -> str:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        weights_path = _adapter_file(name_or_path, SIDE_WEIGHTS_FILE, revision)
        if weights_path is None:
            raise CheckpointError(f"{name_or_path}: a side adapter config without {SIDE_WEIGHTS_FILE}")
        try:
            config = SideAdapterConfig.from_file(config_path)
            weights = check_finite(load_file(weights_path), weights_path)
        except (ValueError, SafetensorError, OSError) as err:
            raise CheckpointError(f"{name_or_path}: cannot read a side adapter ({type(err).__name__}: {err})") from err
        previous, trainable = self.active_adapter(), self._trainable()  # both back if the load fails
        try:
            self.add_adapter(config, adapter_name, metadata)
        except CheckpointError as err:  # built for encoders of other widths
            raise CheckpointError(f"{name_or_path}: adapter does not fit this base model: {err}") from None
        try:
            side.load_weights(self, adapter_name, weights)
        except RuntimeError as err:  # missing, unexpected or reshaped weights
            self._delete_adapter(adapter_name, previous, trainable)
            detail = " ".join(str(err).split())
            raise CheckpointError(f"{name_or_path}: adapter weights do not fit its config: {detail[:500]}") from None
        self.eval()
        return adapter_name

    def load_adapters(self, folder: str | os.PathLike, force: bool = False, allow_pickle: bool = False) -> list[str]:
        """Loads every adapter saved by `save_adapters` in `folder` (one subfolder each, named after the adapter)
        and returns their names, sorted; the last one is active. `force` and `allow_pickle` as in `load_adapter`."""
        subfolders = sorted(p for p in Path(folder).iterdir() if adapter_config_file(p) is not None)
        if not subfolders:
            raise CheckpointError(f"{folder}: no adapter subfolder (with {' or '.join(ADAPTER_CONFIGS)}) in it")
        return [self.load_adapter(path, path.name, force=force, allow_pickle=allow_pickle) for path in subfolders]

    def save_adapter(
        self, folder: str | os.PathLike, adapter_name: str | None = None, metadata: dict | None = None
    ) -> None:
        """Writes one adapter in peft's layout (`adapter_config.json` + `adapter_model.safetensors`) and its
        `mmsr_adapter.json` (the base it belongs to, and its metadata updated with `metadata`), atomically. The
        adapter files of a previous save in `folder` are replaced (other files, such as a card, are kept)."""
        from .files import atomic_directory

        with atomic_directory(folder, owned=ADAPTER_FILES) as tmp:
            self._write_adapter(tmp, adapter_name or self.active_adapter(), metadata)

    def save_adapters(self, folder: str | os.PathLike) -> None:
        """Writes every loaded adapter to `folder/<adapter name>/` (the layout `load_adapters` reads), atomically.
        The adapter subfolders of a previous save in `folder` are replaced: an adapter deleted since is gone."""
        from .files import atomic_directory

        if not self.list_adapters():
            raise ValueError("no adapter to save")
        previous = [p for p in Path(folder).iterdir() if adapter_config_file(p)] if Path(folder).is_dir() else []
        with atomic_directory(folder, owned=[glob.escape(p.name) for p in previous]) as tmp:
            for name in self.list_adapters():
                self._write_adapter(tmp / name, name)

    def _write_adapter(self, folder: Path, adapter_name: str, metadata: dict | None = None) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        self._require_adapter(adapter_name)
        self._metadata()[adapter_name].update(metadata or {})
        if self._is_side(adapter_name):
            state, prefix, weights_file = side.weights(self, adapter_name), "", SIDE_WEIGHTS_FILE
        else:
            state = get_peft_model_state_dict(self, adapter_name=adapter_name)
            prefix, weights_file = PEFT_PREFIX, LORA_WEIGHTS
        folder.mkdir(parents=True, exist_ok=True)
        self._peft_configs()[adapter_name].save_pretrained(str(folder))
        record = {"adapter_name": adapter_name, "base_model": self.name_or_path, "base_sha256": self.base_fingerprint}
        record.update(self._metadata()[adapter_name])
        (folder / ADAPTER_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        tensors = {prefix + k: v.detach().contiguous().cpu() for k, v in state.items()}
        save_file(tensors, folder / weights_file, {"format": "pt"})

    def adapter_metadata(self, adapter_name: str | None = None) -> dict:
        """What `mmsr_adapter.json` records about an adapter besides its base (target, data, metrics, settings)."""
        adapter_name = adapter_name or self.active_adapter()
        self._require_adapter(adapter_name)
        return self._metadata()[adapter_name]

    def save_merged(self, folder: str | os.PathLike, adapter_name: str | None = None, overwrite: bool = False) -> None:
        """Writes a standalone base checkpoint with `adapter_name` merged into the weights (and its trained
        `modules_to_save` in place of the originals); it loads with plain `MMSRModel.from_pretrained` and scores
        like this model with the adapter active. This model is unchanged. A `folder` that already holds a model
        (its own base, say) is refused unless `overwrite=True`."""
        adapter_name = adapter_name or self.active_adapter()
        self._require_adapter(adapter_name, "to merge")
        if self._is_side(adapter_name):
            raise ValueError(
                f"adapter {adapter_name!r} is a side adapter: a network beside the base, not a change of its weights, "
                "so it cannot be merged; save it with save_adapter and load it onto the base"
            )
        if (Path(folder) / "model.safetensors").exists() and not overwrite:
            raise FileExistsError(
                f"{folder} already holds a model (model.safetensors); pass overwrite=True to replace it"
            )
        layers = [layer for layer in self._tuner_layers() if adapter_name in layer.lora_A]
        fingerprint = self.base_fingerprint
        original = {k: v.clone() for k, v in base_state_dict(self).items()}  # unmerging is exact only up to rounding
        for layer in layers:
            if not layer.merged:  # LoRA on nn.MultiheadAttention merges its out_proj layer too
                layer.merge(adapter_names=[adapter_name])
        try:
            self.save_pretrained(folder, state_dict=base_state_dict(self, merged_adapter=adapter_name))
        finally:
            for layer in layers:
                if layer.merged:
                    layer.unmerge()
            self.load_state_dict(original)
            self.base_fingerprint = fingerprint  # this model is still the unmerged base

    def _tuner_layers(self):
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in self.modules() if isinstance(m, BaseTunerLayer)]

    def _adapter_modules(self):
        """peft's LoRA layers and the wrappers of `modules_to_save`."""
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        return [m for m in self.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]

    def _peft_configs(self) -> dict:
        return self.__dict__.setdefault("_adapter_configs", {})

    def _metadata(self) -> dict:
        return self.__dict__.setdefault("_adapter_metadata", {})

    def list_adapters(self) -> list[str]:
        return list(self._peft_configs())

    def _require_adapter(self, adapter_name: str, purpose: str = "") -> None:
        if adapter_name not in self.list_adapters():
            what = f"no adapter {adapter_name!r}" + (f" {purpose}" if purpose else "")
            raise ValueError(f"{what}; loaded adapters: {self.list_adapters()}")

    def active_adapter(self) -> str | None:
        if self.item_tower.active_side is not None:
            return self.item_tower.active_side
        layers = self._tuner_layers()
        active = layers[0].active_adapters if layers and not layers[0].disable_adapters else []
        return active[0] if active else None  # none once its last LoRA adapter is deleted

    def set_adapter(self, adapter_name: str) -> None:
        """Activates one loaded adapter and makes it the trainable one (the others stay loaded but unused; a
        module another adapter saves goes back to its original weights)."""
        from peft.functional import set_adapter

        self._require_adapter(adapter_name)
        is_side = self._is_side(adapter_name)
        for module in self._adapter_modules():
            saves = adapter_name in getattr(module, "modules_to_save", {})  # a copy this adapter trains
            module.enable_adapters(not is_side or saves)
            if is_side and saves:
                module.set_adapter(adapter_name)
        for name, network in self.item_tower.side_adapters.items():
            network.requires_grad_(name == adapter_name)
        self.item_tower.active_side = adapter_name if is_side else None
        if not is_side:
            set_adapter(self, adapter_name)

    def disable_adapters(self) -> None:
        """Runs the base model alone until `set_adapter` is called again."""
        for module in self._adapter_modules():
            module.enable_adapters(False)
        self.item_tower.active_side = None

    def delete_adapter(self, adapter_name: str) -> None:
        """Removes a loaded adapter. The active adapter stays active; deleting the active one leaves the base model
        running alone (as `disable_adapters`) until `set_adapter` is called. (peft would pick a replacement layer by
        layer, alphabetically, so that different layers could run different adapters.) Which parameters train is
        left as it was: an adapter frozen by hand stays frozen."""
        self._delete_adapter(adapter_name, self.active_adapter(), self._trainable())

    def _trainable(self) -> dict[str, bool]:
        return {name: parameter.requires_grad for name, parameter in self.named_parameters()}

    def _delete_adapter(self, adapter_name: str, then_active: str | None, trainable: dict[str, bool]) -> None:
        """Deletes `adapter_name`, activates `then_active` (when it is still loaded; else none) and gives every
        remaining parameter its `requires_grad` from `trainable` (activating marks an adapter trainable)."""
        from peft.functional import delete_adapter

        self._require_adapter(adapter_name)
        if self._is_side(adapter_name):
            for module in self._adapter_modules():
                if adapter_name in getattr(module, "modules_to_save", {}):
                    module.delete_adapter(adapter_name, new_active_adapters=None)
            del self.item_tower.side_adapters[adapter_name]
            if self.item_tower.active_side == adapter_name:
                self.item_tower.active_side = None
        else:
            delete_adapter(self, adapter_name, prefix="lora_")
        self._peft_configs().pop(adapter_name)
        self._metadata().pop(adapter_name)
        getattr(self, "peft_config", {}).pop(adapter_name, None)
        # peft's deletion re-points the layers (and drops a shared `modules_to_save` copy) on its own: set every
        # module again, the same way
        if then_active is not None and then_active in self.list_adapters():
            self.set_adapter(then_active)
        else:
            self.disable_adapters()
        for name, parameter in self.named_parameters():
            if name in trainable:
                parameter.requires_grad_(trainable[name])
