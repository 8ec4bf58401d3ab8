# Shared by bin/ scripts: installs what building needs on a fresh machine.

# Runs a command as root (directly, or through sudo).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# What building the workspace needs from Debian, installed in one apt run on a
# fresh machine (one `apt-get update`, not one per package):
#   libclang-dev  RocksDB's Rust bindings are generated with libclang at build time;
#   clang         compiles RocksDB's C++ (see ensure_compiler_cache for why clang);
#   ccache        serves RocksDB's C++ from the first compile to the later ones.
# Only the example KV store (examples/kv) builds RocksDB, so nothing is installed
# while it is outside the workspace.
ensure_build_prereqs() {
  if ! sed -n '/^members/p' Cargo.toml | grep -q '"examples/kv"'; then
    return 0
  fi
  local missing=()
  if ! ldconfig -p 2>/dev/null | grep -q 'libclang\.so\|libclang-[0-9.]*\.so'; then
    missing+=(libclang-dev)
  fi
  command -v clang++ >/dev/null 2>&1 || missing+=(clang)
  command -v ccache >/dev/null 2>&1 || missing+=(ccache)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} (to build RocksDB)..."
    local started=$SECONDS
    # The lock timeout: another apt run on the machine is waited for, not failed on.
    as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
    as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    echo "installed ${missing[*]} in $((SECONDS - started)) s"
  fi
  ensure_compiler_cache
}

# The C and C++ compilers the build scripts run (the cc crate reads CC and CXX),
# chosen for RocksDB's C++ library, the longest step of a build:
#
# - clang, not gcc: it compiles RocksDB about twice as fast. Six of its largest
#   files on 2 cores: gcc -O0 28.6 s, clang -O0 14.5 s, clang -O2 29.5 s. So the
#   dev profile can optimise RocksDB (opt-level 2 in Cargo.toml; an unoptimised
#   RocksDB halved the local cluster's throughput) for what gcc spent not
#   optimising it.
# - behind ccache: the library is compiled again whenever its build script's own
#   dependencies are built with other features. `cargo clippy --all-targets` and
#   `cargo test` share one build (Cargo.toml's `build-override` says why), but
#   `cargo build --bins` (bin/cluster) has no dev-dependencies, and one of them
#   (testcontainers' parse-display-derive, a proc-macro) turns on regex's default
#   features on the build side, where bindgen uses regex too: so a second
#   compile after the tests. ccache serves it from the first (about a minute).
#
# An explicit CC/CXX from the caller is left alone.
ensure_compiler_cache() {
  export CCACHE_DIR="${CCACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ranger/ccache}"
  export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
  export CC="${CC:-ccache clang}"
  export CXX="${CXX:-ccache clang++}"
}
