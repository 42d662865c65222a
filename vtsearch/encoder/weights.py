"""Encoder weights: loading them through open_clip, and checking they are still the same.

Models are named three ways, as open_clip names them: a built-in name plus a pretrained
tag (``ViT-B-32`` + ``laion2b_s34b_b79k``), ``hf-hub:org/name``, or ``local-dir:/path``
(a folder holding ``open_clip_config.json`` and the weights). Weight loading failures
become one :class:`ModelLoadError` that says what went wrong (``offline`` when the weights
could not be fetched).

Weights can change under an unchanged name (a ``local-dir`` folder overwritten, a hub
repo updated), so an index records its encoder's :data:`PROBE_TEXT` vector; an encoder
that no longer reproduces it is refused with :class:`ModelMismatchError`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import socket
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence
from urllib.parse import urlparse

import numpy as np
import open_clip
import torch
from PIL import Image

from ..config import HF_HUB_PREFIX, LOCAL_DIR_PREFIX, EncoderSpec
from ..errors import (
    OFFLINE_ADVICE, MissingExtraError, ModelLoadError, ModelMismatchError, PretrainedTagMissingError,
    WeightsChangedError,
)

if TYPE_CHECKING:
    from .encoder import Encoder

__all__ = [
    "PROBE_AGREEMENT", "PROBE_TEXT", "Tokenizer", "Transform",
    "check_probe", "check_weights", "load_open_clip", "model_config", "needs_quick_gelu", "needs_reparameterization",
    "probe_agreement", "reparameterize",
]

Transform = Callable[[Image.Image], torch.Tensor]
Tokenizer = Callable[..., torch.Tensor]

PROBE_TEXT = "a photo of a dog on a beach"  # its vector fingerprints the weights an index was built with
PROBE_AGREEMENT = 0.99  # same weights agree to ~1e-4 (fp16 on a GPU); other weights fall far below

WEIGHT_FILES = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
    "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
)

Source = tuple[str, str, str]  # ("hub", repo, filename) or ("url", url, "")


# loading

def load_open_clip(spec: EncoderSpec) -> tuple[torch.nn.Module, Transform, Tokenizer]:
    """The model ``spec`` names with its eval preprocessing and tokenizer, or raise
    :class:`ModelLoadError` (:class:`MissingExtraError` when it needs ``transformers``).

    Weights trained with QuickGELU get the QuickGELU architecture (:func:`needs_quick_gelu`),
    and re-parameterisable towers (MobileCLIP's FastViT) are fused for inference."""
    check_weights_available(spec)
    check_extras(spec)
    try:
        with _quiet_open_clip():
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.model, pretrained=spec.pretrained or None, force_quick_gelu=needs_quick_gelu(spec)
            )
            tokenizer = open_clip.get_tokenizer(spec.model)
    except ModelLoadError:
        raise
    except Exception as error:  # open_clip raises RuntimeError/ValueError/OSError
        raise _load_failure(spec, error) from None
    reparameterize(model)
    return model, preprocess, tokenizer


def needs_quick_gelu(spec: EncoderSpec) -> bool:
    """True when ``spec``'s pretrained tag was trained with QuickGELU (OpenAI's weights,
    DFN, MetaCLIP, LAION-400M for ViT-B-32) but its architecture is the GELU one.

    open_clip only warns about that mismatch (and loading hides warnings); the model would
    load and run, silently worse. Such tags are registered under both ``ViT-B-32`` and
    ``ViT-B-32-quickgelu``; built with QuickGELU, the first is the second."""
    if not spec.pretrained or spec.model.startswith((LOCAL_DIR_PREFIX, HF_HUB_PREFIX)):
        return False
    name = spec.model.replace("/", "-")
    tag = open_clip.get_pretrained_cfg(name, spec.pretrained) or {}
    config = open_clip.get_model_config(name) or {}
    return bool(tag.get("quick_gelu", False)) and not config.get("quick_gelu", False)


def model_config(spec: EncoderSpec) -> dict | None:
    """The open_clip model config ``spec`` builds (None for a hub model: it is fetched)."""
    if spec.model.startswith(LOCAL_DIR_PREFIX):
        try:
            config = json.loads((Path(spec.model[len(LOCAL_DIR_PREFIX):]) / "open_clip_config.json").read_text())
        except (OSError, ValueError):
            return None
        return config.get("model_cfg") if isinstance(config, dict) else None
    if spec.model.startswith(HF_HUB_PREFIX):
        return None
    config = open_clip.get_model_config(spec.model.replace("/", "-"))
    if config is not None and needs_quick_gelu(spec):
        config = {**config, "quick_gelu": True}
    return config


def check_extras(spec: EncoderSpec) -> None:
    """Raise :class:`MissingExtraError` when the model needs ``transformers`` (a Hugging
    Face text tower or tokenizer: SigLIP, XLM-R, ...) and it is not installed."""
    text = ((model_config(spec) or {}).get("text_cfg") or {})
    if (text.get("hf_model_name") or text.get("hf_tokenizer_name")) and not _installed("transformers"):
        raise _missing_transformers(spec)


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _missing_transformers(spec: EncoderSpec) -> MissingExtraError:
    return MissingExtraError(f"{spec.describe()} needs the transformers package (its text tower or tokenizer "
                             "comes from Hugging Face), which is not installed",
                             package="transformers", extra="multilingual")


def reparameterize(model: torch.nn.Module) -> bool:
    """Fuse the image tower's train-time branches for inference (MobileCLIP's FastViT:
    MobileOne and RepMixer blocks; ~1.3x faster, same outputs); True when it had some."""
    if not needs_reparameterization(model.visual):
        return False
    from timm.utils import reparameterize_model

    reparameterize_model(model.visual, inplace=True)
    return True


def needs_reparameterization(module: torch.nn.Module) -> bool:
    """True when ``module`` holds blocks that timm can fuse for inference."""
    return any(hasattr(child, name) for child in module.modules()
               for name in ("reparameterize", "switch_to_deploy", "fuse"))


def check_weights_available(spec: EncoderSpec) -> None:
    """Fail fast and clearly before open_clip would retry downloads for a minute, or
    silently return a randomly initialised model."""
    if spec.model.startswith(LOCAL_DIR_PREFIX):
        check_local_dir(Path(spec.model[len(LOCAL_DIR_PREFIX):]))
        return
    sources = _weight_sources(spec)
    if sources is None or all(_cached(*source) for source in sources):
        return
    host = _source_host(sources[0])
    if not _reachable(host):
        raise ModelLoadError(
            f"the weights of {spec.describe()} are not in the local cache and {host} "
            f"cannot be reached; {OFFLINE_ADVICE}", offline=True
        )


def check_local_dir(folder: Path) -> None:
    """Raise :class:`ModelLoadError` unless ``folder`` is in open_clip's local-dir layout."""
    if not folder.is_dir():
        raise ModelLoadError(f"model folder {folder} does not exist")
    if not (folder / "open_clip_config.json").is_file():
        raise ModelLoadError(
            f"model folder {folder} has no open_clip_config.json "
            "(open_clip's local-dir layout: open_clip_config.json + weights)"
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelLoadError(
            f"model folder {folder} has no weights file "
            f"(expected one of: {', '.join(WEIGHT_FILES[:3])}, ...)"
        )


def _weight_sources(spec: EncoderSpec) -> list[Source] | None:
    """Where a hub or built-in model's weights come from; None for a weights file on disk."""
    if spec.model.startswith(HF_HUB_PREFIX):
        return [("hub", spec.model[len(HF_HUB_PREFIX):], "open_clip_config.json")]
    name = spec.model.replace("/", "-")
    if open_clip.get_model_config(name) is None:
        raise ModelLoadError(
            f"unknown model {spec.model!r}; see open_clip.list_models(), "
            "or use hf-hub:org/name or local-dir:/path"
        )
    if not spec.pretrained:
        raise PretrainedTagMissingError(f"no weights named for {spec.model}", model=spec.model,
                                        known_tags=open_clip.list_pretrained_tags_by_model(name))
    if Path(spec.pretrained).is_file():
        return None
    config = open_clip.get_pretrained_cfg(name, spec.pretrained)
    if not config:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ModelLoadError(
            f"unknown pretrained tag {spec.pretrained!r} for {spec.model}; "
            f"known tags: {', '.join(tags) or 'none'}"
        )
    if config.get("hf_hub"):
        repo, filename = _split_hub(config["hf_hub"])
        return [("hub", repo, filename)]
    return [("url", config.get("url", ""), "")]


def _split_hub(hub: str) -> tuple[str, str]:
    """open_clip writes 'org/name/' (default file) or 'org/name/file.bin'."""
    repo, filename = os.path.split(hub)
    return repo, filename or "open_clip_pytorch_model.bin"


def _cached(kind: str, where: str, filename: str) -> bool:
    if kind == "url":
        return bool(where) and (Path.home() / ".cache" / "clip" / os.path.basename(where)).is_file()
    from huggingface_hub import try_to_load_from_cache

    names = [filename]
    if filename.endswith(".bin"):
        names.insert(0, filename.replace("pytorch_model.bin", "model.safetensors"))
    return any(isinstance(try_to_load_from_cache(where, name), str) for name in names)


def _source_host(source: Source) -> str:
    kind, where, _ = source
    if kind == "url":
        return urlparse(where).hostname or where
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return urlparse(endpoint).hostname or "huggingface.co"


def _reachable(host: str, timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_failure(spec: EncoderSpec, error: Exception) -> ModelLoadError:
    if _is_missing_transformers(error):
        return _missing_transformers(spec)
    text = str(error)
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    if spec.model.startswith(LOCAL_DIR_PREFIX):
        return ModelLoadError(f"cannot load {spec.describe()}: {first_line}")
    return ModelLoadError(f"cannot fetch weights for {spec.describe()} ({first_line[:200]})", offline=True)


def _is_missing_transformers(error: BaseException | None) -> bool:
    """open_clip says "pip install transformers" (a tower) or fails to import it (a tokenizer)."""
    while error is not None:
        if isinstance(error, ImportError) and (error.name or "").split(".")[0] == "transformers":
            return True
        if "install transformers" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


class _OpenClipRecords(logging.Filter):
    """Drops the records open_clip's own code logs (it logs through the root logger's
    functions, ``logging.info(...)``), and only those: other code's records pass."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = os.path.dirname(os.path.abspath(open_clip.__file__)) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(self.folder)


class _QuietLoading:
    """What silences a model load, shared by loads in several threads at once: the first
    to start installs it, the last to finish takes it away."""

    LOGGERS = ("huggingface_hub",)  # the libraries' own loggers; open_clip has none (see above)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loads = 0
        self.records = _OpenClipRecords()
        self.levels: dict[str, int] = {}

    def __enter__(self) -> None:
        with self.lock:
            if self.loads == 0:
                logging.getLogger().addFilter(self.records)
                for name in self.LOGGERS:
                    self.levels[name] = logging.getLogger(name).level
                    logging.getLogger(name).setLevel(logging.CRITICAL)
            self.loads += 1

    def __exit__(self, *_exc: object) -> None:
        with self.lock:
            self.loads -= 1
            if self.loads == 0:
                logging.getLogger().removeFilter(self.records)
                for name, level in self.levels.items():
                    logging.getLogger(name).setLevel(level)


_QUIET_LOADING = _QuietLoading()


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """open_clip logs and warns liberally while loading; the user sees our message. Only
    open_clip's and huggingface_hub's records are held back, and only while loading."""
    with _QUIET_LOADING, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# the same weights as when an index was built

def probe_agreement(encoder: Encoder, probe: Sequence[float]) -> float:
    """Cosine between ``encoder``'s :data:`PROBE_TEXT` vector and a recorded ``probe``."""
    return float(np.dot(encoder.probe_vector(), probe))


def check_probe(encoder: Encoder, probe: Sequence[float] | None, where: str) -> None:
    """Raise :class:`ModelMismatchError` when ``encoder`` ``where`` (e.g. "on this Ray
    worker") no longer reproduces the index's recorded ``probe`` (None: nothing recorded)."""
    if probe is not None and probe_agreement(encoder, probe) < PROBE_AGREEMENT:
        raise ModelMismatchError(f"{encoder.spec.describe()} {where} embeds text differently "
                                 "from the index's encoder: its weights differ here")


def check_weights(encoder: Encoder, embed_dim: int, probe: Sequence[float] | None, index_path: Path | str) -> None:
    """Raise :class:`ModelMismatchError` unless ``encoder`` still has the weights the index at
    ``index_path`` was built with: the same width, and its ``probe`` reproduced (None:
    the index recorded none, so only the width is checked)."""
    if encoder.embed_dim != embed_dim:
        raise WeightsChangedError(
            f"{encoder.spec.describe()} now gives {encoder.embed_dim}-wide vectors, but index "
            f"{index_path} holds {embed_dim}-wide ones: its weights changed "
            "since the index was built", path=str(index_path), stored=encoder.spec.describe()
        )
    if probe is None:
        return
    agreement = probe_agreement(encoder, probe)
    if agreement < PROBE_AGREEMENT:
        raise WeightsChangedError(
            f"{encoder.spec.describe()} now embeds text differently from when index {index_path} "
            f"was built (cosine {agreement:.3f} on a fixed probe text): its weights changed",
            path=str(index_path), stored=encoder.spec.describe()
        )
