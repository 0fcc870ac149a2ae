"""Checks that every ``jinterp ...`` command in a Markdown file works as written (``make docs-check``).

    python tools/docs_check.py README.md        # prints one line per problem; exit status 1 if there is any

Commands are taken from fenced code blocks (lines starting with ``jinterp``; ``# comments`` dropped) and from inline
code spans (tables and prose). Each one is checked without being run:

* it parses with the real parser (``jinterp.cli.build_parser()``), and names no placeholder (``[--opt]``, ``<x>``);
* a method or train-backbone command says ``--config tiny`` or ``--config paper`` explicitly (their default is
  ``paper``: hours on a CPU, which a reader copying a line does not expect; ``demo`` defaults to ``tiny``);
* every ``--set key=value`` is a field of that command's config with a value of the right type, checked by the
  config module's own override machinery (``jinterp.core.config.apply_overrides``, which also runs ``validate()``);
  ``demo`` takes none;
* every ``--layer``/``--layers``/``--target`` is a layer of the architecture the command would use (``--arch``, else
  ``--set arch=``, else the preset's), per ``jinterp.backbones.layer_names``. A command with ``--model FILE.py:FACTORY``
  names the module paths of the reader's own model, which exist only once that file is loaded: its layers are not
  checked here (the command itself validates them, listing the valid names and the nearest match).

Cheap commands (``--help``, ``--version``) run for real, as ``python -m jinterp.cli ...`` from the repository root.
``tests/test_docs_check.py`` runs the same check on README.md, so CI fails when a README command breaks.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# command -> (module, config class); the method CLIs start from these presets and apply --set on top.
CONFIGS = {
    "train-backbone": ("jinterp.core.config", "TrainBackboneConfig"),
    "explainer": ("jinterp.methods.explainer.config", "ExplainerConfig"),
    "graph": ("jinterp.methods.graph.config", "GraphConfig"),
    "basis": ("jinterp.methods.basis.config", "BasisConfig"),
    "cladec": ("jinterp.methods.cladec.config", "ClaDecConfig"),
    "csg": ("jinterp.methods.csg.config", "CSGConfig"),
}
CHEAP = ("--help", "-h", "--version")


@dataclasses.dataclass(frozen=True)
class Command:
    line: int   # 1-based line of the Markdown file where the command starts
    text: str   # the command, whitespace collapsed


# ------------------------------------------------------------------------------------------------- extraction
_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE = re.compile(r"`(jinterp\s[^`]+)`")  # a bare `jinterp` in prose names the tool


def extract_commands(markdown: str) -> list[Command]:
    """Every ``jinterp`` command in fenced blocks (one per line) and inline code spans, in file order."""
    found: list[Command] = []
    prose: list[str] = []  # the file with fenced blocks blanked (line numbers kept) for the inline pass
    fenced = False
    for no, line in enumerate(markdown.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            prose.append("")
            continue
        if fenced:
            prose.append("")
            text = re.sub(r"\s+#.*$", "", line.strip().removeprefix("$ ").strip())
            if text == "jinterp" or text.startswith("jinterp "):
                found.append(Command(no, " ".join(text.split())))
        else:
            prose.append(line)
    text = "\n".join(prose)
    for m in _INLINE.finditer(text):
        found.append(Command(text.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split())))
    return sorted(found, key=lambda c: c.line)


# --------------------------------------------------------------------------------------------------- checking
def _parse(argv: list[str]) -> tuple[argparse.Namespace | None, str, int]:
    """(args, stderr, exit status): argparse exits on --help and on errors; both are caught here."""
    from jinterp.cli import build_parser

    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            return build_parser().parse_args(argv), "", 0
    except SystemExit as e:
        return None, err.getvalue(), int(e.code or 0)


def _config(command: str, args: argparse.Namespace):
    import importlib

    from jinterp.core import config as cfglib

    module, name = CONFIGS[command]
    cls = getattr(importlib.import_module(module), name)
    if command == "graph" and getattr(args, "arch", None) == "resnet20" and args.config == "tiny":
        cfg = cls.resnet20()  # what jinterp graph does (see jinterp/methods/graph/cli.py)
    else:
        cfg = cfglib.preset(cls, args.config)
    sets = [f"arch={args.arch}"] if getattr(args, "arch", None) else []
    return cfglib.apply_overrides(cfg, sets + list(args.overrides))


def _layer_options(args: argparse.Namespace) -> list[tuple[str, str]]:
    out = []
    for opt in ("layer", "layers", "target"):
        value = getattr(args, opt, None)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            out += [(f"--{opt}", name.strip()) for name in str(v).split(",") if name.strip()]
    return out


def _run_cheap(argv: list[str]) -> str | None:
    r = subprocess.run([sys.executable, "-m", "jinterp.cli", *argv], capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    if r.returncode != 0 or not r.stdout.strip():
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return f"running it exited with status {r.returncode}: {last}"
    return None


def check_command(text: str) -> list[str]:
    """Problems of one command (empty: it works as written)."""
    from jinterp import backbones
    from jinterp.errors import JinterpError

    if re.search(r"\[[^\]]*\]|<[^>]*>|\.\.\.", text):
        return ["has a placeholder ([...], <...> or ...); write the command as it is to be typed"]
    try:
        argv = shlex.split(text)[1:]
    except ValueError as e:
        return [f"cannot be split into words: {e}"]
    args, err, status = _parse(argv)
    if args is None:
        if status == 0 and any(a in CHEAP for a in argv):
            problem = _run_cheap(argv)
            return [problem] if problem else []
        last = (err.strip().splitlines() or ["(no message)"])[-1]
        return [f"does not parse: {last}"]
    problems = []
    if args.command in CONFIGS:  # (jinterp demo defaults to tiny)
        if "--config" not in argv:
            problems.append("give the preset explicitly: --config tiny (minutes on a CPU) or --config paper")
    if args.command == "demo":
        if args.overrides:
            problems.append("jinterp demo takes no --set")
        return problems
    if args.command not in CONFIGS:
        return problems
    try:
        cfg = _config(args.command, args)
    except JinterpError as e:
        return problems + [" ".join(str(e).split())]
    layers = [] if getattr(args, "model", None) else _layer_options(args)  # a user model's: checked when it runs
    if layers:
        try:
            valid = backbones.layer_names(cfg.arch)
        except JinterpError as e:
            return problems + [" ".join(str(e).split())]
        for opt, name in layers:
            if name not in valid:
                problems.append(f"{opt} {name} is not a layer of {cfg.arch}; its layers: {', '.join(valid)}")
    return problems


def check_file(path: str | Path) -> tuple[list[Command], list[str]]:
    """The commands of a Markdown file and its problems, one line each (``FILE:LINE: `cmd`: problem``)."""
    path = Path(path)
    commands = extract_commands(path.read_text(encoding="utf-8"))
    problems = [f"{path.name}:{c.line}: `{c.text}`: {p}" for c in commands for p in check_command(c.text)]
    return commands, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=[str(ROOT / "README.md")])
    files = parser.parse_args(argv).files
    bad = 0
    for f in files:
        commands, problems = check_file(f)
        for p in problems:
            print(p)
        bad += len(problems)
        print(f"{f}: {len(commands)} jinterp commands, {len(problems)} problems", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # the jinterp of this checkout
    sys.exit(main())
