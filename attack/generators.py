"""Image generators behind one interface: ``generate(caption, k, seed) -> (k, H, W, 3) uint8``.

``--generator`` specs:

* ``ddpm:CHECKPOINT``: this project's caption-conditioned DDPM (``dedup attack train``).
* ``diffusers:NAME_OR_PATH``: a Hugging Face diffusers text-to-image pipeline, by hub name or local
  folder (``pip install 'dedup[diffusers]'``; a GPU makes it practical). Loaded only when asked for.
* ``dir:FOLDER``: images generated elsewhere, one sub-folder per caption; each sub-folder holds the
  images and a ``prompt.txt`` with its caption (or is named after the candidate's ``cluster_id``).
  This is how any generator, local or behind an API, is audited.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from dedup.core.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class Generator(Protocol):
    name: str

    def generate(self, caption: str, k: int, seed: int, cluster_id: int | None = None) -> np.ndarray: ...


class DDPMGenerator:
    def __init__(
        self, checkpoint: Path, steps: int = 25, guidance: float = 3.0, device: str = "auto"
    ) -> None:
        from attack.train import device_for, load_model

        if not checkpoint.exists():
            raise UserError(f"{checkpoint}: no such checkpoint")
        self.model, ckpt = load_model(checkpoint, device_for(device))
        self.schedule = ckpt["config"]["schedule"]
        self.steps, self.guidance = steps, guidance
        self.name = f"ddpm:{checkpoint}"
        self.checkpoint = checkpoint
        self.identity_extra = f"steps={steps},guidance={guidance}"  # both change the images

    def generate(self, caption: str, k: int, seed: int, cluster_id: int | None = None) -> np.ndarray:
        from attack.sample import ddim

        return ddim(self.model, k, [caption] * k, self.steps, self.guidance, seed, schedule=self.schedule)


class DiffusersGenerator:
    def __init__(
        self, name: str, steps: int = 25, guidance: float = 7.5, device: str = "auto", size: int | None = None
    ) -> None:
        from dedup.core.optional import require

        require("diffusers", extra="diffusers", purpose="--generator diffusers:...")
        import torch
        from diffusers import AutoPipelineForText2Image

        self.device = (
            "cuda"
            if device == "auto" and torch.cuda.is_available()
            else ("cpu" if device == "auto" else device)
        )
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        try:
            self.pipe = AutoPipelineForText2Image.from_pretrained(name, dtype=dtype).to(self.device)
        except Exception as err:  # hub, file and format errors are the user's spec
            raise UserError(
                f"cannot load diffusers pipeline '{name}': {str(err).splitlines()[0][:200]}"
            ) from None
        self.pipe.set_progress_bar_config(disable=True)
        self.steps, self.guidance, self.size = steps, guidance, size
        self.name = f"diffusers:{name}"

    def generate(self, caption: str, k: int, seed: int, cluster_id: int | None = None) -> np.ndarray:
        import torch

        out = []
        for i in range(k):
            g = torch.Generator(device="cpu").manual_seed(seed + i)
            extra = {"height": self.size, "width": self.size} if self.size else {}
            image = self.pipe(
                caption, num_inference_steps=self.steps, guidance_scale=self.guidance, generator=g, **extra
            ).images[0]
            out.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        return np.stack(out)


class DirectoryGenerator:
    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise UserError(f"{folder}: no such folder of generations")
        self.folder = folder
        self.name = f"dir:{folder}"
        self.by_caption: dict[str, Path] = {}
        self.by_name: dict[str, Path] = {}
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            prompt = sub / "prompt.txt"
            if prompt.exists():
                self.by_caption[prompt.read_text(encoding="utf-8").strip()] = sub
            self.by_name[sub.name] = sub

    def generate(self, caption: str, k: int, seed: int, cluster_id: int | None = None) -> np.ndarray:
        sub = self.by_caption.get(caption.strip()) or self.by_name.get(str(cluster_id))
        if sub is None:
            return np.zeros((0, 1, 1, 3), np.uint8)
        files = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:k]
        images = []
        for p in files:
            with Image.open(p) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        if not images:
            return np.zeros((0, 1, 1, 3), np.uint8)
        size = images[0].shape[:2]
        if any(im.shape[:2] != size for im in images):
            raise UserError(f"{sub}: generations of one caption must share one size")
        return np.stack(images)


def make_generator(
    spec: str, steps: int | None = None, guidance: float | None = None, device: str = "auto"
) -> Generator:
    kind, _, target = spec.partition(":")
    if not target:
        raise UserError(
            f"--generator {spec!r}: expected ddpm:CHECKPOINT, diffusers:NAME_OR_PATH or dir:FOLDER"
        )
    if kind == "ddpm":
        return DDPMGenerator(Path(target), steps or 25, 3.0 if guidance is None else guidance, device)
    if kind == "diffusers":
        return DiffusersGenerator(target, steps or 25, 7.5 if guidance is None else guidance, device)
    if kind == "dir":
        return DirectoryGenerator(Path(target))
    raise UserError(f"--generator {spec!r}: unknown kind {kind!r} (ddpm, diffusers or dir)")
