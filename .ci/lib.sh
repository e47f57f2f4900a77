# Shared helpers for the CI scripts (sourced, not run). Every script that sources this runs
# with `set -euo pipefail` from the workspace root.

# Seconds are counted from the start of the whole run (.ci/run exports CI_START) or of this
# script when it runs alone.
: "${CI_START:=$(date +%s)}"
export CI_START
stage() { printf '\n=== %s (%ss since start)\n' "$1" "$(($(date +%s) - CI_START))"; }

fail() {
    printf 'FATAL: %s\n' "$*" >&2
    exit 1
}

# The workspace's target directory (CARGO_TARGET_DIR if set); each tool with its own
# compiler flags gets a subdirectory so that stages do not invalidate each other's builds.
target_root() { printf '%s' "${CARGO_TARGET_DIR:-$PWD/target}"; }

# Directories of the workspace crates (each holds a Cargo.toml), fuzz excluded: it is its
# own workspace.
workspace_crates() {
    local manifest
    for manifest in */Cargo.toml; do
        [[ $manifest == fuzz/* ]] && continue
        printf '%s\n' "${manifest%/Cargo.toml}"
    done
}

# Crates that have the given file (for example tests/loom.rs).
crates_with() {
    local crate
    while read -r crate; do
        if [[ -f $crate/$1 ]]; then printf '%s\n' "$crate"; fi
    done < <(workspace_crates)
}

# Whether the crate's library target runs unit tests (not declared `test = false` in its
# Cargo.toml's [lib] section).
lib_is_tested() {
    ! awk '/^\[/ { lib = ($0 == "[lib]") } lib && /^test *= *false/ { found = 1 } END { exit !found }' \
        "$1/Cargo.toml"
}

# Fails unless the nightly toolchain is installed (installing it if rustup can).
require_nightly() {
    if ! rustup run nightly rustc --version >/dev/null 2>&1; then
        rustup toolchain install nightly --profile minimal ||
            fail "the nightly toolchain is required and could not be installed"
    fi
}

# Fails unless `rustup component add "$@" --toolchain nightly` succeeds.
require_nightly_components() {
    require_nightly
    rustup component add "$@" --toolchain nightly ||
        fail "could not install nightly components: $*"
}

# The path of the one executable `cargo <args> --message-format=json` builds, for example
# `built_binary test -p rseq-sys --test primitives --no-run`.
built_binary() {
    local binaries
    binaries=$(cargo "$@" --message-format=json |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
    [[ -n $binaries ]] || fail "cargo $* built no test binary"
    [[ $(wc -l <<<"$binaries") -eq 1 ]] || fail "cargo $* built several binaries: $binaries"
    printf '%s' "$binaries"
}
