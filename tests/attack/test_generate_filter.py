"""Generate-and-filter: a directory generator (memorized and diverse captions) and the diffusers backend."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import photo
from PIL import Image

from attack.generate_filter import Settings, default_m, filter_caption, run_generate_filter
from attack.generators import DirectoryGenerator, make_generator
from dedup.core.errors import UserError


def _near_copies(base: np.ndarray, n: int, rng, noise: float = 2.0) -> list[np.ndarray]:
    return [np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]


@pytest.fixture
def generations_dir(tmp_path):
    """Captions 0-2 'memorized' (near-identical generations), 3-5 diverse."""
    rng = np.random.default_rng(0)
    root = tmp_path / "gens"
    rows = []
    for c in range(6):
        sub = root / f"caption_{c}"
        sub.mkdir(parents=True)
        (sub / "prompt.txt").write_text(f"caption number {c}")
        if c < 3:
            base = np.asarray(photo(100 + c, (64, 64)), dtype=float)
            images = _near_copies(base, 12, rng)
        else:
            images = [np.asarray(photo(1000 * c + i, (64, 64))) for i in range(12)]
        for i, im in enumerate(images):
            Image.fromarray(im).save(sub / f"{i:03d}.png")
        rows.append(
            {
                "rank": c,
                "cluster_id": c,
                "caption": f"caption number {c}",
                "duplicate_count": 30 - c,
                "keys": [f"k{c}"],
            }
        )
    cands = tmp_path / "candidates.parquet"
    pl.DataFrame(rows).write_parquet(cands)
    return root, cands


def test_directory_generator_flags_exactly_the_memorized_captions(generations_dir, tmp_path):
    root, cands = generations_dir
    out = tmp_path / "out"
    summary = run_generate_filter(cands, DirectoryGenerator(root), Settings(k=12), out, progress=False)
    results = pl.read_parquet(out / "results.parquet").sort("cluster_id")
    assert results["flagged"].to_list() == [True, True, True, False, False, False]
    assert results.filter(pl.col("flagged"))["clique"].min() == 12
    assert results.filter(~pl.col("flagged"))["clique"].max() < default_m(12)
    assert summary["flagged"] == 3 and summary["settings"]["m"] == 3 and summary["settings"]["K"] == 12
    assert summary["verified"] == 0  # no training images to verify against
    assert (out / "captions" / "0_medoid.png").exists()
    # resumable: a second run reads the saved records instead of generating again
    for record in (out / "captions").glob("*.png"):
        record.unlink()  # images are not regenerated: the per-caption records are what resume reads
    again = run_generate_filter(cands, DirectoryGenerator(root), Settings(k=12), out, progress=False)
    assert again == summary and not list((out / "captions").glob("*.png"))


def test_a_rerun_with_other_settings_or_generator_recomputes(generations_dir, tmp_path):
    """Resume reuses a caption's record only when m, tau, K, the generator and its files are the same."""
    root, cands = generations_dir
    out = tmp_path / "out"
    first = run_generate_filter(cands, DirectoryGenerator(root), Settings(k=12), out, progress=False)
    assert first["flagged"] == 3
    # m above the clique size: nothing can be flagged; a stale resume would still say 3
    strict = run_generate_filter(cands, DirectoryGenerator(root), Settings(k=12, m=13), out, progress=False)
    assert strict["flagged"] == 0
    # tau so small that even near-copies are not edges
    tight = run_generate_filter(
        cands, DirectoryGenerator(root), Settings(k=12, tau=1e-6), out, progress=False
    )
    assert tight["flagged"] == 0
    # same path, other images: caption 3's generations become near-copies too
    base = np.asarray(photo(7, (64, 64)), dtype=float)
    for i, im in enumerate(_near_copies(base, 12, np.random.default_rng(1))):
        Image.fromarray(im).save(root / "caption_3" / f"{i:03d}.png")
    changed = run_generate_filter(cands, DirectoryGenerator(root), Settings(k=12), out, progress=False)
    assert changed["flagged"] == 4


def test_verification_against_training_images():
    rng = np.random.default_rng(1)
    train = np.asarray(photo(7, (32, 32)), dtype=float)
    gens = np.stack(_near_copies(train, 8, rng))
    record, _, _ = filter_caption(
        gens, np.stack([np.asarray(photo(8, (32, 32))), train.astype(np.uint8)]), Settings(k=8)
    )
    assert record["flagged"] and record["verified"] and record["nearest_index"] == 1 and record["l2"] < 0.05
    other = np.stack([np.asarray(photo(9, (32, 32)))])
    record, _, _ = filter_caption(gens, other, Settings(k=8))
    assert record["flagged"] and not record["verified"]


def test_flat_generations_are_not_a_clique():
    flat = np.full((10, 32, 32, 3), 20, dtype=np.uint8)
    record, _, _ = filter_caption(flat, np.zeros((0, 1, 1, 3), np.uint8), Settings(k=10))
    assert record["status"] == "all low detail" and not record["flagged"]
    record, _, _ = filter_caption(flat, np.zeros((0, 1, 1, 3), np.uint8), Settings(k=10, min_detail=0.0))
    assert record["flagged"]  # without the detail filter, flat images collapse into one clique


def test_bad_generator_specs():
    for spec in ("nonsense", "zip:x", "dir:/definitely/not/here"):
        with pytest.raises(UserError):
            make_generator(spec)


def _tiny_diffusers_pipeline(folder):
    """A randomly initialised Stable Diffusion pipeline small enough for a CPU test, saved locally."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    torch.manual_seed(0)
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            projection_dim=32,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_diffusers_backend_end_to_end_on_cpu(tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    path = _tiny_diffusers_pipeline(tmp_path / "tiny-sd")
    gen = make_generator(f"diffusers:{path}", steps=3, guidance=2.0, device="cpu")
    gen.size = 16
    images = gen.generate("a red barn", 4, seed=0)
    assert images.shape == (4, 16, 16, 3) and images.dtype == np.uint8
    assert not np.array_equal(images[0], images[1])  # different seeds, different images
    assert np.array_equal(images, gen.generate("a red barn", 4, seed=0))  # and reproducible
    cands = tmp_path / "c.parquet"
    pl.DataFrame(
        [{"rank": 0, "cluster_id": 0, "caption": "a red barn", "duplicate_count": 5, "keys": ["x"]}]
    ).write_parquet(cands)
    summary = run_generate_filter(cands, gen, Settings(k=4, size=16), tmp_path / "out", progress=False)
    assert summary["captions"] == 1 and summary["generator"].startswith("diffusers:")


def test_training_images_are_read_in_one_pass_over_the_shards(generations_dir, tmp_path, monkeypatch):
    """#13 defect 6: the captions' training images come from one pass over the shards, not one pass per
    caption; verification finds the memorized captions' own training images."""
    from conftest import encode, write_download_shard

    import attack.generate_filter as gf
    from dedup.core.layout import WorkDir

    root, cands = generations_dir
    work = WorkDir(tmp_path / "train")
    # caption c's training image is k{c}: captions 0-2's generations are near copies of 100 + c
    items = [
        (f"k{c}", encode(photo(100 + c if c < 3 else 5000 + c, (64, 64)), quality=95), "c", "jpg")
        for c in range(6)
    ]
    write_download_shard(work, 0, items[:3])
    write_download_shard(work, 1, items[3:])
    passes = []
    real = gf.read_images

    def counted(folder, resolution, keys=None):
        passes.append(sorted(keys or []))
        return real(folder, resolution, keys)

    monkeypatch.setattr(gf, "read_images", counted)
    out = tmp_path / "out"
    summary = run_generate_filter(
        cands, DirectoryGenerator(root), Settings(k=12), out, train=work.root, progress=False
    )
    assert passes == [[f"k{c}" for c in range(6)]]  # one pass, every caption's keys
    results = pl.read_parquet(out / "results.parquet").sort("cluster_id")
    assert results["verified"].to_list() == [True, True, True, False, False, False]
    assert summary["verified"] == 3
