"""The batch runner: saved images, the crash-safe journal, resuming, budgets and events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

import nanobanana_async as nb
from nanobanana_async._batch import slugify
from nanobanana_async._journal import Journal, legacy_key, request_key
from nanobanana_async.testing import Emulator, Fault

from ._helpers import fast_client, held_emulator, journal_lines, last_states, pngs, wait_until

pytestmark = pytest.mark.anyio

K = nb.events.BatchEventKind
S = nb.events.BatchItemStatus


def terminal(events: list[nb.events.BatchEvent]) -> dict[int, list[nb.events.BatchEvent]]:
    """Group the one-per-item outcome events by position."""
    ends: dict[int, list[nb.events.BatchEvent]] = {}
    for event in events:
        if event.kind in (K.SUCCEEDED, K.FAILED, K.UNCERTAIN, K.SKIPPED):
            assert event.position is not None
            ends.setdefault(event.position, []).append(event)
    return ends


async def test_every_image_is_saved_under_a_stable_name(tmp_path: Path) -> None:
    """Each prompt ends as one PNG named <position>-<slug>-<n>, with its cost and a full journal."""
    prompts = [f"A banana cat, take {i}!" for i in range(5)]
    events: list[nb.events.BatchEvent] = []
    async with Emulator(speed=1000, image_downscale=8) as emu, fast_client(emu) as client:
        summary = await nb.run_batch(client, prompts, tmp_path, on_event=events.append)
        assert emu.ledger.creates_received == 5
    names = [path.name for path in pngs(tmp_path)]
    assert names == [f"0000{i}-a-banana-cat-take-{i}-0.png" for i in range(5)]
    assert summary.ok
    assert summary.succeeded == 5
    assert summary.total == 5
    assert summary.credits_spent == summary.credits_total == 5 * 15
    assert [item.cost for item in summary.items] == [15] * 5
    assert all(item.paths == (tmp_path / names[item.position],) for item in summary.items)
    ends = terminal(events)
    assert sorted(ends) == list(range(5))
    assert all(len(outcome) == 1 and outcome[0].kind is K.SUCCEEDED for outcome in ends.values())
    states: dict[int, list[str]] = {}
    for record in journal_lines(tmp_path / "journal.jsonl"):
        states.setdefault(record["position"], []).append(record["state"])
    assert all(seen == ["submitting", "running", "succeeded"] for seen in states.values())


async def test_task_id_is_journaled_before_the_submitted_event(tmp_path: Path) -> None:
    """By the time anyone hears of a task, its id is already fsynced in the journal."""
    journal = tmp_path / "journal.jsonl"
    on_disk: list[bool] = []

    def check(event: nb.events.BatchEvent) -> None:
        if event.kind is K.SUBMITTED:
            ids = {record.get("task_id") for record in journal_lines(journal)}
            on_disk.append(event.task_id in ids)

    async with Emulator(speed=1000, image_downscale=8) as emu, fast_client(emu) as client:
        await nb.run_batch(client, ["one", "two", "three"], tmp_path, on_event=check)
    assert on_disk == [True, True, True]


async def test_a_rerun_skips_finished_items(tmp_path: Path) -> None:
    """Running the same batch again sends nothing and reports every item done earlier."""
    prompts = ["red", "green", "blue"]
    async with Emulator(speed=1000, image_downscale=8) as emu, fast_client(emu) as client:
        await nb.run_batch(client, prompts, tmp_path)
        events: list[nb.events.BatchEvent] = []
        summary = await nb.run_batch(client, prompts, tmp_path, on_event=events.append)
        assert emu.ledger.creates_received == 3
    assert summary.ok
    assert summary.credits_spent == 0
    assert summary.credits_total == 45
    assert all(item.earlier for item in summary.items)
    assert [event.kind for event in events] == [K.SUCCEEDED] * 3
    assert all(event.earlier for event in events)


async def test_a_stopped_batch_resumes_by_attaching_to_its_running_tasks(tmp_path: Path) -> None:
    """stop() leaves tasks running in the journal; the rerun awaits them by id, never re-sent."""
    prompts = [f"slow {i}" for i in range(4)]
    # Held running by the emulator until the second run: none can end before stop().
    async with held_emulator(duration=20) as (emu, hold):
        async with fast_client(emu, max_concurrency=4) as client:
            batch = nb.Batch(client, prompts, tmp_path)
            submitted: list[str] = []

            def stop_when_all_submitted(event: nb.events.BatchEvent) -> None:
                if event.kind is K.SUBMITTED:
                    submitted.append(event.task_id or "")
                    if len(submitted) == len(prompts):
                        batch.stop()

            first = await batch.run(on_event=stop_when_all_submitted)
        assert first.interrupted
        assert first.running == 4
        assert first.pending == 0
        assert set(last_states(tmp_path / "journal.jsonl").values()) == {"running"}
        hold.release()
        async with fast_client(emu) as client:
            events: list[nb.events.BatchEvent] = []
            second = await nb.run_batch(client, prompts, tmp_path, on_event=events.append)
        assert emu.ledger.creates_received == 4
    assert second.ok
    assert len(pngs(tmp_path)) == 4
    resumed = [event.task_id for event in events if event.kind is K.RESUMED]
    assert sorted(resumed) == sorted(submitted)
    assert second.credits_total == 4 * 15
    assert second.credits_spent == 0


async def test_a_crash_mid_create_is_reported_uncertain_and_not_resent(tmp_path: Path) -> None:
    """A journaled intent with no answer is uncertain: skipped unless retry_uncertain=True."""
    prompts = ["first", "second"]
    journal = tmp_path / "journal.jsonl"
    intent = {"key": request_key(nb.GenerationRequest(prompt="first")), "position": 0}
    journal.write_text(json.dumps({**intent, "state": "submitting", "model": "nano-banana"}) + "\n")
    async with Emulator(speed=1000, image_downscale=8) as emu, fast_client(emu) as client:
        events: list[nb.events.BatchEvent] = []
        summary = await nb.run_batch(client, prompts, tmp_path, on_event=events.append)
        assert emu.ledger.creates_received == 1
        assert [item.status for item in summary.items] == [S.UNCERTAIN, S.SUCCEEDED]
        assert summary.items[0].cost == 15  # it may have been charged
        assert not summary.ok
        assert terminal(events)[0][0].kind is K.UNCERTAIN
        again = await nb.run_batch(client, prompts, tmp_path, retry_uncertain=True)
        assert emu.ledger.creates_received == 2
    assert again.ok
    assert len(pngs(tmp_path)) == 2


async def test_an_uncertain_submit_is_journaled_and_sent_again_only_on_request(
    tmp_path: Path,
) -> None:
    """SubmitUncertainError becomes an 'uncertain' record; reruns leave it unless asked."""
    prompts = ["lost answer", "fine"]
    async with Emulator(speed=1000, image_downscale=8) as emu:
        emu.faults.inject(Fault.drop_after(), endpoint="create", times=1)
        async with fast_client(emu, max_concurrency=1) as client:
            first = await nb.run_batch(client, prompts, tmp_path)
            assert first.items[0].status is S.UNCERTAIN
            assert "may have reached the server" in (first.items[0].error or "")
            assert first.items[1].status is S.SUCCEEDED
            assert emu.ledger.tasks_created == 2  # the lost one was charged after all
            second = await nb.run_batch(client, prompts, tmp_path)
            assert emu.ledger.creates_received == 2
            assert second.items[0].status is S.UNCERTAIN
            assert second.items[0].earlier
            third = await nb.run_batch(client, prompts, tmp_path, retry_uncertain=True)
            assert emu.ledger.creates_received == 3
    assert third.ok
    assert emu.api_key not in (tmp_path / "journal.jsonl").read_text()


@pytest.mark.parametrize("concurrency", [1, 2, 5, 10])
async def test_the_budget_is_never_passed_whatever_the_concurrency(
    tmp_path: Path, concurrency: int
) -> None:
    """With a budget, the service never charges more than it; the rest is skipped, unsent."""
    prompts = [f"budget {i}" for i in range(10)]
    async with Emulator(speed=1000, image_downscale=8, credits=None) as emu:
        async with fast_client(emu, max_concurrency=concurrency, max_credits=50) as client:
            events: list[nb.events.BatchEvent] = []
            summary = await nb.run_batch(
                client, prompts, tmp_path, concurrency=concurrency, on_event=events.append
            )
        assert emu.ledger.credits_charged <= 50
        assert emu.ledger.tasks_created == 3
    assert summary.succeeded == 3
    assert summary.skipped == 7
    assert summary.credits_spent == 45
    skipped = [event for event in events if event.kind is K.SKIPPED]
    assert len(skipped) == 7
    assert all("budget" in (event.message or "") for event in skipped)
    states = last_states(tmp_path / "journal.jsonl")
    assert sorted(states.values()).count("succeeded") == 3
    assert set(states.values()) <= {"succeeded", "unsent"}


async def test_a_refused_create_stops_submitting(tmp_path: Path) -> None:
    """When the key runs out of credits (402), the rest is skipped instead of sent to fail."""
    async with Emulator(speed=1000, image_downscale=8, credits=30) as emu:
        async with fast_client(emu, max_concurrency=1) as client:
            summary = await nb.run_batch(client, [f"p{i}" for i in range(5)], tmp_path)
        assert emu.ledger.creates_received == 3
    assert [item.status for item in summary.items] == [S.SUCCEEDED] * 2 + [S.SKIPPED] * 3
    assert "HTTP 402" in (summary.items[2].error or "")


async def test_failed_tasks_are_final_unless_retry_failed(tmp_path: Path) -> None:
    """A task the service failed is journaled 'failed', refunded, and re-sent only on request."""
    async with Emulator(speed=1000, failure_rate=1.0, failure_reasons=["error"]) as emu:
        async with fast_client(emu) as client:
            first = await nb.run_batch(client, ["doomed"], tmp_path)
            second = await nb.run_batch(client, ["doomed"], tmp_path)
            assert emu.ledger.creates_received == 1
            third = await nb.run_batch(client, ["doomed"], tmp_path, retry_failed=True)
            assert emu.ledger.creates_received == 2
    assert first.items[0].status is S.FAILED
    assert "(error)" in (first.items[0].error or "")
    assert first.credits_spent == 0
    assert first.credits_total == 0
    assert second.items[0].earlier
    assert second.items[0].status is S.FAILED
    assert third.items[0].status is S.FAILED
    assert not third.items[0].earlier
    assert last_states(tmp_path / "journal.jsonl") == {0: "failed"}


async def test_unreadable_items_fail_at_their_position_and_the_rest_runs(tmp_path: Path) -> None:
    """An invalid prompt or an InvalidRequestError in the input fails alone; nothing is sent."""
    items: list[nb.GenerationRequest | str | nb.InvalidRequestError] = [
        "good one",
        "   ",
        nb.InvalidRequestError("input.jsonl, line 3", "not valid JSON"),
        nb.GenerationRequest(prompt="good two", model="nano-banana-fast", aspect_ratio="16:9"),
    ]
    async with Emulator(speed=1000, image_downscale=8) as emu, fast_client(emu) as client:
        summary = await nb.run_batch(client, items, tmp_path)
        assert emu.ledger.creates_received == 2
    assert [item.status for item in summary.items] == [S.SUCCEEDED, S.FAILED, S.FAILED, S.SUCCEEDED]
    assert summary.items[2].error == "input.jsonl, line 3: not valid JSON"
    assert "prompt" in (summary.items[1].error or "")
    assert [path.name[:5] for path in pngs(tmp_path)] == ["00000", "00003"]
    assert summary.credits_spent == 15 + 5


async def test_events_can_be_iterated_and_the_summary_is_kept(tmp_path: Path) -> None:
    """Batch.events() yields progress and one outcome per item, then sets Batch.summary."""
    # Each task is held running until its first progress event is out: a busy machine cannot
    # let a task end before the batch has seen it running.
    async with held_emulator() as (emu, hold), fast_client(emu) as client:
        batch = nb.Batch(client, ["a", "b"], tmp_path)
        events: list[nb.events.BatchEvent] = []
        async for event in batch.events():
            events.append(event)
            if event.kind is K.PROGRESS and event.task_id is not None:
                hold.release(event.task_id)
    assert batch.summary is not None
    assert batch.summary.ok
    assert {event.kind for event in events} >= {K.SUBMITTED, K.PROGRESS, K.SUCCEEDED}
    assert sorted(terminal(events)) == [0, 1]
    with pytest.raises(nb.errors.ClientStateError):
        await batch.run()


async def test_retries_and_rate_limits_are_reported_as_events(tmp_path: Path) -> None:
    """Poll retries become 'retrying' events and 429s 'rate_limited' ones, with the position."""
    # The faults go in once the batch follows its task (its first progress event), and the task
    # is held running until the retries are over: which polls fail does not depend on timing.
    async with held_emulator() as (emu, hold):
        async with fast_client(emu) as client:
            events: list[nb.events.BatchEvent] = []

            def on_event(event: nb.events.BatchEvent) -> None:
                if event.kind is K.PROGRESS and not any(e.kind is K.PROGRESS for e in events):
                    emu.faults.inject(Fault.rate_limit(retry_after=0), endpoint="result", times=1)
                    emu.faults.inject(Fault.status(503), endpoint="result", times=1)
                if event.kind is K.RETRYING:
                    hold.release()
                events.append(event)

            summary = await nb.run_batch(client, ["patience"], tmp_path, on_event=on_event)
    assert summary.ok
    assert emu.faults.fired_total == 2
    kinds = [event.kind for event in events if event.kind in (K.RETRYING, K.RATE_LIMITED)]
    assert kinds == [K.RATE_LIMITED, K.RETRYING]
    retries = [event for event in events if event.kind in (K.RETRYING, K.RATE_LIMITED)]
    assert all(event.position == 0 and event.wait is not None for event in retries)


async def test_a_retry_of_the_very_first_poll_names_its_item(tmp_path: Path) -> None:
    """A poll retried before the batch follows its task (first poll at once) has its position."""
    async with Emulator(speed=1000, image_downscale=8) as emu:
        emu.faults.inject(Fault.status(503), endpoint="result", times=1)
        client = nb.Client(
            emu.api_key,
            base_url=emu.base_url,
            poll=nb.PollPolicy(initial_delay=0, speed=1000),
            retry=nb.RetryPolicy(sleep=False),
        )
        async with client:
            events: list[nb.events.BatchEvent] = []
            summary = await nb.run_batch(client, ["at once"], tmp_path, on_event=events.append)
    assert summary.ok
    retries = [event for event in events if event.kind is K.RETRYING]
    assert [event.position for event in retries] == [0]


async def test_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    """A journal line cut short by a crash is ignored and cut off before appending."""
    async with Emulator(speed=1000, image_downscale=8) as emu, fast_client(emu) as client:
        await nb.run_batch(client, ["x", "y"], tmp_path)
        journal = tmp_path / "journal.jsonl"
        with journal.open("a") as stream:
            stream.write('{"key": "abc", "posi')
        summary = await nb.run_batch(client, ["x", "y", "z"], tmp_path)
        assert emu.ledger.creates_received == 3
    assert summary.ok
    assert [item.earlier for item in summary.items] == [True, True, False]
    assert journal.read_text().endswith("\n")
    assert all(record["key"] != "abc" for record in journal_lines(journal))


async def test_missing_images_are_fetched_again_without_a_new_create(tmp_path: Path) -> None:
    """If a finished item's file is gone, the rerun attaches to its task and downloads again."""
    async with Emulator(speed=1000, image_downscale=8) as emu, fast_client(emu) as client:
        first = await nb.run_batch(client, ["keep", "lose"], tmp_path)
        first.items[1].paths[0].unlink()
        second = await nb.run_batch(client, ["keep", "lose"], tmp_path)
        assert emu.ledger.creates_received == 2
    assert second.ok
    assert second.items[1].paths[0].is_file()
    assert [item.earlier for item in second.items] == [True, False]


async def test_the_journal_can_live_elsewhere_and_holds_no_secret(tmp_path: Path) -> None:
    """journal= puts the journal where asked; it never contains the API key."""
    journal = tmp_path / "state" / "run.jsonl"
    async with Emulator(speed=1000, image_downscale=8, api_key="sk-very-secret") as emu:
        async with fast_client(emu) as client:
            batch = nb.Batch(client, ["hello"], tmp_path / "out", journal=journal)
            assert "journal=" in repr(batch)
            assert repr(batch).startswith("nanobanana_async.Batch(")
            summary = await batch.run()
    assert summary.ok
    assert summary.journal == journal
    assert "sk-very-secret" not in journal.read_text()
    assert not (tmp_path / "out" / "journal.jsonl").exists()


async def test_one_journal_serves_one_batch_at_a_time(tmp_path: Path) -> None:
    """While a batch runs, another on its journal is refused before sending anything."""
    # Held running by the emulator: the first batch is still running when the second starts.
    async with held_emulator(duration=20) as (emu, hold):
        async with fast_client(emu) as client:
            running = nb.Batch(client, ["slow"], tmp_path)
            other = nb.Batch(client, ["slow"], tmp_path)
            events: list[nb.events.BatchEvent] = []
            async with anyio.create_task_group() as group:
                group.start_soon(running.run, events.append)
                await wait_until(lambda: bool(events))
                with pytest.raises(nb.InvalidRequestError, match="in use by another"):
                    await other.run()
                hold.release()
            assert emu.ledger.creates_received == 1
            # Once the run ended, the journal is free again.
            again = await nb.run_batch(client, ["slow"], tmp_path)
    assert running.summary is not None
    assert running.summary.ok
    assert again.items[0].earlier


async def test_a_finished_batch_hears_no_more_of_its_client(tmp_path: Path) -> None:
    """After run() returns, the client's later retries reach no callback of that batch."""
    async with Emulator(speed=1000, image_downscale=8) as emu, fast_client(emu) as client:
        events: list[nb.events.BatchEvent] = []
        await nb.run_batch(client, ["once"], tmp_path, on_event=events.append)
        seen = len(events)
        emu.faults.inject(Fault.status(503), endpoint="result", times=2)
        await client.generate("later")
    assert len(events) == seen


def test_keys_depend_on_the_occurrence_and_every_field() -> None:
    """The key changes with the occurrence among identical requests and with each field."""
    base = nb.GenerationRequest(prompt="p")
    keys = {
        request_key(base),
        request_key(base, 1),
        request_key(nb.GenerationRequest(prompt="q")),
        request_key(nb.GenerationRequest(prompt="p", model="nano-banana-pro")),
        request_key(nb.GenerationRequest(prompt="p", aspect_ratio="1:1")),
        request_key(nb.GenerationRequest(prompt="p", image_size="2K")),
        request_key(nb.GenerationRequest(prompt="p", images=["https://x.test/a.png"])),
    }
    assert len(keys) == 7
    assert request_key(base) == request_key(nb.GenerationRequest(prompt="p"))
    assert all(len(key) == 64 for key in keys)


async def test_inserting_and_reordering_lines_never_pays_again(tmp_path: Path) -> None:
    """A rerun with lines inserted, reordered and duplicated sends only the new requests."""
    first = ["cat", "dog", "cat", "owl"]
    second = ["new", "owl", "cat", "dog", "cat", "cat"]  # one new line, one more "cat"
    async with Emulator(speed=1000, image_downscale=8) as emu, fast_client(emu) as client:
        done = await nb.run_batch(client, first, tmp_path)
        assert done.ok
        assert emu.ledger.creates_received == 4
        again = await nb.run_batch(client, second, tmp_path)
        assert again.ok
        assert emu.ledger.creates_received == 6  # "new" and the third "cat" only
        assert [item.earlier for item in again.items] == [False, True, True, True, True, False]


async def test_a_journal_keyed_by_line_position_is_still_honoured(tmp_path: Path) -> None:
    """A journal written by 0.1 (keys from line positions) is read: its tasks are not re-sent."""
    async with Emulator(speed=1000, image_downscale=8) as emu, fast_client(emu) as client:
        task = await client.submit("legacy")
        record = {
            "key": legacy_key(0, nb.GenerationRequest(prompt="legacy")),
            "position": 0,
            "state": "running",
            "model": "nano-banana",
            "task_id": task.id,
            "cost": 15,
        }
        (tmp_path / "journal.jsonl").write_text(json.dumps(record) + "\n")
        summary = await nb.run_batch(client, ["legacy"], tmp_path)
        assert summary.ok
        assert emu.ledger.creates_received == 1
        assert summary.items[0].task_id == task.id


def test_slugs_are_short_ascii_file_names() -> None:
    """Slugs are lowercase ASCII words joined by dashes, at most 40 characters, never empty."""
    assert slugify("Crème Brûlée — à la Banane!") == "creme-brulee-a-la-banane"
    assert slugify("日本語") == "image"
    assert (
        slugify("a banana cat napping on a sunny windowsill") == "a-banana-cat-napping-on-a-sunny"
    )
    assert slugify("x" * 50) == "x" * 40
    assert len(slugify("word " * 30)) <= 40
    assert not slugify("word " * 30).endswith("-")


def test_bad_options_are_refused() -> None:
    """A batch needs at least one slot and one download at a time."""
    client = nb.Client("sk-test", base_url="http://127.0.0.1:9")
    with pytest.raises(nb.InvalidRequestError, match="concurrency"):
        nb.Batch(client, [], "out", concurrency=0)
    with pytest.raises(nb.InvalidRequestError, match="max_downloads"):
        nb.Batch(client, [], "out", max_downloads=0)


async def test_a_batch_keeps_its_gallery_page(tmp_path: Path) -> None:
    """A batch writes index.html beside its images: live while it runs, final once it ends."""
    pages: list[str] = []

    def look(event: nb.events.BatchEvent) -> None:
        if event.kind is K.SUCCEEDED and (tmp_path / "index.html").exists():
            pages.append((tmp_path / "index.html").read_text())

    async with Emulator(speed=1000, image_downscale=8) as emu, fast_client(emu) as client:
        summary = await nb.run_batch(client, ["a <b>cat</b>", "a dog"], tmp_path, on_event=look)
    assert summary.ok
    assert pages, "the page exists while the batch runs"
    assert 'http-equiv="refresh"' in pages[0]
    final = (tmp_path / "index.html").read_text()
    assert 'http-equiv="refresh"' not in final
    assert "a &lt;b&gt;cat&lt;/b&gt;" in final
    for item in summary.items:
        assert item.task_id is not None
        assert item.task_id in final
        assert all(path.name in final for path in item.paths)


async def test_a_batch_can_do_without_a_gallery(tmp_path: Path) -> None:
    """gallery=False writes no page."""
    async with Emulator(speed=1000, image_downscale=8) as emu, fast_client(emu) as client:
        assert (await nb.run_batch(client, ["x"], tmp_path, gallery=False)).ok
    assert not (tmp_path / "index.html").exists()


async def test_a_journal_that_cannot_record_a_created_task_loses_no_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When the journal cannot record a created task's id (a full disk), the batch goes on with
    the paid task to its image and logs the `nanobanana wait ID` line that recovers it."""
    write = Journal.write

    async def full_disk_for_running(self: Journal, record: Any) -> None:
        if record.state == "running":
            raise OSError(28, "No space left on device")
        await write(self, record)

    monkeypatch.setattr(Journal, "write", full_disk_for_running)
    async with Emulator(speed=1000, image_downscale=8) as emu, fast_client(emu) as client:
        summary = await nb.run_batch(client, ["a banana cat"], tmp_path)
        task_ids = list(emu.tasks)
        assert emu.ledger.creates_received == 1
    assert summary.succeeded == 1
    assert len(pngs(tmp_path)) == 1
    assert len(task_ids) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(f"nanobanana wait {task_ids[0]} --out PATH" in message for message in errors)
