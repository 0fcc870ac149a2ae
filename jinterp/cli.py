"""The ``jinterp`` command: a thin argparse layer over importable programs.

    jinterp train-backbone --arch convnet --data synthparts --config tiny --workdir runs/x
    jinterp train-backbone --config paper --data cifar10:../data/cifar-10-batches-py --set optim.lr=0.05

Every subcommand takes ``--config paper|tiny`` (the preset), ``--set key=value`` (repeatable, parsed by the
config field's type), ``--workdir``, ``--data`` (a ``jinterp.data.load`` spec) and ``--weights`` (a saved
variables file, e.g. ``<workdir>/params.npz`` of ``train-backbone``). Errors that jinterp raises on purpose
(``JinterpError``) print as one line ``jinterp: error: ...`` and exit with status 2.

Method subcommands plug in without editing this file: ``jinterp <name>`` imports ``jinterp.methods.<name>.cli``
(the module listed in ``COMMANDS``) and calls its ``run(args) -> int`` with the parsed common options (plus any the
module adds through an optional ``add_arguments(parser)``; keep such modules light to import).

Every run holds its work directory (``jinterp.core.run.Run``): a lock keeps a second process out, ``config.json``
records what produced each stage, and ``--config <workdir>/config.json`` reruns a run exactly. A stage saved under
other settings is recomputed, or, for a training with checkpoints, refused unless ``--restart`` is given.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from jinterp import __version__
from jinterp.core.distributed import maybe_initialize
from jinterp.errors import ConfigError, JinterpError

PROG = "jinterp"

# name -> (module providing run(args), what it is)
COMMANDS: dict[str, tuple[str, str]] = {
    "cladec": ("jinterp.methods.cladec.cli", "ClaDec: decode a layer's activations, contrast with a reference "
               "auto-encoder"),
    "csg": ("jinterp.methods.csg.cli", "class-specific gates trained into the CNN"),
    "basis": ("jinterp.methods.basis.cli", "unsupervised interpretable basis extraction (+ supervised baseline)"),
    "graph": ("jinterp.methods.graph.cli", "explanatory graph of part patterns"),
    "explainer": ("jinterp.methods.explainer.cli", "explainer network distilled from a conv layer"),
    "demo": ("jinterp.report.demo", "all five methods on a small CNN, with an HTML report"),
    "bench": ("jinterp.bench.cli", "JAX vs PyTorch benchmarks"),
}
RESERVED = COMMANDS  # the former name, kept for callers


def _add_common(p: argparse.ArgumentParser, *, workdir_default: str, config_default: str = "paper") -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--config", default=config_default, metavar="PRESET|FILE",
                   help="config preset: 'paper' (the published setting) or 'tiny' (seconds to minutes on a "
                        "2-core CPU), or a run's saved config.json to rerun it exactly (default: %(default)s)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of this command's config, parsed by its type (repeatable), e.g. "
                        "--set seed=1 (train-backbone: --set optim.lr=0.05; cladec: --set alphas=0,0.01); an "
                        "unknown key lists the valid ones")
    g.add_argument("--workdir", default=workdir_default,
                   help="run directory: checkpoints, metrics.jsonl, results; rerunning the same command there "
                        "resumes (default: %(default)s)")
    g.add_argument("--restart", action="store_true",
                   help="discard the stages of --workdir saved under other settings (checkpoints included) and "
                        "recompute them, instead of refusing to touch them")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files (<workdir>/tb/, beside each metrics.jsonl) of the "
                        "training steps: the same scalars and steps; changes no result or fingerprint")
    g.add_argument("--data", default="synthparts",
                   help="data spec: 'synthparts' (generated in memory), 'synthparts:size=64,n_train=2000', "
                        "'cifar10:PATH', 'mnist:PATH', 'npz:PATH', 'folder:PATH', 'tfds:NAME[:DIR]', "
                        "'broden:PATH' (default: %(default)s)")
    g.add_argument("--weights", default=None, metavar="PATH",
                   help="pretrained backbone variables (.npz from train-backbone's params.npz or "
                        "jinterp.backbones.torch_import.save_variables); with --model, the model's checkpoint "
                        "(.pth/.pt/.th state dict, .safetensors, or .npz for a Flax model)")
    g.add_argument("--model", default=None, metavar="FILE.py:FACTORY",
                   help="your own CNN instead of a built-in arch: a Python file whose function returns a "
                        "torch.nn.Module or a Flax module, or a converted model .npz (jinterp.models.save_model); "
                        "layers are then its module paths (an unknown one lists the valid names)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="CNN-interpretability methods in JAX: train backbones, run the five methods, "
        "benchmark against PyTorch.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "train-backbone", help="train a classification backbone (convnet, resnet20, vgg11_bn_cladec, vgg16...)",
        description="Train a classification backbone with SGD/Adam, checkpoints and resume. Writes "
        "<workdir>/config.json, metrics.jsonl, checkpoints/, and at the end params.npz (load with --weights) "
        "and final_metrics.json. Config keys: see --set with an unknown key, or jinterp.core.config."
        "TrainBackboneConfig.")
    p.add_argument("--arch", default=None,
                   help="backbone architecture (same as --set arch=...; default: the preset's, convnet)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(p, workdir_default="runs/train-backbone")
    p.set_defaults(handler=_train_backbone)

    for name, (module, what) in COMMANDS.items():
        q = sub.add_parser(name, help=what, description=f"{what}.")
        # The demo's point is a first look in minutes: its presets default to tiny.
        _add_common(q, workdir_default=f"runs/{name}", config_default="tiny" if name == "demo" else "paper")
        _add_method_arguments(q, module)
        if name == "demo":
            q.add_argument("--quick", action="store_true", help="the tiny settings: a few minutes on a CPU")
        q.set_defaults(handler=_command(name))
    return parser


def _available(module: str) -> bool:
    """Whether a subcommand's module exists (so --help says which commands work), without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):
        return False


def _add_method_arguments(parser: argparse.ArgumentParser, module: str) -> None:
    """Lets a method's cli module add its own options (``add_arguments(parser)``, e.g. ``--layer``)."""
    if not _available(module):
        return
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError:
        return  # reported when the command runs
    add = getattr(mod, "add_arguments", None)
    if add is not None:
        add(parser)


def _train_backbone(args: argparse.Namespace) -> int:
    from jinterp.core import config as cfglib
    from jinterp.core.run import load_config
    from jinterp.core.train_backbone import train_backbone

    cfg = load_config(cfglib.TrainBackboneConfig, args.config, method="train-backbone")
    cli_sets = [f"data={args.data}"] if _given(args, "data") else []
    if args.arch is not None:
        cli_sets.append(f"arch={args.arch}")
    if args.weights:
        cli_sets.append(f"weights={args.weights}")
    cfg = cfglib.apply_overrides(cfg, cli_sets + list(args.overrides))
    final = train_backbone(cfg, args.workdir, progress=not args.quiet, restart=args.restart)
    print(f"{final['arch']}: test accuracy {final['test_accuracy']:.4f} after {final['step']} steps "
          f"({final['wall_time_s']:.0f} s); params: {final['params']}")
    return 0


def _given(args: argparse.Namespace, name: str) -> bool:
    from jinterp.core.run import explicit

    return explicit(args, name)


def _command(name: str):
    module, _ = COMMANDS[name]

    def handler(args: argparse.Namespace) -> int:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not module.startswith(e.name):
                raise  # a missing dependency inside an existing module is a real error
            raise ConfigError(f"`{PROG} {name}` needs {module}, which is not importable here (it ships with the "
                              "repository checkout, not the installed package); run it from a checkout") from e
        return int(mod.run(args) or 0)

    return handler


def _interrupted_message(args: argparse.Namespace) -> str:
    """A resume hint only where a checkpoint exists to resume from."""
    from pathlib import Path

    workdir = getattr(args, "workdir", None)
    has_ckpt = bool(workdir) and any(p.name.isdigit() and p.is_dir()
                                     for p in Path(workdir).glob("**/checkpoints/*"))
    if has_ckpt:
        return "interrupted; rerun the same command to resume from the last checkpoint"
    return ("interrupted before the first checkpoint was written; rerunning the same command starts the "
            "training over")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        maybe_initialize()  # joins a multi-host JAX job when the launcher's environment says so
        from jinterp.core import tensorboard

        with tensorboard.logging(getattr(args, "tensorboard", False)):
            return args.handler(args)
    except JinterpError as e:
        msg = " ".join(str(e).split())  # one line
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: {_interrupted_message(args)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
