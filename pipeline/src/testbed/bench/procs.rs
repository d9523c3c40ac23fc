//! The processes a benchmark watches, read from `/proc`: CPU time and resident memory.
//!
//! A watched process may count its descendants too (PostgreSQL works in one backend per
//! connection); the stages are single processes. For such a tree the memory is the sum of
//! proportional set sizes (PSS), so that shared memory (PostgreSQL's shared buffers, mapped
//! by every backend) counts once, not once per backend. CPU times are in clock ticks of
//! `USER_HZ`, which Linux fixes at 100 on the architectures this runs on. A process's CPU
//! includes that of its children it has waited for (`cutime`, `cstime`), so that a
//! PostgreSQL backend or autovacuum worker that exits during a run is still counted: its
//! time moves into the postmaster's, and the difference over the run stays right.

use std::collections::HashMap;
use std::time::Instant;

const TICKS_PER_SECOND: f64 = 100.0;

/// `name=pid`, or `name=pid+` to count the process's descendants as well.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
    pub with_children: bool,
}

impl std::str::FromStr for Watched {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("{s:?} is not a process to watch: give name=pid, or name=pid+ to count its children too")
        };
        let (name, pid) = s.split_once('=').ok_or_else(bad)?;
        let (pid, with_children) = match pid.strip_suffix('+') {
            Some(p) => (p, true),
            None => (pid, false),
        };
        let pid = pid.parse().map_err(|_| bad())?;
        if name.is_empty() {
            return Err(bad());
        }
        Ok(Watched {
            name: name.to_owned(),
            pid,
            with_children,
        })
    }
}

/// One process (with its children, if asked) at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reading {
    /// CPU seconds used so far (user + system).
    pub cpu_secs: f64,
    pub rss_kb: u64,
    /// The kernel's high-water mark of the resident set (main process only).
    pub peak_kb: u64,
}

/// Accumulates, per watched process, CPU use and resident memory over a run.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Usage {
    pub name: String,
    pub pid: u32,
    /// The process and its descendants (memory as summed PSS).
    pub tree: bool,
    /// CPU used during the run, as a share of one core (1.0 = one core busy).
    pub cpu_cores: f64,
    /// CPU seconds (user + system) used during the run.
    pub cpu_secs: f64,
    pub rss_first_kb: u64,
    pub rss_last_kb: u64,
    /// The highest resident set seen: the kernel's high-water mark for a single process,
    /// the highest sampled sum with children.
    pub rss_peak_kb: u64,
    /// Resident memory at each sample, in MB.
    #[serde(skip)]
    pub rss_series: Vec<(f64, f64)>,
}

pub struct Sampler {
    watched: Vec<Watched>,
    started: Instant,
    first: HashMap<u32, Reading>,
    usage: Vec<Usage>,
    machine_first: Option<(u64, u64)>,
    machine_last: Option<(u64, u64)>,
}

impl Sampler {
    pub fn new(watched: Vec<Watched>) -> Self {
        let usage = watched
            .iter()
            .map(|w| Usage {
                name: w.name.clone(),
                pid: w.pid,
                tree: w.with_children,
                ..Usage::default()
            })
            .collect();
        let mut sampler = Sampler {
            watched,
            started: Instant::now(),
            first: HashMap::new(),
            usage,
            machine_first: machine_ticks(),
            machine_last: None,
        };
        sampler.sample();
        sampler
    }

    /// Takes one reading of every watched process.
    pub fn sample(&mut self) {
        let at = self.started.elapsed().as_secs_f64();
        let first_round = self.first.is_empty();
        for (w, usage) in self.watched.iter().zip(self.usage.iter_mut()) {
            let Some(now) = read(w) else { continue };
            let first = *self.first.entry(w.pid).or_insert(now);
            if first_round {
                usage.rss_first_kb = now.rss_kb;
            }
            usage.rss_last_kb = now.rss_kb;
            usage.rss_peak_kb = usage.rss_peak_kb.max(now.rss_kb).max(now.peak_kb);
            usage.cpu_secs = (now.cpu_secs - first.cpu_secs).max(0.0);
            usage.cpu_cores = usage.cpu_secs / at.max(1e-9);
            usage.rss_series.push((at, now.rss_kb as f64 / 1024.0));
        }
        self.machine_last = machine_ticks();
    }

    pub fn usage(&self) -> &[Usage] {
        &self.usage
    }

    /// The whole machine's busy share since the sampler started (0–1), from /proc/stat.
    pub fn machine_busy(&self) -> Option<f64> {
        let ((busy0, total0), (busy1, total1)) = (self.machine_first?, self.machine_last?);
        let total = total1.checked_sub(total0)?;
        (total > 0).then(|| (busy1.saturating_sub(busy0)) as f64 / total as f64)
    }
}

fn read(w: &Watched) -> Option<Reading> {
    let mut reading = read_one(w.pid)?;
    if w.with_children {
        reading.rss_kb = pss_kb(w.pid).unwrap_or(reading.rss_kb);
        for child in descendants(w.pid) {
            if let Some(r) = read_one(child) {
                reading.cpu_secs += r.cpu_secs;
                reading.rss_kb += pss_kb(child).unwrap_or(r.rss_kb);
            }
        }
        reading.peak_kb = 0;
    }
    Some(reading)
}

/// The process's proportional set size: its private memory plus its share of shared pages.
fn pss_kb(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn read_one(pid: u32) -> Option<Reading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime, stime, cutime, cstime (fields 14-17 of proc(5)).
    let ticks: u64 = (11..15)
        .map(|i| fields.get(i)?.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(Reading {
        cpu_secs: ticks as f64 / TICKS_PER_SECOND,
        rss_kb: kb("VmRSS:"),
        peak_kb: kb("VmHWM:"),
    })
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

fn descendants(root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// (busy, total) jiffies of all CPUs.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPU milliseconds per order: `None` when no order was finished.
pub fn ms_per_order(cpu_secs: f64, orders: usize) -> Option<f64> {
    (orders > 0).then(|| cpu_secs * 1000.0 / orders as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_order_is_milliseconds_over_finished_orders() {
        assert_eq!(ms_per_order(12.0, 20_000), Some(0.6));
        assert_eq!(ms_per_order(0.0, 5), Some(0.0));
        assert_eq!(ms_per_order(3.0, 0), None);
    }

    #[test]
    fn a_watched_process_is_name_equals_pid() {
        assert_eq!(
            "poll=42".parse::<Watched>(),
            Ok(Watched {
                name: "poll".into(),
                pid: 42,
                with_children: false
            })
        );
        assert!("postgres=7+".parse::<Watched>().unwrap().with_children);
        for bad in ["poll", "=3", "poll=x", "poll=-1"] {
            assert!(
                bad.parse::<Watched>().unwrap_err().contains("name=pid"),
                "{bad}"
            );
        }
    }

    #[test]
    fn this_process_can_be_read() {
        let me = Watched {
            name: "me".into(),
            pid: std::process::id(),
            with_children: false,
        };
        let r = read(&me).expect("own /proc entry");
        assert!(r.rss_kb > 0 && r.peak_kb >= r.rss_kb, "{r:?}");
    }
}
