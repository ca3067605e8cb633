#!/bin/sh
# A `during` command for sni-loadtest (see loadtest/README.md): replaces the running target by a
# new process the way each program is upgraded without downtime, writes the new pid to
# $SLT_PIDFILE, and waits (bounded) until the old process has exited.
#
#   sni-dispatch    sni-dispatch run ... --upgrade-from S --upgrade-socket S (S: the running
#                   one's --upgrade-socket, $SLT_DIR/upgrade.sock in suites/upgrade.toml)
#   haproxy[-splice] haproxy -f CFG -x STATS_SOCKET -sf OLD_PID (seamless reload: the listening
#                   sockets pass over the stats socket); with SLT_NO_X=1, without -x (the new
#                   process binds its own sockets: what -x exists to avoid)
#   nginx           kill -HUP: nginx keeps its listening sockets in the master across a reload
#                   (its binary upgrade, USR2, needs a daemonized master)
set -eu
old=$SLT_PID
case "$SLT_TARGET" in
  sni-dispatch)
    sock="$SLT_DIR/upgrade.sock"
    # shellcheck disable=SC2086
    taskset -c "$SLT_CPUS" "$SLT_DISPATCHER" run --config "$SLT_CONFIG" --workers "$SLT_WORKERS" --cpus "$SLT_CPUS" \
      $SLT_EXTRA_ARGS --upgrade-from "$sock" >>"$SLT_LOG" 2>&1 </dev/null &
    new=$!
    ;;
  haproxy|haproxy-splice)
    if [ "${SLT_NO_X:-0}" = 1 ]; then
      taskset -c "$SLT_CPUS" haproxy -db -f "$SLT_CONFIG" -sf "$old" >>"$SLT_LOG" 2>&1 </dev/null &
    else
      taskset -c "$SLT_CPUS" haproxy -db -f "$SLT_CONFIG" -x "$SLT_DIR/$SLT_TARGET.sock" -sf "$old" >>"$SLT_LOG" 2>&1 </dev/null &
    fi
    new=$!
    ;;
  nginx)
    kill -HUP "$old"
    exit 0
    ;;
  *)
    echo "upgrade.sh: no upgrade for target $SLT_TARGET" >&2
    exit 1
    ;;
esac
echo "$new" >"$SLT_PIDFILE"
# Bounded: 30 s for the old process to drain and exit.
i=0
while kill -0 "$old" 2>/dev/null && [ "$(awk '{print $3}' /proc/"$old"/stat 2>/dev/null)" != Z ]; do
  i=$((i + 1))
  if [ "$i" -gt 300 ]; then
    echo "upgrade.sh: pid $old still running 30 s after the upgrade" >&2
    exit 1
  fi
  sleep 0.1
done
kill -0 "$new" 2>/dev/null || { echo "upgrade.sh: the new process $new died" >&2; exit 1; }
