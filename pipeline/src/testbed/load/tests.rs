//! The load generator's unit tests: the mix, percentiles, the intended schedule and the
//! steady rate.

use super::*;

fn config(invalid: f64, reject: f64) -> LoadConfig {
    LoadConfig {
        orders: 1000,
        rate: Rate::PerSecond(1.0),
        account: "a".into(),
        reject_share: reject,
        invalid_share: invalid,
        wait_secs: 1,
        until: Until::Final,
        depth: DepthConfig {
            poll_group: None,
            check_tiers: crate::poll::DEFAULT_CHECK_TIERS.into(),
        },
    }
}

#[test]
fn the_mix_follows_the_shares() {
    let c = config(0.1, 0.2);
    let mut mix = Seeded::new(7);
    let (mut invalid, mut rejected) = (0, 0);
    for i in 0..1000 {
        let (_, bytes) = make_event(&mut mix, &c, i);
        match OrderCreated::decode(&bytes, 1 << 20) {
            Err(_) => invalid += 1,
            Ok(o) if o.product["kupur"] == "999" => rejected += 1,
            Ok(_) => {}
        }
    }
    assert!((70..130).contains(&invalid), "{invalid}");
    assert!((150..250).contains(&rejected), "{rejected}");
}

#[test]
fn percentiles_pick_from_the_sorted_latencies() {
    let report = LoadReport {
        latencies: (1..=100).map(Duration::from_millis).collect(),
        ..LoadReport::default()
    };
    assert_eq!(report.percentile(50.0), Some(Duration::from_millis(51)));
    assert_eq!(report.percentile(100.0), Some(Duration::from_millis(100)));
    assert_eq!(LoadReport::default().percentile(50.0), None);
}

#[test]
fn the_intended_schedule_is_fixed_by_the_rate() {
    let at = |i| intended_offset(Rate::PerSecond(250.0), i);
    assert_eq!(at(0), Some(Duration::ZERO));
    assert_eq!(at(1), Some(Duration::from_millis(4)));
    assert_eq!(at(1000), Some(Duration::from_secs(4)));
    // At `max` no schedule: the first attempt to hand the order over is its time.
    assert_eq!(intended_offset(Rate::Max, 7), None);
}

#[test]
fn latencies_count_from_the_intended_time_so_a_stalled_generator_shows() {
    // Ten orders due at 100/s (every 10 ms); the generator stalls and sends them all
    // at 1 s, and each completes 5 ms after it was sent. Measured from the send the
    // latency would be 5 ms for all; from the intended time it is 915..1005 ms.
    let done = Duration::from_millis(1005);
    let mut latencies: Vec<Duration> = (0..10)
        .map(|i| since_intended(intended_offset(Rate::PerSecond(100.0), i).unwrap(), done))
        .collect();
    latencies.sort();
    assert_eq!(latencies[0], Duration::from_millis(915));
    assert_eq!(
        percentile(&latencies, 50.0),
        Some(Duration::from_millis(965))
    );
    assert_eq!(
        percentile(&latencies, 100.0),
        Some(Duration::from_millis(1005))
    );
    // An end before the intended time (a clock step) counts as zero, not a panic.
    assert_eq!(
        since_intended(Duration::from_secs(2), Duration::from_secs(1)),
        Duration::ZERO
    );
}

#[test]
fn the_steady_rate_leaves_out_ramp_and_tail() {
    // 100 answers: 10 in the first 5 s (ramp), then one every 0.1 s, then a slow tail.
    let mut secs: Vec<f64> = (0..10).map(|i| i as f64 * 0.5).collect();
    secs.extend((0..80).map(|i| 5.0 + i as f64 * 0.1));
    secs.extend((0..10).map(|i| 20.0 + i as f64 * 3.0));
    secs.reverse(); // any order
    let (a, b) = steady_window(&secs).unwrap();
    assert_eq!((a, b), (5.0, 20.0));
    assert_eq!(steady_rate(&secs), Some(80.0 / 15.0));
    assert_eq!(steady_rate(&secs[..5]), None);
    assert_eq!(steady_rate(&[1.0; 20]), None);
}

#[test]
fn a_rate_is_positive_or_max() {
    assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
    assert_eq!("250".parse::<Rate>(), Ok(Rate::PerSecond(250.0)));
    for bad in ["0", "-3", "NaN", "inf", "fast"] {
        let e = bad.parse::<Rate>().unwrap_err();
        assert!(e.contains("positive number") && e.contains("max"), "{e}");
    }
}
