"""Safe image loading: paths confined to the image roots, full decoding, bombs and broken files named."""
from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from conversation.errors import ImageLoadError

__all__ = [
    "ImageLoadError",
    "DEFAULT_MAX_PIXELS",
    "REASON_CODES",
    "reason_code",
    "resolve_image_path",
    "load_image",
    "image_size",
    "extension_mismatch",
]

# PIL's own default limit (about 89.5 megapixels: 1024 * 1024 * 1024 // 4 // 3).
DEFAULT_MAX_PIXELS = 89_478_485

# Every ImageLoadError raised here has a reason of the form "<code>" or "<code>: <detail>", the code
# being one of these, so a validation summary can count problems by kind.
REASON_CODES = (
    "empty path",
    "outside image root",
    "missing file",
    "not a file",
    "empty file",
    "not an image",
    "decompression bomb",
    "extreme aspect ratio",
    "truncated",
    "undecodable",
)


def reason_code(reason: str) -> str:
    """The short code at the start of an ImageLoadError reason (the text before the first ': ')."""
    return reason.split(": ", 1)[0]


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


@functools.lru_cache(maxsize=64)
def _real_roots(roots: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(os.path.realpath(r) for r in roots)


def resolve_image_path(ref: str, roots: Sequence[Path | str]) -> Path:
    """Resolve an image reference against the roots in order; the result (symlinks followed) stays inside a root.

    Relative refs are tried against each root in turn and the first existing file wins. An absolute ref is
    accepted only when it lies inside one of the roots. A `..` that climbs out of the root is refused even if
    the target happens to exist, and so is a symlink whose target lies outside every root.
    """
    if not roots:
        raise ValueError("resolve_image_path needs at least one image root")
    if not isinstance(ref, str) or not ref.strip():
        raise ImageLoadError(str(ref), "empty path")
    if "\x00" in ref:
        raise ImageLoadError(ref, "not a file: the path contains a NUL byte")
    try:
        os.fsencode(ref)
    except UnicodeEncodeError:  # a lone surrogate (e.g. from a JSON "\ud800" escape) names no file
        raise ImageLoadError(ref.encode("utf-8", "backslashreplace").decode("utf-8"),
                             "not a file: the path is not valid Unicode") from None
    real_roots = _real_roots(tuple(str(r) for r in roots))
    roots_text = ", ".join(real_roots)

    if os.path.isabs(ref):
        target = os.path.realpath(ref)
        if not any(_inside(target, r) for r in real_roots):
            raise ImageLoadError(ref, f"outside image root: absolute path not under {roots_text}")
        candidates: Iterator[str] = iter([target])
    else:
        normalized = os.path.normpath(ref)
        if normalized == ".." or normalized.startswith(".." + os.sep):
            raise ImageLoadError(ref, f"outside image root: '..' climbs out of {roots_text}")
        candidates = (os.path.realpath(os.path.join(r, ref)) for r in real_roots)  # lazily: first hit wins

    for candidate in candidates:
        if not os.path.exists(candidate):
            continue
        if not any(_inside(candidate, r) for r in real_roots):
            raise ImageLoadError(ref, f"outside image root: resolves (through a symlink) to {candidate}")
        if not os.path.isfile(candidate):
            raise ImageLoadError(ref, f"not a file: {candidate}")
        return Path(candidate)
    raise ImageLoadError(ref, f"missing file: not found under {roots_text}")


@contextlib.contextmanager
def _truncated_images_refused() -> Iterator[None]:
    """PIL's process-wide `ImageFile.LOAD_TRUNCATED_IMAGES` off while we decode: some libraries turn it on when
    imported (lmms-eval does), and a truncated image would then decode silently, its missing rows grey."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def load_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               check_size: Callable[[int, int], str | None] | None = None) -> Image.Image:
    """Open and fully decode an image, in its own mode; the format is sniffed from the content, not the name.

    The declared size is checked against `max_pixels` (None: no limit of our own) and by `check_size` (e.g. an
    image processor's `size_problem`: why its resize or pad-to-square canvas would be too large) before any
    pixel is decoded. Animated images decode their first frame.
    """
    path = Path(path)
    try:
        data = path.read_bytes()  # read whole: the decoded image then holds no open file handle
    except FileNotFoundError:
        raise ImageLoadError(str(path), "missing file") from None
    except IsADirectoryError:
        raise ImageLoadError(str(path), "not a file: it is a directory") from None
    except OSError as exc:
        raise ImageLoadError(str(path), f"missing file: cannot read ({exc})") from None
    if not data:
        raise ImageLoadError(str(path), "empty file: zero bytes")

    try:
        with warnings.catch_warnings(), _truncated_images_refused():
            # PIL warns (rather than raises) between MAX_IMAGE_PIXELS and twice that: make it an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageLoadError(
                    str(path),
                    f"decompression bomb: declared {width}x{height} = {width * height} pixels > limit {max_pixels}",
                )
            problem = check_size(width, height) if check_size is not None else None
            if problem:
                raise ImageLoadError(str(path), f"extreme aspect ratio: {problem}")
            image.load()
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(str(path), f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageLoadError(str(path), f"not an image: PIL cannot identify the content ({len(data)} bytes)") from None
    except OSError as exc:
        text = str(exc)
        code = "truncated" if "truncated" in text.lower() or "broken data stream" in text else "undecodable"
        raise ImageLoadError(str(path), f"{code}: {text}") from None
    except (SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise ImageLoadError(str(path), f"undecodable: {type(exc).__name__}: {exc}") from None
    if image.width <= 0 or image.height <= 0:
        raise ImageLoadError(str(path), f"undecodable: zero-sized image {image.width}x{image.height}")
    return image


def image_size(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) of an image file as preprocessing will see it (after EXIF orientation), from its header only.

    No pixel is decoded: this is what tokenization uses to count an `anyres` image's tokens before loading it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                orientation = image.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise ImageLoadError(str(path), "missing file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(str(path), f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageLoadError(str(path), "not an image: PIL cannot identify the content") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(str(path), f"undecodable: {type(exc).__name__}: {exc}") from None
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            str(path), f"decompression bomb: declared {width}x{height} = {width * height} pixels > limit {max_pixels}"
        )
    if width <= 0 or height <= 0:
        raise ImageLoadError(str(path), f"undecodable: zero-sized image {width}x{height}")
    # EXIF orientations 5-8 transpose the image (ImageOps.exif_transpose, as preprocessing does, swaps the sides)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


# Formats PIL names apart that share an extension: camera JPEGs with several pictures open as MPO.
_SAME_AS = {"MPO": "JPEG"}


def extension_mismatch(path: str | Path, image: Image.Image) -> str | None:
    """A warning text when the file's extension names another format than the decoded content, else None."""
    suffix = Path(path).suffix.lower()
    expected = Image.registered_extensions().get(suffix)
    actual = _SAME_AS.get(image.format or "", image.format)
    if actual is None or expected is None or _SAME_AS.get(expected, expected) == actual:
        return None
    return f"extension {suffix!r} but the content is {image.format}"
