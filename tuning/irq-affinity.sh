#!/usr/bin/env bash
# irq-affinity.sh IFACE CPULIST [--apply]
#
# Places a NIC's packet processing on the CPUs that run sni-dispatch's workers (`--cpus CPULIST`):
#   - every queue IRQ of IFACE is pinned to one CPU of CPULIST, round-robin by queue number
#     (/proc/irq/N/smp_affinity_list), so queue i's interrupts and softirq run on worker i's core;
#   - RPS (queues/rx-*/rps_cpus): off (0) when the NIC has at least as many IRQ'd receive queues as
#     CPUs in CPULIST (RSS already spreads flows; RPS would only add an inter-processor interrupt);
#     otherwise (fewer queues, or no IRQs at all: virtual devices, loopback) spread over CPULIST,
#     with RFS flow entries (rps_flow_cnt) so a flow's processing follows the CPU that reads it;
#   - XPS (queues/tx-*/xps_cpus): transmit queue q is used by the CPUs whose queue number maps to
#     q, so a worker transmits on the queue whose completions interrupt its own core. Skipped on
#     single-queue devices (the kernel rejects XPS there).
# Without --apply it prints what it would change ("would set ...") and changes nothing.
# Exit status: 0 done (or nothing to do), 1 some write failed (--apply), 2 bad usage / no such
# interface / bad CPU list.
#
# irqbalance rewrites IRQ affinities every few seconds: stop it, or ban these IRQs
# (IRQBALANCE_BANNED_CPULIST / --banirq), or the pinning will not last.
# Reference: Documentation/networking/scaling.rst in the kernel tree (RSS, RPS, RFS, XPS).
set -euo pipefail

prog=${0##*/}
SYS_NET=${IRQ_AFFINITY_SYS_NET:-/sys/class/net}   # overridable for tests
PROC_IRQ=${IRQ_AFFINITY_PROC_IRQ:-/proc/irq}
PROC_INTERRUPTS=${IRQ_AFFINITY_PROC_INTERRUPTS:-/proc/interrupts}
RFS_FLOWS=${RFS_FLOWS:-32768}   # net.core.rps_sock_flow_entries to pair with RPS (see sysctl.conf)

usage() {
    cat <<EOF
usage: $prog IFACE CPULIST [--apply]
  IFACE    network interface (e.g. eth0, ens5f0; 'lo' works: RPS only)
  CPULIST  the workers' CPUs, as given to sni-dispatch --cpus (e.g. "0-3,8")
  --apply  make the changes (as root); without it, print what would change
EOF
}
die() { # status message...
    local st=$1
    shift
    echo "$prog: error: $*" >&2
    exit "$st"
}

apply=0
args=()
for a in "$@"; do
    case $a in
    --apply) apply=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; die 2 "unknown option: $a" ;;
    *) args+=("$a") ;;
    esac
done
[[ ${#args[@]} -eq 2 ]] || { usage >&2; die 2 "expected IFACE and CPULIST"; }
iface=${args[0]}
cpulist=${args[1]}

if [[ ! $iface =~ ^[A-Za-z0-9_.:@-]+$ || ! -e $SYS_NET/$iface ]]; then
    known=$(ls "$SYS_NET" 2>/dev/null | tr '\n' ' ' || true)
    die 2 "no network interface named '$iface' (this host has: ${known:-none})"
fi

# ---- CPU list ----------------------------------------------------------------------------------
cpus=()
IFS=, read -r -a parts <<<"$cpulist"
for p in "${parts[@]}"; do
    p=${p// /}
    if [[ $p =~ ^([0-9]+)$ ]]; then
        cpus+=("$p")
    elif [[ $p =~ ^([0-9]+)-([0-9]+)$ ]]; then
        lo=${BASH_REMATCH[1]} hi=${BASH_REMATCH[2]}
        ((lo <= hi)) || die 2 "CPU range '$p' runs backwards"
        for ((c = lo; c <= hi; c++)); do cpus+=("$c"); done
    else
        die 2 "'$p' is not a CPU number or range (expected a list like \"0-3,8\")"
    fi
done
((${#cpus[@]} > 0)) || die 2 "empty CPU list"
for c in "${cpus[@]}"; do
    [[ -d /sys/devices/system/cpu/cpu$c ]] || die 2 "CPU $c does not exist on this host"
    if [[ -r /sys/devices/system/cpu/cpu$c/online && $(</sys/devices/system/cpu/cpu$c/online) != 1 ]]; then
        die 2 "CPU $c is offline"
    fi
done
ncpu=${#cpus[@]}

# Hex CPU mask in sysfs format (32-bit groups separated by commas, most significant first).
mask_of() { # cpu...
    local -a words=()
    local c w max=0 i out=""
    for c in "$@"; do (((c / 32) > max)) && max=$((c / 32)); done
    for ((i = 0; i <= max; i++)); do words[i]=0; done
    for c in "$@"; do
        w=$((c / 32))
        words[w]=$((words[w] | (1 << (c % 32))))
    done
    for ((i = max; i >= 0; i--)); do
        if [[ -z $out ]]; then out=$(printf '%x' "${words[i]}"); else out+=$(printf ',%08x' "${words[i]}"); fi
    done
    echo "$out"
}
# Normalises a sysfs mask for comparison: drop commas and leading zeros.
norm_mask() {
    local m=${1//,/}
    m=$(sed 's/^0*//' <<<"$m")
    echo "${m:-0}"
}

changes=0
failures=0
# set_value FILE NEW [DESCRIPTION]: print and (with --apply) write, if different.
set_value() {
    local f=$1 new=$2 what=${3:-} cur
    if ! cur=$(cat "$f" 2>/dev/null); then
        echo "skip  $f: not readable (${what:-kernel refuses this setting here})"
        return 0
    fi
    local same=0
    if [[ $f == *_cpus ]]; then
        [[ $(norm_mask "$cur") == $(norm_mask "$new") ]] && same=1
    else
        [[ $cur == "$new" ]] && same=1
    fi
    if ((same)); then
        echo "ok    $f = $cur${what:+  ($what)}"
        return 0
    fi
    changes=$((changes + 1))
    if ((apply)); then
        if (echo "$new" >"$f") 2>/dev/null; then
            echo "set   $f: $cur -> $new${what:+  ($what)}"
        else
            failures=$((failures + 1))
            echo "FAIL  $f: $cur -> $new refused${what:+  ($what)}; kernel-managed IRQ or not root?" >&2
        fi
    else
        echo "would set $f: $cur -> $new${what:+  ($what)}"
    fi
}

echo "# $iface, worker CPUs ${cpus[*]} ($( ((apply)) && echo apply || echo 'dry run: nothing is changed; add --apply'))"

# ---- IRQs of the interface's queues ------------------------------------------------------------
declare -A irq_name=()
if [[ -r $PROC_INTERRUPTS ]]; then
    while read -r irq rest; do
        irq=${irq%:}
        [[ $irq =~ ^[0-9]+$ ]] || continue
        irq_name[$irq]=${rest##* }   # the action name is the last field
    done <"$PROC_INTERRUPTS"
fi

# vectors that carry no queue: configuration, async events, mailbox, link state, flow director...
nonqueue='(config|async|event|ctrl|misc|mbx|mailbox|lsc|link|fdir|timer|stats|reporting|inflate|deflate)'
irqs=()
# 1) IRQs named after the interface: eth0-TxRx-0, ens5f0-rx-1, i40e-ens1-TxRx-3, eth0 ...
for irq in "${!irq_name[@]}"; do
    n=${irq_name[$irq]}; [[ ${n//"$iface"/} =~ $nonqueue ]] && continue
    if [[ ${irq_name[$irq]} =~ (^|[^[:alnum:]])${iface//./\\.}([-_@:.]|$) ]]; then irqs+=("$irq"); fi
done
# 2) else the device's MSI vectors (the PCI function's for virtio devices), minus the
#    non-queue ones (configuration, async events, mailbox, link state).
if ((${#irqs[@]} == 0)) && [[ -e $SYS_NET/$iface/device ]]; then
    dev=$(readlink -f "$SYS_NET/$iface/device")
    msi=""
    for d in "$dev" "$dev/.."; do
        if [[ -d $d/msi_irqs ]]; then msi=$d/msi_irqs; break; fi
    done
    if [[ -n $msi ]]; then
        devname=${dev##*/}
        for f in "$msi"/*; do
            irq=${f##*/}
            name=${irq_name[$irq]:-}
            [[ -n $name ]] || continue
            # virtio: the PCI function's vectors are virtioN-*, keep this device's only
            [[ $devname == virtio* && $name != "$devname"-* ]] && continue
            [[ $name =~ $nonqueue ]] && continue
            irqs+=("$irq")
        done
    fi
fi

# queue number of an IRQ: trailing digits of its name once any "@bus-address" is cut off
queue_of() {
    local n=${1%%@*}
    if [[ $n =~ ([0-9]+)$ ]]; then echo "${BASH_REMATCH[1]}"; else echo ""; fi
}

if ((${#irqs[@]} == 0)); then
    if [[ $iface == lo ]]; then
        echo "note  $iface: loopback has no IRQs and no hardware queues; a packet is processed on the CPU that sent it (RPS below moves it)"
    else
        echo "note  $iface: no IRQs found (virtual interface: veth, bridge, tun, bond...; pin the IRQs of the physical NICs under it); RPS/XPS only"
    fi
else
    mapfile -t irqs < <(printf '%s\n' "${irqs[@]}" | sort -n)
    ord=0
    for irq in "${irqs[@]}"; do
        q=$(queue_of "${irq_name[$irq]}")
        [[ -n $q ]] || q=$ord
        cpu=${cpus[q % ncpu]}
        set_value "$PROC_IRQ/$irq/smp_affinity_list" "$cpu" "IRQ $irq ${irq_name[$irq]} -> CPU $cpu"
        ord=$((ord + 1))
    done
fi

# ---- RPS / RFS / XPS ---------------------------------------------------------------------------
rxq=()
txq=()
for d in "$SYS_NET/$iface"/queues/rx-*; do [[ -d $d ]] && rxq+=("$d"); done
for d in "$SYS_NET/$iface"/queues/tx-*; do [[ -d $d ]] && txq+=("$d"); done
nrx=${#rxq[@]}
ntx=${#txq[@]}

if ((nrx > 0)); then
    if ((${#irqs[@]} > 0 && nrx >= ncpu)); then
        rps=0
        why="RSS: $nrx hardware queues cover $ncpu CPUs, RPS off"
        flows=0
    else
        rps=$(mask_of "${cpus[@]}")
        why="RPS over CPUs ${cpus[*]}: fewer hardware queues ($nrx) than worker CPUs or no IRQs"
        flows=$((RFS_FLOWS / nrx))
    fi
    for d in "${rxq[@]}"; do
        set_value "$d/rps_cpus" "$rps" "$why"
        [[ -e $d/rps_flow_cnt ]] && set_value "$d/rps_flow_cnt" "$flows" "RFS entries for this queue"
    done
    if [[ $rps != 0 ]]; then
        cur=$(cat /proc/sys/net/core/rps_sock_flow_entries 2>/dev/null || echo '?')
        if [[ $cur == 0 ]]; then
            echo "note  net.core.rps_sock_flow_entries is 0: RFS stays off until it is set ($RFS_FLOWS, tuning/sysctl.conf)"
        fi
    fi
fi

if ((ntx > 1)); then
    n=$((ncpu > ntx ? ncpu : ntx))
    for ((q = 0; q < ntx; q++)); do
        set_cpus=()
        for ((p = q; p < n; p += ntx)); do set_cpus+=("${cpus[p % ncpu]}"); done
        set_value "${txq[q]}/xps_cpus" "$(mask_of "${set_cpus[@]}")" "XPS: CPUs ${set_cpus[*]} transmit on tx-$q"
    done
elif ((ntx == 1)); then
    echo "note  $iface: one transmit queue, XPS does not apply"
fi

if pgrep -x irqbalance >/dev/null 2>&1 && ((${#irqs[@]} > 0)); then
    echo "warn  irqbalance is running and will move these IRQs again: stop it or ban them" >&2
fi

if ((apply)); then
    echo "# $changes change(s), $failures failure(s)"
    ((failures == 0)) || exit 1
else
    echo "# $changes change(s) would be made"
fi
