"""Every python sample of README.md, docs/ and the public docstrings runs or type-checks."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._samples import ROOT, Sample, all_samples, typed_source

SAMPLES, PROBLEMS = all_samples()
RUN_TIMEOUT = 90
CHECK_TIMEOUT = 300

# What a project's conftest.py does for async tests: anyio's plugin, on asyncio.
PYTEST_CONFTEST = """
import inspect

import pytest


@pytest.fixture
def anyio_backend():
    return "asyncio"


def pytest_collection_modifyitems(items):
    for item in items:
        function = getattr(item, "function", None)
        if inspect.iscoroutinefunction(function) and not item.get_closest_marker("anyio"):
            item.add_marker(pytest.mark.anyio)
"""


def _of_mode(*modes: str) -> list[pytest.param]:
    return [pytest.param(s, id=s.id) for s in SAMPLES if s.mode in modes]


def _missing(sample: Sample) -> list[str]:
    return [name for name in sample.requires if importlib.util.find_spec(name) is None]


def _env() -> dict[str, str]:
    # Samples that need a key take it from the environment: none may leak in from the caller's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOBANANA_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def test_markers_are_well_formed() -> None:
    """Every sample marker names a known mode and options, and precedes a python block."""
    assert PROBLEMS == []
    assert any(s.mode == "run" for s in SAMPLES)


def test_parts_are_used() -> None:
    """No sample is left unchecked: every block is run, tested, type-checked or a part."""
    parts = [s for s in SAMPLES if s.mode == "part"]
    for part in parts:
        later = [s for s in SAMPLES if s.origin == part.origin and s.line > part.line]
        assert later, f"{part.id} is used by no sample"
        assert later[0].code.startswith(part.code), f"{part.id} is used by no sample"


class _Job:
    """A checker started in the background, its output going to files in its folder."""

    def __init__(self, folder: Path, files: dict[str, str], argv: list[str]) -> None:
        self.folder = folder
        #: Sample id by the file (or module) name it was written as.
        self.files = files
        with (folder / "stdout").open("wb") as out, (folder / "stderr").open("wb") as err:
            self.proc = subprocess.Popen(argv, cwd=folder, stdout=out, stderr=err, env=_env())

    def result(self) -> tuple[int, str, str]:
        """Wait for the checker; return its exit code, output and error output."""
        try:
            code = self.proc.wait(timeout=CHECK_TIMEOUT)
        finally:
            self.stop()
        return code, (self.folder / "stdout").read_text(), (self.folder / "stderr").read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _start_mypy(folder: Path, cache_dir: Path) -> _Job:
    files: dict[str, str] = {}
    for n, sample in enumerate(SAMPLES):
        if sample.mode in ("run", "typecheck") and not _missing(sample):
            name = f"sample_{n}.py"
            (folder / name).write_text(typed_source(sample))
            files[name] = sample.id
    config = folder / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\nwarn_unused_ignores = True\n")
    argv = [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir"]
    argv += [str(cache_dir), "--no-error-summary", "--show-error-codes", "--no-pretty"]
    return _Job(folder, files, argv + sorted(files))


def _start_pytest(folder: Path) -> _Job:
    files: dict[str, str] = {}
    for n, sample in enumerate(SAMPLES):
        if sample.mode == "pytest" and not _missing(sample):
            name = f"test_sample_{n}"
            (folder / f"{name}.py").write_text(sample.code)
            files[name] = sample.id
    (folder / "conftest.py").write_text(PYTEST_CONFTEST)
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:asyncio",
        "-W",
        "error",
    ]
    argv += ["--rootdir", str(folder), f"--junitxml={folder / 'report.xml'}", str(folder)]
    return _Job(folder, files, argv)


@pytest.fixture(scope="session")
def checkers(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[dict[str, _Job]]:
    """mypy on the typed samples and pytest on the test samples, started side by side."""
    # mypy's cache lives in pytest's (when it is on), so that later runs take a second.
    cache = getattr(request.config, "cache", None)
    typed = tmp_path_factory.mktemp("typed-samples")
    # One per xdist worker: two mypy runs must not write one cache at the same time.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    cache_dir = (
        cache.mkdir(f"mypy-docs-samples-{worker}") if cache is not None else typed / ".mypy_cache"
    )
    jobs = {
        "mypy": _start_mypy(typed, cache_dir),
        "pytest": _start_pytest(tmp_path_factory.mktemp("pytest-samples")),
    }
    yield jobs
    for job in jobs.values():
        job.stop()


@pytest.fixture(scope="session")
def mypy_errors(checkers: dict[str, _Job]) -> dict[str, list[str]]:
    """mypy --strict's errors, by sample id (one mypy call for all samples)."""
    job = checkers["mypy"]
    code, out, err = job.result()
    errors: dict[str, list[str]] = {sample_id: [] for sample_id in job.files.values()}
    for line in out.splitlines():
        match = re.match(r"^(sample_\d+\.py):\d+:", line)
        if match and ": note:" not in line:
            errors[job.files[match[1]]].append(line)
    assert code in (0, 1), f"mypy crashed:\n{out}\n{err}"
    assert (code == 1) == any(errors.values()), out
    return errors


@pytest.mark.parametrize("sample", _of_mode("run", "typecheck"))
def test_sample_type_checks(sample: Sample, mypy_errors: dict[str, list[str]]) -> None:
    """The sample passes mypy --strict against the installed package."""
    missing = _missing(sample)
    if missing:
        pytest.skip(f"needs {missing} (pip install -e '.[docs]')")
    assert mypy_errors[sample.id] == [], "\n" + typed_source(sample)


@pytest.mark.parametrize("sample", _of_mode("run"))
def test_sample_runs(sample: Sample, tmp_path: Path) -> None:
    """The sample runs to the end as a script, without a warning, against the emulator."""
    missing = _missing(sample)
    if missing:
        pytest.skip(f"needs {missing} (pip install -e '.[docs]')")
    script = tmp_path / "sample.py"
    script.write_text(sample.code)
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 0, f"{sample.id}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stderr == ""


@pytest.fixture(scope="session")
def pytest_outcomes(checkers: dict[str, _Job]) -> dict[str, list[tuple[str, str]]]:
    """(test name, outcome) by sample id (one pytest run for all samples)."""
    job = checkers["pytest"]
    _, out, err = job.result()
    report = job.folder / "report.xml"
    files = job.files
    assert report.exists(), f"pytest did not run:\n{out}\n{err}"
    outcomes: dict[str, list[tuple[str, str]]] = {sample_id: [] for sample_id in files.values()}
    for case in ET.parse(report).iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        verdict = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                verdict = f"{child.tag}: {child.get('message', '')}\n{child.text or ''}"
        outcomes[files[module]].append((case.get("name", ""), verdict))
    return outcomes


@pytest.mark.parametrize("sample", _of_mode("pytest"))
def test_pytest_sample_passes(
    sample: Sample, pytest_outcomes: dict[str, list[tuple[str, str]]]
) -> None:
    """Every test the sample defines is collected and passes."""
    missing = _missing(sample)
    if missing:
        pytest.skip(f"needs {missing} (pip install -e '.[docs]')")
    defined = re.findall(r"^(?:async )?def (test_\w+)", sample.code, re.MULTILINE)
    outcomes = pytest_outcomes[sample.id]
    assert {name.split("[")[0] for name, _ in outcomes} == set(defined)
    assert [(name, verdict) for name, verdict in outcomes if verdict != "passed"] == []


def test_root_is_the_repository() -> None:
    """The samples are read from this repository's README.md and docs/."""
    assert (ROOT / "pyproject.toml").exists()
    assert sum(s.origin == "README.md" for s in SAMPLES) >= 3
