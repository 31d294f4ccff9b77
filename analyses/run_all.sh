#!/usr/bin/env bash
# Run every study (or those named) one after another, each logging to analyses/results/<study>/runs/run.log.
#   nohup analyses/run_all.sh > /tmp/analyses.log 2>&1 &
#   analyses/run_all.sh seed_experiment chain       # a subset
set -u
cd "$(dirname "$0")/.."
studies=("$@")
if [ ${#studies[@]} -eq 0 ]; then
  studies=(seed_experiment multi_token chain theory localization reverse_path mitigations dynamics)
fi
for study in "${studies[@]}"; do
  mkdir -p "analyses/results/$study/runs"
  start=$(date +%s)
  echo "$(date '+%H:%M:%S') start $study"
  python "analyses/$study.py" > "analyses/results/$study/runs/run.log" 2>&1
  status=$?
  echo "$(date '+%H:%M:%S') end $study: exit $status after $(( $(date +%s) - start )) s"
done
