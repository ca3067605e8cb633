#!/usr/bin/env bash
# tuning/test.sh: checks of the tuning/ directory that need no root and change nothing.
#   1. sysctl.conf: every line is "key = value", every key exists under /proc/sys on this kernel.
#   2. irq-affinity.sh: dry run on lo succeeds and changes nothing; a missing interface and bad
#      CPU lists exit 2 with a message; --apply on a fake multi-queue NIC (a temporary sysfs/procfs
#      tree) writes the expected IRQ, RPS and XPS values.
#   3. profiles/*.toml: each holds only a [runtime] table and is accepted by sni-dispatch
#      (`check` on a config carrying the same table, then `run --profile` for 2 s on an ephemeral
#      loopback port, checking the pipe_pool it reports), when a built binary exists
#      (SNI_DISPATCH, else target/{release,debug}/sni-dispatch).
# Exit status 0 when everything passes, 1 otherwise.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
fails=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ---- 1. sysctl.conf ----------------------------------------------------------------------------
if out=$(awk '
    /^[[:space:]]*(#|;|$)/ { next }
    {
        line = $0
        if (line !~ /^[[:space:]]*[-]?[a-z0-9_.-]+[[:space:]]*=[[:space:]]*[^[:space:]].*$/) {
            printf "line %d: not \"key = value\": %s\n", NR, line; bad = 1; next
        }
        key = line; sub(/^[[:space:]]*-?/, "", key); sub(/[[:space:]]*=.*/, "", key)
        if (seen[key]++) { printf "line %d: %s set twice\n", NR, key; bad = 1 }
        path = "/proc/sys/" key; gsub(/\./, "/", path)
        if ((getline dummy < path) < 0) { printf "line %d: %s: no %s on this kernel\n", NR, key, path; bad = 1 }
        close(path)
        n++
    }
    END { if (!bad) printf "%d keys\n", n; exit bad }' "$here/sysctl.conf"); then
    pass "sysctl.conf: $out, all present under /proc/sys"
else
    fail "sysctl.conf:"; echo "$out" | sed 's/^/     /'
fi

# ---- 2. irq-affinity.sh ------------------------------------------------------------------------
ia=$here/irq-affinity.sh
bash -n "$ia" && pass "irq-affinity.sh: bash -n" || fail "irq-affinity.sh: syntax"
before=$(cat /sys/class/net/lo/queues/rx-0/rps_cpus 2>/dev/null || echo none)
if out=$("$ia" lo 0 2>&1) && grep -q "loopback has no IRQs" <<<"$out" && grep -q "rps_cpus" <<<"$out"; then
    pass "irq-affinity.sh lo 0: dry run reports RPS only"
else
    fail "irq-affinity.sh lo 0 (dry run):"; echo "$out" | sed 's/^/     /'
fi
if grep -q '^set ' <<<"$out"; then fail "dry run claims to have set something"; fi
after=$(cat /sys/class/net/lo/queues/rx-0/rps_cpus 2>/dev/null || echo none)
[[ $before == "$after" ]] && pass "dry run changed nothing (lo rps_cpus $after)" || fail "dry run changed lo rps_cpus: $before -> $after"

expect_exit() { # status pattern args...
    local want=$1 pat=$2 st=0 out
    shift 2
    out=$("$ia" "$@" 2>&1) || st=$?
    if [[ $st == "$want" ]] && grep -q -- "$pat" <<<"$out"; then
        pass "irq-affinity.sh $*: exit $st ($(grep -- "$pat" <<<"$out" | head -1 | cut -c1-70))"
    else
        fail "irq-affinity.sh $*: exit $st, wanted $want and /$pat/:"; echo "$out" | sed 's/^/     /'
    fi
}
expect_exit 2 "no network interface named 'nosuch0'" nosuch0 0
expect_exit 2 "no network interface named" 'lo/../x' 0
expect_exit 2 "does not exist on this host" lo 0-4095
expect_exit 2 "runs backwards" lo 3-1
expect_exit 2 "not a CPU number" lo abc
expect_exit 2 "expected IFACE and CPULIST" lo
expect_exit 2 "unknown option" lo 0 --bogus

# A fake 4-queue NIC "fake0" with IRQs 100-103 named fake0-TxRx-N plus a non-queue vector.
# (The CPU list is checked against this host: CPUs 0 and 1 must exist.)
if [[ ! -d /sys/devices/system/cpu/cpu1 ]]; then
    echo "skip fake-NIC checks: this host has one CPU"
else
fs=$tmp/fake
mkdir -p "$fs/net/fake0/queues" "$fs/irq"
for q in 0 1 2 3; do
    mkdir -p "$fs/net/fake0/queues/rx-$q" "$fs/net/fake0/queues/tx-$q" "$fs/irq/$((100 + q))"
    echo 0 >"$fs/net/fake0/queues/rx-$q/rps_cpus"
    echo 0 >"$fs/net/fake0/queues/rx-$q/rps_flow_cnt"
    echo 0 >"$fs/net/fake0/queues/tx-$q/xps_cpus"
    echo 0-1 >"$fs/irq/$((100 + q))/smp_affinity_list"
done
mkdir -p "$fs/irq/99" && echo 0-1 >"$fs/irq/99/smp_affinity_list"
{
    echo "           CPU0       CPU1"
    echo " 99:          0          0  PCI-MSIX-0000:00:09.0   0-edge      fake0-lsc"
    for q in 0 1 2 3; do
        echo " $((100 + q)):         10         20  PCI-MSIX-0000:00:09.0   $((q + 1))-edge      fake0-TxRx-$q"
    done
} >"$fs/interrupts"
run_fake() { IRQ_AFFINITY_SYS_NET=$fs/net IRQ_AFFINITY_PROC_IRQ=$fs/irq IRQ_AFFINITY_PROC_INTERRUPTS=$fs/interrupts "$ia" "$@"; }
if out=$(run_fake fake0 0-1 2>&1) && [[ $(grep -c '^would set' <<<"$out") == 8 ]] && [[ $(cat "$fs/irq/101/smp_affinity_list") == 0-1 ]]; then
    pass "fake 4-queue NIC, dry run: 8 changes listed (4 IRQs, 4 XPS; RPS already off), none made"
else
    fail "fake NIC dry run:"; echo "$out" | sed 's/^/     /'
fi
if out=$(run_fake fake0 0-1 --apply 2>&1); then
    got="$(cat "$fs"/irq/10{0,1,2,3}/smp_affinity_list | tr '\n' ' ')| $(cat "$fs"/net/fake0/queues/tx-{0,1,2,3}/xps_cpus | tr '\n' ' ')| $(cat "$fs"/net/fake0/queues/rx-0/rps_cpus) | $(cat "$fs/irq/99/smp_affinity_list")"
    want="0 1 0 1 | 1 2 1 2 | 0 | 0-1"
    [[ $got == "$want" ]] && pass "fake NIC --apply: IRQs/XPS/RPS/lsc = $got" || { fail "fake NIC --apply: got '$got', want '$want'"; echo "$out" | sed 's/^/     /'; }
else
    fail "fake NIC --apply exited non-zero:"; echo "$out" | sed 's/^/     /'
fi
if out=$(run_fake fake0 0-1 --apply 2>&1) && grep -q "# 0 change(s)" <<<"$out"; then
    pass "fake NIC --apply again: nothing left to change"
else
    fail "fake NIC second --apply:"; echo "$out" | sed 's/^/     /'
fi
# More CPUs than queues: RPS must be turned on over the CPU list.
if out=$(run_fake fake0 0-1 2>&1) && [[ -d /sys/devices/system/cpu/cpu1 ]]; then
    rm -rf "$fs/net/fake0/queues/rx-"{1,2,3}
    out=$(run_fake fake0 0-1 2>&1)
    grep -q "rx-0/rps_cpus: 0 -> 3" <<<"$out" && pass "fake NIC with 1 rx queue for 2 CPUs: RPS over both" || { fail "1-queue RPS:"; echo "$out" | sed 's/^/     /'; }
fi
fi

# ---- 3. profiles -------------------------------------------------------------------------------
bin=${SNI_DISPATCH:-}
for b in "$root/target/release/sni-dispatch" "$root/target/debug/sni-dispatch"; do
    [[ -z $bin && -x $b ]] && bin=$b
done
# The routes every profile is tried with: an ephemeral listener port, and a back end that is
# never dialed (no connection is made), so no fixed port is bound or needed.
routes='[[listener]]\naddress = "127.0.0.1:0"\n\n[[route]]\nname = "r"\nsni = ["a.example.com"]\naction = "passthrough"\nbackends = ["127.0.0.1:9"]\n'
printf '%b' "$routes" >"$tmp/routes.toml"
for p in "$here"/profiles/*.toml; do
    name=${p#"$root"/}
    tables=$(grep -E '^[[:space:]]*\[' "$p" | tr -d ' ' | sort -u | tr '\n' ' ')
    [[ $tables == "[runtime] " ]] && pass "$name: only [runtime]" || fail "$name: tables other than [runtime]: $tables"
    if [[ -n $bin ]]; then
        cfg=$tmp/${p##*/}
        {
            cat "$p"
            echo
            cat "$tmp/routes.toml"
        } >"$cfg"
        if out=$("$bin" check --config "$cfg" 2>&1); then
            pass "$name: accepted by $(basename "$bin") check"
        else
            fail "$name rejected:"; echo "$out" | sed 's/^/     /'
        fi
        # the real path: run --profile on an ephemeral loopback port, stop it after its start line
        if "$bin" run --help 2>/dev/null | grep -q -- '--profile'; then
            want=$(sed -n 's/^pipe_pool *= *\([0-9]*\).*/\1/p' "$p")
            out=$(timeout -s TERM 2 "$bin" run --config "$tmp/routes.toml" --profile "$p" --workers 1 --log info 2>&1 || true)
            if grep -q "serving.*pipe_pool=${want:-1024} " <<<"$out"; then
                pass "$name: run --profile starts with pipe_pool=${want:-1024}"
            else
                fail "$name: run --profile:"; echo "$out" | head -5 | sed 's/^/     /'
            fi
        fi
    fi
done
[[ -n $bin ]] || echo "skip profiles through sni-dispatch: no binary (cargo build first)"

if ((fails)); then
    echo "tuning/test.sh: $fails failure(s)"
    exit 1
fi
echo "tuning/test.sh: all passed"
