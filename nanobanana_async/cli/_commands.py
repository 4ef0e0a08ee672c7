"""The commands: generate, batch, status, wait, emulator and demo.

Each takes the parsed arguments and returns an exit code (or a coroutine of one). Everything that
can be checked locally (the request, the destinations, the input file) is checked before a client
is made, so a mistake costs no credit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import attrs

from .. import (
    AspectRatio,
    Client,
    GenerationRequest,
    ImageSize,
    InvalidRequestError,
    ModelName,
    NanoBananaError,
    PollPolicy,
    Task,
    TaskFailedError,
    TaskResult,
    TaskStatus,
)
from .._batch import Batch, slugify
from .._events import BatchEvent, BatchEventKind, BatchSummary, follow, retry_event
from .._gallery import GALLERY_NAME, write_gallery
from .._journal import (
    JOURNAL_NAME,
    ItemKeys,
    credits_spent,
    decide,
    journal_credits,
    lookup,
    scan_journal,
)
from ..events import RetryEvent
from ._checks import UsageError, check_file, check_folder, check_model, open_client, prices
from ._input import Defaults, input_format, read_input, scan
from ._views import (
    EXIT_FAILED,
    EXIT_OK,
    View,
    event_line,
    make_view,
    plain,
    positions_text,
    summary_exit_code,
    write,
)

DEMO_SPEED = 20.0
DEMO_DOWNSCALE = 4
DEMO_OUT = "nanobanana-demo"
DEMO_REQUESTS: tuple[tuple[str, ModelName, AspectRatio, ImageSize], ...] = (
    ("a banana cat napping on a sunny windowsill", "nano-banana-fast", "1:1", "1K"),
    ("a lighthouse built from bananas at dusk, 35mm photo", "nano-banana", "16:9", "1K"),
    ("isometric banana city in pastel colours", "nano-banana-pro", "4:3", "1K"),
    ("portrait of a banana astronaut, studio lighting", "nano-banana", "9:16", "1K"),
    ("watercolour of a banana boat on a calm lake", "nano-banana-fast", "3:2", "1K"),
    ("a robot peeling a banana, cinematic", "nano-banana-pro", "1:1", "2K"),
)


def retry_listener(view: View) -> Callable[[RetryEvent], None]:
    """Return a client retry listener that shows each retry in *view*."""

    def listen(event: RetryEvent) -> None:
        view.event(retry_event(event))

    return listen


# --- batch -------------------------------------------------------------------------------------


async def run_batch(batch: Batch, view: View) -> BatchSummary:
    """Run *batch* with Ctrl-C (and SIGTERM) stopping it cleanly; a second Ctrl-C abandons it."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def interrupt() -> None:
        if batch.stopping:
            if main is not None:
                main.cancel()
            return
        view.note("stopping: creates already on their way are journaled (Ctrl-C again to quit)")
        batch.stop()

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, interrupt)
            installed.append(signum)
    try:
        with view:
            return await batch.run(on_event=view.event)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


@attrs.frozen
class _BatchPlan:
    """A checked batch command line: what to read, where to write."""

    path: Path
    fmt: str
    total: int
    out: Path
    journal: Path
    defaults: Defaults


def batch_command(args: argparse.Namespace) -> Coroutine[Any, Any, int] | int:
    """Check the input and the destinations, then run the batch (or only plan it, --dry-run)."""
    path = Path(args.input)
    fmt = input_format(path, args.format)
    if not path.is_file():
        raise UsageError(f"cannot read {path}: no such file")
    out = Path(args.out)
    journal = Path(args.journal) if args.journal else out / JOURNAL_NAME
    check_folder(out, "--out")
    check_file(journal, "--journal")
    total = scan(path, fmt)
    check_model(args.model, prices=prices(args), any_model=args.any_model)  # one line, not N
    defaults = Defaults(
        args.model,
        args.aspect_ratio,
        args.image_size,
        any_model=args.any_model,
        prices=prices(args),
    )
    plan = _BatchPlan(path, fmt, total, out, journal, defaults)
    if args.dry_run:
        return dry_run(args, plan)
    budget = None
    if args.budget is not None:
        # The budget covers the whole batch: what earlier runs spent counts against it. With
        # --redis it is the limiter's budget, which Redis keeps across runs: it counts already.
        spent = 0 if getattr(args, "redis", None) else journal_credits(journal)
        budget = max(0, args.budget - spent)
    return _batch_async(args, plan, budget)


async def _batch_async(args: argparse.Namespace, plan: _BatchPlan, budget: int | None) -> int:
    async with open_client(args, max_concurrency=args.concurrency, max_credits=budget) as client:
        batch = Batch(
            client,
            read_input(plan.path, plan.fmt, plan.defaults),
            plan.out,
            journal=plan.journal,
            concurrency=args.concurrency,
            retry_uncertain=args.retry_uncertain,
            retry_failed=args.retry_failed,
        )
        view = make_view(
            args,
            sys.stdout,
            total=plan.total,
            credits=lambda: client.credits.spent,
            title=plan.path.name,
        )
        summary = await run_batch(batch, view)
    code = summary_exit_code(summary)
    view.summary(summary, code, show_journal=True)
    return code


def dry_run(args: argparse.Namespace, plan: _BatchPlan) -> int:
    """Check every line and print what the run would send and cost; send nothing.

    Items the journal records as done, running, failed or uncertain are counted apart, as the
    run would treat them: only what it would create costs credits.
    """
    found = scan_journal(plan.journal)
    records = found.records
    counts = {"send": 0, "done": 0, "attach": 0, "failed": 0, "uncertain": 0}
    credits = 0
    unpriced: set[str] = set()
    problems: list[tuple[int, str]] = []
    keys = ItemKeys()
    for position, item in enumerate(read_input(plan.path, plan.fmt, plan.defaults)):
        if isinstance(item, InvalidRequestError):
            problems.append((position, str(item)))
            continue
        record = lookup(records, keys.next(item), position, item)
        decision = decide(
            record,
            out_dir=plan.out,
            retry_failed=args.retry_failed,
            retry_uncertain=args.retry_uncertain,
        )
        counts[decision] += 1
        if decision == "send":
            cost = plan.defaults.prices.get(item.model)
            if cost is None:
                unpriced.add(item.model)
            else:
                credits += cost
    spent = credits_spent(records.values())
    left = None if args.budget is None else max(0, args.budget - spent)
    # A plan that cannot be carried out as asked fails: invalid lines, or more than the budget.
    fits = left is None or credits <= left
    code = EXIT_FAILED if problems or not fits else EXIT_OK
    if args.json:
        data = {
            "event": "plan",
            "total": plan.total,
            "to_send": counts["send"],
            "credits": credits,
            "unpriced_models": sorted(unpriced),
            "done": counts["done"],
            "running": counts["attach"],
            "failed_earlier": counts["failed"],
            "uncertain_earlier": counts["uncertain"],
            "invalid": len(problems),
            "credits_spent_earlier": spent,
            "journal_lines_skipped": found.skipped,
            "budget": args.budget,
            "fits_budget": fits,
            "journal": str(plan.journal),
            "exit_code": code,
            "problems": [{"position": p, "error": error} for p, error in problems],
        }
        write(sys.stdout, json.dumps(data, ensure_ascii=False))
        return code
    rows = [("items", f"{plan.total}" + (f" ({len(problems)} cannot be sent)" if problems else ""))]
    price = f"{credits} credits" + (
        f" + the price of {', '.join(sorted(unpriced))}" if unpriced else ""
    )
    rows.append(("to send", f"{counts['send']} creates, {price}"))
    if counts["done"]:
        rows.append(("done", f"{counts['done']} in earlier runs (not sent again)"))
    if counts["attach"]:
        rows.append(("running", f"{counts['attach']} submitted earlier, awaited (no new credits)"))
    if counts["failed"]:
        rows.append(("failed", f"{counts['failed']} in earlier runs (--retry-failed sends them)"))
    if counts["uncertain"]:
        rows.append(
            ("uncertain", f"{counts['uncertain']} may be charged (--retry-uncertain sends them)")
        )
    if spent:
        rows.append(("spent", f"{spent} credits in earlier runs ({plan.journal})"))
    if found.skipped:
        rows.append(("journal", f"{found.skipped} unreadable lines skipped ({plan.journal})"))
    if left is not None:
        verdict = "fits" if credits <= left else f"does not fit: {credits - left} credits short"
        rows.append(("budget", f"{args.budget} credits, {left} left: the run {verdict}"))
    write(sys.stdout, f"dry run of {plan.path} (nothing sent)")
    for name, value in rows:
        write(sys.stdout, f"  {name:<11}{value}")
    if problems:
        write(sys.stdout, "problems")
        groups: dict[str, list[int]] = {}
        for position, error in problems:
            groups.setdefault(error, []).append(position)
        for error, positions in groups.items():
            write(sys.stdout, f"  {positions_text(positions)} failed: {error}")
    return code


# --- demo --------------------------------------------------------------------------------------


async def demo_command(args: argparse.Namespace) -> int:
    """Run a small batch on the built-in emulator: no key, no network."""
    from ..testing import Emulator

    out = Path(args.out)
    check_folder(out, "--out")
    requests = [
        GenerationRequest(prompt=prompt, model=model, aspect_ratio=ratio, image_size=size)
        for prompt, model, ratio, size in DEMO_REQUESTS
    ]
    # The emulator is on 127.0.0.1 in this process (the client never uses a proxy for loopback).
    async with (
        Emulator(speed=DEMO_SPEED, image_downscale=DEMO_DOWNSCALE) as emulator,
        Client(
            emulator.api_key,
            base_url=emulator.base_url,
            max_concurrency=len(requests),
            poll=PollPolicy(speed=DEMO_SPEED, max_interval=2.0),
        ) as client,
    ):
        view = make_view(
            args,
            sys.stdout,
            total=len(requests),
            credits=lambda: client.credits.spent,
            title="demo",
        )
        view.note(
            f"demo: {len(requests)} generations on the built-in emulator at {DEMO_SPEED:g}x "
            "speed (no key, no network); its images are small placeholder PNGs "
            "(colour bands), not real pictures"
        )
        with tempfile.TemporaryDirectory(prefix="nanobanana-demo-") as folder:
            batch = Batch(client, requests, out, journal=Path(folder) / JOURNAL_NAME)
            summary = await run_batch(batch, view)
    code = summary_exit_code(summary)
    # The demo's journal was a temporary file, deleted by now: it is not reported.
    view.summary(summary, code, show_journal=False)
    if code == EXIT_OK:
        view.note(
            f"Done: {summary.succeeded} placeholder PNGs in {out}{os.sep}, shown in "
            f"{(out / GALLERY_NAME).resolve().as_uri()}. With a key, try: "
            f"nanobanana generate 'a banana cat'"
        )
    return code


def gallery_command(args: argparse.Namespace) -> int:
    """Rebuild a batch's gallery page from its journal and print where it is."""
    folder = Path(args.dir)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder (give a batch's --out folder)")
    page = write_gallery(folder, args.journal, title=args.title)
    write(sys.stdout, str(page.resolve()))
    return EXIT_OK


# --- one task ----------------------------------------------------------------------------------


def _save_target(out: str | None, stem: str) -> Path:
    if out is None:
        return Path(stem)
    target = Path(out)
    if target.is_dir() or out.endswith(("/", os.sep)):
        return target / stem
    return target


def _check_save_target(out: str | None) -> None:
    """Raise `UsageError` unless the images of `--out` (or the current folder) can be written."""
    if out is None:
        check_folder(Path.cwd(), "the current folder")
    elif Path(out).is_dir() or out.endswith(("/", os.sep)):
        check_folder(Path(out), "--out")
    else:
        check_file(Path(out), "--out")


async def _save(result: TaskResult, out: str | None, stem: str) -> list[Path]:
    target = _save_target(out, stem)
    paths = []
    for n, image in enumerate(result.images):
        name = target if n == 0 else target.with_name(f"{target.stem}-{n}{target.suffix}")
        paths.append(await image.save(name))
    return paths


def _result_json(task_id: str, status: str, **fields: Any) -> dict[str, Any]:
    return {"event": "result", "task_id": task_id, "status": status, **fields}


async def _follow(view: View, task: Task, prompt: str | None) -> TaskResult | None:
    """Show the task's progress; return its result, or None (after showing why) if it failed."""
    try:
        return await follow(task, view.event, prompt=prompt)
    except TaskFailedError as exc:
        view.event(
            BatchEvent(kind=BatchEventKind.FAILED, prompt=prompt, task_id=task.id, message=str(exc))
        )
        return None


@attrs.frozen
class _Outcome:
    """A single task's end: exit code, the final JSON object and the lines for stdout."""

    code: int
    data: dict[str, Any]
    lines: list[str]


async def _conclude(
    view: View,
    task: Task,
    result: TaskResult | None,
    *,
    prompt: str | None,
    out: str | None,
    stem: str | None,
) -> _Outcome:
    """Save the images (when *stem* is given) and describe how the task ended."""
    if result is None:
        snapshot = task.snapshot
        data = _result_json(
            task.id, "failed", failure_reason=snapshot.failure_reason, error=snapshot.error
        )
        return _Outcome(EXIT_FAILED, data, [])
    if stem is None:
        urls = [image.url for image in result.images]
        return _Outcome(
            EXIT_OK, _result_json(task.id, "succeeded", cost=result.credits_cost, urls=urls), urls
        )
    paths = await _save(result, out, stem)
    view.event(
        BatchEvent(
            kind=BatchEventKind.SUCCEEDED,
            prompt=prompt,
            task_id=task.id,
            cost=result.credits_cost,
            paths=tuple(paths),
        )
    )
    names = [str(path) for path in paths]
    data = _result_json(task.id, "succeeded", cost=result.credits_cost, paths=names)
    return _Outcome(EXIT_OK, data, names)


def generate_command(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    """Check the request and the destination, then generate one image."""
    request = GenerationRequest(
        prompt=args.prompt,
        model=check_model(args.model, prices=prices(args), any_model=args.any_model),
        aspect_ratio=args.aspect_ratio,
        image_size=args.image_size,
        images=args.image or [],
    )
    _check_save_target(args.out)
    return _generate_async(args, request)


async def _generate_async(args: argparse.Namespace, request: GenerationRequest) -> int:
    submitted: list[str] = []
    try:
        return await _generate(args, request, submitted)
    except NanoBananaError as exc:
        if exc.task_id is not None and not isinstance(exc, TaskFailedError):
            # A paid task whose end this command did not see: the user may still want its image.
            write(
                sys.stderr,
                f"nanobanana: task {exc.task_id} may still run; to get its image: "
                f"nanobanana wait {exc.task_id} --out PATH",
            )
        raise
    except (asyncio.CancelledError, KeyboardInterrupt):
        if submitted:
            # Paid for and running: the user may still want its image.
            write(
                sys.stderr,
                f"nanobanana: task {submitted[0]} goes on; to get its image: "
                f"nanobanana wait {submitted[0]} --out PATH",
            )
        raise


async def _generate(
    args: argparse.Namespace, request: GenerationRequest, submitted: list[str]
) -> int:
    """Generate one image; the task's id goes into *submitted* as soon as it is known."""
    async with open_client(args, max_concurrency=1) as client:
        view = make_view(
            args, sys.stderr, total=1, credits=lambda: client.credits.spent, title=None
        )
        client.add_retry_listener(retry_listener(view))
        with view:
            task = await client.submit(request)
            submitted.append(task.id)
            view.event(
                BatchEvent(
                    kind=BatchEventKind.SUBMITTED,
                    prompt=request.prompt,
                    task_id=task.id,
                    cost=task.credits_cost,
                )
            )
            result = await _follow(view, task, request.prompt)
            stem = f"{slugify(request.prompt)}-{task.id[-8:]}"
            outcome = await _conclude(
                view, task, result, prompt=request.prompt, out=args.out, stem=stem
            )
    view.result(outcome.data, outcome.lines)
    return outcome.code


def wait_command(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    """Check the destination, then follow a task to its end."""
    if args.out is not None:
        _check_save_target(args.out)
    return _wait_async(args)


async def _wait_async(args: argparse.Namespace) -> int:
    async with open_client(args, max_concurrency=1) as client:
        view = make_view(args, sys.stderr, total=1, credits=lambda: 0, title=None)
        client.add_retry_listener(retry_listener(view))
        with view:
            task = client.task(args.task_id)
            view.event(BatchEvent(kind=BatchEventKind.RESUMED, task_id=task.id, prompt=task.id))
            result = await _follow(view, task, task.id)
            stem = task.id if args.out is not None else None
            outcome = await _conclude(view, task, result, prompt=None, out=args.out, stem=stem)
    view.result(outcome.data, outcome.lines)
    return outcome.code


async def status_command(args: argparse.Namespace) -> int:
    """Poll a task once and print its status."""
    async with open_client(args, max_concurrency=1) as client:
        client.add_retry_listener(
            lambda event: write(sys.stderr, event_line(retry_event(event)) or "")
        )
        snapshot = await client.get(args.task_id)
    failed = snapshot.status is TaskStatus.FAILED
    if args.json:
        data = plain(snapshot)
        # `task_id`, as every other event names the task (the snapshot's field is `id`).
        data = {"event": "status", "task_id": data.pop("id"), **data}
        write(sys.stdout, json.dumps(data, ensure_ascii=False))
        return EXIT_FAILED if failed else EXIT_OK
    write(sys.stdout, f"{snapshot.id}: {snapshot.status.value} ({snapshot.progress}%)")
    for image in snapshot.results:
        write(sys.stdout, f"  {image.url}")
    if failed:
        write(sys.stdout, f"  failure_reason: {snapshot.failure_reason}")
        if snapshot.error:
            write(sys.stdout, f"  error: {snapshot.error}")
    return EXIT_FAILED if failed else EXIT_OK


# --- emulator ----------------------------------------------------------------------------------


def emulator_command(args: argparse.Namespace) -> int:
    """Serve the emulator until interrupted; print its ledger on exit (and on SIGUSR1)."""
    from ..testing._serve import ListenError, serve

    try:
        serve(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            credits=args.credits,
            speed=args.speed,
        )
    except ListenError as exc:
        raise UsageError(str(exc)) from exc
    return EXIT_OK
