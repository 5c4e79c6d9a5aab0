#!/usr/bin/env bash
# The committed CPU evaluation (docs/eval.md, docs/eval.json, docs/eval_scaling.png): every method
# of `rstar eval` on the first GSM8K test problems and on held-out practice problems, with the
# base model and with the promoted policy and reward models of an `rstar evolve` run (recipe
# evolve/reward-models-cpu, which also trains the ORM and PQM of the ablation). All rows go
# into one folder per benchmark, so the reports compare them: maj and the three bon-* select
# from the same samples (`samples.jsonl`), at the same generated tokens. Resumable: run it
# again after a kill and it continues. Sizes are variables (defaults: what 2 CPU cores did).
#
#   RSTAR_DATABASE_URL=sqlite:///runs/evolve/rstar.db RSTAR_MODEL_STORE=runs/evolve/store bench/eval_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RSTAR=${RSTAR:-.venv/bin/rstar}
PY=${PY:-.venv/bin/python}
RUN=${RUN:-rm-cpu}
OUT=${OUT:-runs/eval/cpu}
CONFIG=${CONFIG:-eval-cpu}
GREEDY_LIMIT=${GREEDY_LIMIT:-100}   # GSM8K items for greedy
SAMPLE_LIMIT=${SAMPLE_LIMIT:-30}    # GSM8K items for maj / bon-*
TREE_LIMIT=${TREE_LIMIT:-10}        # GSM8K items for mcts
LEVELS=${LEVELS:-1,2,3}             # practice levels
PER_LEVEL=${PER_LEVEL:-10}          # practice items per level (greedy, maj / bon-*)
TREE_PER_LEVEL=${TREE_PER_LEVEL:-4} # practice items per level for mcts
NS=${NS:-1,2,4}                     # samples / rollouts
DOCS=${DOCS:-docs}

promoted() {  # the promoted version of a kind in the store
  "$PY" -c "
import sys
from rstar_cli.main import _open_store
with _open_store() as store:
    info = store.promoted_model(sys.argv[1])
print(info.version if info else '')" "$1"
}
POLICY=$(promoted policy); PPM=$(promoted ppm); ORM=$(promoted orm); PQM=$(promoted pqm)
[ -n "$POLICY" ] && [ -n "$PPM" ] || { echo "no promoted policy and PPM: run rstar evolve --recipe deploy/configs/evolve/reward-models-cpu.yaml first" >&2; exit 2; }
echo "policy $POLICY, PPM $PPM, ORM ${ORM:-none}, PQM ${PQM:-none}" >&2

for bench in gsm8k practice; do
  out="$OUT/$bench"
  if [ "$bench" = gsm8k ]; then
    g=(--limit "$GREEDY_LIMIT"); s=(--limit "$SAMPLE_LIMIT"); t=(--limit "$TREE_LIMIT")
  else
    g=(--levels "$LEVELS" --per-level "$PER_LEVEL"); s=("${g[@]}"); t=(--levels "$LEVELS" --per-level "$TREE_PER_LEVEL")
  fi
  common=(--benchmark "$bench" --config "$CONFIG" --out "$out")
  "$RSTAR" eval "${common[@]}" "${g[@]}" --method greedy --set prompt_format=base
  "$RSTAR" eval "${common[@]}" "${g[@]}" --method greedy --policy "$POLICY"
  "$RSTAR" eval "${common[@]}" "${s[@]}" --method maj --n "$NS" --policy "$POLICY"
  "$RSTAR" eval "${common[@]}" "${s[@]}" --method bon-ppm --n "$NS" --policy "$POLICY" --ppm "$PPM"
  [ -n "$PQM" ] && "$RSTAR" eval "${common[@]}" "${s[@]}" --method bon-pqm --n "$NS" --policy "$POLICY" --pqm "$PQM"
  [ -n "$ORM" ] && "$RSTAR" eval "${common[@]}" "${s[@]}" --method bon-orm --n "$NS" --policy "$POLICY" --orm "$ORM"
  "$RSTAR" eval "${common[@]}" "${t[@]}" --method mcts --n "$NS" --policy "$POLICY" --ppm "$PPM"
done

# The focused attempt at the gap (docs/eval.md, "What it shows"): with 96-token steps most of the
# round's policy's first steps are cut before they finish; the same practice items again with
# longer steps (a series of its own: another config id), greedy, maj and the PPM's selection.
if [ -n "${LONG_STEP_TOKENS:=256}" ]; then
  long=(--benchmark practice --config "$CONFIG" --out "$OUT/practice" --levels "$LEVELS" --per-level "$PER_LEVEL"
        --set "max_tokens_per_step=$LONG_STEP_TOKENS" --policy "$POLICY")
  "$RSTAR" eval "${long[@]}" --method greedy
  "$RSTAR" eval "${long[@]}" --method maj --n "$NS"
  "$RSTAR" eval "${long[@]}" --method bon-ppm --n "$NS" --ppm "$PPM"
fi

# One report over both folders: the rows of both benchmarks in one summary, table and plot.
mkdir -p "$OUT/all"
cat "$OUT"/gsm8k/items.jsonl "$OUT"/practice/items.jsonl > "$OUT/all/items.jsonl"
cat "$OUT"/gsm8k/runs.jsonl "$OUT"/practice/runs.jsonl > "$OUT/all/runs.jsonl"
"$PY" -c "
import sys
from pathlib import Path
from rstar_cli.eval_report import write_reports
write_reports(Path(sys.argv[1]))" "$OUT/all"
cp "$OUT/all/summary.json" "$DOCS/eval.json"
cp "$OUT/all/accuracy.png" "$DOCS/eval_scaling.png"
echo "reports in $OUT/all; copied to $DOCS/eval.json and $DOCS/eval_scaling.png (docs/eval.md quotes $OUT/all/report.md)" >&2
