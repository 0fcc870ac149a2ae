"""Explainer network (auto-encoder that disentangles a performer's conv layer into object-part features,
learned by distillation) and the interpretable-CNN filter loss it uses.

Spec ``explainer_and_graph.md`` parts B (ICNN) and C (explainer). Modules: :mod:`.icnn` (templates, part
location, mask, exact MI filter loss, the release's surrogate gradient, learned β), :mod:`.model` (the
explainer, its loss and pure train step, feeding reconstructions back into the performer), :mod:`.config`,
:mod:`.program` (``run(cfg, workdir)``), :mod:`.cli` (``jinterp explainer``).
"""
