"""soensim studies: datasets, the trainer, study grids, the ``soensim-study`` CLI and plots.

Modules, from the top: :mod:`studies.cli` (the command line), :mod:`studies.grid` (grids,
launchers, results tables), :mod:`studies.packed` (the batched launcher: runs of one shape
trained as one batched model), :mod:`studies.registry` (study name → module), one module per
study (:mod:`studies.bias_ablation`, :mod:`studies.gate_ablation`, :mod:`studies.sst_lowdata`,
:mod:`studies.transfer_study`), :mod:`studies.train` (Trainer, run/resume),
:mod:`studies.config` (RunConfig), :mod:`studies.rundir` (run directories),
:mod:`studies.taskdata` (splits, objectives), :mod:`studies.optim` (optimizers, schedule),
:mod:`studies.monitor` (divergence, spikes), :mod:`studies.models` (recurrent layer + head),
:mod:`studies.data` / :mod:`studies.cifar` / :mod:`studies.cifar_batches` /
:mod:`studies.tasks` (data), :mod:`studies.plots`, :mod:`studies.stats`,
:mod:`studies.files` (atomic writes, locks) and :mod:`studies.errors`.
Nothing heavy is imported here.
"""
