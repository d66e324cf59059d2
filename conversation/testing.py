"""Test helpers of the data layer: noise pictures, a PNG declaring a huge size (a bomb's shape), a hostile corpus."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def noise_image(size: tuple[int, int] = (32, 24), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_with_declared_size(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height while carrying almost no data (a decompression bomb shape)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------- hostile corpus
# Files a user can hand the trainer by mistake or malice, written at test time (nothing binary is committed).
# Each generator returns {name: reason code expected from validate / train, or None when the file is usable}.

def _save(image: Image.Image, path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def hostile_images(root, outside) -> dict[str, str | None]:
    """Write good, broken and unusual images under `root` (and one file in `outside`, a folder beside it).

    The value is the ImageLoadError reason code expected for the image ref, or None for usable images."""
    from pathlib import Path

    root, outside = Path(root), Path(outside)
    root.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    good = noise_image((24, 20), seed=1)
    _save(good, root / "good.png")
    _save(good, outside / "secret.png")
    buf = io.BytesIO()
    good.save(buf, format="JPEG")
    jpeg = buf.getvalue()
    (root / "zero.png").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)  # a PNG signature, then noise
    (root / "text.png").write_text("this is not an image\n")
    (root / "bomb.png").write_bytes(png_with_declared_size(30_000, 30_000))
    _save(Image.new("L", (12_000, 1), 128), root / "wide.png")  # 12K pixels; its square canvas is 144M
    _save(good, root / "png_named.jpg", format="PNG")  # wrongly named, decodes fine (validate warns)
    _save(good.convert("CMYK"), root / "cmyk.jpg")
    _save(Image.fromarray((np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 130)), root / "gray16.png")
    palette = good.convert("P")
    palette.info["transparency"] = 0
    _save(palette, root / "palette_alpha.png", transparency=0)
    _save(good.convert("LA"), root / "la.png")
    frames = [noise_image((16, 16), seed=s) for s in range(3)]
    _save(frames[0], root / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    _save(frames[0], root / "anim.webp", save_all=True, append_images=frames[1:], duration=50)
    (root / "link_out.png").symlink_to(outside / "secret.png")
    (root / "a_dir.png").mkdir()
    return {
        "good.png": None, "png_named.jpg": None, "cmyk.jpg": None, "gray16.png": None, "palette_alpha.png": None,
        "la.png": None, "anim.gif": None, "anim.webp": None,
        "missing.png": "missing file", "zero.png": "empty file", "truncated.jpg": "truncated",
        "corrupt.png": "not an image", "text.png": "not an image", "bomb.png": "decompression bomb",
        "wide.png": "extreme aspect ratio", "../outside/secret.png": "outside image root",
        str(outside / "secret.png"): "outside image root", "link_out.png": "outside image root",
        "a_dir.png": "not a file",
    }


def _record(rid: str, question: str = "What is this?", answer: str = "A picture.", image: str | None = None,
            **extra) -> dict:
    rec: dict = {"id": rid}
    if image is not None:
        rec["image"] = image
        question = "<image>\n" + question
    rec["conversations"] = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    rec.update(extra)
    return rec


def hostile_records(images: dict[str, str | None]) -> list[tuple[dict, str | None]]:
    """(record, expected validate reason or None) for every image of `hostile_images` and every record defect."""
    out: list[tuple[dict, str | None]] = [(_record(f"img-{i}", image=ref), reason)
                                          for i, (ref, reason) in enumerate(images.items())]
    turns = lambda *pairs: [{"from": r, "value": v} for r, v in pairs]  # noqa: E731
    out += [
        (_record("text-ok"), None),
        ({"id": "roles", "conversations": turns(("gpt", "Hi"), ("human", "Hello"))}, "wrong roles"),
        ({"id": "role-name", "conversations": turns(("robot", "Hi"), ("gpt", "Hello"))}, "wrong roles"),
        ({"id": "empty-turn", "conversations": turns(("human", "   "), ("gpt", "Hello"))}, "empty turn"),
        ({"id": "two-placeholders", "image": "good.png",
          "conversations": turns(("human", "<image> and <image>?"), ("gpt", "One."))}, "image placeholder count"),
        ({"id": "placeholder-no-image", "conversations": turns(("human", "<image> what?"), ("gpt", "No."))},
         "image placeholder count"),
        ({"id": "value-int", "conversations": [{"from": "human", "value": 7}, {"from": "gpt", "value": "x"}]},
         "schema"),
        ({"id": "image-int", "image": 5, "conversations": turns(("human", "q"), ("gpt", "a"))}, "schema"),
        ({"id": "turns-str", "conversations": "human: hi"}, "schema"),
        ("just a string", "schema"),
        ({"id": "surrogate", "conversations": turns(("human", "bad \ud800 text"), ("gpt", "a"))}, "invalid unicode"),
        ({"id": "ref-surrogate", "image": "a\ud800.png", "conversations": turns(("human", "<image> q"), ("gpt", "a"))},
         "invalid unicode"),
        ({"id": "id-\ud800", "conversations": turns(("human", "q"), ("gpt", "a"))}, None),
        (_record("dup"), None),
        (_record("dup", question="Again?"), None),  # a duplicate id: a warning in validate, trained in train
        (_record("long", question="word " * 3000), None),  # over-long: truncated or skipped by max_length
    ]
    return out


# Entries that are bad at the JSON level but leave the list around them readable: per-record errors.
RAW_BAD_ENTRIES: dict[str, bytes] = {
    "nan": b'{"id": "nan", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": NaN}]}',
    "utf8": b'{"id": "utf8", "conversations": [{"from": "human", "value": "caf\xe9 \xff"}, '
            b'{"from": "gpt", "value": "a"}]}',
    "deep": b'{"id": "deep", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
}


def record_list_bytes(records: list, raw: list[bytes] = (), indent: int | None = 1) -> bytes:
    """A JSON list of `records` with the raw entries spliced in after the first record."""
    import json

    entries = [json.dumps(r, indent=indent).encode() for r in records]
    entries[1:1] = list(raw)
    return b"[\n" + b",\n".join(entries) + b"\n]\n"


def record_lines_bytes(records: list, raw: list[bytes] = (), bom: bool = False) -> bytes:
    """JSON lines of `records`, the raw entries (plus one malformed line) spliced in after the first record."""
    import json

    lines = [json.dumps(r).encode() for r in records]
    lines[1:1] = [*raw, b'{"id": "cut", "conversations": [']
    return (b"\xef\xbb\xbf" if bom else b"") + b"\n".join(lines) + b"\n"


def broken_record_files(folder, records: list) -> dict[str, str]:
    """Write record files that cannot be read whole (or hold no record); {file name: expected message part}.

    `records` should be at least three good records; files cut after two keep those two readable."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    whole = json.dumps(records, indent=1)
    second_end = len(json.dumps(records[:2], indent=1)) - 2  # the end of the second record
    files = {
        "truncated.json": (whole[: second_end + 30], "malformed JSON"),
        "missing_comma.json": ("[" + json.dumps(records[0]) + "\n" + json.dumps(records[1]) + "]", "expected ','"),
        "python_repr.json": (repr(records), "malformed JSON"),
        "object.json": (json.dumps({"data": records}), "not an object"),
        "jsonl_named.json": ("\n".join(json.dumps(r) for r in records), "named .jsonl"),
        "trailing.json": (whole + "\n]", "after the closing"),
        "empty_list.json": ("[ ]", "no records"),
        "blank_lines.jsonl": ("\n  \n\n", "no records"),
    }
    out = {}
    for name, (text, expected) in files.items():
        (folder / name).write_text(text, encoding="utf-8")
        out[name] = expected
    (folder / "utf16.json").write_bytes(whole.encode("utf-16"))
    (folder / "zero.json").write_bytes(b"")
    (folder / "garbage.parquet").write_bytes(b"PAR1" + bytes(range(200)))
    out.update({"utf16.json": "not UTF-8", "zero.json": "no records", "garbage.parquet": "not a readable parquet"})
    return out
