"""The experiment directory survives kills, full disks and outages.

layout.py       every file name under the experiment directory
state.py        what the directory holds, and what that means for the command given (decide)
planned.py      the sweep a command runs: the file's, or on --resume the directory's plan, checked against it
fingerprint.py  what defines a plan (plan.json), compared on --resume
storage.py      a local path or an object store (s3://...), and the driver's mirror of it
lock.py         one driver per experiment directory
sweep_json.py   sweep.json, what `stlm report` reads
tune_state.py   Tune's experiment state written whole or not at all
checkpoints.py  a trial's checkpoints persisted whole; the registered ones found and resumed
fatal.py        a trial's errors: the one no retry can fix, and any failed trial's text
stall.py        a trial whose workers stop reporting: its stall limit, budget and error
disk.py         the sweep ended cleanly before its disk is full
outbox.py       MLflow writes queued on disk until the server takes them
legacy.py       the old module names that directories written before the package split pickled
"""
