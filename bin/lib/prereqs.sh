# Shared by bin/ scripts: installs what building needs on a fresh machine.

# Runs a command as root (directly, or through sudo).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# RocksDB's bindings are generated with libclang at build time; only the example
# KV store (examples/kv) builds RocksDB, so nothing is installed while it is
# outside the workspace.
ensure_build_prereqs() {
  if ! sed -n '/^members/p' Cargo.toml | grep -q '"examples/kv"'; then
    return 0
  fi
  if ! ldconfig -p 2>/dev/null | grep -q 'libclang\.so\|libclang-[0-9.]*\.so'; then
    echo "installing libclang-dev (needed to build RocksDB's Rust bindings)..."
    as_root apt-get update -qq && as_root apt-get install -y -qq libclang-dev
  fi
  ensure_compiler_cache
}

# RocksDB's C++ library (10-12 minutes on 2 cores) is compiled again whenever
# its build script's own dependencies are built with other features, which
# happens between `cargo clippy --all-targets`, `cargo test` and `cargo build
# --bins` (dev-dependencies change how the build script's dependencies unify):
# three compiles on a fresh machine. ccache serves the second and third from the
# first (the cc crate runs `ccache c++` when CXX says so). An explicit CC/CXX
# from the caller is left alone.
ensure_compiler_cache() {
  if ! command -v ccache >/dev/null 2>&1; then
    echo "installing ccache (RocksDB's C++ is then compiled once per machine)..."
    as_root apt-get update -qq && as_root apt-get install -y -qq ccache
  fi
  export CCACHE_DIR="${CCACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ranger/ccache}"
  export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
  export CC="${CC:-ccache cc}"
  export CXX="${CXX:-ccache c++}"
}
