#!/usr/bin/env bash
# Fuzzes every parser of ido with cargo fuzz (libFuzzer), each target for a bounded time.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     default 60
#
# Installs cargo-fuzz if missing, builds the targets of fuzz/ (instrumented, ASan when the
# toolchain has its runtime), unpacks the committed seeds (fuzz/seeds/<target>/*.gz) into
# the working corpus fuzz/corpus/<target>/ (kept and grown across runs, not committed),
# runs each target under `nice -n 10`, and prints the executions per target. Exits non-zero
# when a target crashed (panic, resident set over 2 GiB or one allocation over 2.5 GiB, an
# input running over 60 s, leak); its input is in fuzz/artifacts/<target>/ and the log in
# fuzz/logs/<target>.log. Inputs slower than 10 s are kept there too (slow-unit-*), and
# reported, not failures.
#
# Environment:
#   IDO_FUZZ_TARGETS="qcow2 vmdk"   only these targets (default: all, see fuzz/Cargo.toml)
#   IDO_FUZZ_TOOLCHAIN=stable       rustup toolchain (default stable, with RUSTC_BOOTSTRAP=1
#                                   for cargo fuzz's unstable flags; nightly works as is)
#   IDO_FUZZ_SANITIZER=address|none default: address when the toolchain ships the ASan runtime
#   IDO_FUZZ_SEEDS=1                regenerate fuzz/seeds first (fuzz/make-seeds.sh: qemu-img…)
#   IDO_FUZZ_ARGS="-use_value_profile=1"   more libFuzzer arguments
# See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}
secs=${1:-60}
[[ $secs =~ ^[0-9]+$ && $secs -gt 0 && $# -le 1 ]] || usage

all_targets=(qcow2 qcow2_resume vmdk vhd vhdx vdi import tar ovf oci_manifest tag_pattern
    go_duration cron imagesync_spec reference names)
read -r -a targets <<<"${IDO_FUZZ_TARGETS:-${all_targets[*]}}"

# Largest input per target: the disk formats need room for a block or two of their seeds
# (a VHD block is 2 MiB, a VHDX's regions are 1 MiB apart), the text parsers little.
max_len() {
    case $1 in
        vhdx) echo $(((4 << 20) + (64 << 10))) ;;
        vhd) echo $(((2 << 20) + (256 << 10))) ;;
        vdi) echo $(((1 << 20) + (256 << 10))) ;;
        qcow2 | qcow2_resume | vmdk | import) echo $((1 << 20)) ;;
        tar) echo $((256 << 10)) ;;
        ovf) echo $((64 << 10)) ;;
        oci_manifest) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

toolchain=${IDO_FUZZ_TOOLCHAIN:-stable}
cargo=(cargo)
rustc=(rustc)
if command -v rustup >/dev/null; then
    cargo=(cargo "+$toolchain")
    rustc=(rustc "+$toolchain")
fi
# cargo fuzz passes -Z flags (sanitizers, sancov); a stable compiler takes them with this.
[[ $toolchain == nightly* ]] || export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz: installing cargo-fuzz" >&2
    nice -n 10 cargo install --locked cargo-fuzz
fi

host=$("${rustc[@]}" -vV | sed -n 's/^host: //p')
sanitizer=${IDO_FUZZ_SANITIZER:-}
if [[ -z $sanitizer ]]; then
    sanitizer=none
    if compgen -G "$("${rustc[@]}" --print sysroot)/lib/rustlib/$host/lib/librustc-*_rt.asan.a" >/dev/null; then
        sanitizer=address
    fi
fi

if [[ ${IDO_FUZZ_SEEDS:-} == 1 ]]; then
    fuzz/make-seeds.sh
fi

echo "fuzz: building ${#targets[@]} targets ($toolchain${RUSTC_BOOTSTRAP:+, RUSTC_BOOTSTRAP=1}, sanitizer $sanitizer)" >&2
if [[ "${targets[*]}" == "${all_targets[*]}" ]]; then
    nice -n 10 "${cargo[@]}" fuzz build -s "$sanitizer"
else
    for t in "${targets[@]}"; do
        nice -n 10 "${cargo[@]}" fuzz build -s "$sanitizer" "$t"
    done
fi
bindir=fuzz/target/$host/release

scratch_base=/dev/shm
[[ -d $scratch_base && -w $scratch_base ]] || scratch_base=${TMPDIR:-/tmp}
scratch=$(mktemp -d "$scratch_base/ido-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export IDO_FUZZ_SCRATCH=$scratch
# Leaks are reported for each input; abort on ASan findings with a stack.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:symbolize=1}

# Memory: the resident set may not pass 2 GiB, and no single allocation 2.5 GiB. The latter
# is above 2 GiB on purpose: the zstd decoder accepts windows of up to 2 GiB (`zstd
# --long=31`, see docs/fuzzing.md) and reserves the window from a frame's first bytes.
mkdir -p fuzz/logs
declare -a rows
failed=0
read -r -a extra <<<"${IDO_FUZZ_ARGS:-}"
for t in "${targets[@]}"; do
    corpus=fuzz/corpus/$t
    artifacts=fuzz/artifacts/$t
    log=fuzz/logs/$t.log
    mkdir -p "$corpus" "$artifacts"
    for s in fuzz/seeds/"$t"/*.gz; do
        [[ -e $s ]] || continue
        n=$(basename "$s" .gz)
        [[ -e $corpus/seed-$n ]] || gunzip -c "$s" >"$corpus/seed-$n"
    done
    before=$(find "$artifacts" -type f | sort)
    echo "fuzz: $t for ${secs}s (log $log)" >&2
    rc=0
    timeout -k 10 $((secs + 300)) nice -n 10 "$bindir/$t" \
        -max_total_time="$secs" -print_final_stats=1 -timeout=60 -rss_limit_mb=2048 \
        -malloc_limit_mb=2560 \
        -max_len="$(max_len "$t")" -artifact_prefix="$artifacts/" "${extra[@]}" \
        "$corpus" >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    units=$(find "$corpus" -type f | wc -l)
    all_new=$(comm -13 <(echo "$before") <(find "$artifacts" -type f | sort) | sed '/^$/d')
    # libFuzzer keeps inputs slower than -report_slow_units (10 s) as slow-unit-*: worth a
    # look (instrumented code runs many times slower), not a failure; -timeout is.
    slow=$(grep '/slow-unit-' <<<"$all_new" || true)
    new=$(grep -v '/slow-unit-' <<<"$all_new" || true)
    result=ok
    if [[ -n $slow ]]; then
        result="ok ($(wc -l <<<"$slow") slow unit(s))"
        echo "fuzz: $t: inputs slower than 10 s (not failures):" >&2
        printf '  %s\n' $slow >&2
    fi
    if [[ $rc -ne 0 || -n $new ]]; then
        result="FAILED (exit $rc)"
        failed=1
        echo "fuzz: $t FAILED (exit $rc); see $log; crash inputs in $artifacts/:" >&2
        [[ -z $new ]] || printf '  %s\n' $new >&2
        echo "fuzz: reproduce with $bindir/$t <input>  (or: cargo fuzz run $t <input>)" >&2
        grep -m1 -E '^(==[0-9]+== ?ERROR|thread .* panicked|ERROR: libFuzzer)' "$log" >&2 || true
    fi
    rows+=("$(printf '%-16s %12s %10s %8s  %s' "$t" "${execs:-?}" "${speed:-?}" "$units" "$result")")
done

printf '\n%-16s %12s %10s %8s  %s\n' target executions exec/s corpus result
printf '%s\n' "${rows[@]}"
if [[ $failed -ne 0 ]]; then
    echo "fuzz: crashes found: inputs under fuzz/artifacts/, logs under fuzz/logs/" >&2
    exit 1
fi
