//! What runs beside the chaos until the drain is over: a supervisor that starts again the
//! stages that ended by themselves, a scraper that keeps every /metrics page (for the
//! secret scan), and a watcher that counts final rows that changed afterwards (G3).

use crate::stages::Stages;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub struct Background {
    stop: Arc<AtomicBool>,
    supervisor: JoinHandle<()>,
    scraper: JoinHandle<()>,
    watcher: JoinHandle<Vec<String>>,
    scrapes: Arc<Mutex<Vec<String>>>,
}

/// What the background saw.
pub struct Seen {
    /// Final rows that changed afterwards.
    pub live_regressions: Vec<String>,
    /// Every /metrics page scraped.
    pub scrapes: Vec<String>,
}

impl Background {
    pub fn start(stages: &Stages, pool: &PgPool) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let supervisor = {
            let (stages, stop) = (Arc::clone(stages), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for stage in stages.lock().unwrap().iter_mut() {
                        stage.supervise();
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        };
        let scrapes: Arc<Mutex<Vec<String>>> = Arc::default();
        let scraper = tokio::spawn(scrape(
            Arc::clone(stages),
            Arc::clone(&stop),
            Arc::clone(&scrapes),
        ));
        let watcher = tokio::spawn(watch_final_rows(pool.clone(), Arc::clone(&stop)));
        Background {
            stop,
            supervisor,
            scraper,
            watcher,
            scrapes,
        }
    }

    /// Stops the three.
    pub async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.supervisor.await.unwrap();
        self.scraper.await.unwrap();
        let live_regressions = self.watcher.await.unwrap();
        let scrapes = self.scrapes.lock().unwrap().clone();
        Seen {
            live_regressions,
            scrapes,
        }
    }
}

/// Every 2 s, the /metrics page of every running stage.
async fn scrape(stages: Stages, stop: Arc<AtomicBool>, scrapes: Arc<Mutex<Vec<String>>>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    while !stop.load(Ordering::Relaxed) {
        let ports: Vec<u16> = stages
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.child.is_some())
            .map(|s| s.metrics_port)
            .collect();
        for port in ports {
            let url = format!("http://127.0.0.1:{port}/metrics");
            if let Ok(resp) = client.get(&url).send().await {
                if let Ok(body) = resp.text().await {
                    scrapes.lock().unwrap().push(body);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Reads the final rows every second and counts any that changed afterwards (G3), and
/// returns when `stop` is set.
async fn watch_final_rows(pool: PgPool, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut seen: HashMap<Uuid, (String, i64)> = HashMap::new();
    let mut regressions = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let rows: Result<Vec<(Uuid, String, i64)>, _> =
            sqlx::query_as("SELECT order_id, state, version FROM orders")
                .fetch_all(&pool)
                .await;
        if let Ok(rows) = rows {
            let now: HashMap<Uuid, (String, i64)> =
                rows.into_iter().map(|(id, s, v)| (id, (s, v))).collect();
            for (id, before) in &seen {
                if now.get(id) != Some(before) {
                    regressions.push(format!(
                        "order {id}: final row {before:?} became {:?}",
                        now.get(id)
                    ));
                }
            }
            seen = now
                .into_iter()
                .filter(|(_, (s, _))| s == "completed" || s == "failed")
                .collect();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    regressions
}
