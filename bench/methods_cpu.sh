#!/usr/bin/env bash
# The methods ablation (docs/methods.md, docs/methods.json): one `rstar evolve` run per recipe of
# deploy/configs/evolve/methods/ (rStar-Math, Marco-o1 search step / mini-step with and without
# reflection, MCTS process supervision for two iterations, rStar-Math + GRPO with the
# curriculum), all from the same base model on the same pool slice, each measured on the same
# held-out GSM8K items by its own greedy evaluation; then bench/methods_report.py writes the
# comparison. Resumable: run it again after a kill and every run continues where it stopped.
#
#   bench/methods_cpu.sh                   # every method, into runs/methods
#   METHODS="rstar marco-step" bench/methods_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RSTAR=${RSTAR:-.venv/bin/rstar}
PY=${PY:-.venv/bin/python}
WORK=${WORK:-runs/methods}
POOL=${POOL:-../shared/data/train/problem_pool.jsonl}
METHODS=${METHODS:-rstar marco-step marco-ministep process-supervision mctspp marco-step-reflect marco-ministep-reflect rstar-3x}
DOCS=${DOCS:-docs}
export RSTAR_DATABASE_URL=${RSTAR_DATABASE_URL:-sqlite:///$WORK/rstar.db}
export RSTAR_MODEL_STORE=${RSTAR_MODEL_STORE:-$WORK/store}
mkdir -p "$WORK"

for method in $METHODS; do
  rounds=1
  [ "$method" = process-supervision ] && rounds=2   # the paper's iterations 1 and 2
  echo "== $method ($rounds round(s))" >&2
  if ! "$RSTAR" evolve --pool "$POOL" --rounds "$rounds" --recipe "deploy/configs/evolve/methods/$method.yaml" \
      --run "methods-$method" --work-dir "$WORK" >> "$WORK/$method.log" 2>&1; then
    echo "$method failed (the report shows what it finished): see $WORK/$method.log" >&2
  fi
done

"$PY" bench/methods_report.py --methods $METHODS --md "$WORK/methods_table.md" --json "$DOCS/methods.json"
