#!/usr/bin/env bash
# bench/report.sh TSV OUT: turn the raw results of scripts/bench (scenario, contender, metric,
# value per line) into OUT.md (tables, ratios, targets) and OUT.png (gnuplot chart). The run's
# parameters arrive in BENCH_* environment variables (see the end of scripts/bench).
set -euo pipefail
TSV="$1"
OUT="$2"
MD="$OUT.md"
PNG="$OUT.png"

# stat SCENARIO CONTENDER METRIC -> "median min max" (nothing when there is no sample)
stat() {
    awk -F'\t' -v s="$1" -v c="$2" -v m="$3" '$1 == s && $2 == c && $3 == m {print $4}' "$TSV" |
        sort -g | awk '{v[NR] = $1} END {
            if (NR == 0) exit
            med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%s %s %s\n", med, v[1], v[NR] }'
}
med() { stat "$@" | awk '{print $1}'; }
# cell SCENARIO CONTENDER METRIC [DECIMALS] -> "median (min–max)", or "median" for one sample
cell() {
    stat "$1" "$2" "$3" | awk -v d="${4:-0}" '{
        if ($2 == $3) printf "%.*f", d, $1
        else printf "%.*f (%.*f–%.*f)", d, $1, d, $2, d, $3 }'
}
calc() { awk "BEGIN { printf \"%.2f\", $* }"; }
# ok CONDITION -> met / missed
ok() { if awk "BEGIN { exit !($*) }"; then echo "**met**"; else echo "**missed**"; fi; }

read -r -a CONTENDERS <<<"$BENCH_CONTENDERS"
has() { local c; for c in "${CONTENDERS[@]}"; do [ "$c" = "$1" ] && return 0; done; return 1; }
MIB=1048576

{
    echo "# postern benchmark, $BENCH_DATE"
    echo
    if [ "$BENCH_QUICK" = 1 ]; then
        echo "**Quick run** (\`scripts/bench --quick\`): small sizes, one repetition. Not for comparison."
        echo
    fi
    echo "Produced by \`scripts/bench\` in ${BENCH_RUN_SECS} s (peer builds: ${BENCH_PEER_BUILD_SECS} s; 0 when cached)."
    echo "All contenders run on loopback on this one machine. Each number is the median of"
    echo "$BENCH_REPS repetition(s), with min–max in brackets; contenders are interleaved within each repetition."
    echo
    echo "| machine | |"
    echo "|---|---|"
    echo "| CPU | $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') |"
    echo "| nproc | $(nproc) |"
    echo "| kernel | $(uname -r) |"
    echo "| load average at the end | $(cut -d' ' -f1-3 /proc/loadavg) |"
    echo "| postern | ${BENCH_VERSION:-$(git -C "$(dirname "$0")/.." describe --always --dirty 2>/dev/null || echo unknown)} (release: $(sed -n '/^\[profile.release\]/,/^$/p' "$(dirname "$0")/../Cargo.toml" | grep -E '^(opt-level|lto|codegen-units)' | tr '\n' ',' | sed 's/,$//; s/,/, /g')) |"
    echo "| peers | $BENCH_WEBSOCAT; $BENCH_RATHOLE |"
    echo
    echo "Absolute numbers move with whatever else the machine runs (see the load average above);"
    echo "the interleaving keeps the ratios fair, and min–max shows the spread."
    echo
    echo "Chains (loadgen = \`examples/loadgen.rs\`, sink = \`loadgen sink\`):"
    echo
    echo "- **raw**: loadgen → sink."
    echo "- **relay3**: loadgen → \`loadgen relay\` → \`loadgen relay\` → \`loadgen relay\` → sink: three processes that only copy (two threads per connection, blocking 256 KiB reads and writes, no crypto), like postern's three: the kernel's floor of such a chain on this machine."
    echo "- **postern**: loadgen → \`postern access tcp\` ═TLS+WebSocket═▶ \`postern edge\` ◀═TLS═ \`postern tunnel\` → sink (service token; 2 encrypted hops)."
    echo "- **websocat-ws / -wss**: loadgen → \`websocat -b tcp-l: ws(s)://\` → \`websocat -b ws(s)-l: tcp:\` → sink (wss: 1 encrypted hop, pkcs12, \`-k\`)."
    echo "- **rathole-tcp / -noise / -tls**: loadgen → rathole server (visitor port) ⇐ rathole client → sink (noise, tls: 1 encrypted hop)."
    echo

    # --- bulk -----------------------------------------------------------------------------
    raw_up="$(med bulk raw upload_mbps)"; raw_down="$(med bulk raw download_mbps)"
    p_up="$(med bulk postern upload_mbps)"; p_down="$(med bulk postern download_mbps)"
    echo "## Bulk throughput, $BENCH_BULK per transfer (MB/s, 10^6 bytes)"
    echo
    echo "| contender | upload | download | upload × raw | download × raw | postern ÷ this (up / down) |"
    echo "|---|---:|---:|---:|---:|---:|"
    for c in "${CONTENDERS[@]}"; do
        u="$(med bulk "$c" upload_mbps)"; d="$(med bulk "$c" download_mbps)"
        echo "| $c | $(cell bulk "$c" upload_mbps) | $(cell bulk "$c" download_mbps) | $(calc "$u / $raw_up") | $(calc "$d / $raw_down") | $(calc "$p_up / $u") / $(calc "$p_down / $d") |"
    done
    echo

    # --- CPU ------------------------------------------------------------------------------
    aes_hop="$(calc "2 * 1073741824 / $BENCH_AES128")"
    echo "## CPU seconds per GiB moved (utime+stime from /proc/PID/stat, upload and download together)"
    echo
    echo "Per encrypted hop = all of the chain's processes ÷ its encrypted hops. The AES-GCM limit for one"
    echo "hop is one encryption plus one decryption of the GiB at \`openssl speed\`'s rate: ${aes_hop} s/GiB"
    echo "(AES-128-GCM $(calc "$BENCH_AES128 / 1e6") MB/s; AES-256-GCM $(calc "$BENCH_AES256 / 1e6") MB/s;"
    echo "ChaCha20-Poly1305 $(calc "$BENCH_CHACHA / 1e6") MB/s, 16 KiB blocks, one core)."
    echo
    echo "| contender | per process | total | per encrypted hop | hop ÷ AES-128-GCM limit |"
    echo "|---|---|---:|---:|---:|"
    for c in "${CONTENDERS[@]}"; do
        [ "$c" = raw ] && continue
        procs="$(awk -F'\t' -v c="$c" '$1 == "cpu" && $2 == c && $3 != "total" && $3 != "per_hop" {print $3}' "$TSV" | sort -u)"
        per=""
        for p in $procs; do per="$per${per:+, }$p $(cell cpu "$c" "$p" 2)"; done
        if [ "$c" = postern ]; then
            # Each postern process against its own AES passes: access and tunnel one, the edge two.
            per=""
            for r in access:1 edge:2 tunnel:1; do
                per="$per${per:+, }${r%:*} $(cell cpu "$c" "${r%:*}" 2) ($(calc "$(med cpu "$c" "${r%:*}") / (${r#*:} * $aes_hop / 2)")× its AES)"
            done
        fi
        hop="$(med cpu "$c" per_hop)"
        if [ -n "$hop" ]; then
            echo "| $c | $per | $(cell cpu "$c" total 2) | $(cell cpu "$c" per_hop 2) | $(calc "$hop / $aes_hop") |"
        else
            echo "| $c | $per | $(cell cpu "$c" total 2) | (no encryption) | |"
        fi
    done
    echo

    if [ -n "$(med cpu_dir postern down_total)" ]; then
        echo "### By direction (CPU seconds per GiB, each transfer alone)"
        echo
        echo "| contender | upload: total | per process | download: total | per process |"
        echo "|---|---:|---|---:|---|"
        for c in "${CONTENDERS[@]}"; do
            [ -n "$(med cpu_dir "$c" up_total)" ] || continue
            row="| $c"
            for dir in up down; do
                procs="$(awk -F'\t' -v c="$c" -v d="$dir" '$1 == "cpu_dir" && $2 == c && index($3, d "_") == 1 && $3 != d "_total" {print substr($3, length(d) + 2)}' "$TSV" | sort -u)"
                per=""
                for p in $procs; do per="$per${per:+, }$p $(cell cpu_dir "$c" "${dir}_$p" 2)"; done
                row="$row | $(cell cpu_dir "$c" "${dir}_total" 2) | $per"
            done
            echo "$row |"
        done
        echo
        if has relay3 && [ -n "$(med cpu_dir relay3 down_total)" ]; then
            echo "postern's floor by direction (relay3's that way + four AES passes): up"
            echo "$(calc "$(med cpu_dir relay3 up_total) + 4 * $aes_hop / 2"), down $(calc "$(med cpu_dir relay3 down_total) + 4 * $aes_hop / 2") s/GiB."
            echo
        fi
    fi

    if has relay3; then
        chain_floor="$(calc "$(med cpu relay3 total) + 4 * $aes_hop / 2")"
        echo "**The floor of this machine.** postern's chain is three processes and four AES passes (access"
        echo "and tunnel one each, the edge two). Three processes that only copy (relay3) cost"
        echo "$(med cpu relay3 total) s/GiB here, the kernel's part; four AES passes at \`openssl speed\`'s rate cost"
        echo "$(calc "4 * $aes_hop / 2") s/GiB. So no three-process, two-hop chain can cost less than $chain_floor s/GiB on this machine;"
        echo "postern's $(med cpu postern total) s/GiB is $(calc "$(med cpu postern total) / $chain_floor")× that floor. The issue's target (1.5× the AES"
        echo "limit per hop: $(calc "2 * 1.5 * $aes_hop") s/GiB for the chain) is below it whenever relay3 costs more than"
        echo "$(calc "2 * 1.5 * $aes_hop - 4 * $aes_hop / 2") s/GiB."
        echo
    fi

    # --- latency --------------------------------------------------------------------------
    raw50="$(med pingpong raw p50_us)"; raw99="$(med pingpong raw p99_us)"
    c50="$(med connect raw p50_us)"; c99="$(med connect raw p99_us)"
    echo "## Latency (µs)"
    echo
    echo "Ping-pong: $BENCH_PINGS one-byte round trips on one connection (loadgen's own clock)."
    echo "Connect: $BENCH_CONNECTS fresh connections, each timed from \`connect()\` to the sink's greeting byte"
    echo "(for postern: TCP + TLS + WebSocket upgrade with the service token + OPEN to the origin + origin's"
    echo "connect to the sink; the token is sent with each request, nothing to fetch)."
    echo
    echo "| contender | ping-pong p50 | p99 | added p50 / p99 over raw | connect p50 | p99 | added p50 over raw |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for c in "${CONTENDERS[@]}"; do
        echo "| $c | $(cell pingpong "$c" p50_us 1) | $(cell pingpong "$c" p99_us 1) | $(calc "$(med pingpong "$c" p50_us) - $raw50") / $(calc "$(med pingpong "$c" p99_us) - $raw99") | $(cell connect "$c" p50_us) | $(cell connect "$c" p99_us) | $(calc "$(med connect "$c" p50_us) - $c50") |"
    done
    echo

    # --- ssh ------------------------------------------------------------------------------
    echo "## Real ssh and git: through postern (ProxyCommand \`postern access ssh\`) vs direct to the same private sshd"
    echo
    echo "| measure | direct | postern | postern ÷ direct |"
    echo "|---|---:|---:|---:|"
    echo "| \`ssh host 'head -c $BENCH_SSH_BULK /dev/zero' > /dev/null\`, MB/s | $(cell ssh direct bulk_mbps 1) | $(cell ssh postern bulk_mbps 1) | $(calc "$(med ssh postern bulk_mbps) / $(med ssh direct bulk_mbps)") |"
    echo "| \`ssh host true\`, ms (median of $BENCH_SSH_SETUPS) | $(cell ssh direct setup_ms 1) | $(cell ssh postern setup_ms 1) | $(calc "$(med ssh postern setup_ms) / $(med ssh direct setup_ms)") |"
    echo "| \`git clone\` of a $BENCH_GIT_SIZE repository (random blob), s | $(cell ssh direct git_clone_s 2) | $(cell ssh postern git_clone_s 2) | $(calc "$(med ssh postern git_clone_s) / $(med ssh direct git_clone_s)") |"
    echo

    # --- memory ---------------------------------------------------------------------------
    echo "## Memory"
    echo
    echo "Each on a freshly started edge + tunnel (+ access), so peaks are the scenario's own."
    echo
    echo "| measure | value |"
    echo "|---|---:|"
    for p in access edge tunnel; do
        echo "| slow reader ($BENCH_SLOW): peak RSS (VmHWM) of $p | $(calc "$(med slow "$p" hwm_kb) / 1024") MiB |"
    done
    echo "| slow reader: overall throughput | $(cell slow postern download_mbps 1) MB/s |"
    echo "| origin with 4 HA connections, no stream: RSS | $(calc "$(med idle postern origin_4conn_rss_kb) / 1024") MiB |"
    echo "| edge with 4 tunnel connections, no stream: RSS | $(calc "$(med idle postern edge_base_rss_kb) / 1024") MiB |"
    echo "| $BENCH_IDLE idle streams over one tunnel: edge RSS | $(calc "$(med idle postern edge_rss_kb) / 1024") MiB |"
    echo "| $BENCH_IDLE idle streams: origin RSS | $(calc "$(med idle postern origin_rss_kb) / 1024") MiB |"
    echo "| per idle stream: edge / origin | $(med idle postern edge_per_stream_b) B / $(med idle postern origin_per_stream_b) B |"
    echo "| time to open the $BENCH_IDLE streams (sequentially, through 2 \`access tcp\` listeners) | $(med idle postern open_secs) s |"
    echo "| release binary (\`strip = true\` in Cargo.toml) / after \`strip\` | $(calc "$BENCH_BIN_SIZE / $MIB") MiB / $(calc "$BENCH_STRIPPED_SIZE / $MIB") MiB |"
    echo

    # --- targets of issue 17 ---------------------------------------------------------------
    # Instruction counts and the interactive latency come from the --instructions run of the
    # same invocation (BENCH_INSTR_TSV); without it (a quick run) those rows say so.
    ITSV="${BENCH_INSTR_TSV:-}"
    imed() { [ -s "$ITSV" ] && TSV="$ITSV" med "$@"; }
    # iwithin SCENARIO CONTENDER LIMIT -> "k n": of the n runs, k had a p99 of at most LIMIT µs
    iwithin() {
        awk -F'\t' -v s="$1" -v c="$2" -v l="$3" '$1 == s && $2 == c && $3 == "p99_us" {
            n++; if ($4 <= l) k++ } END { printf "%d %d\n", k, n }' "$ITSV"
    }
    echo "## Targets (issue 17)"
    echo
    echo "| target | measured | |"
    echo "|---|---|---|"
    p_hop="$(med cpu postern per_hop)"
    echo "| CPU per encrypted hop ≤ 1.5× the AES-GCM limit (CPU seconds) | $p_hop vs $aes_hop s/GiB ($(calc "$p_hop / $aes_hop")×) | $(ok "$p_hop <= 1.5 * $aes_hop") |"
    if has relay3; then
        # Per hop the floor is half relay3's copies plus the hop's two AES passes (aes_hop):
        # where that alone is over 1.5× aes_hop, no chain that copies as relay3 does meets it.
        hop_floor="$(calc "$chain_floor / 2")"
        below=""
        if awk "BEGIN { exit !($hop_floor > 1.5 * $aes_hop) }"; then
            below="; 1.5× AES is $(calc "1.5 * $aes_hop") s/GiB per hop, below the floor's $hop_floor per hop ($(calc "$hop_floor / $aes_hop")× AES: the chain's copies in the kernel alone, relay3's, cost $(med cpu relay3 total) s/GiB, its four AES passes $(calc "2 * $aes_hop")), so no chain that copies as relay3 does meets it on this machine"
        fi
        echo "| (the same against this machine's floor: relay3 + four AES passes, see the CPU section$below) | $(med cpu postern total) vs $chain_floor s/GiB ($(calc "$(med cpu postern total) / $chain_floor")×) | |"
    fi
    aes_i="$(imed instr aes128gcm per_gib || true)"
    if [ -n "$aes_i" ]; then
        chain=0
        per=""
        for r in access:1 edge:2 tunnel:1; do
            n="$(imed instr postern "${r%:*}")"
            chain="$(awk -v a="$chain" -v b="$n" 'BEGIN {printf "%.0f", a + b}')"
            per="$per${per:+, }${r%:*} $(calc "$n / (${r#*:} * $aes_i)")×"
        done
        x="$(calc "$chain / (4 * $aes_i)")"
        echo "| the same in instructions (callgrind; the noise-free stand-in), per process against its own AES passes | $per; per hop ${x}× | $(ok "$x <= 1.5") |"
    else
        echo "| the same in instructions (callgrind) | not run (quick run) | — |"
    fi
    for peer in rathole-tls websocat-wss; do
        has "$peer" || { echo "| bulk ≥ 1.2× $peer | $peer did not run | — |"; continue; }
        u="$(calc "$p_up / $(med bulk "$peer" upload_mbps)")"; d="$(calc "$p_down / $(med bulk "$peer" download_mbps)")"
        echo "| bulk through the whole chain ≥ 1.2× $peer (up / down) | ${u}× / ${d}× | $(ok "$u >= 1.2 && $d >= 1.2") |"
        # Where the cores are the limit, a rate follows CPU per GiB: name what 1.2× would need.
        for dir in up down; do
            x="$u"; [ "$dir" = down ] && x="$d"
            pc="$(med cpu_dir "$peer" "${dir}_total")"
            if awk "BEGIN { exit !($x < 1.2) }" && [ -n "$pc" ] && has relay3; then
                f="$(calc "$(med cpu_dir relay3 "${dir}_total") + 4 * $aes_hop / 2")"
                need="$(calc "$pc / 1.2")"
                echo "| ($dir against $peer, in CPU: $peer spends $(calc "$pc") s/GiB, postern $(calc "$(med cpu_dir postern "${dir}_total")"); 1.2× its rate on the same cores needs postern at about $need, against postern's floor that way of $f) | $(calc "$need / $f")× the floor | |"
            fi
        done
    done
    idle99="$(imed latency idle p99_us || true)"
    # No verdict on a noisy idle (the instructions report's rule): repetitions whose idle p99
    # differ over 3×, or an idle p99 over 3× the idle p50 (a quiet machine's is within 2×).
    idle_verdict() {
        local lo hi p50
        read -r _ lo hi <<<"$(TSV="$ITSV" stat latency idle p99_us)"
        p50="$(imed latency idle p50_us)"
        if awk "BEGIN { exit !($hi > 3 * $lo) }"; then
            echo "inconclusive (idle p99 moved $(calc "$hi / $lo")× between repetitions)"
        elif awk "BEGIN { exit !($idle99 > 3 * $p50) }"; then
            echo "inconclusive (idle p99 is $(calc "$idle99 / $p50")× idle p50: the machine's noise)"
        else
            ok "$1"
        fi
    }
    if [ -n "$idle99" ]; then
        for dir in down up; do
            b99="$(imed latency "bulk_$dir" p99_us)"
            # What the machine does to three plain relays under their own bulk, when run.
            floor=""
            if r99="$(imed latency_relay3 "bulk_$dir" p99_us)" && [ -n "$r99" ]; then
                floor="; relay3 under its own bulk: $(calc "$r99 / $(imed latency_relay3 idle p99_us)")× its idle"
            fi
            # The same pings with the bulk through a second postern chain: no process shared.
            a99=""
            if a99="$(imed latency "apart_$dir" p99_us)" && [ -n "$a99" ]; then
                floor="$floor; bulk through a second chain: $(calc "$a99 / $idle99")×"
            fi
            echo "| interactive: 1-byte ping-pong p99 beside bulk $dir on the same tunnel connection ≤ 2× idle p99 | $b99 vs $idle99 µs ($(calc "$b99 / $idle99")×$floor) | $(idle_verdict "$b99 <= 2 * $idle99") |"
            awk "BEGIN { exit !($b99 > 2 * $idle99) }" || continue
            # A miss: what the processes the two streams share add to the same pings through
            # a chain that carries nothing else.
            if [ -n "${a99:-}" ]; then
                echo "| (beside bulk $dir, apart: the same pings while the bulk runs through a second postern chain, no process shared; the shared processes add $(calc "$b99 / $a99")× to it) | $(calc "$a99 / $idle99")× idle | |"
            fi
            # And the floor under that load: pings through three relays that do no work, a
            # thread per way, then one loop per process (postern's shape), counted in runs
            # within 2× of their own idle p99, since a p99 here moves 3× from run to run.
            ft="$(imed floor_threads idle p99_us || true)"
            fl="$(imed floor_loop idle p99_us || true)"
            if [ -n "$ft" ] && [ -n "$fl" ] && awk "BEGIN { exit !($ft > 0 && $fl > 0) }"; then
                read -r fk fn <<<"$(iwithin floor_threads "bulk_$dir" "$(calc "2 * $ft")")"
                read -r lk ln <<<"$(iwithin floor_loop "bulk_$dir" "$(calc "2 * $fl")")"
                if [ "$fn" -eq 0 ] || [ "$ln" -eq 0 ]; then
                    continue
                elif [ $((4 * fk)) -le "$fn" ]; then
                    why="so no chain of three copying processes meets the target on this machine under this load"
                elif [ $((4 * lk)) -le "$ln" ]; then
                    why="one loop per process seldom meets it even with no work to do, in fewer runs than a thread per way: the miss starts with the shape of a loop that carries both ways, which every postern process has; postern's work and the processes the streams share add the rest"
                else
                    why="the relays mostly meet it, so the miss is postern's"
                fi
                echo "| (beside bulk $dir, the floor under that load: pings through three \`loadgen relay\`s that do no work, beside the bulk through the second chain, within 2× of their idle p99 in $fk of $fn runs ($(calc "$(imed floor_threads "bulk_$dir" p99_us) / $ft")× at the median); as one event loop each, in $lk of $ln ($(calc "$(imed floor_loop "bulk_$dir" p99_us) / $fl")×); $why) | $fk of $fn runs | |"
            fi
        done
    else
        echo "| interactive: ping-pong p99 beside bulk ≤ 2× idle | not run (quick run) | — |"
    fi
    if [ -n "$(med workers w2 upload_mbps)" ]; then
        wu="$(calc "$(med workers w2 upload_mbps) / $(med workers w1 upload_mbps)")"
        wd="$(calc "$(med workers w2 download_mbps) / $(med workers w1 download_mbps)")"
        echo "| edge on every core: 8 parallel transfers, \`--workers 2\` vs \`--workers 1\` (up / down; see \"Edge on every core\") | ${wu}× / ${wd}×, edge $(med workers w2 edge_cpu_s_per_gib) vs $(med workers w1 edge_cpu_s_per_gib) CPU-s/GiB, machine $(med workers w2 machine_busy_pct) % vs $(med workers w1 machine_busy_pct) % busy | $(ok "$wu >= 1.0 && $wd >= 1.0") (no loss; a gain needs a spare core) |"
    else
        echo "| edge on every core: 8 parallel transfers, \`--workers 2\` vs \`--workers 1\` | not run | — |"
    fi
    a99="$(calc "$(med pingpong postern p99_us) - $(med pingpong raw p99_us)")"
    echo "| kept: added 1-byte RTT over raw ≤ 300 µs p99 | $a99 µs | $(ok "$a99 <= 300") |"
    worst="$(for p in access edge tunnel; do med slow "$p" hwm_kb; done | sort -g | tail -n 1)"
    echo "| kept: slow reader, every postern process < 32 MB RSS | largest $(calc "$worst * 1024 / 1e6") MB | $(ok "$worst * 1024 < 32e6") |"
    both="$(calc "($(med idle postern edge_rss_kb) + $(med idle postern origin_rss_kb)) * 1024 / 1e6")"
    echo "| kept: $BENCH_IDLE idle streams, edge + origin ≤ 200 MB | $both MB | $(ok "$both <= 200")$([ "$BENCH_IDLE" -lt 10000 ] && echo " (only $BENCH_IDLE streams)") |"
    sm="$(calc "$BENCH_STRIPPED_SIZE / 1e6")"
    echo "| kept: stripped binary ≤ 5 MB | $sm MB ($(calc "$BENCH_STRIPPED_SIZE / $MIB") MiB) | $(ok "$sm <= 5") |"
    echo

    # --- targets --------------------------------------------------------------------------
    if [ -n "$(med workers w1 upload_mbps)" ]; then
        echo "## Edge on every core: 8 parallel transfers (\`postern edge --workers N\`)"
        echo
        echo "One chain per row (edge, tunnel with 4 connections, \`access tcp\`); 8 loadgen transfers at once, $BENCH_BULK in all each way. Edge CPU: its utime+stime per GiB moved (both ways). Machine busy: all cores, every process, during the transfers."
        echo
        echo "| edge | upload MB/s | download MB/s | edge CPU-s/GiB | machine busy % |"
        echo "|---|---|---|---|---|"
        for w in 1 2; do
            echo "| \`--workers $w\` | $(cell workers "w$w" upload_mbps) | $(cell workers "w$w" download_mbps) | $(cell workers "w$w" edge_cpu_s_per_gib 3) | $(cell workers "w$w" machine_busy_pct 1) |"
        done
        echo
    fi
    if [ -n "$(med longpath postern upload_mbps)" ]; then
        echo "## One stream over a long path"
        echo
        echo "The tunnel reaches the edge through a relay that delays each way (\`loadgen relay --rtt\`; the kernel here has no netem): one transfer of $BENCH_LONG at a time. Raw TCP goes through the same relay, which queues without a limit: that row is what the relay itself carries, the ceiling of this setup, not what a TCP window would allow. A stream window that never grew from its initial 256 KiB would cap postern at $BENCH_LONG_CAP MB/s."
        echo
        echo "| contender | upload MB/s | download MB/s |"
        echo "|---|---|---|"
        for c in raw postern; do
            echo "| $c | $(cell longpath "$c" upload_mbps) | $(cell longpath "$c" download_mbps) |"
        done
        echo
    fi
    echo "## Earlier targets (issue 5)"
    echo
    echo "| target | measured | |"
    echo "|---|---|---|"
    for peer in rathole-noise rathole-tls websocat-wss; do
        has "$peer" || { echo "| bulk ≥ 1.5× $peer | $peer did not run | — |"; continue; }
        u="$(calc "$p_up / $(med bulk "$peer" upload_mbps)")"; d="$(calc "$p_down / $(med bulk "$peer" download_mbps)")"
        echo "| bulk through postern ≥ 1.5× $peer (up and down) | ${u}× / ${d}× | $(ok "$u >= 1.5 && $d >= 1.5") |"
    done
    p_hop="$(med cpu postern per_hop)"
    for peer in rathole-noise rathole-tls; do
        has "$peer" || continue
        r="$(med cpu "$peer" per_hop)"
        echo "| CPU per encrypted hop ≤ $peer's | $p_hop vs $r s/GiB | $(ok "$p_hop <= $r") |"
    done
    echo "| CPU per encrypted hop ≤ 1.5× AES-GCM limit | $p_hop vs $aes_hop s/GiB ($(calc "$p_hop / $aes_hop")×) | $(ok "$p_hop <= 1.5 * $aes_hop") |"
    a50="$(calc "$(med pingpong postern p50_us) - $raw50")"; a99="$(calc "$(med pingpong postern p99_us) - $raw99")"
    echo "| added 1-byte RTT over raw ≤ 100 µs p50 | $a50 µs | $(ok "$a50 <= 100") |"
    echo "| added 1-byte RTT over raw ≤ 300 µs p99 | $a99 µs | $(ok "$a99 <= 300") |"
    r="$(calc "$(med ssh postern bulk_mbps) / $(med ssh direct bulk_mbps)")"
    echo "| ssh bulk through postern ≥ 90% of direct | $(calc "$r * 100")% | $(ok "$r >= 0.9") |"
    sd="$(med ssh direct machine_cpu_s_per_gib)" bd="$(med ssh direct machine_busy_pct)"
    if [ -n "$sd" ] && [ -n "$bd" ] && awk "BEGIN { exit !($bd > 0) }" && [ -n "${chain_floor:-}" ]; then
        # MB/s is busy cores ÷ CPU-s per byte (all processes). Through postern ssh and sshd pay
        # what they pay direct, plus the chain's share, which is at least its floor; the cores
        # can be at most all busy. So the ratio is at most (100 / direct's busy %) × sd ÷
        # (sd + floor), and 90 % leaves the chain sd × (100 / (0.9 × busy %) − 1).
        # ssh's bulk is a download: relay3's copies that way, where measured, plus four AES passes.
        ssh_floor="$chain_floor"
        [ -z "$(med cpu_dir relay3 down_total)" ] ||
            ssh_floor="$(calc "$(med cpu_dir relay3 down_total) + 4 * $aes_hop / 2")"
        sp="$(med ssh postern machine_cpu_s_per_gib)"
        most="$(calc "100 * (100 / $bd) * $sd / ($sd + $ssh_floor)")"
        echo "| (the machine's share: direct, ssh and sshd kept ${bd}% of its cores busy at $sd CPU-s/GiB; through postern $(med ssh postern machine_busy_pct)% at $sp, the chain adding $(calc "$sp - $sd"). 90% of direct would leave the chain $(calc "$sd * (100 / (0.9 * $bd) - 1)") s/GiB with every core busy; its floor that way is $ssh_floor (relay3 down + four AES passes), so this machine allows at most ${most}%) | ${most}% at most | |"
    fi
    r="$(calc "$(med ssh postern setup_ms) / $(med ssh direct setup_ms)")"
    echo "| ssh session setup ≤ 1.2× direct | ${r}× | $(ok "$r <= 1.2") |"
    worst="$(for p in access edge tunnel; do med slow "$p" hwm_kb; done | sort -g | tail -n 1)"
    echo "| slow reader: every postern process < 32 MiB RSS | largest $(calc "$worst / 1024") MiB | $(ok "$worst < 32768") |"
    both="$(calc "($(med idle postern edge_rss_kb) + $(med idle postern origin_rss_kb)) / 1024")"
    echo "| $BENCH_IDLE idle streams: edge + origin ≤ 200 MiB | $both MiB | $(ok "$both <= 200")$([ "$BENCH_IDLE" -lt 10000 ] && echo " (only $BENCH_IDLE streams)") |"
    o="$(calc "$(med idle postern origin_4conn_rss_kb) / 1024")"
    echo "| idle origin (4 connections) ≤ 8 MiB | $o MiB | $(ok "$o <= 8") |"
    s="$(calc "$BENCH_STRIPPED_SIZE / $MIB")"
    echo "| stripped binary ≤ 5 MiB | $s MiB | $(ok "$s <= 5") |"
    echo

    # --- profile --------------------------------------------------------------------------
    if [ -s "$BENCH_PROFILE" ]; then
        echo "## Profile: postern during a $BENCH_BULK download"
        echo
        echo "\`perf record -F 999 -p ACCESS,EDGE,TUNNEL\` on a build with symbols (\`CARGO_PROFILE_RELEASE_STRIP=false\`,"
        echo "otherwise the same release profile), \`perf report --no-children\`:"
        echo
        echo '```'
        sed 's/[[:space:]]*$//' "$BENCH_PROFILE"
        echo '```'
        echo
    fi

    echo "## Notes"
    echo
    echo "- rathole 0.5 is installed with \`cargo install rathole --version '^0.5'\` **without** \`--locked\`: its"
    echo "  Cargo.lock pins a \`time\` crate that no longer compiles on current rustc, so cargo resolves fresh"
    echo "  semver-compatible versions. websocat is installed \`--locked\` with \`--features ssl\`."
    echo "- rathole's noise transport uses ChaCha20-Poly1305 (Noise_NK_25519_ChaChaPoly_BLAKE2s), its tls transport"
    echo "  native-tls (OpenSSL); websocat wss uses native-tls too; postern uses rustls with ring."
    echo "- The slow reader reads at ${BENCH_SLOW}; postern's flow control must keep the backlog"
    echo "  bounded in every process while it waits."
    echo "- No sleep is a measurement: readiness is polled; times come from loadgen's \`Instant\` or bash's"
    echo "  \`EPOCHREALTIME\`."
    echo "- Raw data: \`$(basename "$OUT").tsv\` next to this file."
} >"$MD"

# --- chart -------------------------------------------------------------------------------
DAT="$(mktemp)"
for c in "${CONTENDERS[@]}"; do
    printf '%s %s %s %s %s\n' "$c" "$(med bulk "$c" upload_mbps)" "$(med bulk "$c" download_mbps)" \
        "$(med pingpong "$c" p50_us)" "$(med pingpong "$c" p99_us)" >>"$DAT"
done
if command -v gnuplot >/dev/null 2>&1; then
    gnuplot <<GP
set terminal pngcairo size 1100,800 font ",10"
set output "$PNG"
set multiplot layout 2,1 title "postern benchmark $BENCH_DATE ($(nproc) cores, loopback)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set grid ytics
set xtics noenhanced
set key top right
set ylabel "MB/s"
set title "bulk throughput ($BENCH_BULK, median)"
plot "$DAT" using 2:xtic(1) title "upload", "" using 3 title "download"
set ylabel "µs"
set title "1-byte ping-pong round trip (median of runs)"
plot "$DAT" using 4:xtic(1) title "p50", "" using 5 title "p99"
unset multiplot
GP
fi
rm -f "$DAT"
