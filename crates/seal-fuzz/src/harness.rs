//! The fuzzing loop. The parent process never parses anything: it re-runs
//! this binary as a child (env [`CHILD_ENV`]) per target, with its address
//! space limited, and watches it. The child writes each case into its case
//! directory and announces it on stdout before parsing it, so when the child
//! aborts (allocation failure, stack overflow) or goes silent (hang), the
//! parent knows which case did it and saves that directory.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::mutate::Rng;
use crate::targets::{self, Case};

/// Set in the environment of child processes.
pub const CHILD_ENV: &str = "SEAL_FUZZ_CHILD";

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Target names to run (in order).
    pub targets: Vec<String>,
    /// Seconds per target.
    pub seconds: u64,
    /// Base seed.
    pub seed: u64,
    /// Where crashing inputs are saved.
    pub crashes: PathBuf,
    /// Address-space headroom over the child's size at start, in MiB.
    pub mem_mb: u64,
    /// Seconds without progress before a case counts as a hang.
    pub hang_secs: u64,
    /// Scratch directory (case files).
    pub work: PathBuf,
}

/// Per-target results.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Cases run to completion or crash.
    pub cases: u64,
    /// Cases that parsed without error.
    pub accepted: u64,
    /// Panics caught in the child.
    pub panics: u64,
    /// Children that died of an allocation failure.
    pub oom: u64,
    /// Cases with no progress for `hang_secs`.
    pub hangs: u64,
    /// Children that died otherwise (signal, stack overflow).
    pub aborts: u64,
    /// Distinct crash descriptions and how often each was seen.
    pub kinds: BTreeMap<String, u64>,
}

impl Stats {
    /// Whether anything crashed.
    pub fn crashed(&self) -> bool {
        self.panics + self.oom + self.hangs + self.aborts > 0
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::create_dir_all(to);
    if let Ok(rd) = std::fs::read_dir(from) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_file() {
                let _ = std::fs::copy(&p, to.join(e.file_name()));
            }
        }
    }
}

/// Saves the case directory as crash `label` (at most 20 per kind, so a
/// frequent crash does not fill the disk).
fn save_crash(crashes: &Path, target: &str, label: &str, case_dir: &Path, note: &str) {
    let kind_dir = crashes.join(target);
    let n = std::fs::read_dir(&kind_dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(label))
                .count()
        })
        .unwrap_or(0);
    if n >= 20 {
        return;
    }
    let dest = kind_dir.join(format!("{label}-{n:03}"));
    copy_dir(case_dir, &dest);
    let _ = std::fs::write(dest.join("CRASH.txt"), format!("{note}\n"));
}

/// Runs every target in a watched child; prints the table; returns stats.
pub fn run_parent(opts: &Options) -> Vec<(String, Stats)> {
    let exe = std::env::current_exe().expect("own executable path");
    let mut all = Vec::new();
    for (ti, name) in opts.targets.iter().enumerate() {
        let stats = run_target(&exe, opts, ti as u64, name);
        eprintln!(
            "[seal-fuzz] {name}: {} cases ({} parsed), {} panics, {} OOM, {} hangs, {} aborts",
            stats.cases, stats.accepted, stats.panics, stats.oom, stats.hangs, stats.aborts
        );
        all.push((name.clone(), stats));
    }
    all
}

enum Msg {
    Line(String),
    Eof,
}

fn run_target(exe: &Path, opts: &Options, ti: u64, name: &str) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(opts.seconds);
    let work = opts.work.join(name);
    let case_dir = work.join("case");
    let mut stats = Stats::default();
    let mut restarts = 0u64;
    while Instant::now() < deadline {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let child_seed = opts
            .seed
            .wrapping_mul(0x100_0000_01B3)
            .wrapping_add(ti << 32)
            .wrapping_add(restarts);
        restarts += 1;
        let _ = std::fs::remove_dir_all(&work);
        let _ = std::fs::create_dir_all(&case_dir);
        let mut child = match Command::new(exe)
            .env(CHILD_ENV, "1")
            .env("RUST_BACKTRACE", "0")
            .args(["--target", name])
            .arg("--seed")
            .arg(child_seed.to_string())
            .arg("--millis")
            .arg(remaining.as_millis().to_string())
            .arg("--crashes")
            .arg(&opts.crashes)
            .arg("--work")
            .arg(&work)
            .arg("--mem-mb")
            .arg(opts.mem_mb.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("[seal-fuzz] cannot start the child: {e}");
                stats.aborts += 1;
                return stats;
            }
        };
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(Msg::Line(l)).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send(Msg::Eof);
        });
        let mut err = child.stderr.take().expect("piped stderr");
        let err_thread = std::thread::spawn(move || {
            // Keep the tail only: a crashing child may print a lot.
            let mut tail = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 64 * 1024 {
                    tail.drain(..tail.len() - 32 * 1024);
                }
            }
            String::from_utf8_lossy(&tail).into_owned()
        });
        let mut in_case = false;
        let mut ended = false;
        let mut hung = false;
        let mut last_case = String::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(opts.hang_secs)) {
                Ok(Msg::Line(l)) => {
                    let (tag, rest) = l.split_once(' ').unwrap_or((l.as_str(), ""));
                    match tag {
                        "C" => {
                            in_case = true;
                            last_case = rest.to_string();
                        }
                        "D" => {
                            in_case = false;
                            stats.cases += 1;
                            if rest == "ok" {
                                stats.accepted += 1;
                            }
                        }
                        "P" => {
                            in_case = false;
                            stats.cases += 1;
                            stats.panics += 1;
                            *stats.kinds.entry(format!("panic: {rest}")).or_default() += 1;
                        }
                        "END" => ended = true,
                        _ => {}
                    }
                }
                Ok(Msg::Eof) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if in_case && Instant::now() < deadline + Duration::from_secs(opts.hang_secs) {
                        stats.cases += 1;
                        stats.hangs += 1;
                        *stats.kinds.entry("hang".into()).or_default() += 1;
                        save_crash(
                            &opts.crashes,
                            name,
                            "hang",
                            &case_dir,
                            &format!("no progress for {} s on case {last_case}", opts.hang_secs),
                        );
                    }
                    hung = true;
                    kill(&mut child);
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = child.wait().ok();
        let stderr = err_thread.join().unwrap_or_default();
        if hung {
            // counted above
        } else if !ended && in_case {
            stats.cases += 1;
            let oom = stderr.contains("memory allocation of")
                || stderr.contains("bad_alloc")
                || stderr.contains("out of memory")
                || stderr.contains("can't allocate");
            let label = if oom { "oom" } else { "abort" };
            if oom {
                stats.oom += 1;
            } else {
                stats.aborts += 1;
            }
            let tail: String = stderr
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            let first = stderr
                .lines()
                .find(|l| l.contains("memory allocation") || l.contains("overflowed its stack"))
                .or_else(|| tail.lines().last())
                .unwrap_or("")
                .to_string();
            *stats.kinds.entry(format!("{label}: {first}")).or_default() += 1;
            save_crash(
                &opts.crashes,
                name,
                label,
                &case_dir,
                &format!("child died ({status:?}) on case {last_case}; stderr tail:\n{tail}"),
            );
        } else if !ended && !in_case && Instant::now() < deadline {
            // Died outside a case (start-up failure): do not spin.
            eprintln!("[seal-fuzz] {name}: child failed outside a case ({status:?}):\n{stderr}");
            stats.aborts += 1;
            *stats
                .kinds
                .entry("child start-up failure".into())
                .or_default() += 1;
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    stats
}

fn kill(child: &mut Child) {
    let _ = child.kill();
}

/// Prints the summary table; returns whether anything crashed.
pub fn print_table(results: &[(String, Stats)]) -> bool {
    println!(
        "{:<16} {:>10} {:>10} {:>8} {:>6} {:>6} {:>7}",
        "target", "cases", "parsed", "panics", "OOM", "hangs", "aborts"
    );
    let mut any = false;
    for (name, s) in results {
        println!(
            "{:<16} {:>10} {:>10} {:>8} {:>6} {:>6} {:>7}",
            name, s.cases, s.accepted, s.panics, s.oom, s.hangs, s.aborts
        );
        any |= s.crashed();
    }
    for (name, s) in results {
        for (k, n) in &s.kinds {
            println!("  {name}: {n} × {k}");
        }
    }
    any
}

static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

fn vm_size_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmSize:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Limits the address space to the current size plus `headroom_mb`: the
/// libraries (libtorch and its CUDA libraries) are mapped at start, so the
/// limit adapts to whatever libtorch is linked.
fn limit_address_space(headroom_mb: u64) {
    let Some(now) = vm_size_bytes() else { return };
    let limit = now + headroom_mb * 1024 * 1024;
    let rl = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: limit as libc::rlim_t,
    };
    // SAFETY: plain syscall on a valid struct.
    unsafe {
        libc::setrlimit(libc::RLIMIT_AS, &rl);
    }
}

fn write_case(dir: &Path, case: &Case) {
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::create_dir_all(dir);
    for (name, bytes) in &case.files {
        let _ = std::fs::write(dir.join(name), bytes);
    }
}

/// The child: generates and runs cases until `millis` have passed.
pub fn run_child(
    target: &str,
    seed: u64,
    millis: u64,
    crashes: &Path,
    work: &Path,
    mem_mb: u64,
) -> i32 {
    tch::set_num_threads(1);
    std::panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if let Ok(mut g) = LAST_PANIC.lock() {
            *g = format!("{loc}: {msg}");
        }
        if std::env::var_os("SEAL_FUZZ_VERBOSE").is_some() {
            eprintln!("panic at {loc}: {msg}");
        }
    }));
    let Some(mut t) = targets::by_name(target) else {
        eprintln!("unknown target {target}");
        return 2;
    };
    limit_address_space(mem_mb);
    let deadline = Instant::now() + Duration::from_millis(millis);
    let case_dir = work.join("case");
    let scratch = work.join("scratch");
    let mut rng = Rng::new(seed);
    let stdout = std::io::stdout();
    let mut seen = std::collections::HashSet::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        // A panic here is a bug of the fuzzer itself: report it, go on.
        let case = match catch_unwind(AssertUnwindSafe(|| t.generate(&mut rng))) {
            Ok(c) => c,
            Err(_) => {
                let msg = LAST_PANIC.lock().map(|g| g.clone()).unwrap_or_default();
                eprintln!("seal-fuzz: generator panic (fuzzer bug): {msg}");
                continue;
            }
        };
        write_case(&case_dir, &case);
        let _ = std::fs::remove_dir_all(&scratch);
        let _ = std::fs::create_dir_all(&scratch);
        {
            let mut o = stdout.lock();
            let _ = writeln!(o, "C {seed}/{n}");
            let _ = o.flush();
        }
        let r = catch_unwind(AssertUnwindSafe(|| t.run(&case_dir, &scratch)));
        let line = match r {
            Ok(ok) => {
                if ok {
                    t.accept(case);
                }
                format!("D {}", if ok { "ok" } else { "err" })
            }
            Err(_) => {
                let msg = LAST_PANIC.lock().map(|g| g.clone()).unwrap_or_default();
                let msg = msg.replace('\n', " ");
                let loc = msg.split(": ").next().unwrap_or("").to_string();
                if seen.insert(loc) {
                    save_crash(crashes, target, "panic", &case_dir, &msg);
                }
                format!("P {}", msg.chars().take(300).collect::<String>())
            }
        };
        let mut o = stdout.lock();
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
        n += 1;
    }
    let mut o = stdout.lock();
    let _ = writeln!(o, "END");
    let _ = o.flush();
    0
}

/// Runs one saved case directory in-process (for debugging a crash).
pub fn repro(target: &str, dir: &Path) -> i32 {
    let Some(mut t) = targets::by_name(target) else {
        eprintln!("unknown target {target}");
        return 2;
    };
    let scratch = std::env::temp_dir().join(format!("seal-fuzz-repro-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&scratch);
    let ok = t.run(dir, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{target}: {}", if ok { "parsed" } else { "rejected" });
    0
}

/// A default scratch directory: tmpfs when there is one (import writes and
/// syncs files).
pub fn default_work() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("seal-fuzz-{}", std::process::id()))
}
