"""One shard's samples as the model sees them: each decoded once (as every viewer shows it: EXIF
orientation applied, borders trimmed), hashed, described by ORB when asked, preprocessed, in batches
decoded by threads running ahead of the model. A sample that cannot be read keeps a row whose status
says why (``OK`` otherwise)."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from dedup.core.errors import UserError
from dedup.core.errors import describe as describe_error
from dedup.core.shards import MAX_IMAGE_AREA, Sample
from dedup.embed.hashing import phash_pair, sha256, trim_border

OK = "ok"
# The header's size is checked against MAX_IMAGE_AREA before decoding; Pillow's warning is noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _sample_facts(sample: Sample) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if "json" in sample.members:
        try:
            meta = json.loads(sample.members["json"])
        except (ValueError, UnicodeDecodeError):
            meta = {}
    return {
        "key": sample.key,
        "tar_start": sample.start,
        "tar_end": sample.end,
        "url": meta.get("url"),
        "caption": sample.caption if sample.caption is not None else meta.get("caption"),
        "original_width": meta.get("original_width"),
        "original_height": meta.get("original_height"),
    }


def prepare_sample(
    sample: Sample, prepare: Callable[[Image.Image], np.ndarray] | None, local: bool = False
) -> tuple[dict, Any]:
    """Decode, hash and preprocess one sample (runs in a decode thread). Never raises.

    With ``local``, the sample's ORB descriptors ride along in ``facts["_local"]``."""
    facts = _sample_facts(sample)
    facts["local_count"] = 0
    data = sample.image
    facts.update(width=None, height=None, bytes=None, sha256=None, phash=None, phash_mirror=None)
    if data is None:
        facts["status"] = "no_image_member"
        return facts, None
    facts["bytes"] = len(data)
    facts["sha256"] = sha256(data)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_IMAGE_AREA:  # from the header, before decoding a bomb
                facts["status"] = f"image_too_large: {im.width} x {im.height} pixels"
                return facts, None
            im.load()
            # the image as every viewer shows it: a copy re-saved with rotated pixels and an EXIF
            # orientation tag looks like its original, so it must hash and embed like it
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except Exception as err:
        facts["status"] = f"decode_error: {describe_error(err)}"
        return facts, None
    facts["width"], facts["height"] = rgb.size
    rgb = trim_border(rgb)  # a letterboxed or padded copy hashes and embeds like its original
    facts["phash"], facts["phash_mirror"] = phash_pair(rgb)
    if local:
        from dedup.embed.localfeatures import describe

        facts["_local"] = describe(rgb)
        facts["local_count"] = len(facts["_local"])
    facts["status"] = OK
    return facts, (prepare(rgb) if prepare is not None else None)


def prefetch_batches(
    items: Iterable[Any], fn: Callable[[Any], Any], batch_size: int, workers: int
) -> Iterator[list[Any]]:
    """Apply ``fn`` to batches of items in a thread pool, yielding results in input order.

    At most ``2 * workers`` batches are in flight, so decoding runs ahead of the model without holding
    a whole shard in memory.
    """
    it = iter(items)
    batches = iter(lambda: list(islice(it, batch_size)), [])
    if workers <= 0:
        for batch in batches:
            yield [fn(x) for x in batch]
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.submit(lambda b: [fn(x) for x in b], batch))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def guarded(tar: Path, batches: Any) -> Any:
    """The batches of one tar; a damaged archive is a one-line error naming it, not a traceback."""
    try:
        yield from batches
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise UserError(
            f"{tar}: damaged tar ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
            "download or import the shard again"
        ) from None
