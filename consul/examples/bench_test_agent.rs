//! How long a `TestAgent` takes to start (until leader, its node's serfHealth
//! check passing), to restart, and to stop when dropped, in each mode: the figures
//! behind the choice of container mode as the default for tests.
//!
//! `cargo run -p ranger-consul --features test-agent --example bench_test_agent [RUNS]`
//! (container mode needs `DOCKER_HOST` at an engine with the image, as
//! bin/test sets up; process mode needs the consul binary).

use std::time::{Duration, Instant};

use ranger_consul::test_agent::{Mode, TestAgent};

fn summary(times: &mut [Duration]) -> String {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "min {:.0} ms, median {:.0} ms, max {:.0} ms",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 5,
    };
    if runs == 0 {
        return Err("RUNS must be at least 1".into());
    }
    for mode in [Mode::Container, Mode::Process] {
        let (mut starts, mut restarts, mut drops) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let started = Instant::now();
            let mut agent = TestAgent::start_in(mode).await?;
            starts.push(started.elapsed());
            let restarted = Instant::now();
            agent.restart().await?;
            restarts.push(restarted.elapsed());
            let dropped = Instant::now();
            drop(agent);
            drops.push(dropped.elapsed());
        }
        println!("{mode:?} ({runs} runs)");
        println!("  start:   {}", summary(&mut starts));
        println!("  restart: {}", summary(&mut restarts));
        println!("  drop:    {}", summary(&mut drops));
    }
    Ok(())
}
