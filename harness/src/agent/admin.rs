//! The agent's admin port: plain HTTP from inside the namespace, and /metrics text.

use super::*;

/// Sum of the samples of `name` in a Prometheus text exposition (`name` or `name{...}`,
/// followed by a value); `None` if there is none.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let rest = if rest.starts_with('{') {
            match rest.find('}') {
                Some(i) => &rest[i + 1..],
                None => continue,
            }
        } else if rest.starts_with(' ') {
            rest
        } else {
            continue;
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// A plain HTTP/1.0 GET from inside namespace `ns_name` (a harness namespace): (status, body).
pub fn http_get_in(ns_name: &str, sa: SocketAddr, path: &str) -> Result<(u16, String)> {
    let ns_name = ns_name.to_string();
    let path = path.to_string();
    let h = thread::spawn(move || -> Result<(u16, String)> {
        let fd = File::open(format!("/run/netns/{ns_name}"))
            .with_context(|| format!("opening /run/netns/{ns_name}"))?;
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into {ns_name}"))?;
        let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2))
            .with_context(|| format!("connecting to {sa}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {sa}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .with_context(|| format!("reading the answer to GET {path}"))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("GET {path}: no header end in {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("GET {path}: bad status line in {head:?}"))?;
        Ok((status, body.to_string()))
    });
    h.join().map_err(|_| anyhow!("http_get thread panicked"))?
}
