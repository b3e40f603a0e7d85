#!/usr/bin/env bash
# Usage: tools/timed.sh NAME CMD [ARGS...]
# Run CMD and append "NAME<TAB>seconds<TAB>exit status" to _build/timings.tsv, which
# tools/timing_table.py prints at the end of .ci/run. Exits with CMD's status.
name=$1
shift
start=$(date +%s%N)
"$@"
status=$?
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
mkdir -p _build
printf '%s\t%d.%01d\t%s\n' "$name" $((elapsed_ms / 1000)) $((elapsed_ms % 1000 / 100)) "$status" \
    >> _build/timings.tsv
exit "$status"
