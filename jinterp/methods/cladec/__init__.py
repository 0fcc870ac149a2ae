"""ClaDec (Schneider & Vlachos, *Explaining Neural Networks by Decoding Layer Activations*, IDA 2021).

A decoder trained to reconstruct the input from a frozen classifier's layer activations, contrasted with a
reference auto-encoder (RefAE) of the same architecture; α trades reconstruction fidelity for the classifier's
view (spec ``cladec_and_csg.md`` part A).

    from jinterp.methods.cladec import ClaDecConfig, run
    results = run(ClaDecConfig.tiny(), "runs/cladec")

Modules: ``config`` (ClaDecConfig, the official layInd mapping and lr decay), ``decoder`` (the decoder family from
a layer's shape), ``training`` (losses, PyTorch-style optimizers, the vmapped α-sweep step, the stage loop),
``refae`` (prefix encoder of any backbone), ``evaluation`` (reconstructions, frozen accuracy, retrain protocol),
``program`` (end to end), ``cli`` (``jinterp cladec``).
"""

from jinterp.core.results import ClaDecResult
from jinterp.methods.cladec.config import OFFICIAL_LAYINDEX, ClaDecConfig, official_decay_epochs
from jinterp.methods.cladec.decoder import Decoder, DecoderPlan, make_decoder, plan_decoder


def run(cfg, workdir, *, progress: bool = True, restart: bool = False, model=None,
        variables=None) -> ClaDecResult:
    """The whole method on ``cfg`` in ``workdir`` (:func:`jinterp.methods.cladec.program.run`, imported lazily);
    returns the typed :class:`~jinterp.core.results.ClaDecResult`
    of the ``results.json`` it writes (``.to_json()`` is that dict; ``program.run`` returns the dict itself,
    for the CLI and the demo)."""
    from jinterp.core import results
    from jinterp.methods.cladec.program import run as _run

    return results.finished(ClaDecResult, _run(cfg, workdir, progress=progress, restart=restart,
                                                    model=model, variables=variables), workdir)


def load_result(workdir) -> ClaDecResult:
    """A finished run's results (``<workdir>/results.json`` and its array files) as a :class:`ClaDecResult`."""
    return ClaDecResult.load(workdir)


__all__ = ["ClaDecConfig", "ClaDecResult", "Decoder", "DecoderPlan", "OFFICIAL_LAYINDEX", "load_result", "make_decoder",
           "official_decay_epochs", "plan_decoder", "run"]
