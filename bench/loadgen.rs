//! An open-loop HTTP load generator for `bench/overload.sh`: sends GETs at a fixed rate whatever the server
//! does (unlike wrk, which waits for an answer before it sends again and so slows down with the server), and
//! measures each request's latency from the moment it was due, so a server that falls behind is charged for
//! the wait (no coordinated omission).
//!
//! Plain HTTP/1.1 over keep-alive connections it opens as it needs them, with a minimal response reader, so
//! that the generator's own CPU use stays small next to the server's on a shared machine.
//!
//!   cargo run --release --example loadgen -- HOST:PORT PATH RATE SECONDS [HEADER: VALUE]...
//!
//! Prints one line of `key=value` pairs: requests due and sent, answers by status, transport errors,
//! requests not sent because `MAX_OUTSTANDING` were already waiting, and latency percentiles (ms) of the
//! 2xx answers and of the refusals (429 and 503).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Requests waiting for an answer at once, at most; past that a due request is counted as not sent.
const MAX_OUTSTANDING: usize = 4096;

#[derive(Default)]
struct Tally {
    ok: Vec<f64>,
    refused: Vec<f64>,
    too_many: u64,
    unavailable: u64,
    other: u64,
    errors: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Keep-alive connections not in use.
type Idle = Arc<Mutex<Vec<TcpStream>>>;

/// Sends `request` on an idle connection or a new one; returns the status once the whole answer is read.
async fn exchange(addr: &str, request: &[u8], idle: &Idle) -> std::io::Result<u16> {
    let reused = idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut stream = match reused {
        Some(s) => s,
        None => {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            s
        }
    };
    stream.write_all(request).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (status, head_end, length, close) = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(std::io::Error::other)?;
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| std::io::Error::other("status"))?;
            let mut length = 0usize;
            let mut close = false;
            for line in head.split("\r\n").skip(1) {
                let Some((name, value)) = line.split_once(':') else { continue };
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().map_err(std::io::Error::other)?;
                } else if name.eq_ignore_ascii_case("connection")
                    && value.trim().eq_ignore_ascii_case("close")
                {
                    close = true;
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(std::io::Error::other("chunked answers are not read here"));
                }
            }
            break (status, end + 4, length, close);
        }
    };
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if !close {
        idle.lock().unwrap_or_else(|e| e.into_inner()).push(stream);
    }
    Ok(status)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, path, rate, seconds, headers @ ..] = args.as_slice() else {
        return Err("usage: loadgen HOST:PORT PATH RATE SECONDS [HEADER: VALUE]...".into());
    };
    let rate: f64 = rate.parse()?;
    let seconds: f64 = seconds.parse()?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for h in headers {
        let (name, value) = h.split_once(':').ok_or("a header is NAME: VALUE")?;
        request.push_str(&format!("{}: {}\r\n", name.trim(), value.trim()));
    }
    request.push_str("\r\n");
    let request: Arc<[u8]> = request.into_bytes().into();
    let addr: Arc<str> = addr.as_str().into();
    let idle: Idle = Arc::default();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let outstanding = Arc::new(tokio::sync::Semaphore::new(MAX_OUTSTANDING));
    let total = (rate * seconds).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let mut not_sent = 0u64;
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = outstanding.clone().try_acquire_owned() else {
            not_sent += 1;
            continue;
        };
        let (addr, request, idle, tally) = (addr.clone(), request.clone(), idle.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let result = exchange(&addr, &request, &idle).await;
            let ms = due.elapsed().as_secs_f64() * 1000.0;
            drop(permit);
            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(200..=299) => t.ok.push(ms),
                Ok(429) => {
                    t.too_many += 1;
                    t.refused.push(ms);
                }
                Ok(503) => {
                    t.unavailable += 1;
                    t.refused.push(ms);
                }
                Ok(_) => t.other += 1,
                Err(_) => t.errors += 1,
            }
        }));
    }
    let sent_for = start.elapsed().as_secs_f64();
    for task in tasks {
        task.await?;
    }
    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
    t.ok.sort_by(f64::total_cmp);
    t.refused.sort_by(f64::total_cmp);
    println!(
        "due={total} sent={} seconds={sent_for:.1} ok={} too_many={} unavailable={} other={} errors={} not_sent={not_sent} \
         ok_rate={:.0} ok_p50_ms={:.1} ok_p99_ms={:.1} ok_max_ms={:.1} refused_p50_ms={:.1} refused_p99_ms={:.1}",
        total - not_sent,
        t.ok.len(),
        t.too_many,
        t.unavailable,
        t.other,
        t.errors,
        t.ok.len() as f64 / sent_for,
        percentile(&t.ok, 50.0),
        percentile(&t.ok, 99.0),
        t.ok.last().copied().unwrap_or(f64::NAN),
        percentile(&t.refused, 50.0),
        percentile(&t.refused, 99.0),
    );
    Ok(())
}
