#!/usr/bin/env bash
# Run every study (or those named) one after another, each logging to analyses/results/<study>/runs/run.log.
#   nohup analyses/run_all.sh > /tmp/analyses.log 2>&1 &
#   analyses/run_all.sh seed_experiment chain       # a subset
# Each study trains all its runs at once as Ray tasks (common.Study.train_all: a local cluster of every core, one
# torch thread per run), into the run store the studies share (analyses/results/_runs/), so a run another study
# already trained is reused and the training, most of the set's time, uses every core. The analyses that follow
# run in the study's own process. Set RAY_ADDRESS to train on a running cluster instead.
set -u
cd "$(dirname "$0")/.."
studies=("$@")
if [ ${#studies[@]} -eq 0 ]; then
  studies=(seed_experiment multi_token chain theory localization reverse_path starvation_2x2 mitigations dynamics
           circuits capacity mitigation_atlas seed_code_comparison)
fi
for study in "${studies[@]}"; do
  mkdir -p "analyses/results/$study/runs"
  start=$(date +%s)
  echo "$(date '+%H:%M:%S') start $study"
  python "analyses/$study.py" > "analyses/results/$study/runs/run.log" 2>&1
  status=$?
  echo "$(date '+%H:%M:%S') end $study: exit $status after $(( $(date +%s) - start )) s"
done
