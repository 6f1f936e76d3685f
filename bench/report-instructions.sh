#!/usr/bin/env bash
# bench/report-instructions.sh TSV: the Markdown report of `scripts/bench --instructions` on
# stdout, from its results (scenario, contender, metric, value per line) and BENCH_* variables.
set -euo pipefail
TSV="$1"

# stat SCENARIO CONTENDER METRIC -> "median min max" (nothing when there is no sample)
stat() {
    awk -F'\t' -v s="$1" -v c="$2" -v m="$3" '$1 == s && $2 == c && $3 == m {print $4}' "$TSV" |
        sort -g | awk '{v[NR] = $1} END {
            if (NR == 0) exit
            med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%s %s %s\n", med, v[1], v[NR] }'
}
med() { stat "$@" | awk '{print $1}'; }
cell() {
    stat "$1" "$2" "$3" | awk -v d="${4:-0}" '{
        if ($2 == $3) printf "%.*f", d, $1
        else printf "%.*f (%.*f–%.*f)", d, $1, d, $2, d, $3 }'
}
calc() { awk "BEGIN { printf \"%.2f\", $* }"; }
# within SCENARIO CONTENDER LIMIT -> "k of n": how many runs' p99 was at most LIMIT µs
within() {
    awk -F'\t' -v s="$1" -v c="$2" -v l="$3" '$1 == s && $2 == c && $3 == "p99_us" {
        n++; if ($4 <= l) k++ } END { printf "%d of %d", k, n }' "$TSV"
}
ok() { if awk "BEGIN { exit !($*) }"; then echo "**met**"; else echo "**missed**"; fi; }
gi() { awk -v n="$1" 'BEGIN { printf "%.2f G", n / 1e9 }'; } # instructions, in 10^9

aes="$(med instr aes128gcm per_gib)"
echo "# postern instruction counts and interactive latency, $BENCH_DATE"
echo
echo "Produced by \`scripts/bench --instructions\` in ${BENCH_RUN_SECS} s."
echo
echo "| machine | |"
echo "|---|---|"
echo "| CPU | $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') |"
echo "| nproc | $(nproc) |"
echo "| kernel | $(uname -r) |"
echo "| load average at the end | $(cut -d' ' -f1-3 /proc/loadavg) |"
echo "| postern | ${BENCH_VERSION:-$(git -C "$(dirname "$0")/.." describe --always --dirty 2>/dev/null || echo unknown)} (release) |"
echo "| valgrind | $(valgrind --version) |"
echo
echo "The instruction counts are the robust figures: they do not move with whatever else the"
echo "machine runs. The seconds and microseconds below do (see the load average above; on a shared"
echo "2-core machine other people's builds may have run throughout)."
echo
echo "## Instructions per GiB moved (callgrind; upload and download together)"
echo
echo "Counted by valgrind's callgrind in each process, from just before the first transfer to"
echo "just after the last ($BENCH_INSTR_SIZE up, then $BENCH_INSTR_SIZE down, through one \`access tcp\`"
echo "and a tunnel with one connection), scaled to one GiB. These counts do not move with the"
echo "machine's load; wall-clock figures do. They count instructions, not cycles: an AES-NI"
echo "instruction is one, like an add, so the ratios say how much work besides the cipher remains."
echo
echo "AES-128-GCM reference: \`openssl speed -evp aes-128-gcm -bytes 16384\` under callgrind, the"
echo "difference between a 1 s and a 3 s run (start-up left out): **$(gi "$aes") instructions per"
echo "GiB** for one pass (encryption or decryption). Natively here: ${BENCH_AES_MBPS} MB/s. postern uses"
echo "ring's AES-GCM through rustls, whose instruction count may differ from OpenSSL's."
echo
echo "Per GiB moved through the chain, the access client and the tunnel each run one AES pass"
echo "(decrypt or encrypt on their one TLS connection), the edge two (decrypt one side, encrypt"
echo "the other)."
echo
echo "| process | instructions per GiB | AES passes | AES-GCM floor | ÷ floor | in memcpy | in malloc/free |"
echo "|---|---:|---:|---:|---:|---:|---:|"
total=0
for p in access edge tunnel; do
    n="$(med instr postern "$p")"
    passes=1; [ "$p" = edge ] && passes=2
    total="$(awk -v a="$total" -v b="$n" 'BEGIN {printf "%.0f", a + b}')"
    echo "| $p | $(gi "$n") | $passes | $(gi "$((passes * aes))") | $(calc "$n / ($passes * $aes)") | $(med instr_share "$p" memcpy) % | $(med instr_share "$p" malloc) % |"
done
echo "| **chain** | $(gi "$total") | 4 | $(gi "$((4 * aes))") | $(calc "$total / (4 * $aes)") | | |"
echo
echo "Per encrypted hop (chain ÷ 2): $(gi "$(calc "$total / 2")"), $(calc "$total / (4 * $aes)")× its AES-GCM floor"
echo "(issue 17's target: ≤ 1.5×, in CPU time; instructions are the noise-free stand-in)."
echo
echo "## Where a native transfer's CPU time goes: user vs kernel"
echo
echo "256M up and 256M down natively through the same kind of chain, CPU seconds per GiB moved from"
echo "/proc/PID/stat (utime, stime). callgrind counts only user-mode instructions; the kernel's share"
echo "(syscalls, loopback TCP copies, wake-ups) is the part the counts above do not see. Seconds move"
echo "with the machine's load; the split much less."
echo
echo "| process | user s/GiB | system s/GiB | system share | syscalls per GiB | context switches per GiB |"
echo "|---|---:|---:|---:|---:|---:|"
for p in access edge tunnel; do
    u="$(med cpu_split "$p" user_s_per_gib)"; k="$(med cpu_split "$p" sys_s_per_gib)"
    echo "| $p | $u | $k | $(awk -v u="$u" -v k="$k" 'BEGIN {printf "%.0f %%", (u + k > 0) ? 100 * k / (u + k) : 0}') | $(med cpu_split "$p" syscalls_per_gib) | $(med cpu_split "$p" cswitch_per_gib) |"
done
echo
echo "Syscalls and context switches: perf's software events over the same transfer (counts, not"
echo "time; how many bytes each read finds still depends a little on timing)."
echo
echo "## Interactive under load: 1-byte ping-pong beside a bulk stream on the same tunnel connection"
echo
echo "$BENCH_PINGS one-byte round trips (loadgen's clock) through \`access tcp\` → edge → a tunnel"
echo "with **one** connection → sink's echo, ${BENCH_INSTR_REPS:-3} repetition(s) (median, min–max). *Beside bulk*: a"
echo "second connection through the same \`access tcp\` moves data as fast as it can the whole"
echo "time (down: sink → loadgen, up: loadgen → sink), so its DATA frames share the tunnel"
echo "connection with the ping-pong's. Wall-clock figures: on this 2-core machine the bulk"
echo "stream keeps both cores busy, so part of any increase is waiting for a core, not for a queue."
if awk -F'\t' '$1 == "latency" && $2 ~ /^paced_/ {f = 1} END {exit !f}' "$TSV"; then
    echo "*Beside paced bulk*: the same with the bulk stream paced to ${BENCH_PACE_MBPS:-100} MB/s in 16 KiB"
    if awk -F'\t' '$1 == "latency_relay3" {f = 1} END {exit !f}' "$TSV"; then
        echo "writes, which leaves the cores mostly idle: what the ping waits for there is mostly postern's"
        echo "queues (the last column shows what the machine alone adds to three relays under the same load)."
    else
        echo "writes, which leaves the cores mostly idle: what the ping waits for there is mostly postern's queues."
    fi
fi
echo
# Repetitions whose idle p99 differ more than 3x say the machine moved, not postern: no verdict.
# So does an idle p99 over 3x the idle p50 (a quiet machine's is within 2x): the tail is the
# machine's (another tenant, a hypervisor's steal), and a ratio to it says nothing. The main
# report's target rows use the same rule (report.sh, `idle_verdict`).
verdict() { # verdict SCENARIO CONDITION
    local tail
    tail="$(calc "$(med "$1" idle p99_us) / $(med "$1" idle p50_us)")"
    if stat "$1" idle p99_us | awk '{exit !($3 > 3 * $2)}'; then
        echo "inconclusive (idle p99 moved $(stat "$1" idle p99_us | awk '{printf "%.0f", $3 / $2}')× between repetitions)"
    elif awk -v t="$tail" 'BEGIN {exit !(t > 3)}'; then
        echo "inconclusive (idle p99 is ${tail}× idle p50: the machine's noise)"
    else
        ok "$2"
    fi
}
ROWS=("bulk_down:beside bulk down" "bulk_up:beside bulk up" "paced_down:beside paced bulk down" "paced_up:beside paced bulk up")
has_rows() { awk -F'\t' -v n="$1" -v s="$2" '$1 == n && $2 == s {f = 1} END {exit !f}' "$TSV"; }
# The floor's p99 ÷ its idle p99 for the same kind of load, when relay3 ran.
floor_ratio() {
    has_rows latency_relay3 "$1" || return 0
    calc "$(med latency_relay3 "$1" p99_us) / $(med latency_relay3 idle p99_us)"
}
idle99="$(med latency idle p99_us)"
echo "| | p50 µs | p99 µs | p99 ÷ idle p99 | bulk MB/s meanwhile | bulk KiB per round trip p50 / p99 | target p99 ≤ 2× idle | relay3 under the same: p99 ÷ its idle |"
echo "|---|---:|---:|---:|---:|---:|---|---:|"
echo "| idle | $(cell latency idle p50_us 1) | $(cell latency idle p99_us 1) | 1.00 | | | | |"
for row in "${ROWS[@]}"; do
    sc="${row%%:*}"
    # A report from before the paced runs has no rows for them.
    has_rows latency "$sc" || continue
    p99="$(med latency "$sc" p99_us)"
    echo "| ${row#*:} | $(cell latency "$sc" p50_us 1) | $(cell latency "$sc" p99_us 1) | $(calc "$p99 / $idle99") | $(cell latency "$sc" bulk_mbps 0) | $(med latency "$sc" ahead_p50_kib) / $(med latency "$sc" ahead_p99_kib) | $(verdict latency "$p99 <= 2 * $idle99") | $(floor_ratio "$sc") |"
done
echo
if has_rows latency_relay3 idle; then
    r_idle99="$(med latency_relay3 idle p99_us)"
    echo "*relay3 under the same*: the same pings and bulk runs through three plain relays"
    echo "(\`loadgen relay\`: no crypto, a thread per direction of each connection), interleaved with"
    echo "postern's runs. Its streams share no connection, no buffer and no loop, so what bulk does"
    echo "to its pings is this machine's cores, kernel and scheduler alone, under its own bulk: 1 GB/s"
    echo "of plain copies, a lighter load than postern's TLS bulk (the floor under postern's load is"
    echo "the table after *Apart*)."
    echo
    echo "| relay3 | p50 µs | p99 µs | p99 ÷ idle p99 | bulk MB/s meanwhile |"
    echo "|---|---:|---:|---:|---:|"
    echo "| idle | $(cell latency_relay3 idle p50_us 1) | $(cell latency_relay3 idle p99_us 1) | 1.00 | |"
    for row in "${ROWS[@]}"; do
        sc="${row%%:*}"
        has_rows latency_relay3 "$sc" || continue
        echo "| ${row#*:} | $(cell latency_relay3 "$sc" p50_us 1) | $(cell latency_relay3 "$sc" p99_us 1) | $(calc "$(med latency_relay3 "$sc" p99_us) / $r_idle99") | $(cell latency_relay3 "$sc" bulk_mbps 0) |"
    done
    echo
fi
if has_rows latency apart_down; then
    echo "*Apart*: the same pings through the same chain, while the bulk stream runs through a second"
    echo "postern chain (its own \`access tcp\`, edge and tunnel) on the same machine: the two streams"
    echo "share no postern process and no connection, only the cores. What the pings wait for here is"
    echo "the machine's share of the rows above; what the rows above add to it is the turns of the"
    echo "processes that carry both streams (postern's own share). Three runs per repetition."
    echo
    echo "| apart | p50 µs | p99 µs | p99 ÷ idle p99 | bulk MB/s meanwhile | the same on one chain: p99 ÷ idle |"
    echo "|---|---:|---:|---:|---:|---:|"
    for dir in down up; do
        has_rows latency "apart_$dir" || continue
        echo "| beside bulk $dir | $(cell latency "apart_$dir" p50_us 1) | $(cell latency "apart_$dir" p99_us 1) | $(calc "$(med latency "apart_$dir" p99_us) / $idle99") | $(cell latency "apart_$dir" bulk_mbps 0) | $(calc "$(med latency "bulk_$dir" p99_us) / $idle99") |"
    done
    echo
fi
if has_rows floor_threads idle; then
    echo "*The floor under postern's load*: the same pings through three relays that do no work and"
    echo "share nothing with the bulk, while the bulk runs through the second postern chain as in"
    echo "*Apart* (so the cores also carry that chain and these relays). \`relay\` copies each way of"
    echo "each connection in a thread of its own (blocking reads and writes); \`relay --loop\` in one"
    echo "mio event loop per process, both ways of every connection, as a postern process carries"
    echo "them. Three runs of each per repetition, as *Apart*; each ratio is to the same chain's own"
    echo "idle p99, and *runs ≤ 2×* counts the runs whose p99 was within twice that (a p99 beside"
    echo "unpaced bulk moves 3× from run to run, so the count says more than the median). Where"
    echo "\`relay\` stays within 2× in few runs, no chain of three copying processes meets the target"
    echo "on this machine under this load; where \`relay\` does and \`relay --loop\` does not, the"
    echo "miss starts with the shape of a loop that carries both ways, which every postern process has."
    echo
    echo "| pings through | idle p99 µs | beside bulk down: p99 µs | ÷ idle | runs ≤ 2× | beside bulk up: p99 µs | ÷ idle | runs ≤ 2× | bulk MB/s down / up |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    # floor_row LABEL SCENARIO IDLE_SCENARIO DOWN UP
    floor_row() {
        local i99
        i99="$(med "$2" "$3" p99_us)"
        [ -n "$i99" ] && awk "BEGIN { exit !($i99 > 0) }" || return 0
        echo "| $1 | $(cell "$2" "$3" p99_us 1) | $(cell "$2" "$4" p99_us 1) | $(calc "$(med "$2" "$4" p99_us) / $i99") | $(within "$2" "$4" "$(calc "2 * $i99")") | $(cell "$2" "$5" p99_us 1) | $(calc "$(med "$2" "$5" p99_us) / $i99") | $(within "$2" "$5" "$(calc "2 * $i99")") | $(med "$2" "$4" bulk_mbps) / $(med "$2" "$5" bulk_mbps) |"
    }
    floor_row "three \`relay\`s (a thread per way)" floor_threads idle bulk_down bulk_up
    floor_row "three \`relay --loop\`s (one event loop each)" floor_loop idle bulk_down bulk_up
    if has_rows latency apart_down; then
        floor_row "postern, apart (its chain carries only the pings)" latency idle apart_down apart_up
    fi
    floor_row "postern, the same tunnel connection (the target's case)" latency idle bulk_down bulk_up
    echo
    # The noise rule of the rows above, for the relays' own idle p99.
    for fl in floor_threads floor_loop; do
        if stat "$fl" idle p99_us | awk '{exit !($3 > 3 * $2)}'; then
            echo "The idle p99 through \`$fl\`'s relays moved over 3× between runs: its row is the machine's noise."
            echo
        fi
    done
fi
if has_rows latency idle && [ -n "$(med latency idle wait_pct_edge)" ]; then
    echo "*Waiting for a core*: how long each postern process of the chain above waited on the run"
    echo "queue during each run (the kernel's \`/proc/PID/task/*/schedstat\`, summed over its"
    echo "threads): as a share of the time it ran, and per time it was put on a core. A ping"
    echo "reaches each process about four times per round trip; where it finds the process waiting"
    echo "for a core, it waits too, whatever postern's queues (its own wait inside the edge and the"
    echo "tunnel is the next table)."
    echo
    echo "| | access: wait ÷ run | edge | tunnel | access: µs per time on a core | edge | tunnel |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for row in "idle:idle" "${ROWS[@]}"; do
        sc="${row%%:*}"
        has_rows latency "$sc" || continue
        echo "| ${row#*:} | $(med latency "$sc" wait_pct_access) % | $(med latency "$sc" wait_pct_edge) % | $(med latency "$sc" wait_pct_tunnel) % | $(med latency "$sc" wait_us_access) | $(med latency "$sc" wait_us_edge) | $(med latency "$sc" wait_us_tunnel) |"
    done
    echo
fi
# hold SCENARIO WHICH: a hold quantile's bucket bound in µs (1e9: past the last bound)
hold() { med latency "$1" "hold_$2" | awk '{ if ($1 >= 1e9) print "> 100000"; else print $1 }'; }
if has_rows latency idle && [ -n "$(med latency idle hold_n_edge)" ]; then
    echo "*Held in postern's own queues*: how long a few bytes (a ping, a pong) stayed inside the edge"
    echo "and the tunnel, from their frame parsed to their socket write, or from their socket read to"
    echo "their frame built (each process's \`/metrics\` histogram \`interactive_hold_seconds\`,"
    echo "scraped before and after each run). Bucket bounds, so \"≤ 10\" means under 10 µs; about two"
    echo "holds per round trip in each (more where pieces of bulk of a few KiB count too). Compare the"
    echo "round trip above: what is not here is between the processes (sockets, and the waits for a"
    echo "core in the table above)."
    echo
    echo "| | edge: p50 µs ≤ | p99 ≤ | holds | tunnel: p50 µs ≤ | p99 ≤ | holds |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for row in "idle:idle" "${ROWS[@]}"; do
        sc="${row%%:*}"
        has_rows latency "$sc" || continue
        echo "| ${row#*:} | $(hold "$sc" p50_us_edge) | $(hold "$sc" p99_us_edge) | $(med latency "$sc" hold_n_edge) | $(hold "$sc" p50_us_tunnel) | $(hold "$sc" p99_us_tunnel) | $(med latency "$sc" hold_n_tunnel) |"
    done
    echo
fi
echo "*Bulk KiB per round trip*: how much the bulk stream moved while one interactive byte went"
echo "there and back (loadgen counts its bulk bytes in 64 KiB reads): the queue of bulk data the"
echo "interactive byte waited behind, plus whatever moved while a process of the interactive path"
echo "alone (loadgen's pinger, the sink's echo thread) waited for a core. The bulk stream's mux window"
echo "(\`INITIAL_STREAM_WINDOW\`, 256 KiB) bounds what of it can be in flight on the tunnel connection;"
echo "beyond that it is the machine's load. For *up* it also counts what the local socket buffers took."
