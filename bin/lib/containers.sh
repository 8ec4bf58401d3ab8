# Shared by bin/ scripts: a container engine that speaks the Docker API, and the
# local Consul image that the tests start through testcontainers.
#
# Why podman: our machines (and CI, which runs on them) have no Docker engine
# and no route to an image registry, but Debian's podman runs rootful containers
# here and serves the Docker API on a unix socket, which is all testcontainers
# needs. ../shared/CONTAINERS.md records what was measured; the settings below
# are the ones it found necessary.
#
# Why a local image: nothing can be pulled, so the image is built from the
# consul binary that bin/consul provides. That binary links only libc and the
# dynamic loader, so the image is that binary, those two libraries and a few
# empty directories, FROM scratch.
#
# Every function is idempotent and cheap when its job is already done, so
# bin/test calls them on every run.
#
#   ensure_container_engine       install + configure podman, start its API,
#                                 export DOCKER_HOST
#   ensure_consul_image BINARY    build the Consul image from BINARY if needed
#
# Settings read:
#   DOCKER_HOST            an engine that already answers there is used as is
#                          (e.g. Docker on a developer's machine): nothing is
#                          installed or started
#   RANGER_CONSUL_IMAGE    the image the tests run; only the default local one
#                          (below) is built here, any other is the engine's to
#                          pull

# The API socket of the podman service we start.
ranger_podman_socket=/run/podman/podman.sock
# Where that service logs; read it when the socket does not come up.
ranger_podman_log=/var/log/ranger-podman-service.log
# The image ranger_consul::TestAgent runs by default (keep in step with
# DEFAULT_IMAGE in consul/src/test_agent.rs).
ranger_consul_image_default=localhost/ranger-consul:1.14.11
# The image label that records which binary an image was built from.
ranger_consul_image_label=dev.ranger.consul-sha256

# engine_answers URL: true when a Docker-API engine answers a ping at URL
# (unix:///path only: that is all we start or expect on these machines).
engine_answers() {
  local socket="${1#unix://}"
  [ "$socket" != "$1" ] || return 1
  [ -S "$socket" ] || return 1
  curl -sf --max-time 3 --unix-socket "$socket" http://d/_ping >/dev/null 2>&1
}

# install_podman: Debian's podman, and runc (crun, podman's default runtime,
# refuses this machine's hybrid cgroups). curl is for engine_answers.
install_podman() {
  if command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 \
    && command -v curl >/dev/null 2>&1; then
    return 0
  fi
  echo "installing podman and runc (Debian packages)..."
  local started=$SECONDS
  # The lock timeout: another apt run on the machine (another checkout's
  # bin/test) is waited for rather than failed on.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  env DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq podman runc curl >/dev/null
  echo "installed podman $(podman --version | awk '{print $3}') in $((SECONDS - started)) s"
}

# podman_settings: the engine settings this machine needs, as containers.conf.
# The rlimits are the caller's hard limits (capped): podman's defaults ask for
# more than a process here may raise them to, and every container start fails.
podman_settings() {
  local nofile nproc
  nofile="$(ulimit -Hn)"
  nproc="$(ulimit -Hu)"
  if [ "$nofile" = unlimited ]; then
    nofile=1048576
  fi
  # Consul needs few processes; 4096 is what CONTAINERS.md measured working.
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt 4096 ]; then
    nproc=4096
  fi
  cat <<EOF
# Written by Ranger's bin/lib/containers.sh: what podman needs on these machines.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
}

# configure_podman: writes podman_settings to a drop-in file, so that a
# machine's own containers.conf is left alone. When the settings change, a
# running service of ours is stopped so that start_podman_service restarts it
# with them.
configure_podman() {
  local dir=/etc/containers/containers.conf.d
  local file="$dir/50-ranger.conf"
  local wanted
  wanted="$(podman_settings)"
  if [ -f "$file" ] && [ "$(cat "$file")" = "$wanted" ]; then
    return 0
  fi
  mkdir -p "$dir"
  printf '%s\n' "$wanted" >"$file"
  echo "wrote podman settings to $file"
  stop_podman_service
}

# stop_podman_service: stops the service start_podman_service started, if any.
stop_podman_service() {
  local pid
  pid="$(cat /run/podman/ranger-service.pid 2>/dev/null || true)"
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  rm -f /run/podman/ranger-service.pid
}

# start_podman_service: the Docker API on $ranger_podman_socket, started when
# nothing answers there. It runs detached (its own session, no terminal, no
# time limit), so it outlives this script: later runs find it answering, and a
# test run never waits for it to start. Left running it costs nothing but a
# sleeping process.
start_podman_service() {
  if engine_answers "unix://$ranger_podman_socket"; then
    return 0
  fi
  mkdir -p /run/podman
  # A socket file left by a killed service would make the new one fail to bind.
  rm -f "$ranger_podman_socket"
  # From `/`: the service outlives this script, and its container monitors
  # (conmon) fail with "Failed to get working directory" once the directory it
  # was started from is deleted (a CI clone, a worktree).
  (cd / && exec setsid podman system service --time=0 "unix://$ranger_podman_socket" \
    </dev/null >>"$ranger_podman_log" 2>&1) &
  echo $! >/run/podman/ranger-service.pid
  local tries
  for tries in $(seq 100); do
    engine_answers "unix://$ranger_podman_socket" && return 0
    sleep 0.1
  done
  echo "the podman service did not answer on $ranger_podman_socket within 10 s; its log ends with:" >&2
  tail -n 20 "$ranger_podman_log" >&2 || true
  return 1
}

# ensure_container_engine: a Docker-API engine answers at $DOCKER_HOST
# (exported). An engine the caller already points DOCKER_HOST at is used as it
# is; otherwise podman is installed, configured and started.
ensure_container_engine() {
  if [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "unix://$ranger_podman_socket" ] \
    && engine_answers "$DOCKER_HOST"; then
    echo "using the container engine at DOCKER_HOST=$DOCKER_HOST"
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "no container engine answers at DOCKER_HOST=${DOCKER_HOST:-(unset)}, and installing and starting podman needs root;" >&2
    echo "run bin/test as root once, point DOCKER_HOST at a running engine, or set RANGER_CONSUL_MODE=process" >&2
    return 1
  fi
  install_podman
  configure_podman
  start_podman_service
  export DOCKER_HOST="unix://$ranger_podman_socket"
  echo "podman $(podman --version | awk '{print $3}') serves the Docker API at DOCKER_HOST=$DOCKER_HOST"
}

# ensure_consul_image BINARY: the image ${RANGER_CONSUL_IMAGE:-default} exists
# and was built from BINARY. Only the default local image is built here; it is
# rebuilt only when BINARY's sha256 differs from the image's label.
ensure_consul_image() {
  local binary="$1"
  local image="${RANGER_CONSUL_IMAGE:-$ranger_consul_image_default}"
  if [ "$image" != "$ranger_consul_image_default" ]; then
    echo "RANGER_CONSUL_IMAGE=$image: not built here (the engine pulls it)"
    return 0
  fi
  if ! command -v podman >/dev/null 2>&1; then
    echo "building $image needs podman; or set RANGER_CONSUL_IMAGE=hashicorp/consul:1.14.11 to run the official image" >&2
    return 1
  fi
  local sha built
  sha="$(sha256sum "$binary" | cut -d' ' -f1)"
  built="$(podman image inspect --format "{{ index .Labels \"$ranger_consul_image_label\" }}" \
    "$image" 2>/dev/null || true)"
  if [ "$built" = "$sha" ]; then
    return 0
  fi
  build_consul_image "$binary" "$image" "$sha"
}

# build_consul_image BINARY IMAGE SHA: builds IMAGE from BINARY, FROM scratch.
# A subshell (the parentheses), so that its EXIT trap cleans up whatever
# happens: the build context holds a copy of a 100 MB binary.
build_consul_image() (
  binary="$1" image="$2" sha="$3"
  started=$SECONDS
  context="$(mktemp -d)"
  trap 'rm -rf "$context"' EXIT
  # /consul/data: the agent's data dir; /tmp: Consul writes temporary files.
  mkdir -p "$context/root/bin" "$context/root/consul/data" "$context/root/tmp"
  chmod 1777 "$context/root/tmp"
  cp "$binary" "$context/root/bin/consul"
  # ldd's lines are `name => /path (addr)` or `/path (addr)` (the loader);
  # linux-vdso has no file. --parents keeps each library's path in the image.
  for lib in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    cp -L --parents "$lib" "$context/root/"
  done
  cat >"$context/Containerfile" <<EOF
FROM scratch
COPY root/ /
LABEL $ranger_consul_image_label="$sha"
ENTRYPOINT ["/bin/consul"]
EOF
  podman build --quiet --tag "$image" "$context" >/dev/null
  # The image this one replaced is left untagged: 115 MB each time the
  # binary changes, unless removed.
  podman image prune --force --filter "label=$ranger_consul_image_label" >/dev/null || true
  echo "built $image from $binary in $((SECONDS - started)) s"
)
