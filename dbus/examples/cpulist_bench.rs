//! Prints how long the cpulist parser takes on the worst input a caller can send: the longest
//! list accepted (16 KiB) of the widest ranges (`1-8191,1-8191,...`), and a few other shapes.
//! The service parses a caller's list before polkit is asked, so this is the CPU time any local
//! user can make it spend per call (goal: well under 1 ms).
//!
//! `cargo run --release -p kvmisolate-dbus --example cpulist_bench`

use std::hint::black_box;
use std::time::{Duration, Instant};

use kvmisolate_dbus::CpuSet;
use kvmisolate_dbus::cpulist::MAX_TEXT_LEN;

/// `item,` repeated to fill the 16 KiB limit (without the last comma).
fn filled(item: &str) -> String {
    let mut text = String::new();
    while text.len() + item.len() < MAX_TEXT_LEN {
        text.push_str(item);
        text.push(',');
    }
    text.pop();
    text
}

fn measure(label: &str, text: &str) {
    let ok = CpuSet::parse(text).is_ok();
    let rounds = 2000;
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            let _ = black_box(CpuSet::parse(black_box(text)));
            t.elapsed()
        })
        .collect();
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "{label:<36} {:>6} bytes  {:<8} median {:>8.1} us  p99 {:>8.1} us  max {:>8.1} us",
        text.len(),
        if ok { "accepted" } else { "refused" },
        at(0.5),
        at(0.99),
        at(1.0),
    );
}

fn main() {
    println!("CpuSet::parse over {} rounds each:", 2000);
    measure("1-8191,1-8191,... (worst case)", &filled("1-8191"));
    measure(
        "0-8191,... then a bad last item",
        &format!("{}x", filled("0-8191")),
    );
    measure("1,2,3,... single CPUs", &filled("8191"));
    measure("typical: 2-5,8-11", "2-5,8-11");
}
