"""The command lines and Python calls shown in the documentation exist (README.md, docs/*.md, benchmarks/README.md).

Read from the text, checked against the code without running anything: every ``pemma ...`` line of a fenced code
block parses with ``pemma``'s own argparse parser (verbs, sub-verbs, flags, their values and choices, required
arguments); every ``pemma ...`` or ``--flag`` fragment in inline code names a verb and flags that exist; every
``benchmarks/<script>.py --flag`` names a flag that script defines; every ``pemma.<name>(...)`` call of a
``python`` block or inline code names an API function whose signature takes those arguments; a ``torchrun`` line
runs pemma the way torchrun can start it. No torch import: a few seconds.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import io
import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

import pemma
from pemma.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
#: inline fragments that name a verb generically, not a command
PLACEHOLDERS = {"<verb>", "VERB", "VERB:"}


def fenced_lines(text: str, language: str = "bash") -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of every fenced code block in ``language``; backslash continuations joined."""
    inside, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside = not inside and line.strip() == f"```{language}"
            continue
        if not inside:
            continue
        if line.rstrip().endswith("\\"):
            pending, start = pending + line.rstrip()[:-1] + " ", start or number
            continue
        yield (start or number), pending + line
        pending, start = "", 0


def inline_spans(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, code)`` of every inline code span outside fenced blocks."""
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            for span in re.findall(r"`([^`]+)`", line):
                yield number, span.strip()


def words(code: str) -> list[str]:
    """A shell line's words, without its comment."""
    code = re.sub(r"\s#.*$", "", code)
    return shlex.split(code)


def pemma_argv(tokens: list[str]) -> list[str] | None:
    """The arguments after the ``pemma`` command of a shell line (``.venv/bin/pemma``, ``-m pemma.cli.main`` too),
    or None."""
    for i, token in enumerate(tokens):
        if token in ("pemma", "pemma.cli.main") or token.endswith("/bin/pemma"):
            return tokens[i + 1:]
    return None


def doc_lines() -> list[tuple[str, int, str]]:
    return [(f"{path.relative_to(ROOT)}:{number}", number, line)
            for path in DOCS for number, line in fenced_lines(path.read_text())]


def doc_spans() -> list[tuple[str, str]]:
    return [(f"{path.relative_to(ROOT)}:{number}", span)
            for path in DOCS for number, span in inline_spans(path.read_text())]


@cache
def parser() -> argparse.ArgumentParser:
    return build_parser()


def subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def leaf_parsers(p: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    children = subparsers(p)
    if not children:
        yield path, p
    for name, child in children.items():
        yield from leaf_parsers(child, (*path, name))


def parse_error(argv: list[str]) -> str | None:
    """argparse's error for ``pemma ARGV`` (None when it parses)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1]
    return None


def fragment_errors(argv: list[str]) -> list[str]:
    """What is wrong with an inline fragment ``pemma VERB [SUB] --flag [VALUE] ...`` (required arguments may be
    left out; ``train|adapt`` means both verbs)."""
    errors: list[str] = []
    todo: list[tuple[argparse.ArgumentParser, list[str], str]] = [(parser(), argv, "pemma")]
    while todo:
        p, rest, name = todo.pop()
        children = subparsers(p)
        if children and rest and not rest[0].startswith("-"):
            alternatives = [w for w in rest[0].split("|") if w]
            unknown = [w for w in alternatives if w not in children]
            if unknown:
                errors.append(f"{name}: no verb {', '.join(unknown)} (verbs: {', '.join(children)})")
            todo += [(children[w], rest[1:], f"{name} {w}") for w in alternatives if w in children]
            continue
        for i, token in enumerate(rest):
            if not token.startswith("--"):
                continue
            flag, _, value = token.partition("=")
            action = p._option_string_actions.get(flag)
            if action is None:
                errors.append(f"{name}: no flag {flag}")
                continue
            if not action.choices:
                continue
            values = [value] if value else []
            if not value and action.nargs in (None, "?") and i + 1 < len(rest) and not rest[i + 1].startswith("-"):
                values = [rest[i + 1]]
            for given in values:
                for choice in given.split("|"):  # "--split unseen|val|train": each is a choice
                    if choice and choice not in action.choices:
                        errors.append(f"{name} {flag}: {choice!r} is not one of {', '.join(map(str, action.choices))}")
    return errors


def test_the_documents_hold_commands() -> None:
    """The extraction finds what it checks (a changed fence style would otherwise pass every test)."""
    lines = [line for _, _, line in doc_lines() if pemma_argv(words(line))]
    assert len(lines) >= 40, lines
    assert any(pemma_argv(words(span)) for _, span in doc_spans())


DOCUMENTED = [(where, line) for where, _, line in doc_lines() if pemma_argv(words(line)) is not None]


@pytest.mark.parametrize(("where", "line"), DOCUMENTED, ids=[where for where, _ in DOCUMENTED])
def test_every_documented_command_parses(where: str, line: str) -> None:
    argv = pemma_argv(words(line))
    assert argv is not None
    error = parse_error(argv)
    assert error is None, f"{where}: `{line.strip()}`: {error}"


def test_every_inline_command_and_flag_exists() -> None:
    every_flag = {flag for _, p in leaf_parsers(parser()) for flag in p._option_string_actions}
    bench_flags = {flag for flags in benchmark_flags().values() for flag in flags}
    problems = []
    for where, span in doc_spans():
        try:
            tokens = words(span.replace("...", ""))
        except ValueError:
            continue
        argv = pemma_argv(tokens)
        if argv and argv[0] not in PLACEHOLDERS and not argv[0].startswith("."):
            problems += [f"{where}: `{span}`: {e}" for e in fragment_errors(argv)]
        elif tokens and re.fullmatch(r"--[a-z][\w-]*(=.*)?", tokens[0]):
            # a bare flag: some verb or some benchmark script has it (pytest's own --long aside)
            flag = tokens[0].partition("=")[0]
            if flag not in every_flag | bench_flags | {"--long"}:
                problems.append(f"{where}: `{span}`: no verb and no benchmark script has {flag}")
    assert not problems, "\n".join(problems)


@cache
def benchmark_flags() -> dict[str, set[str]]:
    """``{script name: option strings}`` of every script in benchmarks/, read from its ``add_argument`` calls."""
    flags: dict[str, set[str]] = {}
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                names |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
        flags[script.name] = names
    return flags


def test_every_documented_benchmark_flag_exists() -> None:
    flags = benchmark_flags()
    problems = []
    for path in DOCS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in re.finditer(r"(\w+\.py)((?:\s+[^\s`#|;]+)*)", line):
                script, rest = match.groups()
                if script not in flags:
                    continue
                for flag in re.findall(r"(?<![\w-])(--[\w-]+)", rest):
                    if flag not in flags[script]:
                        problems.append(f"{path.relative_to(ROOT)}:{number}: {script} has no {flag}")
    assert not problems, "\n".join(problems)


def test_torchrun_lines_start_pemma_as_a_module() -> None:
    """torchrun starts a Python file or, with -m, a module (``pemma`` is neither: a console script), so a documented
    ``torchrun ... pemma VERB`` must be ``torchrun ... -m pemma VERB`` (``pemma.__main__``; or ``-m pemma.cli.main``,
    or ``--no-python pemma VERB``)."""
    problems = []
    for where, text in [*doc_spans(), *[(w, line) for w, _, line in doc_lines()]]:
        if "torchrun" not in text or "pemma" not in text:
            continue
        tokens = words(text.replace("...", ""))
        as_script = [i for i, t in enumerate(tokens) if t == "pemma" and (i == 0 or tokens[i - 1] != "-m")]
        if as_script and "--no-python" not in tokens and "--no_python" not in tokens:
            problems.append(f"{where}: `{text}` runs `python pemma`")
    assert not problems, "\n".join(problems)


def api_calls(code: str) -> Iterator[ast.Call]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "pemma"):
            yield node


def test_documented_api_calls_match_the_signatures() -> None:
    snippets = [(f"{path.relative_to(ROOT)}:{n}", line) for path in DOCS
                for n, line in fenced_lines(path.read_text(), "python")]
    snippets += [(where, span) for where, span in doc_spans() if span.startswith("pemma.") and "(" in span
                 and "..." not in span]
    assert any(list(api_calls(code)) for _, code in snippets)
    problems = []
    for where, code in snippets:
        for call in api_calls(code):
            name = call.func.attr  # type: ignore[attr-defined]
            if name not in pemma.__all__:
                problems.append(f"{where}: pemma.{name} is not in pemma.__all__")
                continue
            function = getattr(pemma, name)
            if inspect.isclass(function):
                continue
            try:
                inspect.signature(function).bind(*call.args, **{k.arg: None for k in call.keywords if k.arg})
            except TypeError as exc:
                problems.append(f"{where}: pemma.{name}(...): {exc}")
    assert not problems, "\n".join(problems)


def test_every_exported_name_is_documented() -> None:
    """``pemma.__all__`` is named in the package docstring (what ``help(pemma)`` shows), and every exported
    function documents its arguments and has an example."""
    text = pemma.__doc__ or ""
    missing = [name for name in pemma.__all__ if name != "__version__" and f"pemma.{name}``" not in text]
    assert not missing, f"not in pemma's docstring: {missing}"
    for name in pemma.API:
        doc = inspect.getdoc(getattr(pemma, name)) or ""
        assert "Example" in doc, f"pemma.{name} has no example"
        assert inspect.isclass(getattr(pemma, name)) or "Args:" in doc, f"pemma.{name} documents no arguments"
