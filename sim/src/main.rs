//! `svcnet-sim`: runs simulation scenarios over seeds (`just sim`).
//!
//! ```text
//! svcnet-sim [SCENARIO|all] [--seed S] [--seeds N] [--first F] [--jobs J] [--trace-hash]
//!            [--trace] [--inject corrupt-byte|drop-write] [--list]
//! ```
//!
//! Without `--seed`, every chosen scenario runs over N seeds (F, F+1, …) on J worker threads
//! (each run is single-threaded and independent) and a summary table is printed. A failing run
//! prints the command that replays it and its seed is appended to `sim/seeds/<scenario>.txt`,
//! which `cargo test -p svcnet-sim` replays. With `--seed`, one run per scenario is printed in
//! full; `--trace-hash` prints only `scenario seed hash` lines (for `just sim-check`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use svcnet_sim::scenarios::SCENARIOS;
use svcnet_sim::{fmt_seed, parse_seed, Defect, Outcome, RunOpts};

struct Args {
    scenario: Option<String>,
    seed: Option<u64>,
    seeds: u64,
    first: u64,
    jobs: usize,
    trace_hash: bool,
    trace: bool,
    defect: Option<Defect>,
    save: bool,
}

fn usage() -> ! {
    eprintln!("usage: svcnet-sim [SCENARIO|all] [--seed S] [--seeds N] [--first F] [--jobs J] [--trace-hash] [--trace] [--inject corrupt-byte|drop-write] [--no-save] [--list]");
    eprintln!("scenarios:");
    for s in SCENARIOS {
        eprintln!("  {:<20} {:<5} {}", s.name, s.level, s.about);
    }
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        scenario: None,
        seed: None,
        seeds: 8,
        first: 1,
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
        trace_hash: false,
        trace: false,
        defect: None,
        save: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| {
            it.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value");
                usage()
            })
        };
        match arg.as_str() {
            "--seed" => a.seed = Some(parse_seed(&val("--seed")).unwrap_or_else(|| usage())),
            "--seeds" => a.seeds = val("--seeds").parse().unwrap_or_else(|_| usage()),
            "--first" => a.first = parse_seed(&val("--first")).unwrap_or_else(|| usage()),
            "--jobs" | "-j" => a.jobs = val("--jobs").parse().unwrap_or_else(|_| usage()),
            "--inject" => {
                a.defect = Some(Defect::parse(&val("--inject")).unwrap_or_else(|| usage()))
            }
            "--trace-hash" => a.trace_hash = true,
            "--trace" => a.trace = true,
            "--no-save" => a.save = false,
            "--list" => {
                for s in SCENARIOS {
                    println!("{}", s.name);
                }
                std::process::exit(0)
            }
            "-h" | "--help" => usage(),
            s if !s.starts_with('-') && a.scenario.is_none() => a.scenario = Some(s.to_string()),
            _ => usage(),
        }
    }
    a
}

fn seeds_file(scenario: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(format!("{scenario}.txt"))
}

/// Appends a failing seed to the scenario's seed file (once).
fn save_seed(o: &Outcome) {
    let path = seeds_file(o.scenario);
    let line = fmt_seed(o.seed);
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    if existing
        .lines()
        .any(|l| l.split('#').next().unwrap_or("").trim() == line)
    {
        return;
    }
    let _ = std::fs::create_dir_all(path.parent().expect("parent"));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let first = o.violations.first().map(String::as_str).unwrap_or("");
        let _ = writeln!(
            f,
            "{line} # {}",
            first.chars().take(120).collect::<String>()
        );
    }
}

fn replay_cmd(o: &Outcome) -> String {
    format!("just sim {} --seed {}", o.scenario, fmt_seed(o.seed))
}

fn print_full(o: &Outcome) {
    println!("scenario  {}", o.scenario);
    println!("seed      {}", fmt_seed(o.seed));
    println!("mix       {}", o.mix);
    println!("sim time  {} ms, {} events", o.sim_millis, o.events);
    println!("trace     {}", o.trace_hash);
    let c: Vec<String> = o.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("counters  {}", c.join(" "));
    for l in &o.log {
        println!("  {l}");
    }
    if o.passed() {
        println!("result    ok");
    } else {
        println!("result    FAILED");
        for v in &o.violations {
            println!("  violation: {v}");
        }
        println!("replay    {}", replay_cmd(o));
    }
}

fn main() {
    let args = parse();
    let chosen: Vec<&'static str> = match args.scenario.as_deref() {
        None | Some("all") => SCENARIOS.iter().map(|s| s.name).collect(),
        Some(name) => match svcnet_sim::scenarios::find(name) {
            Some(s) => vec![s.name],
            None => {
                eprintln!("unknown scenario {name:?}");
                usage()
            }
        },
    };
    let opts = RunOpts {
        defect: args.defect,
        keep_log: args.trace,
    };
    if let Some(seed) = args.seed {
        let mut failed = false;
        for name in chosen {
            let o = svcnet_sim::run(name, seed, &opts).expect("scenario");
            if args.trace_hash {
                println!("{} {} {}", o.scenario, fmt_seed(o.seed), o.trace_hash);
            } else {
                print_full(&o);
            }
            if !o.passed() {
                failed = true;
                if args.save && args.defect.is_none() {
                    save_seed(&o);
                }
            }
        }
        std::process::exit(i32::from(failed));
    }
    // Many seeds: a queue of (scenario, seed) jobs on J threads.
    let jobs: Vec<(&'static str, u64)> = chosen
        .iter()
        .flat_map(|s| (0..args.seeds).map(move |k| (*s, args.first.wrapping_add(k))))
        .collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
    let started = std::time::Instant::now(); // wall time for the summary only, never in a run
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(name, seed)) = jobs.get(i) else {
                    return;
                };
                let o = svcnet_sim::run(name, seed, &opts).expect("scenario");
                if !o.passed() {
                    eprintln!(
                        "FAIL {} seed {} [{}]\n  {}\n  replay: {}",
                        o.scenario,
                        fmt_seed(o.seed),
                        o.mix,
                        o.violations.join("\n  "),
                        replay_cmd(&o)
                    );
                }
                results.lock().unwrap_or_else(|e| e.into_inner()).push(o);
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|o| (chosen.iter().position(|s| *s == o.scenario), o.seed));
    println!(
        "{:<20} {:>5} {:>5} {:>5} {:>9} {:>9} {:>10}",
        "scenario", "runs", "pass", "fail", "streams", "failed", "sim-time"
    );
    let mut any_failed = false;
    for name in &chosen {
        let rs: Vec<&Outcome> = results.iter().filter(|o| o.scenario == *name).collect();
        let pass = rs.iter().filter(|o| o.passed()).count();
        let ok: u64 = rs
            .iter()
            .map(|o| o.counters.get("streams_ok").copied().unwrap_or(0))
            .sum();
        let bad: u64 = rs
            .iter()
            .map(|o| o.counters.get("streams_failed").copied().unwrap_or(0))
            .sum();
        let t: u64 = rs.iter().map(|o| o.sim_millis).sum();
        println!(
            "{:<20} {:>5} {:>5} {:>5} {:>9} {:>9} {:>9}s",
            name,
            rs.len(),
            pass,
            rs.len() - pass,
            ok + bad,
            bad,
            t / 1000
        );
    }
    for o in &results {
        if !o.passed() {
            any_failed = true;
            if args.save && args.defect.is_none() {
                save_seed(o);
            }
            println!("FAILED: {}    # {}", replay_cmd(o), o.mix);
        }
    }
    println!(
        "{} runs in {:.1}s wall on {} jobs{}",
        results.len(),
        started.elapsed().as_secs_f64(),
        args.jobs,
        if any_failed && args.save && args.defect.is_none() {
            "; failing seeds appended to sim/seeds/"
        } else {
            ""
        }
    );
    std::process::exit(i32::from(any_failed));
}
