//! An agent's JSON lines: each as read, and the fields tests pick from them.

use super::*;

/// One stdout JSON line and when the harness read it.
#[derive(Clone, Debug)]
pub struct Event {
    pub at: Instant,
    pub v: Value,
}

impl Event {
    pub fn kind(&self) -> &str {
        self.v["type"].as_str().unwrap_or("")
    }
}

/// A number field that may be a JSON number or a decimal string (proto3 JSON writes 64-bit
/// integers as strings); 0 when absent.
pub fn num(v: &Value, key: &str) -> u64 {
    match &v[key] {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().map(|f| f as u64))
            .unwrap_or(0),
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// `v[outer][inner]` as a signed number (e.g. `network_rtt_ns.p50`); `None` when absent.
pub fn num2(v: &Value, outer: &str, inner: &str) -> Option<i64> {
    match &v[outer][inner] {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// `src`, `dst` and `window_seq` of a summary line: what identifies it.
pub fn summary_key(v: &Value) -> (String, String, u64) {
    (
        v["src"].as_str().unwrap_or("").to_string(),
        v["dst"].as_str().unwrap_or("").to_string(),
        num(v, "window_seq"),
    )
}
