//! Captures every log line a test binary produces, so tests can assert what never appears
//! in them (G5: no PIN, kod or sifre).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

/// Installs the capturing subscriber (debug level for orderflow) once per test binary.
pub fn capture() {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(Arc::clone(&buffer));
        tracing_subscriber::fmt()
            .with_env_filter(
                "debug,h2=info,hyper=info,hyper_util=info,reqwest=info,sqlx=info,tower=info",
            )
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .init();
        buffer
    });
}

/// Everything captured so far.
pub fn text() -> String {
    String::from_utf8_lossy(&LOGS.get().expect("capture() first").lock().unwrap()).into_owned()
}

/// Whether `text` holds something shaped like the simulator's PINs (`XXXX-XXXX-XXXX-XXXX`,
/// uppercase letters and digits) standing on its own: a run of four-character groups
/// inside a longer token (a UUID whose groups happen to be all digits) is not one.
pub fn has_pin_shape(text: &str) -> bool {
    let b = text.as_bytes();
    let pin_char = |c: u8| c.is_ascii_uppercase() || c.is_ascii_digit();
    let joins = |c: u8| c.is_ascii_alphanumeric() || c == b'-';
    (0..b.len().saturating_sub(18)).any(|i| {
        let shaped = (0..19).all(|k| {
            if k % 5 == 4 {
                b[i + k] == b'-'
            } else {
                pin_char(b[i + k])
            }
        });
        let alone_before = i == 0 || !joins(b[i - 1]);
        let alone_after = i + 19 == b.len() || !joins(b[i + 19]);
        shaped && alone_before && alone_after
    })
}
