//! Benchmark plumbing shared by the `ido-bench-*` binaries: timed child processes with
//! their peak RSS (`/usr/bin/time -f %M`), medians, per-run ratios (same run, same
//! background load) and alternating tool order.

use std::{path::Path, process::Stdio, time::Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// One timed process (or batch of processes).
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Wall seconds.
    pub wall: f64,
    /// Peak RSS of the (largest) process, KiB; 0 when not measured.
    pub rss_kib: u64,
    /// CPU seconds (user + system) of the timed process (`cpu`) and of the servers it talked
    /// to, by name; empty when not measured.
    pub cpu: Vec<(&'static str, f64)>,
}

/// CPU seconds (user + system) process `pid` has used so far, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    let tck = 100.0; // sysconf(_SC_CLK_TCK) on Linux
    Ok((ticks(11) + ticks(12)) as f64 / tck)
}

/// Runs `program args` under `/usr/bin/time`; wall seconds, peak RSS and stdout.
pub async fn timed(program: &Path, args: &[String]) -> anyhow::Result<(Sample, String)> {
    let started = Instant::now();
    let out = tokio::process::Command::new("/usr/bin/time")
        .arg("-f")
        .arg("BENCH_PEAK_RSS_KIB=%M\nBENCH_CPU_S=%U %S")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    let wall = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{} {} failed ({}):\n{stdout}{stderr}",
            program.display(),
            args.join(" "),
            out.status
        );
    }
    let rss_kib = stderr
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_PEAK_RSS_KIB="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let cpu: f64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_CPU_S="))
        .map(|v| v.split_whitespace().filter_map(|x| x.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    Ok((
        Sample {
            wall,
            rss_kib,
            cpu: vec![("cpu", cpu)],
        },
        stdout,
    ))
}

/// Owned copies of `v`.
pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The median (NaN for none).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Samples per tool of one case, in run order.
#[derive(Default)]
pub struct Case {
    /// Samples per tool, tools in first-seen order.
    pub tools: Vec<(&'static str, Vec<Sample>)>,
}

impl Case {
    /// Records (and prints) a sample of `tool`.
    pub fn push(&mut self, tool: &'static str, s: Sample) {
        let cpu: Vec<String> = s.cpu.iter().map(|(n, c)| format!("{n} {c:.2}")).collect();
        println!(
            "    {tool:<8} {:>7.2} s   peak RSS {:>7.1} MiB{}",
            s.wall,
            s.rss_kib as f64 / 1024.0,
            if cpu.is_empty() {
                String::new()
            } else {
                format!("   CPU s: {}", cpu.join(", "))
            }
        );
        match self.tools.iter_mut().find(|(t, _)| *t == tool) {
            Some((_, v)) => v.push(s),
            None => self.tools.push((tool, vec![s])),
        }
    }

    /// The wall times of `tool`, in run order.
    pub fn walls(&self, tool: &str) -> Vec<f64> {
        self.tools
            .iter()
            .find(|(t, _)| *t == tool)
            .map(|(_, v)| v.iter().map(|s| s.wall).collect())
            .unwrap_or_default()
    }

    /// Median of the per-run ratios `a / b` (same run, so the same background load).
    pub fn ratio(&self, a: &str, b: &str) -> f64 {
        let (a, b) = (self.walls(a), self.walls(b));
        median(&a.iter().zip(&b).map(|(x, y)| x / y).collect::<Vec<_>>())
    }

    /// Every sample and the medians, as JSON.
    pub fn json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (tool, v) in &self.tools {
            let walls: Vec<f64> = v.iter().map(|s| s.wall).collect();
            let rss: Vec<f64> = v.iter().map(|s| s.rss_kib as f64 / 1024.0).collect();
            let mut j = json!({"wall_s": walls, "median_s": median(&walls), "peak_rss_mib": rss, "median_rss_mib": median(&rss)});
            let mut names: Vec<&str> = v.iter().flat_map(|s| s.cpu.iter().map(|(n, _)| *n)).collect();
            names.dedup();
            for n in names {
                let c: Vec<f64> = v
                    .iter()
                    .filter_map(|s| s.cpu.iter().find(|(m, _)| *m == n).map(|(_, c)| *c))
                    .collect();
                j[format!("cpu_s_{n}")] = json!({"runs": c, "median": median(&c)});
            }
            m.insert(tool.to_string(), j);
        }
        Value::Object(m)
    }
}

/// Tool order for run `i`: alternates so neither tool always runs on a warmer machine.
pub fn order<T: Copy>(tools: &[T], i: usize) -> Vec<T> {
    let mut v = tools.to_vec();
    if i % 2 == 1 {
        v.reverse();
    }
    v
}
