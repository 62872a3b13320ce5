"""Where a colpali-engine checkpoint comes from: a local directory or a Hugging Face Hub id.

``resolve_source`` turns either into a local directory, its parsed ``config.json`` and a revision that
changes whenever the weights do. Hub ids are looked up in the local Hugging Face cache first, so a
service whose model is cached starts without touching the network; only a miss downloads.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchseek.errors import ModelLoadError

__all__ = ["ModelSource", "local_revision", "resolve_source"]

# Files that make up a checkpoint's identity: configs by content, weights by size plus their first and
# last MiB (a safetensors file starts with its header, then tensor data; any retraining changes both
# ends), so a multi-GB checkpoint is identified by reading ~2 MiB per file, not all of it.
_CONFIG_FILES = ("config.json", "adapter_config.json", "model.safetensors.index.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SAMPLE_BYTES = 1 << 20

# What a checkpoint needs to load; the rest of a Hub repo (README, images, training logs) is skipped.
_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint made local.

    path        directory to pass to ``from_pretrained``
    name        what the user asked for (Hub id, or the resolved directory)
    revision    Hub commit hash, or ``local-<hash>`` of the directory's configs and weight files
    config      the model's ``config.json`` as a dict (the base model's, for a PEFT adapter)
    base_path   for a PEFT adapter (``adapter_config.json``), its base model's directory (``config`` is
                the base's); None otherwise
    """

    path: Path
    name: str
    revision: str
    config: dict[str, Any]
    base_path: Path | None = None

    @property
    def is_adapter(self) -> bool:
        return self.base_path is not None


def _weight_fingerprint(f: Path) -> bytes:
    size = f.stat().st_size
    with f.open("rb") as fh:
        head = fh.read(_SAMPLE_BYTES)
        if size > 2 * _SAMPLE_BYTES:
            fh.seek(size - _SAMPLE_BYTES)
        tail = fh.read(_SAMPLE_BYTES)
    return f"{f.name}\0{size}\0".encode() + hashlib.sha256(head + tail).digest()


def local_revision(path: Path) -> str:
    """``local-<16 hex>`` identifying a checkpoint directory's configs and weights (see above)."""
    digest = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        if f.name in _CONFIG_FILES:
            digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
        elif f.name.endswith(_WEIGHT_SUFFIXES):
            digest.update(_weight_fingerprint(f))
    return "local-" + digest.hexdigest()[:16]


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a separator, or rooted, is a filesystem path.
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """The cached snapshot directory of ``repo_id`` at ``revision``, downloading it on a cache miss."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        pass
    except HFValidationError as exc:
        raise ModelLoadError(
            f"{repo_id!r} is neither an existing directory nor a valid Hugging Face model id: {exc}"
        ) from exc
    at = f" at revision {revision!r}" if revision else ""
    how = (
        f"download it where there is network (`hf download {repo_id}`) and either copy the Hugging Face "
        f"cache (HF_HOME) here or point PATCHSEEK_ENCODER at the downloaded directory"
    )
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(f"model {repo_id!r}{at} is not in the local Hugging Face cache and "
                             f"HF_HUB_OFFLINE is set; {how}")  # fmt: skip
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_DOWNLOAD_PATTERNS))
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise ModelLoadError(
            f"model {repo_id!r} was not found on the Hugging Face Hub, or it is gated and no token is set "
            f"(HF_TOKEN): {exc}"
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelLoadError(f"model {repo_id!r} has no revision {revision!r}") from exc
    except (OSError, ValueError) as exc:  # connection errors, LocalEntryNotFoundError after retries, ...
        raise ModelLoadError(
            f"model {repo_id!r}{at} is not in the local Hugging Face cache and could not be downloaded "
            f"({type(exc).__name__}); {how}"
        ) from exc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object")
    return data


def resolve_source(model_name_or_path: str, revision: str | None = None) -> ModelSource:
    """Make ``model_name_or_path`` (a local checkpoint directory or a Hub id) local; see ``ModelSource``.

    For a local directory ``revision`` is ignored (the directory is what it is) and the recorded revision
    is ``local_revision(dir)``. For a Hub id it selects the branch, tag or commit; the recorded revision is
    the snapshot's commit hash. Raises ``ModelLoadError`` when the directory does not exist, the id is
    not cached and cannot be downloaded, or the checkpoint has no ``config.json`` / ``adapter_config.json``.
    """
    expanded = Path(model_name_or_path).expanduser()
    if expanded.is_dir():
        path, name, rev = expanded.resolve(), str(expanded.resolve()), local_revision(expanded)
    elif _looks_like_path(model_name_or_path) or expanded.exists():
        raise ModelLoadError(
            f"model directory {model_name_or_path!r} does not exist (or is not a directory); set "
            f"PATCHSEEK_ENCODER to a checkpoint directory holding config.json, or to a Hugging Face model id"
        )
    else:
        path = _hub_snapshot(model_name_or_path, revision)
        name, rev = model_name_or_path, path.name  # snapshots live in .../snapshots/<commit hash>/

    if (path / "config.json").is_file():
        return ModelSource(path, name, rev, _read_json(path / "config.json"))
    if (path / "adapter_config.json").is_file():
        # A PEFT adapter (how vidore publishes most ColPali / ColQwen checkpoints): its base model's
        # config decides the family; from_pretrained loads the base and applies the adapter.
        base = _read_json(path / "adapter_config.json").get("base_model_name_or_path")
        if not isinstance(base, str) or not base:
            raise ModelLoadError(f"{path / 'adapter_config.json'} names no base_model_name_or_path")
        base_source = resolve_source(base)
        return ModelSource(path, name, f"{rev}+{base_source.revision}", base_source.config, base_source.path)
    raise ModelLoadError(
        f"{path} is not a model checkpoint: it has neither config.json nor adapter_config.json"
    )
