"""What will run: the sweep file (schema.py) and its validation (validate.py), command-line overrides
(overrides.py), the arms solved to the budget (sweep.py), the search space (space.py) and the dry run (describe.py).
Imports neither Ray nor MLflow."""
