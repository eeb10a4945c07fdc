//! `snapgate-sim`: runs seeds of the deterministic simulation and reports violations.

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use snapgate_sim::{Options, Sabotage, run_seed};

/// The deterministic simulation of snapgate (see docs/reliability.md).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// How many seeds to run (from --first-seed on).
    #[arg(long, env = "SNAPGATE_SIM_SEEDS", default_value_t = 10)]
    seeds: u64,
    /// The first seed of the range.
    #[arg(long, env = "SNAPGATE_SIM_FIRST_SEED", default_value_t = 0)]
    first_seed: u64,
    /// Replays this one seed (instead of a range).
    #[arg(long, env = "SNAPGATE_SIM_SEED")]
    seed: Option<u64>,
    /// Print each seed's event trace as it runs.
    #[arg(long, env = "SNAPGATE_SIM_VERBOSE")]
    verbose: bool,
    /// Virtual minutes of faults and edits per seed.
    #[arg(long, env = "SNAPGATE_SIM_MINUTES", default_value_t = 90)]
    minutes: u64,
    /// Virtual minutes after them, faults off, to settle.
    #[arg(long, env = "SNAPGATE_SIM_SETTLE_MINUTES", default_value_t = 40)]
    settle_minutes: u64,
    /// Soak: keep running seeds (from --first-seed) until one fails or --seeds have passed,
    /// printing progress every 10 seeds.
    #[arg(long, env = "SNAPGATE_SIM_SOAK")]
    soak: bool,
    /// Runs each seed twice and compares the digests of their traces.
    #[arg(long, env = "SNAPGATE_SIM_CHECK_REPLAY")]
    check_replay: bool,
    /// At the end, abort the applications (dropping their guards, quiesced or not) instead of
    /// letting each stop once it holds nothing.
    #[arg(long, env = "SNAPGATE_SIM_DROP_GUARDS")]
    drop_guards: bool,
    /// Plants a bug in the simulation's own application or bookkeeping, to show that an
    /// invariant catches it.
    #[arg(long, value_enum, hide = true)]
    sabotage: Option<Sabotage>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = Options {
        horizon: Duration::from_secs(args.minutes * 60),
        settle: Duration::from_secs(args.settle_minutes * 60),
        verbose: args.verbose,
        drop_guards: args.drop_guards,
        sabotage: args.sabotage,
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first_seed..args.first_seed.saturating_add(args.seeds)).collect(),
    };
    let started = std::time::Instant::now();
    let mut ran = 0u64;
    let mut replay_mismatches = 0u64;
    for seed in &seeds {
        let outcome = match run_seed(*seed, &options) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("seed {seed}: the simulation could not run: {e:#}");
                return ExitCode::from(2);
            }
        };
        ran += 1;
        if args.check_replay {
            match run_seed(*seed, &options) {
                Ok(again) if again.digest == outcome.digest => {}
                Ok(again) => {
                    replay_mismatches += 1;
                    let diverged = outcome
                        .trace
                        .iter()
                        .zip(&again.trace)
                        .position(|(a, b)| a != b)
                        .unwrap_or(outcome.trace.len().min(again.trace.len()));
                    println!(
                        "seed {seed}: replay differs from event {diverged}: {:?} / {:?}",
                        outcome.trace.get(diverged),
                        again.trace.get(diverged)
                    );
                }
                Err(e) => eprintln!("seed {seed}: replay could not run: {e:#}"),
            }
        }
        if !outcome.violations.is_empty() {
            for v in &outcome.violations {
                println!(
                    "seed {seed}: violation of {} at {:.3}s: {}",
                    v.invariant,
                    v.at.as_secs_f64(),
                    v.details
                );
            }
            println!(
                "seeds: {ran}, violations: {} (replay with --seed {seed} --verbose)",
                outcome.violations.len()
            );
            return ExitCode::FAILURE;
        }
        if args.soak && ran.is_multiple_of(10) {
            println!(
                "soak: {ran} seeds, no violation, {:.1}s ({:.2}s a seed)",
                started.elapsed().as_secs_f64(),
                started.elapsed().as_secs_f64() / ran as f64
            );
        }
    }
    if args.check_replay {
        println!("replays: {ran}, differing: {replay_mismatches}");
    }
    println!(
        "seeds: {ran}, violations: 0 ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
