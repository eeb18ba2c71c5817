"""`stlm report SWEEP_DIR_OR_PARENT_RUN`: the statistics report of a sweep, read back from MLflow.

    stlm report sweep_runs/ffn_sharing-2026...      # a sweep dir (holds sweep.json)
    stlm report 3f2a...c9 --tracking-uri sqlite:////abs/mlflow.db --control baseline

The sweep wrote one parent run and one child run per trial (tags stlm.arm, stlm.seed,
stlm.status; params incl. params.total; metric histories keyed by step; final
eval/<task>/acc metrics). This package turns them into:

  report.md / report.html   per-arm mean, sd and 95% t interval of every final metric
                            across seeds; the PAIRED difference of every arm against the
                            control arm (paired by seed) with its 95% interval and whether
                            it excludes zero; failed / stopped trials listed, not averaged
  curves.png                loss curves per arm (mean across seeds, band = +/- 1 sd)
  diffs.png                 paired differences vs control with their intervals
  params.png                final metric against parameter count, one point per trial
  scale.png                 sized sweeps: the metric against parameters per arm, with power-law fits
  benchmarks.png            benchmark accuracy per arm and task with error bars
  pareto.png                multi-objective sweeps: the Pareto front (metric vs params)
  knobs.png                 a search: the metric against each searched knob, and the knobs'
                            importances (Optuna's fANOVA) as a table and parent-run metrics
                            importance/<knob>

and logs them to the parent run as artifacts under report/. The statistics live in
stlm.stats (Student t and power from scipy.stats).

    cli.py        the `stlm report` command: a sweep dir, an s3:// one or a parent run id -> build_report
    document.py   build_report: the sections, Markdown and HTML, the files logged to the parent run
    tables.py     the tables as rows (per-arm summary, differences, excluded trials, Pareto, scale fits)
    plots.py      the figures (matplotlib, imported only when a report is drawn)
"""
