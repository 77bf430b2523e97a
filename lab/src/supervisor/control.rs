//! The supervisor's unix-socket protocol: one JSON request line per connection, answered by
//! JSON lines (`Line`s of text, then one `Done`).

use serde::{Deserialize, Serialize};

pub const SOCKET: &str = "ctl.sock";
pub const PID_FILE: &str = "supervisor.pid";
pub const LOG_FILE: &str = "supervisor.log";
/// Written once the lab is up: the [`State`] as JSON.
pub const READY_FILE: &str = "state.json";
/// The injected matrix, as `meshprobe matrix --expected` reads it.
pub const EXPECTED_FILE: &str = "expected.csv";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    Logs { target: String },
    Chaos { args: Vec<String> },
    Down,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Line(String),
    Done { ok: bool, error: Option<String> },
}

/// What clients need to reach the lab without asking the supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    pub core_ns: String,
    pub node_ns: Vec<String>,
    pub bootstrap: String,
    pub zookeeper: String,
    pub topic: String,
    pub meshprobe_bin: String,
}
