"""Reading a batch's input: text (one prompt a line), JSONL (one object a line) or CSV."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, cast

import attrs

from .._errors import InvalidRequestError
from .._inputs import MODEL_COSTS
from .._models import AspectRatio, GenerationRequest, ImageSize
from ._checks import UsageError, check_model, normalise_image_size

#: Fields of a JSONL object or CSV column names.
INPUT_FIELDS = ("prompt", "model", "aspect_ratio", "image_size", "images")
#: Separates several references in one CSV `images` cell.
CSV_IMAGE_SEPARATOR = "|"


@attrs.frozen
class Defaults:
    """The request fields of the command line, for lines that do not give them."""

    model: str
    aspect_ratio: str
    image_size: str
    any_model: bool = False
    #: Known prices (documented, then ``--price``): a line's model must have one.
    prices: Mapping[str, int] = MODEL_COSTS


def input_format(path: Path, given: str) -> str:
    """Return the input's format: *given*, or guessed from the file's suffix for ``auto``."""
    if given != "auto":
        return given
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "text"


def _open_input(path: Path) -> IO[str]:
    try:
        return path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def scan(path: Path, fmt: str) -> int:
    """Check the input can be read (and a CSV header is right); return how many items it holds."""
    try:
        with _open_input(path) as stream:
            if fmt != "csv":
                return sum(1 for line in stream if line.strip())
            reader = csv.reader(stream)
            header = next(reader, None)
            if header is None:
                return 0
            names = [name.strip() for name in header]
            unknown = [name for name in names if name not in INPUT_FIELDS]
            if "prompt" not in names or unknown:
                raise UsageError(
                    f"{path}: the header row must name a 'prompt' column and only these "
                    f"columns: {', '.join(INPUT_FIELDS)}"
                )
            return sum(1 for row in reader if any(cell.strip() for cell in row))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc


def _bad(path: Path, line: int, rule: str) -> InvalidRequestError:
    return InvalidRequestError(f"{path}, line {line}", rule)


def _reference(value: str, base: Path) -> str:
    if value[:8].lower().startswith(("http://", "https://", "data:")):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _request(
    path: Path, line: int, fields: dict[str, Any], defaults: Defaults, *, split: bool
) -> GenerationRequest | InvalidRequestError:
    unknown = sorted(set(fields) - set(INPUT_FIELDS))
    if unknown:
        return _bad(path, line, f"unknown field {unknown[0]!r}; expected {', '.join(INPUT_FIELDS)}")
    prompt = fields.get("prompt")
    if not isinstance(prompt, str):
        return _bad(path, line, "prompt: missing, or not text")
    values: dict[str, str] = {}
    for name in ("model", "aspect_ratio", "image_size"):
        value = fields.get(name)
        if value is None or value == "":
            value = getattr(defaults, name)
        if not isinstance(value, str):
            return _bad(path, line, f"{name}: must be text")
        values[name] = value
    values["image_size"] = normalise_image_size(values["image_size"])
    images = fields.get("images")
    if images is None or images == "":
        references: list[str] = []
    elif isinstance(images, str):
        parts = images.split(CSV_IMAGE_SEPARATOR) if split else [images]
        references = [part.strip() for part in parts if part.strip()]
    elif isinstance(images, list) and all(isinstance(item, str) for item in images):
        references = images
    else:
        return _bad(path, line, "images: must be a string or a list of strings")
    base = path.parent
    try:
        return GenerationRequest(
            prompt=prompt,
            model=check_model(
                values["model"], prices=defaults.prices, any_model=defaults.any_model
            ),
            # Text of a file: checked at run time, like any other value.
            aspect_ratio=cast("AspectRatio", values["aspect_ratio"]),
            image_size=cast("ImageSize", values["image_size"]),
            images=[_reference(item, base) for item in references],
        )
    except InvalidRequestError as exc:
        return _bad(path, line, str(exc))


def read_input(
    path: Path, fmt: str, defaults: Defaults
) -> Iterator[GenerationRequest | InvalidRequestError]:
    """Yield the input's requests lazily; an unreadable line becomes an `InvalidRequestError`."""
    with _open_input(path) as stream:
        if fmt == "csv":
            reader = csv.DictReader(stream)
            if reader.fieldnames is not None:
                reader.fieldnames = [name.strip() for name in reader.fieldnames]
            for row in reader:
                cells = {name: (value or "").strip() for name, value in row.items() if name}
                if None in row:
                    yield _bad(path, reader.line_num, "more cells than the header has columns")
                elif any(cells.values()):
                    fields = {name: value for name, value in cells.items() if value}
                    yield _request(path, reader.line_num, fields, defaults, split=True)
            return
        for number, line in enumerate(stream, 1):
            text = line.strip()
            if not text:
                continue
            if fmt == "text":
                yield _request(path, number, {"prompt": text}, defaults, split=False)
                continue
            try:
                fields = json.loads(text)
            except ValueError as exc:
                yield _bad(path, number, f"not valid JSON ({exc})")
                continue
            if not isinstance(fields, dict):
                yield _bad(path, number, "expected a JSON object")
                continue
            yield _request(path, number, fields, defaults, split=False)
