//! The console's chart: open sessions and bytes moved per minute over the last hour, kept in
//! a fixed ring of [`CONSOLE_CHART_MINUTES`] entries and drawn as inline SVG on the server.
//!
//! The edge samples once a second ([`Chart::sample`]): the number of open sessions (the
//! minute keeps its peak) and the bytes live sessions have moved so far; with the bytes of the
//! sessions that ended ([`Chart::ended`]), the total only grows, and each minute gets what it
//! grew by. Time is passed in (Unix seconds).

use crate::limits::CONSOLE_CHART_MINUTES;

#[derive(Clone, Copy, Default)]
struct Minute {
    /// Unix minute this entry is for (an entry of another minute counts as empty).
    at: u64,
    /// Most sessions open at once in the minute.
    sessions: u32,
    /// Bytes moved (both ways) in the minute.
    bytes: u64,
}

/// See the module doc.
pub(in crate::edge::core) struct Chart {
    ring: [Minute; CONSOLE_CHART_MINUTES],
    /// Bytes of the sessions that ended so far.
    ended: u64,
    /// The total at the last sample.
    last_total: Option<u64>,
}

impl Default for Chart {
    fn default() -> Chart {
        Chart {
            ring: [Minute::default(); CONSOLE_CHART_MINUTES],
            ended: 0,
            last_total: None,
        }
    }
}

impl Chart {
    /// A session ended having moved `bytes`.
    pub(in crate::edge::core) fn ended(&mut self, bytes: u64) {
        self.ended = self.ended.saturating_add(bytes);
    }

    /// The state at `unix`: `open` sessions, which have moved `live_bytes` so far.
    pub(in crate::edge::core) fn sample(&mut self, unix: u64, open: u32, live_bytes: u64) {
        let minute = unix / 60;
        let slot = &mut self.ring[(minute % CONSOLE_CHART_MINUTES as u64) as usize];
        if slot.at != minute {
            *slot = Minute {
                at: minute,
                ..Minute::default()
            };
        }
        slot.sessions = slot.sessions.max(open);
        let total = self.ended.saturating_add(live_bytes);
        if let Some(last) = self.last_total {
            slot.bytes = slot.bytes.saturating_add(total.saturating_sub(last));
        }
        self.last_total = Some(total);
    }

    /// The last hour up to `unix`, oldest minute first: (sessions, bytes).
    fn hour(&self, unix: u64) -> Vec<(u32, u64)> {
        let now = unix / 60;
        (0..CONSOLE_CHART_MINUTES as u64)
            .rev()
            .map(|ago| {
                let Some(m) = now.checked_sub(ago) else {
                    return (0, 0);
                };
                let e = self.ring[(m % CONSOLE_CHART_MINUTES as u64) as usize];
                if e.at == m {
                    (e.sessions, e.bytes)
                } else {
                    (0, 0)
                }
            })
            .collect()
    }

    /// The chart as an inline SVG element: bars for sessions, a line for bytes, each scaled
    /// to its own maximum, which the legend names.
    pub(in crate::edge::core) fn svg(&self, unix: u64) -> String {
        const W: u64 = 720;
        const H: u64 = 160;
        const TOP: u64 = 24;
        let hour = self.hour(unix);
        let max_s = hour.iter().map(|m| m.0).max().unwrap_or(0).max(1) as u64;
        let max_b = hour.iter().map(|m| m.1).max().unwrap_or(0).max(1);
        let step = W / CONSOLE_CHART_MINUTES as u64;
        let plot = H - TOP;
        let mut bars = String::new();
        let mut line = Vec::new();
        for (i, (s, b)) in hour.iter().enumerate() {
            let x = i as u64 * step;
            let h = u64::from(*s) * plot / max_s;
            if h > 0 {
                bars.push_str(&format!(
                    "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{h}\" fill=\"#7aa6d8\"/>",
                    H - h,
                    step.saturating_sub(2).max(1)
                ));
            }
            let y = H - (u128::from(*b) * u128::from(plot) / u128::from(max_b)) as u64;
            line.push(format!("{},{y}", x + step / 2));
        }
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
             viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"Open sessions and bytes per \
             minute, last hour\"><rect width=\"{W}\" height=\"{H}\" fill=\"#f7f7f7\"/>\
             {bars}<polyline fill=\"none\" stroke=\"#d2691e\" stroke-width=\"2\" \
             points=\"{}\"/><text x=\"4\" y=\"14\" font-size=\"12\" fill=\"#2f5f98\">\
             ▮ open sessions (peak per minute, max {})</text><text x=\"{}\" y=\"14\" \
             font-size=\"12\" fill=\"#d2691e\" text-anchor=\"end\">― bytes per minute (max {})\
             </text></svg>",
            line.join(" "),
            max_s,
            W - 4,
            super::pages::bytes(max_b)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_minute_keeps_its_peak_sessions_and_the_bytes_moved_in_it() {
        let mut c = Chart::default();
        let t0 = 1_000_020 * 60;
        c.sample(t0, 1, 100);
        c.sample(t0 + 1, 3, 600);
        // A session that moved 600 ends: its bytes move from live to ended, the total stays.
        c.ended(600);
        c.sample(t0 + 2, 0, 0);
        c.sample(t0 + 61, 2, 50);
        let hour = c.hour(t0 + 61);
        assert_eq!(hour.len(), CONSOLE_CHART_MINUTES);
        assert_eq!(hour[CONSOLE_CHART_MINUTES - 2], (3, 500));
        assert_eq!(hour[CONSOLE_CHART_MINUTES - 1], (2, 50));
        // An hour later the old minutes are gone (the ring's slots are reused).
        let later = t0 + 3600 + 61;
        assert!(c.hour(later).iter().all(|m| *m == (0, 0)));
        c.sample(later, 1, 50);
        assert_eq!(c.hour(later)[CONSOLE_CHART_MINUTES - 1], (1, 0));
        assert!(c.svg(later).starts_with("<svg"));
    }
}
