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

# Runs jobs side by side, as many at once as the machine has CPUs. Each argument pair is a
# stage name and a shell command (usually a function of the calling script, which background
# subshells inherit). For single-threaded tools (Miri's interpreter, valgrind, which runs a
# program's threads one at a time, libFuzzer) this is the difference between one busy core and
# all of them. A job's output goes to its own log, printed whole when the job ends, so logs
# never interleave; after every job has ended, fails naming each one that failed.
# Jobs start in the order given: put the longest first.
parallel_stages() {
    (($# % 2 == 0)) || fail "parallel_stages takes pairs of stage name and command"
    local -a names=() commands=() failed=()
    local -A job_of_pid=()
    local width logs next=0 running=0 finished status job
    while (($#)); do
        names+=("$1")
        commands+=("$2")
        shift 2
    done
    width=$(nproc)
    logs=$(mktemp -d)
    while ((next < ${#names[@]} || running > 0)); do
        while ((running < width && next < ${#names[@]})); do
            printf '\n--- started: %s (%ss since start)\n' "${names[next]}" \
                "$(($(date +%s) - CI_START))"
            (eval "${commands[next]}") >"$logs/$next.log" 2>&1 &
            job_of_pid[$!]=$next
            next=$((next + 1))
            running=$((running + 1))
        done
        status=0
        wait -n -p finished || status=$?
        job=${job_of_pid[$finished]}
        running=$((running - 1))
        stage "${names[job]} (ended with status $status)"
        cat "$logs/$job.log"
        ((status == 0)) || failed+=("${names[job]}")
    done
    rm -rf "$logs"
    ((${#failed[@]} == 0)) || fail "failed: $(printf '[%s] ' "${failed[@]}")"
}
