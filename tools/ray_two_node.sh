#!/usr/bin/env bash
# A two-node Ray cluster on this machine (loopback), the same batch job run on it, and the cluster stopped:
# what `infer.py --ray ADDRESS` does on real machines, in miniature (docs/ray.md, "Two nodes on one machine").
#
#   tools/ray_two_node.sh OUT_DIR IMAGE_OR_FOLDER... [-- more infer.py options]
#
# Each node gets CPUS_PER_NODE CPUs (default 1) and OBJECT_STORE_MB of object store (default 200); the head
# listens on 127.0.0.1:PORT (default 6390). Only the processes this script started are stopped at the end
# (`ray stop` would stop every Ray on the machine, other users' included).
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 OUT_DIR IMAGE_OR_FOLDER... [-- infer.py options]" >&2
    exit 2
fi
OUT=$1; shift
INPUTS=(); EXTRA=()
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; EXTRA=("$@"); break; fi
    INPUTS+=("$1"); shift
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
RAY=$(dirname "$PY")/ray
PORT=${PORT:-6390}
CPUS=${CPUS_PER_NODE:-1}
STORE=$(( ${OBJECT_STORE_MB:-200} * 1024 * 1024 ))
TMP=$(mktemp -d /tmp/rtn.XXXX)  # the cluster's own session folder (sockets, logs): short, Unix sockets limit it
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}  # every node's workers import the project from here
export RAY_USAGE_STATS_ENABLED=0
# Ray starts its workers at nice 15 unless told: give them the priority of this script, as a local --ray does
export RAY_worker_niceness=${RAY_worker_niceness:-$(nice)}
# Ray 2.60 clusters check a token (~/.ray/auth_token, made by the first Ray started here); a driver joining
# with an address sends it only with RAY_AUTH_MODE=token set before `import ray` (the probes below;
# infer.py --ray ADDRESS sets it itself)
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

PIDS=()
stop() {  # each node runs in its own session: end that process group only
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    sleep 2
    for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap stop EXIT

SECONDS=0
setsid "$RAY" start --head --block --port "$PORT" --num-cpus "$CPUS" \
    --object-store-memory "$STORE" --include-dashboard false --temp-dir "$TMP" >"$TMP.head.log" 2>&1 &
PIDS+=($!); disown "$!"  # ended by stop(), without bash reporting it
# the head is up once its address answers; then the second node joins it
for _ in $(seq 60); do
    timeout 30 "$PY" -c "import ray; ray.init(address='127.0.0.1:$PORT', logging_level='ERROR'); ray.shutdown()" \
        >/dev/null 2>&1 && break
    sleep 1
done
setsid "$RAY" start --block --address "127.0.0.1:$PORT" --num-cpus "$CPUS" \
    --object-store-memory "$STORE" >"$TMP.worker.log" 2>&1 &
PIDS+=($!); disown "$!"  # ended by stop(), without bash reporting it
for _ in $(seq 60); do
    n=$(timeout 30 "$PY" -c "import ray; ray.init(address='127.0.0.1:$PORT', logging_level='ERROR'); \
print(sum(1 for n in ray.nodes() if n['Alive'])); ray.shutdown()" 2>/dev/null || echo 0)
    [ "$n" = 2 ] && break
    sleep 1
done
[ "$n" = 2 ] || { echo "error: the second node did not join (logs: $TMP.head.log, $TMP.worker.log)" >&2; exit 1; }
echo "cluster: 2 nodes x $CPUS CPU on 127.0.0.1:$PORT, up in $SECONDS s" >&2

status=0
"$PY" "$ROOT/infer.py" --image "${INPUTS[@]}" --ray "127.0.0.1:$PORT" --parquet "$OUT" "${EXTRA[@]}" || status=$?
rm -f "$TMP.head.log" "$TMP.worker.log"
exit $status
