//! Phases 3 and 4, the chaos, one tick at a time while the load goes in: a stage killed
//! with SIGKILL and started again (round robin); one fault wave of the provider after the
//! other, each until the simulator injected enough of its kind; the broker restarted at
//! tick 4, PostgreSQL at tick 12. It ends once the load is out, both restarts are done,
//! every stage was killed often enough and every wave came. Should the load be out before
//! the last wave, a few more valid orders per tick keep the provider busy.

use crate::bed::Bed;
use crate::load::{self, Load, Published};
use crate::settings::{
    provider_calls, Clock, Size, TICK, WAVES, WAVE_MAX_TICKS, WAVE_MIN, WAVE_RATE,
};
use orderflow::testbed::sim::{Fault, FaultWave};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// What the chaos did, for the figures.
pub struct Attacked {
    pub published: Published,
    /// Seconds from stop to ready.
    pub broker_down_s: Option<f64>,
    pub pg_down_s: Option<f64>,
}

/// The chaos phase's state between ticks.
struct Attack<'a> {
    bed: &'a Bed,
    clock: &'a Clock,
    tick: usize,
    broker_restart: Option<JoinHandle<f64>>,
    pg_restart: Option<JoinHandle<f64>>,
    broker_down_s: Option<f64>,
    pg_down_s: Option<f64>,
    wave_index: usize,
    /// Ticks of the current wave that saw provider traffic.
    wave_ticks: usize,
    /// Faults of the current wave's kind counted before it began.
    wave_base: u64,
    last_traffic: u64,
    top_ups: usize,
}

/// Runs the ticks until the chaos is over, then makes the provider healthy again and waits
/// for the publisher.
pub async fn run(
    bed: &Bed,
    clock: &Clock,
    load: &mut Load,
    publisher: JoinHandle<Published>,
    size: &Size,
) -> Attacked {
    let mut attack = Attack {
        bed,
        clock,
        tick: 0,
        broker_restart: None,
        pg_restart: None,
        broker_down_s: None,
        pg_down_s: None,
        wave_index: 0,
        wave_ticks: 0,
        wave_base: 0,
        last_traffic: provider_calls(&bed.sim.stats()),
        top_ups: 0,
    };
    let top_up_producer = bed.kafka.producer().unwrap();
    let chaos_deadline = Instant::now() + Duration::from_secs(600 + size.orders as u64 / 5);
    loop {
        assert!(
            Instant::now() < chaos_deadline,
            "the chaos phase did not end"
        );
        let stage = attack.kill_next_stage();
        // The waves come round again for as long as the chaos lasts.
        bed.sim.set_wave(Some(FaultWave {
            fault: WAVES[attack.wave_index % WAVES.len()],
            rate: WAVE_RATE,
        }));
        if publisher.is_finished() && attack.wave_index < WAVES.len() {
            load::top_up(&top_up_producer, &bed.kafka, &mut load.valid, 12).await;
            attack.top_ups += 12;
        }
        attack.start_restarts();
        tokio::time::sleep(Duration::from_millis(400)).await;
        bed.stages.lock().unwrap()[stage].spawn();
        tokio::time::sleep(TICK).await;
        attack.collect_restarts().await;
        attack.tick += 1;
        attack.count_wave();
        if publisher.is_finished() && attack.is_over(size.kills_per_stage) {
            break;
        }
    }
    bed.sim.set_wave(None);
    let mut published = publisher.await.unwrap();
    published.valid += attack.top_ups;
    clock.say(&format!(
        "chaos over after {} ticks; the provider is healthy again",
        attack.tick
    ));
    Attacked {
        published,
        broker_down_s: attack.broker_down_s,
        pg_down_s: attack.pg_down_s,
    }
}

impl Attack<'_> {
    /// SIGKILLs this tick's stage; returns its index, to start it again.
    fn kill_next_stage(&self) -> usize {
        let mut all = self.bed.stages.lock().unwrap();
        let index = self.tick % all.len();
        all[index].sigkill();
        self.clock.say(&format!("SIGKILL {}", all[index].name));
        index
    }

    /// The broker's restart at tick 4, PostgreSQL's at tick 12, in the background.
    fn start_restarts(&mut self) {
        if self.tick == 4 && self.broker_restart.is_none() {
            let broker = Arc::clone(&self.bed.broker);
            self.clock.say("restarting the broker");
            self.broker_restart = Some(tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                broker.script("stop");
                broker.script("start");
                t.elapsed().as_secs_f64()
            }));
        }
        if self.tick == 12 && self.pg_restart.is_none() {
            let pg = Arc::clone(&self.bed.pg);
            self.clock.say("restarting PostgreSQL");
            self.pg_restart = Some(tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                pg.stop();
                std::thread::sleep(Duration::from_secs(3));
                pg.start_again();
                t.elapsed().as_secs_f64()
            }));
        }
    }

    /// Notes a restart that is done, with its time.
    async fn collect_restarts(&mut self) {
        if self
            .broker_restart
            .as_ref()
            .is_some_and(|t| t.is_finished())
        {
            self.broker_down_s = Some(self.broker_restart.take().unwrap().await.unwrap());
            self.clock.say("broker back");
        }
        if self.pg_restart.as_ref().is_some_and(|t| t.is_finished()) {
            self.pg_down_s = Some(self.pg_restart.take().unwrap().await.unwrap());
            self.clock.say("PostgreSQL back");
        }
    }

    /// Counts the tick for the current wave and moves to the next one once enough faults of
    /// its kind were injected or it lasted `WAVE_MAX_TICKS` ticks with traffic.
    fn count_wave(&mut self) {
        let sim = &self.bed.sim;
        let fault = WAVES[self.wave_index % WAVES.len()];
        // Ticks without traffic do not count: while the broker restarts, or while a group
        // rebalances after a kill (a killed member holds the rebalance until its session
        // times out), the provider sees no calls and no wave can show.
        let traffic = provider_calls(&sim.stats());
        self.wave_ticks +=
            usize::from(self.broker_restart.is_none() && traffic > self.last_traffic);
        self.last_traffic = traffic;
        let count = |fault: Fault| {
            sim.stats()
                .faults_by_kind
                .get(fault.as_str())
                .copied()
                .unwrap_or(0)
        };
        let injected = count(fault) - self.wave_base;
        if injected >= WAVE_MIN || self.wave_ticks >= WAVE_MAX_TICKS {
            self.clock.say(&format!(
                "wave of {} over: {injected} injected",
                fault.as_str()
            ));
            self.wave_index += 1;
            self.wave_ticks = 0;
            self.wave_base = count(WAVES[self.wave_index % WAVES.len()]);
        }
    }

    /// Both restarts done, every stage killed `kills_per_stage` times, every wave came.
    fn is_over(&self, kills_per_stage: u32) -> bool {
        let killed_enough = self
            .bed
            .stages
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.kills >= kills_per_stage);
        self.broker_down_s.is_some()
            && self.pg_down_s.is_some()
            && killed_enough
            && self.wave_index >= WAVES.len()
    }
}
