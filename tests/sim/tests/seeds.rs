//! A handful of seeds, fast enough for `./scripts/test`, and the replay of one seed compared
//! event for event.

use std::time::Duration;

use snapgate_sim::{Options, Sabotage, run_seed};

/// Shorter than the binary's default seed: 30 virtual minutes of faults, 30 to settle.
fn short() -> Options {
    Options {
        horizon: Duration::from_secs(30 * 60),
        settle: Duration::from_secs(30 * 60),
        ..Options::default()
    }
}

#[test]
fn a_handful_of_seeds_break_no_invariant() {
    for seed in 0..4 {
        let outcome = run_seed(seed, &short()).unwrap();
        assert!(
            outcome.violations.is_empty(),
            "seed {seed}: {:#?}\n(replay: cargo run -p snapgate-sim -- --seed {seed} --minutes 30 --settle-minutes 30 --verbose)",
            outcome.violations
        );
    }
}

#[test]
fn a_seed_replays_event_for_event() {
    let first = run_seed(3, &short()).unwrap();
    let again = run_seed(3, &short()).unwrap();
    assert!(first.trace.len() > 20, "{:#?}", first.trace);
    assert_eq!(first.trace, again.trace);
    assert_eq!(first.digest, again.digest);
}

/// Each planted bug is caught by the invariant that guards against it: the checker can fail.
#[test]
fn every_planted_bug_is_caught_by_its_invariant() {
    for (sabotage, invariant) in [
        (Sabotage::EarlyUnquiesce, "copy_inside_hold"),
        (Sabotage::ForgetUnquiesce, "guard_unquiesced"),
        (Sabotage::PhantomAck, "acknowledged_kept"),
    ] {
        let options = Options {
            sabotage: Some(sabotage),
            ..short()
        };
        let caught = (0..3).any(|seed| {
            run_seed(seed, &options)
                .unwrap()
                .violations
                .iter()
                .any(|v| v.invariant == invariant)
        });
        assert!(caught, "{sabotage:?} was not caught by {invariant}");
    }
}
