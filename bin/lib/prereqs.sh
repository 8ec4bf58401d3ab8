# Shared by bin/ scripts: installs what building needs on a fresh machine.

# RocksDB's bindings are generated with libclang at build time; only the example
# KV store (examples/kv) builds RocksDB, so nothing is installed while it is
# outside the workspace.
ensure_build_prereqs() {
  if ! sed -n '/^members/p' Cargo.toml | grep -q '"examples/kv"'; then
    return 0
  fi
  if ! ldconfig -p 2>/dev/null | grep -q 'libclang\.so\|libclang-[0-9.]*\.so'; then
    echo "installing libclang-dev (needed to build RocksDB's Rust bindings)..."
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq && apt-get install -y -qq libclang-dev
    else
      sudo apt-get update -qq && sudo apt-get install -y -qq libclang-dev
    fi
  fi
}
