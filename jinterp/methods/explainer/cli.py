"""``jinterp explainer``: distill a performer layer into interpretable part features and evaluate them.

    jinterp explainer --config tiny --workdir runs/explainer
    jinterp explainer --config tiny --layer relu3 --target relu4 --set lam=1.0 --set eta=0.1
    jinterp explainer --arch resnet20 --weights W.npz --layer layer2 --target layer3 --data synthparts:size=32

Writes ``<workdir>/results.json`` (relative reconstruction error, accuracy with the target replaced, p,
location instability of interpretable vs performer filters, the λ/η sweep), ``metrics.jsonl``,
``checkpoints/`` (rerun to resume) and ``figures/``. Imports stay light until ``run``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("explainer options")
    g.add_argument("--layer", default=None, metavar="IN",
                   help="performer layer the explainer reads (post-ReLU), e.g. relu3 (convnet), layer2 (resnet20). "
                        "Default: the arch's (config.DEFAULT_LAYERS)")
    g.add_argument("--target", default=None, metavar="OUT",
                   help="higher performer layer it reconstructs, e.g. relu4 (convnet), layer3 (resnet20)")
    g.add_argument("--arch", default=None, help="performer architecture (same as --set arch=...)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def verdicts(res: dict) -> list[str]:
    """The results' verdict sentences, one per line to print: each unit set's instability against units that know
    nothing, then each unit set's filter diversity (prefixed with the unit set's name)."""
    lines = [v["verdict"] for v in (res.get("instability_baselines") or {}).values()
             if isinstance(v, dict) and v.get("verdict")]
    lines += [f"{name.replace('_', ' ')} filters: {v['verdict']}"
              for name, v in (res.get("filter_diversity") or {}).items() if isinstance(v, dict) and v.get("verdict")]
    return lines


def _share(res: dict, units: str) -> str:
    """`` (N % of filters on one cell)`` for a unit set with a filter-diversity figure, else ""."""
    share = ((res.get("filter_diversity") or {}).get(units) or {}).get("share_on_most_common_cell")
    return "" if share is None else f" ({share:.0%} of filters on one cell)"


def run(args: argparse.Namespace) -> int:
    from jinterp.core.run import config_from_args
    from jinterp.methods.explainer.config import ExplainerConfig
    from jinterp.methods.explainer.program import run as run_program

    sets = [(name, f"{name}={getattr(args, name)}") for name in ("data", "weights", "model", "arch", "layer", "target")
            if getattr(args, name, None)]
    cfg = config_from_args(ExplainerConfig, args, method="explainer", sets=sets)
    res = run_program(cfg, args.workdir, progress=not getattr(args, "quiet", False),
                      restart=getattr(args, "restart", False))
    ins = res["instability"]
    perf = ins.get(f"performer_{res['layer']}", {}).get("value")
    print(f"explainer {res['arch']} {res['layer']}->{res['target']}: rel. error {res['relative_error']:.3f}, "
          f"accuracy {res.get('accuracy', float('nan')):.3f} -> {res.get('accuracy_replaced', float('nan')):.3f} "
          f"replaced, mean p {res['p_mean']:.3f}, instability interp2 {ins['explainer_interp2']['value']:.4f}"
          f"{_share(res, 'explainer_interp2')} vs performer {res['layer']} {perf if perf is None else round(perf, 4)}"
          f"{_share(res, 'performer_' + res['layer'])} ({res['times']['total_s']:.0f} s); "
          f"results: {args.workdir}/results.json")
    from jinterp.report.randomization import cli_lines

    for line in cli_lines(res, verdicts(res)):
        print(line)
    return 0
