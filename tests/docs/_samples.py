"""Code samples of README.md, docs/ and the public docstrings: found, classified, prepared.

A python block may be preceded by a marker line saying what to do with it:

    <!-- sample: MODE [requires=mod1,mod2] [with-previous] -->

MODE is one of:
- ``run``: executed as a script in a fresh interpreter (warnings are errors), and type-checked;
- ``pytest``: run as a test module by pytest (async tests under anyio, as a project's conftest
  would set up);
- ``typecheck``: type-checked with ``mypy --strict`` only (it needs a real key or files);
- ``part``: only the start of a later ``with-previous`` sample, not checked alone.

``requires=`` names modules that must be importable (else the sample is skipped: the ``docs``
extra installs them). ``with-previous`` prepends the previous python block of the same file.
Unmarked blocks (README.md, docstrings) are ``pytest`` when they define ``test_`` functions, else
``typecheck``; a block with top-level ``await`` or free names is type-checked as the body of an
async function whose parameters give those names their types (`FREE_NAMES`).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MODES = frozenset({"run", "pytest", "typecheck", "part"})
MARKER = re.compile(r"^<!--\s*sample:\s*(?P<spec>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<fence>`{3,})(?P<lang>[\w+-]*)\s*$")

#: Types of the names README fragments use without defining them.
FREE_NAMES = {
    "prompts": "list[str]",
    "requests": "list[nb.GenerationRequest]",
    "task_id": "str",
}


#: Modules whose docstrings (of the module, of each name in `__all__` and of their public
#: members) the API reference shows.
DOCUMENTED_MODULES = (
    "nanobanana_async",
    "nanobanana_async.defaults",
    "nanobanana_async.events",
    "nanobanana_async.gallery",
    "nanobanana_async.limiters",
    "nanobanana_async.testing",
)


def sources() -> list[Path]:
    """The markdown files whose samples are checked."""
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def docstrings() -> dict[str, str]:
    """The docstrings of the documented modules and their public names, by dotted name."""
    found: dict[str, str] = {}
    for module_name in DOCUMENTED_MODULES:
        module = importlib.import_module(module_name)
        found[module_name] = module.__doc__ or ""
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isroutine(obj)):
                continue  # constants carry their type's docstring
            found[f"{module_name}.{name}"] = obj.__doc__ or ""
            if inspect.isclass(obj):
                for member, value in vars(obj).items():
                    doc = getattr(value, "__doc__", None)
                    if not member.startswith("_") and isinstance(doc, str):
                        found[f"{module_name}.{name}.{member}"] = doc
    return {name: inspect.cleandoc(doc) for name, doc in found.items() if "```" in doc}


@dataclass(frozen=True)
class Sample:
    """One python code block, with what to do with it."""

    origin: str  # a file relative to the repository, or a dotted name for a docstring
    line: int
    mode: str
    code: str
    requires: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.origin}:{self.line}"


def parse(text: str, origin: str) -> tuple[list[Sample], list[str]]:
    """Return the python samples of *text*, and the problems found with its markers."""
    samples: list[Sample] = []
    problems: list[str] = []
    lines = text.splitlines()
    previous_code: str | None = None
    spec: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line)
        if marker:
            spec = marker["spec"]
            i += 1
            continue
        fence = FENCE.match(line)
        if not fence:
            if line.strip():
                if spec is not None:
                    problems.append(f"{origin}:{i}: a sample marker not followed by a block")
                spec = None
            i += 1
            continue
        start = i + 1
        end = start
        while end < len(lines) and lines[end].strip() != fence["fence"]:
            end += 1
        code = "\n".join(lines[start:end]) + "\n"
        i = end + 1
        if fence["lang"] not in ("python", "py"):
            if spec is not None:
                problems.append(f"{origin}:{start}: a sample marker on a non-python block")
            spec = None
            continue
        words = (spec or "").split()
        spec = None
        mode = words[0] if words else None
        requires: tuple[str, ...] = ()
        full = code
        for word in words[1:]:
            if word.startswith("requires="):
                requires = tuple(filter(None, word.removeprefix("requires=").split(",")))
            elif word == "with-previous":
                if previous_code is None:
                    problems.append(f"{origin}:{start}: with-previous without a previous block")
                else:
                    full = previous_code + "\n\n" + code
            else:
                problems.append(f"{origin}:{start}: unknown sample option {word!r}")
        if mode is None:
            mode = (
                "pytest" if re.search(r"^(async )?def test_", code, re.MULTILINE) else "typecheck"
            )
        elif mode not in MODES:
            problems.append(f"{origin}:{start}: unknown sample mode {mode!r}")
            mode = "typecheck"
        previous_code = full
        samples.append(Sample(origin, start, mode, full, requires))
    return samples, problems


def all_samples() -> tuple[list[Sample], list[str]]:
    """Every sample of every source, and every marker problem."""
    samples: list[Sample] = []
    problems: list[str] = []
    texts = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in sources()}
    for origin, text in {**texts, **docstrings()}.items():
        found, wrong = parse(text, origin)
        samples += found
        problems += wrong
    return samples, problems


def _needs_function(code: str) -> bool:
    try:
        compile(code, "<sample>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        return "outside" in str(exc.msg)
    return False


def free_names(code: str) -> set[str]:
    """Names a fragment reads but never binds (a coarse, scope-blind reading, enough here)."""
    tree = ast.parse(code)
    loaded: set[str] = set()
    bound: set[str] = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound


def typed_source(sample: Sample) -> str:
    """The sample as a module mypy can check: fragments become an async function's body.

    Raises:
        ValueError: the fragment reads a name `FREE_NAMES` does not know.
    """
    code = sample.code
    free = free_names(code)
    if not free and not _needs_function(code):
        return code
    free.discard("nb")  # the wrapper imports it
    unknown = free - FREE_NAMES.keys()
    if unknown:
        raise ValueError(f"{sample.id}: names used but not defined: {sorted(unknown)}")
    params = ", ".join(f"{name}: {FREE_NAMES[name]}" for name in sorted(free))
    return (
        "import nanobanana_async as nb\n\n\n"
        f"async def _sample({params}) -> None:\n" + textwrap.indent(code, "    ")
    )
