//! The status page for people: the node's channels with their height,
//! consensus type, plugin version, state, leader (when a clustered plugin
//! reports one), throughput over the last minutes as a small inline SVG
//! plot, and the last crash reason. The page is complete as served (it
//! reads without JavaScript) and refreshes itself from `/status.json`
//! every two seconds with a few lines of inline script; it loads nothing
//! from anywhere else.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What the page shows (`/status.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// The node's version.
    pub version: String,
    /// Its commit, if known.
    pub commit: String,
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// Whether `/healthz` is 200.
    pub healthy: bool,
    /// The channels, by name.
    pub channels: Vec<ChannelStatus>,
}

/// One channel on the page.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChannelStatus {
    /// Its name.
    pub name: String,
    /// Ledger height.
    pub height: u64,
    /// Consensus type.
    pub consensus: String,
    /// The plugin's version (its manifest's), if known.
    pub plugin_version: String,
    /// Fabric's participation status: active or failed.
    pub status: String,
    /// The plugin instance's state: running, restarting, errored, halted.
    pub state: String,
    /// The leader's raft id, if reported.
    pub leader: Option<u64>,
    /// Whether this node leads, if reported.
    pub is_leader: Option<bool>,
    /// Crashes of the plugin instance.
    pub crashes: u64,
    /// Restarts after them.
    pub restarts: u64,
    /// The last crash's reason (or why the channel failed).
    pub last_crash: Option<String>,
    /// (unix seconds, envelopes accepted per second), oldest first.
    pub throughput: Vec<(u64, f64)>,
}

/// `s` safe in HTML text and attributes.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Width and height of a throughput plot, in pixels.
const PLOT: (f64, f64) = (240.0, 40.0);

/// The throughput plot of one channel: an SVG polyline scaled to its peak.
pub fn plot(samples: &[(u64, f64)]) -> String {
    let (w, h) = PLOT;
    let peak = samples.iter().map(|s| s.1).fold(0.0_f64, f64::max);
    let n = samples.len();
    let mut points = String::new();
    for (i, (_, v)) in samples.iter().enumerate() {
        let x = if n > 1 { i as f64 * w / (n - 1) as f64 } else { w };
        let y = if peak > 0.0 { h - v / peak * (h - 2.0) - 1.0 } else { h - 1.0 };
        let _ = write!(points, "{x:.1},{y:.1} ");
    }
    let last = samples.last().map_or(0.0, |s| s.1);
    format!(
        "<svg class=\"plot\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"throughput\">\
         <polyline fill=\"none\" stroke=\"#2a6\" stroke-width=\"1.5\" points=\"{}\"/></svg>\
         <span class=\"rate\">{last:.1} tx/s (peak {peak:.1})</span>",
        points.trim_end()
    )
}

fn row(c: &ChannelStatus) -> String {
    let leader = match (c.leader, c.is_leader) {
        (_, Some(true)) => "this node".to_string(),
        (Some(id), _) => format!("node {id}"),
        _ => "—".to_string(),
    };
    let version = if c.plugin_version.is_empty() { "—".to_string() } else { escape(&c.plugin_version) };
    format!(
        "<tr class=\"channel {state}\" data-channel=\"{name}\"><td class=\"name\">{name}</td><td>{height}</td>\
         <td>{consensus}</td><td>{version}</td><td class=\"state\">{state}</td><td>{leader}</td><td>{plot}</td>\
         <td>{crashes} / {restarts}</td><td class=\"crash\">{crash}</td></tr>",
        name = escape(&c.name),
        height = c.height,
        consensus = escape(&c.consensus),
        state = escape(&c.state),
        plot = plot(&c.throughput),
        crashes = c.crashes,
        restarts = c.restarts,
        crash = c.last_crash.as_deref().map(escape).unwrap_or_default(),
    )
}

/// The table body of the channels.
pub fn rows(s: &Status) -> String {
    if s.channels.is_empty() {
        return "<tr><td colspan=\"9\">no channels</td></tr>".into();
    }
    s.channels.iter().map(row).collect()
}

/// The page.
pub fn html(s: &Status) -> String {
    let health = if s.healthy { "healthy" } else { "unhealthy" };
    format!(
        r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>consenter-host status</title>
<style>
body{{font:14px system-ui,sans-serif;margin:1.5em;color:#222}}
h1{{font-size:1.3em;margin:0 0 .3em}}
.meta{{color:#555;margin-bottom:1em}}
table{{border-collapse:collapse}}
th,td{{border-bottom:1px solid #ddd;padding:.35em .7em;text-align:left;vertical-align:middle}}
th{{background:#f4f4f4}}
.running .state{{color:#2a6}} .restarting .state{{color:#c80}} .errored .state,.failed .state{{color:#c22}}
.healthy{{color:#2a6}} .unhealthy{{color:#c22}}
.crash{{max-width:28em;color:#a33;font-size:.9em}}
.rate{{font-size:.85em;color:#555;margin-left:.4em}}
svg.plot{{background:#fafafa;border:1px solid #eee;vertical-align:middle}}
</style></head>
<body>
<h1>consenter-host</h1>
<div class="meta">version <span id="version">{version}</span>{commit} · up <span id="uptime">{uptime}</span> s · <span id="health" class="{health}">{health}</span> · refreshed every 2 s</div>
<table><thead><tr><th>channel</th><th>height</th><th>consensus</th><th>plugin version</th><th>state</th><th>leader</th><th>throughput (last 10 min)</th><th>crashes / restarts</th><th>last crash</th></tr></thead>
<tbody id="channels">{rows}</tbody></table>
<script>
"use strict";
const esc = s => String(s).replace(/[&<>"']/g, c => ({{"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}})[c]);
function plot(t) {{
  const w = {w}, h = {h}, n = t.length, peak = Math.max(0, ...t.map(p => p[1]));
  const pts = t.map((p, i) => [n > 1 ? i * w / (n - 1) : w, peak > 0 ? h - p[1] / peak * (h - 2) - 1 : h - 1]);
  const last = n ? t[n - 1][1] : 0;
  return `<svg class="plot" width="${{w}}" height="${{h}}" viewBox="0 0 ${{w}} ${{h}}" role="img" aria-label="throughput"><polyline fill="none" stroke="#2a6" stroke-width="1.5" points="${{pts.map(p => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" ")}}"/></svg><span class="rate">${{last.toFixed(1)}} tx/s (peak ${{peak.toFixed(1)}})</span>`;
}}
function row(c) {{
  const leader = c.is_leader === true ? "this node" : (c.leader ? "node " + c.leader : "—");
  return `<tr class="channel ${{esc(c.state)}}" data-channel="${{esc(c.name)}}"><td class="name">${{esc(c.name)}}</td><td>${{c.height}}</td><td>${{esc(c.consensus)}}</td><td>${{c.plugin_version ? esc(c.plugin_version) : "—"}}</td><td class="state">${{esc(c.state)}}</td><td>${{leader}}</td><td>${{plot(c.throughput)}}</td><td>${{c.crashes}} / ${{c.restarts}}</td><td class="crash">${{c.last_crash ? esc(c.last_crash) : ""}}</td></tr>`;
}}
async function refresh() {{
  try {{
    const r = await fetch("status.json", {{cache: "no-store"}});
    if (!r.ok) return;
    const s = await r.json();
    document.getElementById("uptime").textContent = s.uptime_s;
    const hl = document.getElementById("health");
    hl.textContent = hl.className = s.healthy ? "healthy" : "unhealthy";
    document.getElementById("channels").innerHTML = s.channels.length ? s.channels.map(row).join("") : '<tr><td colspan="9">no channels</td></tr>';
    document.body.dataset.refreshed = String(Date.now());
  }} catch (e) {{ /* the node may be restarting; try again */ }}
}}
setInterval(refresh, 2000);
refresh();
</script>
</body></html>
"##,
        version = escape(&s.version),
        commit = if s.commit.is_empty() { String::new() } else { format!(" ({})", escape(&s.commit)) },
        uptime = s.uptime_s,
        health = health,
        rows = rows(s),
        w = PLOT.0,
        h = PLOT.1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_escapes_and_plots() {
        let c = ChannelStatus {
            name: "ch<1>".into(),
            height: 3,
            consensus: "solo".into(),
            plugin_version: "0.1.0".into(),
            status: "active".into(),
            state: "running".into(),
            leader: Some(2),
            is_leader: Some(false),
            crashes: 1,
            restarts: 1,
            last_crash: Some("plugin \"x\" trapped".into()),
            throughput: vec![(1, 0.0), (2, 10.0), (3, 5.0)],
        };
        let s =
            Status { version: "0.1.0".into(), commit: String::new(), uptime_s: 5, healthy: true, channels: vec![c] };
        let h = html(&s);
        assert!(h.contains("ch&lt;1&gt;") && !h.contains("ch<1>"));
        assert!(h.contains("plugin &quot;x&quot; trapped"));
        assert!(h.contains("node 2"));
        assert!(h.contains("points=\"0.0,39.0 120.0,1.0 240.0,20.0\""), "{}", plot(&s.channels[0].throughput));
        assert!(!h.contains("src=\"http") && !h.contains("href=\"http"), "no external resources");
    }
}
