//! Command 1 as a new user runs it: `maintainpro demo --for ...` on embedded defaults (a
//! throwaway PostgreSQL cluster and the embedded broker) ends with a JSON summary that shows
//! the simulated breach became exactly one work order.

use std::process::Command;

#[test]
fn the_demo_opens_one_work_order_and_ends_with_a_json_summary() {
    let out = Command::new(env!("CARGO_BIN_EXE_maintainpro"))
        .args([
            "demo",
            "--for",
            "25s",
            "--breach-after",
            "2s",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("DATABASE_URL")
        .env_remove("MQTT_URL")
        .env("RUST_LOG", "info")
        .output()
        .expect("the maintainpro binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("/api/v1/work-orders"),
        "the API URL is printed: {stdout}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
    assert_eq!(summary["work_orders_opened"], 1, "{summary}\n{stderr}");
    assert!(summary["alarms_raised"].as_u64() >= Some(1), "{summary}");
    assert!(summary["readings_stored"].as_u64() > Some(40), "{summary}");
    assert_eq!(summary["dead_letters"], 0, "{summary}");
}
