"""A batch summary's items: a read-only sequence of every item, in input order, built when read."""

from __future__ import annotations

from pathlib import Path

import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator


@pytest.mark.anyio
async def test_summary_items_read_as_a_sequence_in_input_order(tmp_path: Path) -> None:
    """Items index, slice, iterate and compare like a tuple, with paths in the output folder."""
    prompts = ["a banana cat", "", "banana city"]
    async with (
        Emulator(speed=1000, image_downscale=8) as emu,
        nb.Client(
            emu.api_key,
            base_url=emu.base_url,
            poll=nb.PollPolicy(speed=1000),
            retry=nb.RetryPolicy(sleep=False),
        ) as client,
    ):
        summary = await nb.run_batch(client, prompts, tmp_path / "out", gallery=False)
    items = summary.items
    assert len(items) == 3
    assert [item.position for item in items] == [0, 1, 2]
    assert [item.status for item in items] == [
        nb.events.BatchItemStatus.SUCCEEDED,
        nb.events.BatchItemStatus.FAILED,
        nb.events.BatchItemStatus.SUCCEEDED,
    ]
    assert items[-1] == items[2]
    assert tuple(items[1:]) == (items[1], items[2])
    assert items == tuple(items)
    assert items[0].paths
    assert all(path.parent == tmp_path / "out" for path in items[0].paths)
    assert all(path.is_file() for path in items[0].paths)
    assert items[0].prompt == "a banana cat"
    with pytest.raises(IndexError):
        items[3]
