"""img2dataset's resizer with the area guard moved before decoding, and clearer failure messages.

img2dataset refuses oversize images only after decoding them, so a decompression bomb is decoded
first. Here the size comes from the header (Pillow reads it without decoding), and images that fail
to decode are told apart: truncated, or not an image at all.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from img2dataset.resizer import Resizer
from PIL import Image, UnidentifiedImageError

# Our own guard reads the header first; Pillow's warning about large images would be noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class StrictResizer(Resizer):  # type: ignore[misc]
    """img2dataset's resizer, with the area guard moved before decoding and clearer failure messages."""

    def __call__(self, img_stream: io.BytesIO, blurring_bbox_list: Any = None) -> tuple:
        img_stream.seek(0)
        try:
            with Image.open(img_stream) as probe:
                width, height = probe.size
            if width * height > self.max_image_area:
                return None, None, None, None, None, "image area too large"
        except Image.DecompressionBombError:
            return None, None, None, None, None, "image area too large"
        except (UnidentifiedImageError, OSError, ValueError):
            pass  # let OpenCV try: it reads some formats Pillow does not
        img_stream.seek(0)
        out = super().__call__(img_stream, blurring_bbox_list)
        if out[-1] == "Image decoding error":
            return (*out[:-1], _decode_failure(img_stream))
        return out


def _decode_failure(img_stream: io.BytesIO) -> str:
    img_stream.seek(0)
    try:
        with Image.open(img_stream) as im:
            im.load()
    except UnidentifiedImageError:
        return "not an image (unrecognised format)"
    except OSError as err:
        if "truncated" in str(err):
            return "truncated image"
        return f"image decoding error: {err}"
    return "image decoding error"
