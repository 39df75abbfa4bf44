"""Single files from the Hugging Face hub (`download_file_from_hf`), clearing its cache, and
retrying hub calls that were rate limited: the classic ``utils`` helpers for the hub."""

from __future__ import annotations

import inspect
import json
import random
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.constants import HF_HUB_CACHE
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

CACHE_DIR = HF_HUB_CACHE


class HubFileUnavailableError(FileNotFoundError):
    """A file asked of the Hugging Face hub is neither in the local cache nor downloadable."""


def select_compatible_kwargs(
    kwargs_dict: Mapping[str, Any], callable: Callable[..., Any]
) -> dict[str, Any]:
    """The entries of `kwargs_dict` that name a parameter of `callable`."""
    parameters = inspect.signature(callable).parameters
    return {key: value for key, value in kwargs_dict.items() if key in parameters}


def download_file_from_hf(
    repo_name: str,
    file_name: str,
    subfolder: str = ".",
    cache_dir: str | None = CACHE_DIR,
    force_is_torch: bool = False,
    **kwargs: Any,
) -> Any:
    """`file_name` of hub repo `repo_name` (from the local cache, or downloaded when online):
    a ``.pth`` file (or any, with `force_is_torch`) loaded with ``torch.load(weights_only=True)``
    on the CPU, a ``.json`` file parsed, any other file's local path. Extra keyword arguments
    that ``hf_hub_download`` takes (``revision``, ``token``, ...) are passed on.
    """
    try:
        path = call_hf_with_retry(
            hf_hub_download,
            repo_id=repo_name,
            filename=file_name,
            subfolder=subfolder,
            cache_dir=cache_dir,
            **select_compatible_kwargs(kwargs, hf_hub_download),
        )
    except (LocalEntryNotFoundError, EntryNotFoundError) as error:
        raise HubFileUnavailableError(
            f"{file_name!r} of Hugging Face repo {repo_name!r} is not in the local cache "
            f"({cache_dir}) and could not be downloaded ({type(error).__name__}). Download it "
            "on a machine with network access, or point HF_HUB_CACHE/HF_HOME at a cache that "
            "holds it."
        ) from error
    if path.endswith(".pth") or force_is_torch:
        return torch.load(path, map_location="cpu", weights_only=True)
    if path.endswith(".json"):
        with open(path) as file:
            return json.load(file)
    return path


def clear_huggingface_cache() -> None:
    """Delete the Hugging Face hub cache folder (`CACHE_DIR`) and everything downloaded in it."""
    print("Deleting Hugging Face cache directory and all its contents.")
    shutil.rmtree(CACHE_DIR, ignore_errors=True)


# The classic `get_dataset` names: small (10k-text) samples of common corpora on the hub.
def get_rotary_pct_from_config(config: Any) -> float:
    """The fraction of each head's dimensions that rotary embeddings rotate, from a Hugging Face
    config: ``rotary_pct`` (transformers 4), ``rope_parameters["partial_rotary_factor"]``
    (transformers 5), else 1.0."""
    if config is None:
        return 1.0
    if hasattr(config, "rotary_pct"):
        return float(config.rotary_pct)
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "partial_rotary_factor" in rope:
        return float(rope["partial_rotary_factor"])
    return 1.0


# The classic module's private names, which its tests and fixtures read.
_HF_RETRY_MAX_DELAY_SECONDS = 120.0
_TL_RETRY_WRAPPED_ATTR = "_tl_hf_retry_wrapped"  # marks a from_pretrained already wrapped


def call_hf_with_retry(
    func: Callable[..., Any],
    *args: Any,
    max_attempts: int = 3,
    base_delay: float = 10.0,
    **kwargs: Any,
) -> Any:
    """``func(*args, **kwargs)``, called again when the hub answers HTTP 429 (rate limited).

    Waits the response's ``Retry-After`` seconds, else ``base_delay * 2**attempt`` (at most 120
    s, with +-20% jitter); other errors, and the last 429, propagate.
    """
    for attempt in range(max_attempts):
        try:
            return func(*args, **kwargs)
        except Exception as error:
            response = getattr(error, "response", None)
            if getattr(response, "status_code", None) != 429 or attempt == max_attempts - 1:
                raise
            headers = getattr(response, "headers", None) or {}
            try:
                wait = float(headers.get("Retry-After", ""))
            except (TypeError, ValueError):
                wait = min(base_delay * 2**attempt, _HF_RETRY_MAX_DELAY_SECONDS)
                wait *= 0.8 + 0.4 * random.random()
            time.sleep(wait)
    raise ValueError(f"max_attempts must be >= 1, got {max_attempts}.")


def enable_hf_retry() -> None:
    """Make transformers' ``Auto*.from_pretrained`` retry on HTTP 429 (`call_hf_with_retry`), for
    the rest of the process; calling it again changes nothing."""
    import transformers

    for name in ("AutoConfig", "AutoModel", "AutoTokenizer", "AutoProcessor"):
        cls = getattr(transformers, name)
        original = cls.from_pretrained
        if getattr(original, _TL_RETRY_WRAPPED_ATTR, False):
            continue
        function = original.__func__

        def from_pretrained(klass: Any, *args: Any, _function: Any = function, **kw: Any) -> Any:
            return call_hf_with_retry(_function, klass, *args, **kw)

        setattr(from_pretrained, _TL_RETRY_WRAPPED_ATTR, True)
        cls.from_pretrained = classmethod(from_pretrained)
