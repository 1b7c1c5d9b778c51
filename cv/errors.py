"""Errors raised when an upload cannot be turned into a photo.

Every message names the file and says what the inspector (or the caller) can do about it.
"""

from __future__ import annotations


class PhotoError(ValueError):
    """An upload could not be decoded into a photo."""


class EmptyPhotoError(PhotoError):
    """The file has zero bytes (an upload that did not finish)."""


class NotAPhotoError(PhotoError):
    """The bytes are not an image format Loupe reads (a PDF or a document with an image's name)."""


class TruncatedPhotoError(PhotoError):
    """The file starts like an image but is cut short or corrupt."""


class PhotoTooLargeError(PhotoError):
    """The image header declares more pixels than the configured limit (a possible decompression bomb)."""
