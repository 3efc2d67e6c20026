"""The reference log-probs of a data file, computed lazily and shared on disk between runs.

An offline method reads l_ref(y) for every row it trains on. They depend only on the reference
weights, the data file, how rows are encoded (max_length, data kind, tokenizer) and the numerics
(device, precision, CPU threads), so they are computed once and reused by every later run and sweep
point with the same key. Rows are scored in fixed blocks of `BLOCK` consecutive rows, so a row's
value never depends on which other rows a run happened to need first: a run that reads the cache
gets bit for bit what it would have computed itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

BLOCK = 64


def default_directory() -> Path:
    """$UNIFIED_RLHF_CACHE, else ~/.cache/unified-rlhf/reference_logps."""
    root = os.environ.get("UNIFIED_RLHF_CACHE") or Path.home() / ".cache" / "unified-rlhf"
    return Path(root).expanduser() / "reference_logps"


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_digest(path: str) -> str:
    """The content of a local model directory's weights and config; a hub id stands for itself."""
    local = Path(path)
    if not local.is_dir():
        return f"hub:{path}"
    files = sorted(p for p in local.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
    return hashlib.sha256("".join(f"{p.name}:{file_digest(p)}" for p in files).encode()).hexdigest()


def cache_key(**parts) -> str:
    """A short hash of everything the cached values depend on (each part JSON-serialisable)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class ReferenceCache:
    """l_ref of named lists of sequences (e.g. "side0", "side1", "mismatched"), filled block by block.

    score(pairs) -> [len(pairs)] summed log-probs under the reference. `path=None` keeps it in memory.
    """

    def __init__(self, score: Callable, sequences: dict[str, list], path: Path | None, device):
        self.score, self.sequences, self.path, self.device = score, sequences, path, device
        self.values = {name: torch.full((len(seqs),), float("nan")) for name, seqs in sequences.items()}
        self.computed_blocks = 0
        if path is not None and path.exists():
            saved = torch.load(path, map_location="cpu")
            for name, tensor in saved.items():
                if name in self.values and tensor.shape == self.values[name].shape:
                    self.values[name] = tensor

    def get(self, name: str, indices) -> torch.Tensor:
        """The cached log-probs of these rows (computing any missing block first), on the run's device."""
        values = self.values[name]
        index = torch.as_tensor(list(indices), dtype=torch.long)
        missing = sorted({i // BLOCK for i in index[values[index].isnan()].tolist()})
        for block in missing:
            start = block * BLOCK
            with torch.no_grad():
                values[start:start + BLOCK] = self.score(self.sequences[name][start:start + BLOCK]).float().cpu()
        if missing:
            self.computed_blocks += len(missing)
            self.save()
        return values[index].to(self.device)

    def save(self):
        """Write atomically (a concurrent reader sees the old file or the new one, never half of one)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # merge with what another process may have written since we loaded
        merged = {k: v.clone() for k, v in self.values.items()}
        if self.path.exists():
            for name, tensor in torch.load(self.path, map_location="cpu").items():
                if name in merged and tensor.shape == merged[name].shape:
                    fill = merged[name].isnan() & ~tensor.isnan()
                    merged[name][fill] = tensor[fill]
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        os.close(handle)
        torch.save(merged, temporary)
        os.replace(temporary, self.path)


__all__ = ["ReferenceCache", "cache_key", "default_directory", "model_digest", "file_digest", "BLOCK"]
