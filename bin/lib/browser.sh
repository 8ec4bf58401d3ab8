# Shared by bin/ scripts: the headless browser the dashboard's end-to-end test
# drives (integration/tests/dashboard.rs).
#
# Why Debian's Chromium: the test drives a real browser over WebDriver, and
# these machines have no route to a browser vendor's download site, only to the
# Debian mirror. `chromium-driver` is the matching chromedriver, built from the
# same source, so the two never disagree about versions.
#
# Idempotent and cheap when both binaries are present, so bin/test calls it on
# every run.
#
#   ensure_browser    install chromium and chromedriver if either is missing
#
# Uses as_root from bin/lib/prereqs.sh when sourced after it; runs apt-get
# directly otherwise (as root).

# Where Debian's packages put the two binaries (the test looks there too).
ranger_chromium_bin=/usr/bin/chromium
ranger_chromedriver_bin=/usr/bin/chromedriver

ensure_browser() {
  if [ -x "$ranger_chromium_bin" ] && [ -x "$ranger_chromedriver_bin" ]; then
    return 0
  fi
  local run_as=()
  if [ "$(id -u)" -ne 0 ]; then
    run_as=(sudo)
  fi
  echo "installing chromium and chromium-driver (Debian packages, for the dashboard's browser test)..."
  local started=$SECONDS
  # The lock timeout: another apt run on the machine (another checkout's
  # bin/test) is waited for rather than failed on.
  "${run_as[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
  "${run_as[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    chromium chromium-driver >/dev/null
  echo "installed $("$ranger_chromium_bin" --version 2>/dev/null | head -n1) in $((SECONDS - started)) s"
}
