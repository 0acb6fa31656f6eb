"""Teacher output cache: teacher logits for every transfer image (and K fixed augmentation draws) on disk.

Layout of a cache directory `<root>/<key>/`:
    shard-00000.safetensors ...   one per `shard_size` images: fp16 logits (n, K, C), or top-k values (fp16)
                                  and indices (int16/int32) (n, K, k)
    manifest.json                 written last: the key, the shapes, and each shard's sha256
The key hashes the teacher's weights, the transfer images and labels, the augmentation settings, the draws,
the seed, the precision and the storage format; a different key is a different directory, so a stale cache is
never read. Shards are written atomically and reused when building resumes after an interruption.

Top-k storage keeps the k largest logits per view and fills the others, on load, with the smallest kept
logit of that view minus log(number of left-out classes) so that no left-out class gets more probability
mass than the weakest kept one: an approximation, exact as k -> number of classes (and exact for k = C).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from kdkit.checkpoint import atomic_save_tensors, atomic_write_text, file_sha256
from kdkit.data.loader import Augment, AugParams, apply_params, augment_draws
from kdkit.errors import CheckpointError

FORMAT = "kdkit-teacher-cache-v1"


@dataclass(frozen=True)
class CacheSpec:
    """What is cached: K augmentation draws (1 when not augmented) and dense or top-k logits."""

    draws: int = 1
    topk: int | None = None
    shard_size: int = 10000


def hash_tensor(h: Any, t: Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes to a hashlib hash (the caches' keys are built from these)."""
    h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
    # reshape(-1): 0-dim tensors (BatchNorm's num_batches_tracked) cannot be viewed as bytes directly.
    h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())


def hash_module(h: Any, module: nn.Module) -> None:
    """Feed every tensor of a module's state dict, by sorted name, to a hashlib hash (its weights in a key)."""
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        hash_tensor(h, t)


def cache_home() -> Path:
    """Return the root of kdkit's caches: $KDKIT_CACHE, else ~/.cache/kdkit."""
    return Path(os.environ.get("KDKIT_CACHE") or Path.home() / ".cache" / "kdkit").expanduser()


def cache_key(
    teacher: nn.Module,
    images: Tensor,
    labels: Tensor,
    augment: Augment,
    spec: CacheSpec,
    seed: int,
    precision: str,
    normalize: tuple[list[float], list[float]],
) -> str:
    """Return the hash that names a cache: teacher weights, data, augmentation, draws, seed, precision, format."""
    h = hashlib.sha256(FORMAT.encode())
    hash_module(h, teacher)
    hash_tensor(h, images)
    hash_tensor(h, labels)
    h.update(
        json.dumps(
            {
                "augment": augment.__dict__,
                "draws": spec.draws,
                "topk": spec.topk,
                "seed": seed,
                "precision": precision,
                "normalize": normalize,
            },
            sort_keys=True,
        ).encode()
    )
    return h.hexdigest()[:32]


def _densify(values: Tensor, indices: Tensor, num_classes: int) -> Tensor:
    fill = values.float().min(dim=-1, keepdim=True).values - math.log(max(num_classes - values.shape[-1], 1))
    out = fill.expand(*values.shape[:-1], num_classes).clone()
    out.scatter_(-1, indices.long(), values.float())
    return out


class TeacherCache:
    """A directory of cached teacher outputs for one (teacher, transfer set, augmentation) combination."""

    def __init__(self, directory: Path, key: str, spec: CacheSpec) -> None:
        self.directory = Path(directory)
        self.key = key
        self.spec = spec

    @property
    def manifest_path(self) -> Path:
        """Return the path of the manifest (present only when the cache is complete)."""
        return self.directory / "manifest.json"

    def complete(self) -> bool:
        """Return True when a manifest with this key exists."""
        if not self.manifest_path.is_file():
            return False
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return manifest.get("key") == self.key and manifest.get("format") == FORMAT

    def build(
        self,
        teacher_fn: Callable[[Tensor], Tensor],
        images: Tensor,
        draws: AugParams | None,
        augment: Augment,
        normalize: Callable[[Tensor], Tensor],
        batch_size: int = 500,
        shards: range | None = None,
        write_manifest: bool = True,
    ) -> None:
        """Compute and write the shards (all, or the given range of shard numbers); reuse finished ones."""
        n, k_draws = len(images), self.spec.draws
        n_shards = math.ceil(n / self.spec.shard_size)
        self.directory.mkdir(parents=True, exist_ok=True)
        for s in shards if shards is not None else range(n_shards):
            path = self.directory / f"shard-{s:05d}.safetensors"
            if self._shard_ok(path):
                continue  # finished before an interruption: reuse
            lo, hi = s * self.spec.shard_size, min(n, (s + 1) * self.spec.shard_size)
            outs = []
            for start in range(lo, hi, batch_size):
                idx = torch.arange(start, min(hi, start + batch_size))
                views = []
                for k in range(k_draws):
                    x = images[idx]
                    if draws is not None:
                        x = apply_params(x, augment, draws[idx, torch.full_like(idx, k)], images)
                    views.append(teacher_fn(normalize(x)).float())
                outs.append(torch.stack(views, dim=1))  # (b, K, C)
            logits = torch.cat(outs)
            tensors: dict[str, Tensor]
            if self.spec.topk:
                v, i = logits.topk(self.spec.topk, dim=-1)
                tensors = {"values": v.half(), "indices": i.to(torch.int32)}
            else:
                tensors = {"logits": logits.half()}
            # One metadata entry: safetensors orders several keys arbitrarily, and shards must be byte-stable.
            meta = json.dumps({"format": FORMAT, "key": self.key, "start": lo}, sort_keys=True)
            atomic_save_tensors(path, tensors, {"kdkit": meta})
        if write_manifest:
            self.write_manifest(n, n_shards)

    def _shard_ok(self, path: Path) -> bool:
        if not path.is_file():
            return False
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {}).get("kdkit", "{}"))
            return meta.get("key") == self.key and meta.get("format") == FORMAT
        except (SafetensorError, OSError, json.JSONDecodeError):
            return False

    def write_manifest(self, n: int, n_shards: int) -> None:
        """Write the manifest with every shard's hash: the cache is complete from this moment."""
        shards = []
        for s in range(n_shards):
            path = self.directory / f"shard-{s:05d}.safetensors"
            if not self._shard_ok(path):
                raise CheckpointError(
                    f"teacher cache {self.directory}: shard {path.name} is missing or stale"
                )
            shards.append({"file": path.name, "sha256": file_sha256(path)})
        manifest = {
            "format": FORMAT,
            "key": self.key,
            "images": n,
            "draws": self.spec.draws,
            "topk": self.spec.topk,
            "shard_size": self.spec.shard_size,
            "shards": shards,
        }
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2))

    def load(self, num_classes: int) -> Tensor:
        """Return the cached logits as float32 (N, K, C), verifying every shard against the manifest."""
        if not self.complete():
            raise CheckpointError(f"teacher cache {self.directory} is incomplete or belongs to another setup")
        manifest = json.loads(self.manifest_path.read_text())
        parts = []
        for entry in manifest["shards"]:
            path = self.directory / entry["file"]
            if not path.is_file() or file_sha256(path) != entry["sha256"]:
                raise CheckpointError(f"teacher cache shard {path} is missing or corrupt (sha256 mismatch)")
            t = load_file(str(path))
            parts.append(
                _densify(t["values"], t["indices"], num_classes) if "values" in t else t["logits"].float()
            )
        out = torch.cat(parts)
        if out.shape[0] != manifest["images"]:
            raise CheckpointError(
                f"teacher cache {self.directory}: {out.shape[0]} rows for {manifest['images']} images"
            )
        return out


def disk_bytes(n: int, draws: int, num_classes: int, topk: int | None) -> int:
    """Return the bytes a cache of this shape takes (fp16 values, int32 indices for top-k)."""
    per_view = topk * (2 + 4) if topk else num_classes * 2
    return n * draws * per_view


def draws_for(
    n: int, augment: Augment, spec: CacheSpec, seed: int, size: tuple[int, int] | None = None
) -> AugParams | None:
    """Return the fixed augmentation draws of a cache (None for an unaugmented transfer set)."""
    return augment_draws(n, spec.draws, augment, seed, size) if augment.enabled else None
