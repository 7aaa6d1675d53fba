"""Which files the image-folder readers take as images: one list of extensions per reader."""

from __future__ import annotations

from collections.abc import Iterable

#: Extensions read from the class folders of a source image folder (``tta corrupt``; those of
#: the reference's image folder loader).
SOURCE_IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm")

#: Extensions the ImageNet-C reader accepts (the release holds ``.JPEG`` files).
IMAGENETC_EXTENSIONS: tuple[str, ...] = (".jpeg", ".jpg", ".png")


def is_image_file(name: str, extensions: Iterable[str]) -> bool:
    """Whether the file name ``name`` ends with one of ``extensions`` (in any letter case)."""
    return name.lower().endswith(tuple(extensions))
