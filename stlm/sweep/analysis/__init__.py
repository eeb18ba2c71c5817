"""The numbers of a sweep, from its trials (MLflow) or its Tune results: what the report and the terminal show.

trials.py     a sweep's trials read back from MLflow (the parent run's children)
compare.py    the one comparison of the arms: best sample per cell, summaries, paired differences, scale fits
arms.py       Analysis: the comparison of every final metric, the excluded trials, the Pareto front
knobs.py      the searched knobs and Optuna's fANOVA importances of them
summary.py    the end-of-sweep table the driver prints, from Tune's results and the ledger
sequential.py adaptive seeds: intervals that stay valid when a sweep stops on what it saw, and the decision
"""
