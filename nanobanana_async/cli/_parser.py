"""The ``nanobanana`` argument parser and `main`.

Each subcommand is added by one ``_add_<name>`` function listed in `SUBCOMMANDS`; a new one (for
example ``gallery``) is a new function there, given the shared option groups in `Options`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import attrs

from .. import InvalidRequestError, NanoBananaError
from .._client import API_KEY_ENV, BASE_URL_ENV, DEFAULT_MAX_CONCURRENCY
from .._models import DEFAULT_ASPECT_RATIO, DEFAULT_IMAGE_SIZE, DEFAULT_MODEL
from .._version import __version__
from ._checks import (
    KNOWN_MODELS,
    POLL_SPEED_ENV,
    UsageError,
    credits_arg,
    image_size_arg,
    port_arg,
    positive_float,
    positive_int,
    price_arg,
)
from ._commands import (
    DEMO_OUT,
    batch_command,
    demo_command,
    emulator_command,
    gallery_command,
    generate_command,
    status_command,
    wait_command,
)
from ._views import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, write

_EPILOG = "Exit codes: 0 all done, 1 something failed, 2 usage error, 130 interrupted."


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: the problem, and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@attrs.frozen
class Options:
    """Option groups that several subcommands share (pass them as ``parents=``)."""

    api: argparse.ArgumentParser
    output: argparse.ArgumentParser
    request: argparse.ArgumentParser
    shared: argparse.ArgumentParser


def _options() -> Options:
    api = argparse.ArgumentParser(add_help=False)
    group = api.add_argument_group("API")
    group.add_argument("--api-key", help=f"the API key (default: ${API_KEY_ENV})")
    group.add_argument(
        "--base-url",
        help=f"the API's base URL (default: ${BASE_URL_ENV}, then https://nanobananapro.cloud)",
    )
    group.add_argument(
        "--poll-speed",
        type=positive_float,
        default=None,
        metavar="S",
        help=(
            f"divide every poll delay by S, to match an emulator's --speed "
            f"(default: ${POLL_SPEED_ENV}, else 1)"
        ),
    )
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "--json", action="store_true", help="print one JSON object per line (events, then result)"
    )
    request = argparse.ArgumentParser(add_help=False)
    group = request.add_argument_group("request")
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=(
            f"one of {', '.join(KNOWN_MODELS)}, or another model given its --price "
            "(default: %(default)s)"
        ),
    )
    group.add_argument(
        "--price",
        type=price_arg,
        action="append",
        metavar="MODEL=CREDITS",
        help=(
            "the price of one create of MODEL: lets the command send a model it does not know "
            "(e.g. --price nano-banana-2=18), or changes a known price; may be repeated"
        ),
    )
    group.add_argument(
        "--any-model",
        action="store_true",
        help="deprecated: an unknown model needs its --price",
    )
    group.add_argument(
        "--aspect-ratio", default=DEFAULT_ASPECT_RATIO, help="e.g. 16:9 (default: %(default)s)"
    )
    group.add_argument(
        "--image-size",
        type=image_size_arg,
        default=DEFAULT_IMAGE_SIZE,
        help="1K, 2K or 4K (default: %(default)s)",
    )
    shared = argparse.ArgumentParser(add_help=False)
    group = shared.add_argument_group("limits shared by several processes of one key")
    group.add_argument(
        "--redis",
        metavar="URL",
        help=(
            "share generations in flight, 429 pauses and the budget (--budget: then the total of "
            "every run under this name) with every process using this Redis and --limiter-name "
            "(needs the redis extra)"
        ),
    )
    group.add_argument(
        "--limiter-name",
        default="nanobanana",
        metavar="NAME",
        help="the shared limiter's name in Redis: one per API key (default: %(default)s)",
    )
    group.add_argument(
        "--lease-seconds",
        type=positive_float,
        default=30.0,
        metavar="S",
        help="how long the slots of a process that died stay taken (default: %(default)s)",
    )
    return Options(api=api, output=output, request=request, shared=shared)


Commands = Any  # argparse's _SubParsersAction, which it does not export


def _add_generate(commands: Commands, options: Options) -> None:
    generate = commands.add_parser(
        "generate",
        parents=[options.api, options.output, options.request, options.shared],
        help="generate one image and save it",
        description=(
            "Generate one image, show its progress (on standard error), save it and print its "
            "path. The request and the destination are checked before anything is sent."
        ),
        epilog=_EPILOG,
    )
    generate.add_argument("prompt", metavar="PROMPT")
    generate.add_argument(
        "--image",
        action="append",
        metavar="PATH_OR_URL",
        help="a reference image, makes it image-to-image (repeat the option for several)",
    )
    generate.add_argument(
        "--out", metavar="PATH", help="file or folder to save to (default: a name from the prompt)"
    )
    generate.set_defaults(run=generate_command)


def _add_batch(commands: Commands, options: Options) -> None:
    batch = commands.add_parser(
        "batch",
        parents=[options.api, options.output, options.request, options.shared],
        help="run a file of prompts, resumably",
        description=(
            "Run every prompt of INPUT (text: one prompt a line; .jsonl: one object a line; "
            ".csv: a header row) and save the images in OUT. Progress is journaled: running "
            "the same command again resumes, never paying twice for a prompt. --dry-run checks "
            "every line and prints what the run would cost."
        ),
        epilog=_EPILOG,
    )
    batch.add_argument("input", metavar="INPUT")
    batch.add_argument("--out", required=True, metavar="DIR", help="folder for the images")
    batch.add_argument(
        "--dry-run",
        action="store_true",
        help="check every line, print how many creates and credits the run would take "
        "(minus what the journal says is done), send nothing; exit 1 if a line is invalid or "
        "the run would pass --budget",
    )
    batch.add_argument(
        "--concurrency",
        type=positive_int,
        default=DEFAULT_MAX_CONCURRENCY,
        metavar="N",
        help="generations in flight at once (default: %(default)s)",
    )
    batch.add_argument(
        "--budget",
        type=credits_arg,
        metavar="CREDITS",
        help="the most credits the batch may spend, earlier runs of its journal included",
    )
    batch.add_argument("--journal", metavar="PATH", help="default: OUT/journal.jsonl")
    batch.add_argument(
        "--format",
        choices=("auto", "text", "jsonl", "csv"),
        default="auto",
        help="input format (default: by the file's suffix)",
    )
    batch.add_argument(
        "--retry-uncertain",
        action="store_true",
        help="send again creates that may have been charged (their answer was lost)",
    )
    batch.add_argument(
        "--retry-failed", action="store_true", help="send again items whose task failed"
    )
    batch.set_defaults(run=batch_command)


def _add_status(commands: Commands, options: Options) -> None:
    status = commands.add_parser(
        "status",
        parents=[options.api, options.output],
        help="show a task's status (one poll)",
        description="Poll a task once and print its status, progress and image URLs.",
        epilog=_EPILOG,
    )
    status.add_argument("task_id", metavar="TASK_ID")
    status.set_defaults(run=status_command)


def _add_wait(commands: Commands, options: Options) -> None:
    wait = commands.add_parser(
        "wait",
        parents=[options.api, options.output],
        help="wait for a task, then save or print its images",
        description=(
            "Follow a task submitted elsewhere to its end, then save its images (--out) or "
            "print their URLs."
        ),
        epilog=_EPILOG,
    )
    wait.add_argument("task_id", metavar="TASK_ID")
    wait.add_argument(
        "--out", metavar="PATH", help="file or folder to save to (default: print the URLs)"
    )
    wait.set_defaults(run=wait_command)


def _add_emulator(commands: Commands, options: Options) -> None:
    emulator = commands.add_parser(
        "emulator",
        help="serve the API emulator locally (for tests and demos)",
        description=(
            "Serve the API emulator until Ctrl-C. It prints its base URL, its key and an "
            "`export` line setting NANOBANANA_BASE_URL, NANOBANANA_API_KEY and "
            f"{POLL_SPEED_ENV} (polling matched to --speed), for this command and the library. "
            "It prints its ledger (creates, credits, most running at once) when it stops, and "
            "on SIGUSR1."
        ),
        epilog="Exit codes: 0 stopped, 2 usage error (for example, the port is in use).",
    )
    emulator.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    emulator.add_argument(
        "--port", type=port_arg, default=8765, help="0 to 65535; 0 picks one (default: 8765)"
    )
    emulator.add_argument("--api-key", help="the key it accepts (default: a random one, printed)")
    emulator.add_argument(
        "--credits", type=credits_arg, help="the key's balance (default: unlimited)"
    )
    emulator.add_argument(
        "--speed",
        type=positive_float,
        default=1.0,
        help=(
            f"time scale: 50 runs a 15 s generation in 0.3 s; clients match it with "
            f"{POLL_SPEED_ENV} (default: 1.0)"
        ),
    )
    emulator.set_defaults(run=emulator_command)


def _add_demo(commands: Commands, options: Options) -> None:
    demo = commands.add_parser(
        "demo",
        parents=[options.output],
        help="run a small batch on the built-in emulator (no key, no network)",
        description=(
            "Run six generations through the real batch path on an emulator started in this "
            "process (no key, no network), and save its images: small placeholder PNGs."
        ),
        epilog=_EPILOG,
    )
    demo.add_argument("--out", default=DEMO_OUT, metavar="DIR", help="default: %(default)s")
    demo.set_defaults(run=demo_command)


def _add_gallery(commands: Commands, options: Options) -> None:
    gallery = commands.add_parser(
        "gallery",
        help="rebuild a batch's index.html from its journal",
        description=(
            "Write DIR/index.html from the batch's journal: a grid of thumbnails with each "
            "item's prompt, model, size, credits and task id, and failed or uncertain items "
            "with their reason. Batches keep it up to date themselves; this rebuilds it."
        ),
        epilog="Exit codes: 0 written, 2 usage error (no such folder or journal).",
    )
    gallery.add_argument("dir", metavar="DIR", help="the batch's --out folder")
    gallery.add_argument(
        "--journal", metavar="PATH", help="the batch's journal (default: DIR/journal.jsonl)"
    )
    gallery.add_argument("--title", help="the page's title (default: the folder's name)")
    gallery.set_defaults(run=gallery_command)


#: The subcommands, in the order ``nanobanana --help`` lists them. Add one here.
SUBCOMMANDS: list[Callable[[Commands, Options], None]] = [
    _add_generate,
    _add_batch,
    _add_status,
    _add_wait,
    _add_emulator,
    _add_demo,
    _add_gallery,
]


def build_parser() -> argparse.ArgumentParser:
    """Return the ``nanobanana`` argument parser."""
    parser = _Parser(
        prog="nanobanana",
        description="Generate images with the Nano Banana API, one or thousands at a time.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"nanobanana-async {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    options = _options()
    for add in SUBCOMMANDS:
        add(commands, options)
    return parser


class _LogLines(logging.Handler):
    """Shows the library's log records (INFO and up) on standard error, one safe line each.

    The library logs what it waits for (retries, 429 pauses, a shared limiter's waits) and what
    it skipped (unreadable journal lines): the command's user sees it. The stream is looked up
    at each record, so a replaced ``sys.stderr`` is honoured.
    """

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "nanobanana_retry", False):
            return  # every command shows the client's retries itself (a retry listener)
        try:
            level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
            write(sys.stderr, f"nanobanana: {level}{record.getMessage()}")
        except Exception:
            self.handleError(record)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nanobanana`` command; return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logger = logging.getLogger("nanobanana_async")
    handler = _LogLines(logging.INFO)
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
    try:
        return _run(args)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


def _run(args: argparse.Namespace) -> int:
    try:
        outcome = args.run(args)
        if asyncio.iscoroutine(outcome):
            outcome = asyncio.run(outcome)
        return int(outcome)
    except (UsageError, InvalidRequestError) as exc:
        write(sys.stderr, f"nanobanana: error: {exc}")
        return EXIT_USAGE
    except NanoBananaError as exc:
        write(sys.stderr, f"nanobanana: error: {exc}")
        return EXIT_FAILED
    except OSError as exc:
        # Local checks come first; this is the disk or the system failing on the way.
        write(sys.stderr, f"nanobanana: error: {exc}")
        return EXIT_FAILED
    except (KeyboardInterrupt, asyncio.CancelledError):
        write(sys.stderr, "nanobanana: interrupted")
        return EXIT_INTERRUPTED
