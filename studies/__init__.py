"""soensim studies: datasets, the trainer, study grids, the ``soensim-study`` CLI and plots.

Modules: :mod:`studies.train` (RunConfig, Trainer, run/resume), :mod:`studies.grid`
(grids, launchers, results tables), :mod:`studies.registry` (study name → module),
:mod:`studies.models` (recurrent layer + head), :mod:`studies.plots`, and one module per
study (:mod:`studies.bias_ablation`, :mod:`studies.gate_ablation`, :mod:`studies.sst_lowdata`).
Nothing heavy is imported here.
"""
