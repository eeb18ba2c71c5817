"""How a sweep runs on Ray (only driver.py's dry run path is imported before Ray starts).

driver.py        `python -m stlm.sweep`: the experiment directory decided, pre-flight, the MLflow parent run, Tune
args.py          its command-line arguments
preflight.py     every problem found before anything is written: data, tokenizers, eval data, the bucket
ray_cluster.py   a local Ray started or a cluster attached (bounded), and what the trials may use of it
head_watch.py    a lost Ray head (GCS) noticed within --head-timeout: one paragraph, the runs KILLED, exit 75
reaper.py        a local Ray's processes end with the driver that started them, however it ends (kill -9 too)
tuner.py         the Tuner, the scheduler and searcher, the progress table
trial.py         one Tune trial: its config resolved, then a Ray Train run
worker.py        inside a Ray Train worker: restore, train and report, evaluate
train_run.py     the Ray Train run of one trial, its controller in the trial's process; dead trials' groups freed
data.py          a local sweep's corpora, tokenized once in the driver
cluster_data.py  a cluster's corpora, tokenized once on the head and copied to the nodes
"""
