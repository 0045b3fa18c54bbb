#!/usr/bin/env bash
# Throw-away PostgreSQL 15, InfluxDB 1.x and VictoriaMetrics servers for tests (Debian 12, root).
#
#   scripts/services.sh start [pg] [influx] [vm]   install what is missing, start (default: all),
#                                                  print KEY=VALUE lines (also in DIR/services.env)
#   scripts/services.sh stop DIR                   stop exactly what that start started, remove DIR
#   scripts/services.sh pg-stop DIR                stop only PostgreSQL (fault tests)
#   scripts/services.sh pg-start DIR               start it again, same port and data dir
#
# Everything listens on 127.0.0.1 only, on ports the kernel reports free, under one temp dir.
# Only KEY=VALUE lines go to stdout; progress and errors go to stderr.
# Environment: MYASON_SERVICES_TIMEOUT (seconds to wait for each server, default 30),
# MYASON_SERVICES_TMP (parent of the temp dir, default /tmp; must be world-traversable),
# MYASON_SERVICES_KEEP=1 (keep DIR after a failed start), MYASON_SERVICES_WATCH_PID=PID (a
# watchdog stops the servers once PID is gone, so a killed test run cannot leave them behind).
# Exit codes: 0 ok, 1 a server failed, 2 usage, 3 cannot install packages (or not root).
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
PGBIN=/usr/lib/postgresql/15/bin
TIMEOUT=${MYASON_SERVICES_TIMEOUT:-30}
ENV_NAME=services.env

say() { echo "services: $*" >&2; }
usage() { sed -n '2,9p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
past() { awk -v d="$1" -v t="$(now)" 'BEGIN { exit !(t > d) }'; }
deadline() { awk -v s="${1:-$TIMEOUT}" -v t="$(now)" 'BEGIN { printf "%.3f", t + s }'; }

# ---------------------------------------------------------------- packages
pkgs_for() {
  case $1 in
    pg) echo postgresql-15 ;;
    influx) echo influxdb influxdb-client ;;
    vm) echo victoria-metrics ;;
  esac
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

ensure_packages() {
  local need=() p log
  for p in curl $(for s in "$@"; do pkgs_for "$s"; done); do
    installed "$p" || need+=("$p")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  say "installing ${need[*]}"
  log=$(mktemp -t myason-services-apt.XXXXXX)
  # Other apt users (install.sh, a second test run) may hold the lock: wait instead of failing.
  if ! { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq &&
         DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
           --no-install-recommends "${need[@]}"; } >"$log" 2>&1; then
    echo "services: cannot install ${need[*]} with apt-get:" >&2
    tail -n 25 "$log" >&2
    rm -f "$log"
    exit 3
  fi
  rm -f "$log"
}

# ---------------------------------------------------------------- helpers
free_ports() { # N -> N distinct ports that were free on 127.0.0.1 a moment ago
  # Holding all sockets open until the end makes the kernel hand out N different ports.
  "$PY" -c '
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

env_set() { # DIR KEY VALUE: add or replace one line of DIR/services.env
  local f=$1/$ENV_NAME
  if grep -q "^$2=" "$f" 2>/dev/null; then
    sed -i "s|^$2=.*|$2=$3|" "$f"
  else
    echo "$2=$3" >>"$f"
  fi
}

declare -A E=()
load_env() { # DIR: read DIR/services.env into E, refusing anything that start did not make
  local dir k v
  dir=$(cd "$1" 2>/dev/null && pwd) || { say "no such directory: $1"; exit 2; }
  [ -f "$dir/$ENV_NAME" ] || { say "$dir has no $ENV_NAME: not made by services.sh start"; exit 2; }
  E=()
  # Parsed, never sourced: the file is data, not code.
  while IFS='=' read -r k v; do
    case $k in MYASON_*) E[$k]=$v ;; esac
  done <"$dir/$ENV_NAME"
  [ "${E[MYASON_SERVICES_DIR]:-}" = "$dir" ] || { say "$dir/$ENV_NAME names another dir"; exit 2; }
}

is_ours() { # PID DIR: the process is alive and was started for DIR (guards against pid reuse)
  [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -e "$2/" -e "$2 "
}

alive() { # PID: running; a zombie counts as gone (PID 1 here reaps orphans only every ~2 s)
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }
  [ "${st%% *}" != Z ]
}

wait_gone() { # SECONDS PID...: 0 once all are gone, 1 at the deadline
  local end p left; end=$(deadline "$1"); shift
  while :; do
    left=0
    for p in "$@"; do alive "$p" && left=1; done
    [ $left -eq 0 ] && return 0
    past "$end" && return 1
    sleep 0.05
  done
}

stop_ours() { # DIR NAME=PID...: SIGTERM them all at once, wait, SIGKILL what is left
  local dir=$1 item pids=() p; shift
  for item in "$@"; do
    p=${item#*=}
    is_ours "$p" "$dir" || continue
    kill -TERM "$p" 2>/dev/null && pids+=("$p")
  done
  [ ${#pids[@]} -eq 0 ] && return 0
  wait_gone 15 "${pids[@]}" && return 0
  for item in "$@"; do
    p=${item#*=}
    alive "$p" && is_ours "$p" "$dir" && say "${item%%=*} (pid $p) ignored SIGTERM for 15 s: SIGKILL" &&
      kill -KILL "$p" 2>/dev/null
  done
  wait_gone 5 "${pids[@]}" || say "still running after SIGKILL: ${pids[*]}"
}

log_tail() { # NAME LOG
  echo "services: --- last lines of $2 ($1) ---" >&2
  tail -n 30 "$2" >&2 2>/dev/null || true
}

bind_failed() { grep -qiE 'address already in use|could not bind' "$1" 2>/dev/null; }

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }

# ---------------------------------------------------------------- PostgreSQL
as_pg() { runuser -u postgres -- "$@"; }

pg_conf() { # DIR PORT: settings that pg-start must find again, so they live in the data dir
  cat >"$1/pg/data/myason-services.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $2
unix_socket_directories = '$1/pg'
# Test servers: fsync=off survives a killed server (the OS keeps the writes), only not a
# machine crash, and makes COPY-heavy tests several times faster.
fsync = off
full_page_writes = off
synchronous_commit = on
log_min_messages = warning
log_line_prefix = '%m [%p] '
EOF
  chown postgres:postgres "$1/pg/data/myason-services.conf"
}

pg_launch() { # DIR: start the cluster and wait until it answers
  local dir=$1 port=${E[MYASON_PG_PORT]} end pid
  [ -f "$dir/pg/postgres.log" ] || install -o postgres -g postgres -m 644 /dev/null "$dir/pg/postgres.log"
  as_pg "$PGBIN/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/postgres.log" -w -t "$TIMEOUT" start \
    >>"$dir/pg/pg_ctl.log" 2>&1 || return 1
  end=$(deadline)
  until "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -t 1; do
    past "$end" && return 1
    sleep 0.05
  done
  pid=$(head -n 1 "$dir/pg/data/postmaster.pid")
  E[MYASON_PG_PID]=$pid
  env_set "$dir" MYASON_PG_PID "$pid"
}

pg_stop_signal() { # DIR -> echoes the postmaster pid after asking it for a fast shutdown
  local dir=$1 data=${E[MYASON_PG_DATA]:-} pid
  [ -n "$data" ] && [ -f "$data/postmaster.pid" ] || return 0
  pid=$(head -n 1 "$data/postmaster.pid")
  is_ours "$pid" "$dir" || return 0
  # Fast: clients are cut off (what a fault test wants) and the next start needs no recovery.
  as_pg "$PGBIN/pg_ctl" -D "$data" -m fast -W stop >>"$dir/pg/pg_ctl.log" 2>&1 || true
  echo "$pid"
}

pg_wait_down() { # DIR PID: wait for the postmaster; escalate to immediate shutdown, then SIGKILL
  local dir=$1 pid=$2
  [ -n "$pid" ] || return 0
  wait_gone "$TIMEOUT" "$pid" && return 0
  say "PostgreSQL (pid $pid) still up after ${TIMEOUT} s: SIGQUIT (immediate shutdown)"
  is_ours "$pid" "$dir" && kill -QUIT "$pid" 2>/dev/null
  wait_gone 5 "$pid" && return 0
  say "PostgreSQL (pid $pid) still up: SIGKILL"
  is_ours "$pid" "$dir" && kill -KILL "$pid" 2>/dev/null
  wait_gone 5 "$pid" || say "PostgreSQL (pid $pid) is still there"
}

start_pg() { # DIR PORT
  local dir=$1 try
  mkdir -p "$dir/pg"; chown postgres:postgres "$dir/pg"
  E[MYASON_PG_DATA]=$dir/pg/data
  env_set "$dir" MYASON_PG_DATA "$dir/pg/data"
  as_pg "$PGBIN/initdb" -D "$dir/pg/data" --auth=trust --username=postgres --encoding=UTF8 \
    --locale=C --no-sync --no-instructions >"$dir/pg/initdb.log" 2>&1 ||
    { log_tail initdb "$dir/pg/initdb.log"; return 1; }
  echo "include = 'myason-services.conf'" >>"$dir/pg/data/postgresql.conf"
  E[MYASON_PG_PORT]=$2
  for try in 1 2 3; do
    pg_conf "$dir" "${E[MYASON_PG_PORT]}"
    pg_launch "$dir" && break
    # Someone took the port between our probe and the bind: take another one.
    if [ "$try" -lt 3 ] && bind_failed "$dir/pg/postgres.log"; then
      E[MYASON_PG_PORT]=$(free_ports 1); continue
    fi
    log_tail postgres "$dir/pg/postgres.log"; log_tail pg_ctl "$dir/pg/pg_ctl.log"; return 1
  done
  "$PGBIN/psql" -h 127.0.0.1 -p "${E[MYASON_PG_PORT]}" -U postgres -d postgres -qAtX \
    -c 'SELECT 1' -c 'CREATE DATABASE myason' >/dev/null 2>"$dir/pg/psql.log" ||
    { log_tail psql "$dir/pg/psql.log"; return 1; }
  env_set "$dir" MYASON_PG_PORT "${E[MYASON_PG_PORT]}"
  env_set "$dir" MYASON_PG_DSN "postgresql://postgres@127.0.0.1:${E[MYASON_PG_PORT]}/myason"
}

# ---------------------------------------------------------------- InfluxDB 1.x
influx_launch() { # DIR HTTP_PORT RPC_PORT (returns at once; influx_wait checks it came up)
  local dir=$1
  mkdir -p "$dir/influx"
  cat >"$dir/influx/influxdb.conf" <<EOF
reporting-disabled = true
# The backup/restore RPC service cannot be switched off, so it gets a free loopback port too.
bind-address = "127.0.0.1:$3"
[meta]
  dir = "$dir/influx/meta"
  logging-enabled = false
[data]
  dir = "$dir/influx/data"
  wal-dir = "$dir/influx/wal"
  query-log-enabled = false
  index-version = "inmem"
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:$2"
  log-enabled = false
  pprof-enabled = false
  max-body-size = 0
[logging]
  level = "warn"
EOF
  setsid influxd run -config "$dir/influx/influxdb.conf" >"$dir/influx/influxd.log" 2>&1 </dev/null &
  E[MYASON_INFLUX_PID]=$!
  E[MYASON_INFLUX_PORT]=$2
  env_set "$dir" MYASON_INFLUX_PID "$!"
}

influx_wait() { # DIR -> 0 up, 1 failed, 2 lost the port race
  local dir=$1 url="http://127.0.0.1:${E[MYASON_INFLUX_PORT]}" end
  end=$(deadline)
  # Liveness first: a server that died at once (lost port race) must not cost an HTTP timeout.
  while :; do
    if ! alive "${E[MYASON_INFLUX_PID]}"; then
      bind_failed "$dir/influx/influxd.log" && return 2
      return 1
    fi
    http_ok "$url/ping" && break
    past "$end" && return 1
    sleep 0.05
  done
  curl -fsS -o /dev/null --max-time 10 -XPOST "$url/query" --data-urlencode 'q=CREATE DATABASE myason' ||
    return 1
  env_set "$dir" MYASON_INFLUX_PORT "${E[MYASON_INFLUX_PORT]}"
  env_set "$dir" MYASON_INFLUX_URL "$url"
}

# ---------------------------------------------------------------- VictoriaMetrics
vm_launch() { # DIR PORT
  local dir=$1
  mkdir -p "$dir/vm"
  # latencyOffset=0: tests query what they just wrote; the default hides the last 30 s.
  setsid victoria-metrics -httpListenAddr="127.0.0.1:$2" -storageDataPath="$dir/vm/data" \
    -retentionPeriod=100y -search.latencyOffset=0s -loggerLevel=WARN \
    >"$dir/vm/victoria-metrics.log" 2>&1 </dev/null &
  E[MYASON_VM_PID]=$!
  E[MYASON_VM_PORT]=$2
  env_set "$dir" MYASON_VM_PID "$!"
}

vm_wait() { # DIR -> 0 up, 1 failed, 2 lost the port race
  local dir=$1 url="http://127.0.0.1:${E[MYASON_VM_PORT]}" end
  end=$(deadline)
  while :; do
    if ! alive "${E[MYASON_VM_PID]}"; then
      bind_failed "$dir/vm/victoria-metrics.log" && return 2
      return 1
    fi
    http_ok "$url/health" && break
    past "$end" && return 1
    sleep 0.05
  done
  env_set "$dir" MYASON_VM_PORT "${E[MYASON_VM_PORT]}"
  env_set "$dir" MYASON_VM_URL "$url"
}

wait_http_server() { # NAME DIR LOG: wait, relaunching on a fresh port if it lost a port race
  local name=$1 dir=$2 log=$3 try rc ports
  for try in 1 2 3; do
    rc=0; "${name}_wait" "$dir" || rc=$?
    [ $rc -eq 0 ] && return 0
    if [ $rc -eq 2 ] && [ "$try" -lt 3 ]; then
      ports=$(free_ports 2)
      case $name in
        influx) influx_launch "$dir" ${ports% *} ${ports#* } ;;
        vm) vm_launch "$dir" ${ports% *} ;;
      esac
      continue
    fi
    break
  done
  say "$name failed: it exited, or did not answer within ${TIMEOUT} s"
  log_tail "$name" "$log"
  return 1
}

# ---------------------------------------------------------------- commands
cmd_start() {
  local want=("$@") s dir t0 ports
  [ ${#want[@]} -eq 0 ] && want=(pg influx vm)
  for s in "${want[@]}"; do case $s in pg|influx|vm) ;; *) usage ;; esac; done
  [ "$(id -u)" = 0 ] || { say "must run as root (apt-get, runuser postgres)"; exit 3; }
  t0=$(now)
  ensure_packages "${want[@]}"
  PY=$(command -v /usr/bin/python3 || command -v python3) || { say "python3 not found"; exit 1; }

  # Not $TMPDIR: the postgres user must be able to traverse every parent of the data dir.
  dir=$(mktemp -d "${MYASON_SERVICES_TMP:-/tmp}/myason-services.XXXXXX")
  dir=$(cd "$dir" && pwd -P)
  chmod 755 "$dir"   # the postgres user must reach its subdirectory
  echo "MYASON_SERVICES_DIR=$dir" >"$dir/$ENV_NAME"
  E=([MYASON_SERVICES_DIR]=$dir)
  START_DIR=$dir
  trap 'start_failed $?' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  read -r -a ports <<<"$(free_ports 4)"
  want_has() { case " ${want[*]} " in *" $1 "*) return 0 ;; esac; return 1; }
  # The HTTP servers boot while initdb runs: that overlap is most of what makes start quick.
  want_has influx && influx_launch "$dir" "${ports[1]}" "${ports[2]}"
  want_has vm && vm_launch "$dir" "${ports[3]}"
  if want_has pg; then start_pg "$dir" "${ports[0]}" || { say "PostgreSQL failed"; exit 1; }; fi
  want_has influx && { wait_http_server influx "$dir" "$dir/influx/influxd.log" || exit 1; }
  want_has vm && { wait_http_server vm "$dir" "$dir/vm/victoria-metrics.log" || exit 1; }

  if [ -n "${MYASON_SERVICES_WATCH_PID:-}" ]; then
    setsid bash "$SELF" watch "$dir" "$MYASON_SERVICES_WATCH_PID" >/dev/null 2>&1 </dev/null &
    env_set "$dir" MYASON_WATCH_PID "$!"
  fi
  trap - EXIT INT TERM
  cat "$dir/$ENV_NAME"
  say "started ${want[*]} in $(elapsed "$t0") s; stop with: $SELF stop $dir"
}

start_failed() { # RC: the EXIT trap of a start that did not finish
  trap - EXIT
  [ "$1" -eq 0 ] && return 0
  say "start failed or interrupted (exit $1)"
  if [ "${MYASON_SERVICES_KEEP:-0}" = 1 ]; then
    say "start failed; kept $START_DIR (stop it with: $SELF stop $START_DIR)"
  else
    cmd_stop "$START_DIR" >/dev/null || true
  fi
  exit "$1"
}

cmd_stop() { # DIR
  local dir t0 pgpid procs
  t0=$(now)
  load_env "$1"; dir=${E[MYASON_SERVICES_DIR]}
  # Everything is told to stop first and waited for together, so a stop costs the slowest
  # server rather than the sum.
  pgpid=$(pg_stop_signal "$dir")
  procs=("influxd=${E[MYASON_INFLUX_PID]:-}" "victoria-metrics=${E[MYASON_VM_PID]:-}")
  [ "${E[MYASON_WATCH_PID]:-}" != "$$" ] && procs+=("watchdog=${E[MYASON_WATCH_PID]:-}")
  stop_ours "$dir" "${procs[@]}"
  pg_wait_down "$dir" "$pgpid"
  rm -rf -- "$dir"
  say "stopped and removed $dir in $(elapsed "$t0") s"
}

cmd_pg_stop() { # DIR
  load_env "$1"
  [ -n "${E[MYASON_PG_DATA]:-}" ] || { say "no PostgreSQL in $1"; exit 2; }
  pg_wait_down "${E[MYASON_SERVICES_DIR]}" "$(pg_stop_signal "${E[MYASON_SERVICES_DIR]}")"
  say "PostgreSQL stopped (port ${E[MYASON_PG_PORT]} is free now)"
}

cmd_pg_start() { # DIR
  local dir
  load_env "$1"; dir=${E[MYASON_SERVICES_DIR]}
  [ -n "${E[MYASON_PG_DATA]:-}" ] || { say "no PostgreSQL in $1"; exit 2; }
  if [ -f "${E[MYASON_PG_DATA]}/postmaster.pid" ] && is_ours "$(head -n 1 "${E[MYASON_PG_DATA]}/postmaster.pid")" "$dir"; then
    say "PostgreSQL already running"
  elif ! pg_launch "$dir"; then
    say "PostgreSQL did not restart on port ${E[MYASON_PG_PORT]}"
    log_tail postgres "$dir/pg/postgres.log"; log_tail pg_ctl "$dir/pg/pg_ctl.log"
    exit 1
  fi
  echo "MYASON_PG_PID=${E[MYASON_PG_PID]}"
}

cmd_watch() { # DIR PID: internal; stop DIR once PID (the test run) has gone
  local dir=$1 pid=$2
  while [ -f "$dir/$ENV_NAME" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      cmd_stop "$dir" >/dev/null 2>&1 || true
      exit 0
    fi
    sleep 1
  done
}

case ${1:-} in
  start) shift; cmd_start "$@" ;;
  stop) [ $# -eq 2 ] || usage; cmd_stop "$2" ;;
  pg-stop) [ $# -eq 2 ] || usage; cmd_pg_stop "$2" ;;
  pg-start) [ $# -eq 2 ] || usage; cmd_pg_start "$2" ;;
  watch) [ $# -eq 3 ] || usage; cmd_watch "$2" "$3" ;;
  *) usage ;;
esac
