//! `seal-fuzz --target NAME|all --seconds N [--seed S] [--crashes DIR]`
//!
//! Extra options: `--mem-mb M` (address-space headroom of the child over
//! its size at start, default 3072), `--hang-secs H` (default 10), `--work
//! DIR` (scratch), `--repro DIR` (run one saved case in-process).

use std::path::PathBuf;

use seal_fuzz::harness::{self, Options, CHILD_ENV};
use seal_fuzz::targets;

fn usage() -> ! {
    eprintln!(
        "usage: seal-fuzz --target NAME|all --seconds N [--seed S] [--crashes DIR] [--mem-mb M] [--hang-secs H] [--work DIR]\n       seal-fuzz --target NAME --repro CASE_DIR\ntargets: {}",
        targets::ALL.join(", ")
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut target = None;
    let mut seconds = 60u64;
    let mut millis = None;
    let mut seed = 1u64;
    let mut crashes = PathBuf::from("target/fuzz-crashes");
    let mut mem_mb = 3072u64;
    let mut hang_secs = 10u64;
    let mut work = None;
    let mut repro = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_else(|| usage());
        let num = |v: String| v.parse::<u64>().unwrap_or_else(|_| usage());
        match a.as_str() {
            "--target" => target = Some(value()),
            "--seconds" => seconds = num(value()),
            "--millis" => millis = Some(num(value())),
            "--seed" => seed = num(value()),
            "--crashes" => crashes = PathBuf::from(value()),
            "--mem-mb" => mem_mb = num(value()),
            "--hang-secs" => hang_secs = num(value()),
            "--work" => work = Some(PathBuf::from(value())),
            "--repro" => repro = Some(PathBuf::from(value())),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let Some(target) = target else { usage() };
    if let Some(dir) = repro {
        std::process::exit(harness::repro(&target, &dir));
    }
    if std::env::var_os(CHILD_ENV).is_some() {
        let work = work.unwrap_or_else(harness::default_work);
        let code = harness::run_child(
            &target,
            seed,
            millis.unwrap_or(seconds * 1000),
            &crashes,
            &work,
            mem_mb,
        );
        std::process::exit(code);
    }
    let names: Vec<String> = if target == "all" {
        targets::ALL.iter().map(|s| s.to_string()).collect()
    } else {
        target.split(',').map(str::to_string).collect()
    };
    for n in &names {
        if !targets::ALL.contains(&n.as_str()) {
            eprintln!("unknown target `{n}`");
            usage();
        }
    }
    let work = work.unwrap_or_else(harness::default_work);
    let opts = Options {
        targets: names,
        seconds,
        seed,
        crashes: crashes.clone(),
        mem_mb,
        hang_secs,
        work: work.clone(),
    };
    let results = harness::run_parent(&opts);
    let _ = std::fs::remove_dir_all(&work);
    let crashed = harness::print_table(&results);
    if crashed {
        println!("crashing inputs saved under {}", crashes.display());
        std::process::exit(1);
    }
}
