//! Scheduler: how two CPU-burning domains with weights 2:1 on one shared CPU split it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Ctx;
use crate::error::{BenchError, Result};
use crate::procfs::cpu_seconds;
use crate::qemu::{Qemu, QemuSpec};
use crate::report::{Better, Cell, Row, SectionReport};

/// The ideal share of the weight-2 domain.
const IDEAL: f64 = 200.0 / 3.0;

/// Timings of one contest: burn length, warm-up, measured window.
struct Timing {
    burn_s: u64,
    warmup: Duration,
    window: Duration,
}

/// Measures the split with rxen's credit weights and with QEMU under CPU cgroups.
pub fn run(ctx: &mut Ctx) -> SectionReport {
    let timing = if ctx.quick {
        Timing {
            burn_s: 6,
            warmup: Duration::from_secs(1),
            window: Duration::from_secs(4),
        }
    } else {
        Timing {
            burn_s: 10,
            warmup: Duration::from_secs(2),
            window: Duration::from_secs(7),
        }
    };
    let cpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        - 1;
    let rxen_pending = match ctx.host() {
        Ok(h) if !h.rxl_has("sched-credit") => {
            Some("credit weights have not landed (issue 6)".to_string())
        }
        _ => None,
    };
    let rxen_blocked = ctx.rxen_blocked(rxen_pending.as_deref());
    let qemu_blocked = ctx.qemu_unavailable.clone().or_else(cgroup_unavailable);
    let guest = format!("2 × 32 MiB, 1 vCPU, burning, both on CPU {cpu}");
    let mut share = Row::new(
        "weight-2 domain's share (ideal 66.7 %)",
        &guest,
        "%",
        1,
        Better::Neither,
    );
    let mut dist = Row::new(
        "distance from the ideal split",
        &guest,
        "pp",
        1,
        Better::Lower,
    );
    for _ in 0..ctx.runs {
        if rxen_blocked.is_none() {
            let r = rxen_contest(ctx, cpu, &timing);
            push(&mut share.rxen, &mut dist.rxen, r);
        }
        if qemu_blocked.is_none() {
            let r = qemu_contest(ctx, cpu, &timing);
            push(&mut share.qemu, &mut dist.qemu, r);
        }
    }
    for r in [&mut share, &mut dist] {
        if let Some(why) = &rxen_blocked {
            r.rxen = Cell::Pending(why.clone());
        }
        if let Some(why) = &qemu_blocked {
            r.qemu = Cell::NotApplicable(why.clone());
        }
    }
    SectionReport {
        title: "scheduler".into(),
        versus: None,
        rows: vec![share, dist],
        method: vec![format!(
            "two 1-vCPU guests pinned to CPU {cpu} both run `burn {}`; rxen: `cpu_weight = 512` and \
             `256` with `cpus = \"{cpu}\"` (rxend's credit weights on CPU cgroups); QEMU: each \
             process's threads pinned to CPU {cpu} and put in its own CPU cgroup with shares \
             2048:1024. After {} s, the share is the weight-2 monitor's CPU time (utime + stime of \
             the whole process) over both monitors' CPU time in the next {} s; the ideal is 2/3. \
             The host is shared, so other load on CPU {cpu} takes from both alike.",
            timing.burn_s,
            timing.warmup.as_secs(),
            timing.window.as_secs()
        )],
    }
}

fn push(share: &mut Cell, dist: &mut Cell, r: Result<f64>) {
    match r {
        Ok(s) => {
            share.push::<String>(Ok(s));
            dist.push::<String>(Ok((s - IDEAL).abs()));
        }
        Err(e) => {
            share.push::<String>(Err(e.to_string()));
            dist.push::<String>(Err(e.to_string()));
        }
    }
}

/// The weight-2 process's share of the CPU time both use over the window, in percent.
fn measure(heavy: u32, light: u32, t: &Timing) -> Result<f64> {
    std::thread::sleep(t.warmup);
    let (h0, l0) = (cpu_seconds(heavy)?, cpu_seconds(light)?);
    std::thread::sleep(t.window);
    let (h, l) = (cpu_seconds(heavy)? - h0, cpu_seconds(light)? - l0);
    if h + l < 0.1 {
        return Err(BenchError::Unexpected(format!(
            "the burners used only {:.2} s of CPU",
            h + l
        )));
    }
    eprintln!("rxen-bench: sched: weight 2 used {h:.2} s, weight 1 used {l:.2} s");
    Ok(100.0 * h / (h + l))
}

fn rxen_contest(ctx: &mut Ctx, cpu: usize, t: &Timing) -> Result<f64> {
    let (hn, ln) = (ctx.name("heavy"), ctx.name("light"));
    let host = ctx.host()?;
    let r = (|| {
        let mut heavy = host.boot(&hn, 32, 1, &format!("cpus = \"{cpu}\"\ncpu_weight = 512"))?;
        let mut light = host.boot(&ln, 32, 1, &format!("cpus = \"{cpu}\"\ncpu_weight = 256"))?;
        let (hp, lp) = (host.vmm_pid(&hn)?, host.vmm_pid(&ln)?);
        heavy.console.send(&format!("burn {}", t.burn_s))?;
        light.console.send(&format!("burn {}", t.burn_s))?;
        heavy
            .console
            .wait_contains("burning vcpu", Duration::from_secs(10))?;
        light
            .console
            .wait_contains("burning vcpu", Duration::from_secs(10))?;
        measure(hp, lp, t)
    })();
    host.destroy(&hn);
    host.destroy(&ln);
    r
}

fn qemu_contest(ctx: &mut Ctx, cpu: usize, t: &Timing) -> Result<f64> {
    let (ht, lt) = (ctx.name("heavy"), ctx.name("light"));
    let spec = QemuSpec {
        memory_mib: 32,
        vcpus: 1,
        incoming: None,
    };
    let group = CpuGroup::create(&format!("rxen-bench-qemu-{}", std::process::id()))?;
    let r = (|| {
        let mut heavy = Qemu::boot(&ctx.qemu, &spec, ctx.path(), &ht)?;
        let mut light = Qemu::boot(&ctx.qemu, &spec, ctx.path(), &lt)?;
        for (q, w) in [(&heavy, 2), (&light, 1)] {
            pin(q.pid(), cpu)?;
            group.put(q.pid(), w)?;
        }
        heavy.console.send(&format!("burn {}", t.burn_s))?;
        light.console.send(&format!("burn {}", t.burn_s))?;
        heavy
            .console
            .wait_contains("burning vcpu", Duration::from_secs(10))?;
        light
            .console
            .wait_contains("burning vcpu", Duration::from_secs(10))?;
        measure(heavy.pid(), light.pid(), t)
    })();
    r
}

/// Pins every thread of a process to one CPU.
fn pin(pid: u32, cpu: usize) -> Result<()> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| BenchError::io("list threads", e))?;
    for t in tasks.flatten() {
        let Ok(tid) = t.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if rc != 0 {
            return Err(BenchError::io(
                format!("pin thread {tid}"),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Why QEMU's processes cannot be given CPU weights here, if they cannot.
fn cgroup_unavailable() -> Option<String> {
    if Path::new("/sys/fs/cgroup/cpu/cpu.shares").exists()
        || Path::new("/sys/fs/cgroup/cgroup.subtree_control").exists()
    {
        None
    } else {
        Some("no CPU cgroup controller (v1 `cpu` or v2) to weight QEMU's processes".into())
    }
}

/// Two child CPU cgroups, `w2` and `w1`, for the weight-2 and weight-1 monitors.
struct CpuGroup {
    top: PathBuf,
    v1: bool,
}

impl CpuGroup {
    fn create(name: &str) -> Result<CpuGroup> {
        let (root, v1) = if Path::new("/sys/fs/cgroup/cpu/cpu.shares").exists() {
            (PathBuf::from("/sys/fs/cgroup/cpu"), true)
        } else {
            (PathBuf::from("/sys/fs/cgroup"), false)
        };
        let top = root.join(name);
        let io = |what: &str, e| BenchError::io(format!("{what} {}", top.display()), e);
        for sub in ["w2", "w1"] {
            std::fs::create_dir_all(top.join(sub)).map_err(|e| io("create cgroup", e))?;
        }
        if !v1 {
            std::fs::write(top.join("cgroup.subtree_control"), "+cpu")
                .map_err(|e| io("enable cpu in", e))?;
        }
        let (f, w2, w1) = if v1 {
            ("cpu.shares", "2048", "1024")
        } else {
            ("cpu.weight", "200", "100")
        };
        std::fs::write(top.join("w2").join(f), w2).map_err(|e| io("set weight in", e))?;
        std::fs::write(top.join("w1").join(f), w1).map_err(|e| io("set weight in", e))?;
        Ok(CpuGroup { top, v1 })
    }

    /// Moves every thread of `pid` into the group of weight `w` (2 or 1).
    fn put(&self, pid: u32, w: u32) -> Result<()> {
        let dir = self.top.join(format!("w{w}"));
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| BenchError::io("list threads", e))?;
        let file = if self.v1 { "tasks" } else { "cgroup.threads" };
        if !self.v1 {
            return std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                .map_err(|e| BenchError::io(format!("move {pid} into {}", dir.display()), e));
        }
        for t in tasks.flatten() {
            std::fs::write(dir.join(file), t.file_name().to_string_lossy().as_bytes())
                .map_err(|e| BenchError::io(format!("move a thread into {}", dir.display()), e))?;
        }
        Ok(())
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        // The QEMUs are gone by now (they drop first); their threads leave the groups with them.
        std::thread::sleep(Duration::from_millis(100));
        for sub in ["w2", "w1"] {
            let _ = std::fs::remove_dir(self.top.join(sub));
        }
        let _ = std::fs::remove_dir(&self.top);
    }
}
