"""The documentation stays true to the code: every command in README.md and docs/*.md that runs train.py,
detect.py, evaluate.py or bench.py is parsed by that script's own `parse_args` (a removed or misspelt flag fails
here), every `--flag` named in the prose is a flag of one of them, and every relative link (and its anchor)
resolves. parse_args only parses, so the placeholder paths in the commands need not exist."""
import contextlib
import functools
import io
import re
import shlex
from pathlib import Path

import pytest
import torch

import bench
import detect
import evaluate
import train

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = {"train.py": train, "detect.py": detect, "evaluate.py": evaluate, "bench.py": bench}
OTHER_FLAGS = {"--nproc_per_node"}  # torchrun's
PLACEHOLDERS = {"...", "\u2026"}  # "the rest of the command", not an argument
# Pages another branch adds: a link to one is skipped (reported, not passed) while the page is absent here.

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
SHELL = {"", "bash", "sh", "shell", "console"}
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.M)
HTML_ID = re.compile(r"<a\s+id=\"([^\"]+)\"")


def fenced_blocks(text):
    return [(lang, body) for lang, body in FENCE.findall(text)]


def prose(text):
    """The page without its fenced blocks."""
    return FENCE.sub("", text)


def shell_lines(text):
    """Commands: lines of shell blocks (`\\` continuations joined), and inline spans that start like a command."""
    lines = []
    for lang, body in fenced_blocks(text):
        if lang in SHELL:
            lines += body.replace("\\\n", " ").splitlines()
    lines += [s for s in INLINE.findall(prose(text)) if re.match(r"(python3?|torchrun|OMP_NUM_THREADS)\b", s)]
    return lines


def script_commands(line):
    """[(script, args)] for each `... X.py args` in one shell line (split at &&, ||, ;, |; comments dropped)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, words = [], []
    for token in [*lexer, ";"]:
        if token and set(token) <= set("&|;"):
            script = next((w for w in words if Path(w).name in SCRIPTS), None)
            if script is not None:
                args = words[words.index(script) + 1:]
                commands.append((Path(script).name, [a for a in args if a not in PLACEHOLDERS]))
            words = []
        else:
            words.append(token)
    return commands


def all_commands():
    found = []
    for page in PAGES:
        for line in shell_lines(page.read_text()):
            found += [(page.relative_to(ROOT), script, args) for script, args in script_commands(line)]
    return found


COMMANDS = all_commands()


def test_the_pages_hold_commands_of_every_script():
    assert {script for _, script, _ in COMMANDS} == set(SCRIPTS)
    assert len(COMMANDS) > 30


def test_script_commands_split_as_a_shell_would():
    line = "OMP_NUM_THREADS=1 python train.py --data_path 'a b' ... && python detect.py --json  # a comment"
    assert script_commands(line) == [("train.py", ["--data_path", "a b"]), ("detect.py", ["--json"])]
    assert script_commands("torchrun --nproc_per_node=4 train.py --bs 4") == [("train.py", ["--bs", "4"])]
    assert script_commands("pip install onnx") == []


@pytest.mark.parametrize("doc, script, args", COMMANDS, ids=[f"{p}:{s}" for p, s, _ in COMMANDS])
def test_every_command_parses(doc, script, args, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # GPU commands parse as on a GPU machine
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            SCRIPTS[script].parse_args(args)
        except SystemExit as e:
            assert e.code == 0, f"{doc}: {script} {' '.join(args)}\n{err.getvalue()}"
    spelt = {a.split("=")[0] for a in args if a.startswith("--")}  # argparse also takes prefixes: not in docs
    assert spelt <= flags_of(script), f"{doc}: {script} has no {sorted(spelt - flags_of(script))}"


@functools.cache
def flags_of(script):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        SCRIPTS[script].parse_args(["--help"])
    return set(re.findall(r"--\w+", out.getvalue()))


@pytest.mark.parametrize("doc", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flag_named_in_the_prose_exists(doc):
    known = set().union(*(flags_of(s) for s in SCRIPTS), OTHER_FLAGS)
    named = {f for span in INLINE.findall(prose(doc.read_text())) for f in re.findall(r"(?<![\w-])--\w+", span)}
    assert not named - known, f"{doc.name}: flags no script has: {sorted(named - known)}"


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_slug_is_githubs():
    assert slug("Recalibrate on the line's own images") == "recalibrate-on-the-lines-own-images"
    assert slug("Detection: `detect.py`") == "detection-detectpy"
    assert slug("Large and non-square images: `--scale`") == "large-and-non-square-images---scale"


def anchors(page):
    text = page.read_text()
    return {slug(h) for h in HEADING.findall(prose(text))} | set(HTML_ID.findall(text))


@pytest.mark.parametrize("doc", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    text = INLINE.sub("", prose(doc.read_text()))
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        assert dest.exists(), f"{doc.name}: link to {target}: no such file"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{doc.name}: link to {target}: no such heading in {dest.name}"
