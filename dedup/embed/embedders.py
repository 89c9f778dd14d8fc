"""Image embedders behind one small interface: ``prepare`` (runs in decode threads) and ``embed``.

* ``clip``: open_clip, from a pretrained tag or a local checkpoint file; CUDA with autocast when
  present, fp32 on CPU (bf16 is emulated on most CPUs and ~10x slower).
* ``descriptor``: a weight-free pixel descriptor for offline use. A small area-averaged colour
  thumbnail, standardised (so brightness/contrast changes cancel) and L2-normalised, so the inner
  product of two descriptors is the Pearson correlation of the thumbnails. It is a flat
  ``s x s x 3`` grid, so its mirror image is an index permutation: the cluster stage queries with
  both orientations and catches flipped copies without a second pass over the images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from dedup.core.config import EmbedConfig
from dedup.core.errors import UserError


class Embedder(Protocol):
    name: str
    model_id: str
    dim: int
    device: str
    precision: str

    def prepare(self, image: Image.Image) -> np.ndarray: ...

    def embed(self, batch: np.ndarray) -> np.ndarray: ...


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but torch sees no CUDA device; use --device auto or cpu")
    return device


def resolve_precision(precision: str, device: str) -> str:
    if precision == "auto":
        if device == "cuda":
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    return precision


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass
class DescriptorEmbedder:
    """Weight-free: standardised colour thumbnail, ``size x size x 3``."""

    size: int = 16
    name: str = "descriptor"
    device: str = "cpu"
    precision: str = "fp32"

    @property
    def model_id(self) -> str:
        return f"thumbnail-{self.size}x{self.size}-rgb"

    @property
    def dim(self) -> int:
        return self.size * self.size * 3

    def prepare(self, image: Image.Image) -> np.ndarray:
        return descriptor(image, self.size)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return batch.astype(np.float32)


def descriptor(image: Image.Image, size: int) -> np.ndarray:
    thumb = np.asarray(image.convert("RGB").resize((size, size), Image.BOX), dtype=np.float32)
    flat = thumb.reshape(-1)
    flat = flat - flat.mean()
    norm = float(np.linalg.norm(flat))
    return flat / norm if norm > 1e-6 else np.zeros_like(flat)


def mirror_descriptors(x: np.ndarray, size: int) -> np.ndarray:
    """The descriptors of the mirrored images, from the descriptors alone."""
    return x.reshape(len(x), size, size, 3)[:, :, ::-1, :].reshape(len(x), -1)


class ClipEmbedder:
    """open_clip image tower. Loads once; batches run under autocast on CUDA, fp32 on CPU."""

    name = "clip"

    def __init__(self, model: str, pretrained: str, device: str, precision: str) -> None:
        import open_clip
        import torch

        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model_id = f"{model}/{Path(pretrained).name if Path(pretrained).is_file() else pretrained}"
        if not Path(pretrained).is_file():
            require_reachable_weights(model, pretrained)
        try:
            net, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=pretrained, device=self.device
            )
        except Exception as err:
            detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise UserError(
                f"cannot load open_clip weights '{pretrained}' for model '{model}' ({detail}). "
                "Offline? Pass a local checkpoint file: --pretrained /path/to/open_clip_model.safetensors "
                "(or use --embedder descriptor, which needs no weights)"
            ) from None
        net.eval()
        self._net = net
        self._preprocess = preprocess
        self._torch = torch
        self.dim = int(net.visual.output_dim)
        if self.device == "cpu" and self.precision != "fp32":
            import warnings

            warnings.warn(f"{self.precision} on CPU is emulated and slow; fp32 is faster here", stacklevel=2)

    def prepare(self, image: Image.Image) -> np.ndarray:
        return self._preprocess(image.convert("RGB")).numpy()

    def embed(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        with torch.inference_mode():
            if dtype is not None:
                with torch.autocast(device_type=self.device, dtype=dtype):
                    out = self._net.encode_image(x)
            else:
                out = self._net.encode_image(x)
        return l2_normalize(out.float().cpu().numpy())


def hub_endpoint() -> tuple[str, int]:
    """Host and port of the Hugging Face hub as huggingface_hub would reach it (HF_ENDPOINT)."""
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def require_reachable_weights(model: str, pretrained: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not after a minute of retries, when hub weights are neither cached nor reachable.
    Cached weights load with HF_HUB_OFFLINE set, so a loaded model never waits on the network."""
    import socket

    from open_clip.pretrained import get_pretrained_cfg

    hub = (get_pretrained_cfg(model, pretrained) or {}).get("hf_hub", "")
    if not hub:
        return  # not a hub tag: open_clip's own error names it
    repo_id = hub.rstrip("/")
    try:
        from huggingface_hub import try_to_load_from_cache

        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo_id, name), str):
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                return
    except Exception:
        pass
    host, port = hub_endpoint()
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise UserError(
            f"open_clip weights '{pretrained}' for '{model}' ({repo_id}) are not in the local cache and "
            f"{host}:{port} is unreachable ({err.strerror or err}). Offline? Pass a local checkpoint file: "
            "--pretrained /path/to/open_clip_model.safetensors (or use --embedder descriptor)"
        ) from None


def make_embedder(config: EmbedConfig) -> Any:
    if config.embedder == "descriptor":
        return DescriptorEmbedder(size=config.descriptor_size)
    return ClipEmbedder(config.model, config.pretrained, config.device, config.precision)
