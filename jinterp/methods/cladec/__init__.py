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

from jinterp.methods.cladec.config import OFFICIAL_LAYINDEX, ClaDecConfig, official_decay_epochs
from jinterp.methods.cladec.decoder import Decoder, DecoderPlan, make_decoder, plan_decoder


def run(cfg, workdir, *, progress: bool = True, restart: bool = False, model=None, variables=None) -> dict:
    """:func:`jinterp.methods.cladec.program.run` (imported lazily)."""
    from jinterp.methods.cladec.program import run as _run

    return _run(cfg, workdir, progress=progress, restart=restart, model=model, variables=variables)


__all__ = ["OFFICIAL_LAYINDEX", "ClaDecConfig", "Decoder", "DecoderPlan", "make_decoder", "official_decay_epochs",
           "plan_decoder", "run"]
