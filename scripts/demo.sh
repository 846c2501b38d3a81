#!/usr/bin/env bash
# The demo move: a live database under a write load, moved to another server.
# Each line is a command a user would type; the write load stands in for the application.
set -euo pipefail
BIN=${BIN:-.venv/bin}
LAB=${LAB:-.lab}
# MANAGED=1: cutover reaches the source as 'cutover_admin', no superuser (as on Cloud SQL).
# POOLER=pgbouncer: the application writes through a PgBouncer, which the switch pauses
# and repoints instead of stopping the application.
LAB_FLAGS=()
if [ -n "${MANAGED:-}" ]; then LAB_FLAGS+=(--managed); fi
case "${POOLER:-}" in
  "") ;;
  pgbouncer) LAB_FLAGS+=(--pgbouncer) ;;
  *) echo "POOLER is empty or pgbouncer, not '$POOLER'" >&2; exit 2 ;;
esac
PLAN="$LAB/plan.yaml"
cutover() { "$BIN/cutover" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "a fresh lab: two PostgreSQL 15 servers, a shop database owned by its application, two writer roles"
cutover lab down --dir "$LAB" --purge >/dev/null 2>&1 || true
cutover lab up --dir "$LAB" "${LAB_FLAGS[@]}"

step "the application writes without pause from now on"
"$BIN/cutover" lab load --dir "$LAB" >"$LAB/load.out" 2>&1 &
load=$!
trap 'kill "$load" 2>/dev/null || true' EXIT

step "cutover check: the read-only preflight"
cutover check -p "$PLAN"

step "cutover prepare: role, schema, keys, publication"
cutover prepare -p "$PLAN"

step "cutover start --wait: initial copy, then the other indexes"
cutover start -p "$PLAN" --wait
sleep 3
cutover status -p "$PLAN" | tail -n 2

step "cutover switch: stop writers, fence, barrier, sequences, promote, repoint, resume"
cutover switch -p "$PLAN" --yes

step "the application now writes to the target"
cutover lab status --dir "$LAB"
sleep 3
kill -TERM "$load"
wait "$load" || true
tail -n 1 "$LAB/load.out"

step "audit: every acknowledged write against the target"
cutover lab audit --dir "$LAB"

step "cutover cleanup: publication, slot, role and barrier tables removed"
cutover cleanup -p "$PLAN" --yes
