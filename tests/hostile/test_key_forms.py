"""More forms of the key (issue 19): without its prefix, in upper case, base64-encoded at all
three alignments (standard and urlsafe) are redacted, in errors, CLI output, journal and gallery."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

import nanobanana_async as nb
from nanobanana_async._transport import key_pattern
from tests.cli._helpers import cli_env, err, out, run_cli

from ._helpers import hostile_client
from ._server import HOSTILE_KEY, hostile_server

pytestmark = pytest.mark.anyio


def more_forms(key: str) -> list[str]:
    """The forms of issue 19: no prefix, upper/lower/swapped case, base64 in every alignment."""
    rest = re.split("[-_]", key, maxsplit=1)[1]
    forms = [rest, key.upper(), key.lower(), key.swapcase(), rest.upper()]
    for pad in ("", "x", "xy", "Bearer ", '{"k":"'):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            blob = encode((pad + key + "!").encode()).decode()
            forms.append(blob)
            forms.append(blob.replace("/", "\\/"))
    return forms


def leaked(key: str, text: str) -> list[str]:
    """Return the forms of *key* (and their telltale base64 runs) that *text* holds."""
    found = [form for form in more_forms(key) if form in text]
    rest = re.split("[-_]", key, maxsplit=1)[1]
    found += [form for form in (rest, rest.upper(), rest.lower()) if form in text]
    for align in range(3):
        run = base64.b64encode(b"\0" * align + key.encode() + b"\0\0").decode()[align + 2 : -6]
        found += [form for form in (run, run.translate(str.maketrans("+/", "-_"))) if form in text]
    return found


@pytest.mark.parametrize("key", [HOSTILE_KEY, "sk-0123456789abcdefABCDEF", "AKIA_SECRETVALUE1234"])
def test_every_new_form_is_redacted(key: str) -> None:
    """`key_pattern` matches each new form, so redaction leaves none of them."""
    pattern = re.compile(key_pattern(key))
    for form in more_forms(key):
        text = f"the server said {form} to us"
        cleaned = pattern.sub("[redacted]", text)
        assert not leaked(key, cleaned), (form, cleaned)
        assert "[redacted]" in cleaned


async def test_a_key_echoed_in_new_forms_never_reaches_str_exc() -> None:
    """An error body echoing the new forms gives an exception that holds none of them."""
    async with hostile_server() as server:
        server.failure_error = " ".join(more_forms(server.api_key))
        async with hostile_client(server) as client:
            task = await client.submit("fail now")
            with pytest.raises(nb.TaskFailedError) as failed:
                await task
    text = str(failed.value) + repr(failed.value.snapshot)
    assert not leaked(server.api_key, text), text


async def test_cli_output_journal_and_gallery_hold_no_new_form(tmp_path: Path) -> None:
    """A failure echoing the key's new forms leaves none in stdout, stderr, journal or gallery."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("fail this one\na fine one\n", encoding="utf-8")
    folder = tmp_path / "out"
    async with hostile_server() as server:
        server.failure_reason = server.api_key.upper()
        server.failure_error = " ".join(more_forms(server.api_key))
        env = cli_env(NANOBANANA_API_KEY=server.api_key, NANOBANANA_BASE_URL=server.base_url)
        plain = await run_cli("batch", str(prompts), "--out", str(folder), env=env)
        as_json = await run_cli(
            "batch", str(prompts), "--out", str(folder), "--json", "--retry-failed", env=env
        )
        server.tasks["3-hostile-99"] = {"prompt": "fail", "polls": 5, "flipped": False}
        status = await run_cli("status", "3-hostile-99", env=env)
    assert plain.returncode == 1
    assert "[redacted]" in out(plain)
    for result in (plain, as_json, status):
        text = out(result) + err(result)
        assert not leaked(server.api_key, text), text
    journal = (folder / "journal.jsonl").read_text(encoding="utf-8")
    assert "[redacted]" in journal
    assert not leaked(server.api_key, journal)
    page = (folder / "index.html").read_text(encoding="utf-8")
    assert not leaked(server.api_key, page)
