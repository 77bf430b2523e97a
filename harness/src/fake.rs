//! A scriptable fake Session-Reflector on a plain UDP socket: answers with hand-built STAMP
//! replies, and can duplicate, reorder or drop them on purpose.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::netns::Netns;
use crate::stamp::{build_reply, request_key, tai_now_ns};

/// What to do with the request carrying a given sender sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Reply,
    /// Send the reply twice, back to back.
    Duplicate,
    /// Hold the reply and send it right after the next request's reply.
    Reorder,
    /// Send nothing.
    Drop,
}

/// What the fake reflector did.
#[derive(Clone, Debug, Default)]
pub struct FakeStats {
    pub requests: u64,
    /// Requests too short to answer.
    pub malformed: u64,
    /// Reply datagrams sent, duplicates included.
    pub datagrams_sent: u64,
    /// Distinct requests answered.
    pub answered: u64,
    pub duplicated: u64,
    /// Replies sent after a later one.
    pub reordered: u64,
    pub dropped: u64,
}

/// The running fake reflector; `stop` (or drop) ends it.
pub struct FakeReflector {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<FakeStats>>>,
    pub local: SocketAddr,
}

/// Upper bound on a fake reflector's life.
pub const FAKE_MAX_LIFE: Duration = Duration::from_secs(120);

impl FakeReflector {
    /// Binds `bind` inside `ns` (ready when this returns) and serves on a background thread.
    /// `plan(sender_seq)` picks the action for each request.
    pub fn start(
        ns: &Netns,
        bind: SocketAddr,
        plan: impl Fn(u32) -> Action + Send + 'static,
    ) -> Result<FakeReflector> {
        Self::start_with(ns, bind, plan, false)
    }

    /// Like [`FakeReflector::start`]; with `no_checksum` the socket sets SO_NO_CHECK, so its
    /// IPv4 replies carry UDP checksum 0 ("none").
    pub fn start_with(
        ns: &Netns,
        bind: SocketAddr,
        plan: impl Fn(u32) -> Action + Send + 'static,
        no_checksum: bool,
    ) -> Result<FakeReflector> {
        Self::spawn(ns, bind, no_checksum, move |sock, stop| {
            serve(sock, plan, stop)
        })
    }

    /// Binds `bind` inside `ns` (ready when this returns) and runs `serve` on the socket on a
    /// background thread until stopped.
    fn spawn(
        ns: &Netns,
        bind: SocketAddr,
        no_checksum: bool,
        serve: impl FnOnce(UdpSocket, &AtomicBool) -> Result<FakeStats> + Send + 'static,
    ) -> Result<FakeReflector> {
        let sock = ns
            .enter(|| UdpSocket::bind(bind))?
            .with_context(|| format!("binding fake reflector on {bind}"))?;
        if no_checksum {
            set_no_check(&sock)?;
        }
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let local = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || serve(sock, &stop2));
        Ok(FakeReflector {
            stop,
            handle: Some(handle),
            local,
        })
    }

    /// Stops the thread and returns what it did.
    pub fn stop(mut self) -> Result<FakeStats> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .expect("running")
            .join()
            .map_err(|_| anyhow!("fake reflector thread panicked"))?
    }
}

impl Drop for FakeReflector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn set_no_check(sock: &UdpSocket) -> Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: valid socket fd and an int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_NO_CHECK");
    }
    Ok(())
}

/// The next datagram, waiting in read-timeout steps; `None` once `stop` is set or `deadline`
/// has passed.
fn next_datagram(
    sock: &UdpSocket,
    buf: &mut [u8],
    stop: &AtomicBool,
    deadline: Instant,
) -> Result<Option<(usize, SocketAddr)>> {
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        match sock.recv_from(buf) {
            Ok(x) => return Ok(Some(x)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("fake reflector recv"),
        }
    }
    Ok(None)
}

fn serve(sock: UdpSocket, plan: impl Fn(u32) -> Action, stop: &AtomicBool) -> Result<FakeStats> {
    let mut st = FakeStats::default();
    let mut buf = [0u8; 2048];
    let mut refl_seq = 0u32;
    let mut held: Option<(Vec<u8>, u64, u32, SocketAddr)> = None;
    let deadline = Instant::now() + FAKE_MAX_LIFE;
    let send = |p: &[u8], to: SocketAddr, st: &mut FakeStats| -> Result<()> {
        sock.send_to(p, to).context("fake reflector send")?;
        st.datagrams_sent += 1;
        Ok(())
    };
    while let Some((n, peer)) = next_datagram(&sock, &mut buf, stop, deadline)? {
        let t2 = tai_now_ns();
        st.requests += 1;
        let req = &buf[..n];
        let Some((_, seq)) = request_key(req) else {
            st.malformed += 1;
            continue;
        };
        let action = plan(seq);
        if action == Action::Drop {
            st.dropped += 1;
            continue;
        }
        let rseq = refl_seq;
        refl_seq = refl_seq.wrapping_add(1);
        match action {
            Action::Reorder if held.is_none() => {
                held = Some((req.to_vec(), t2, rseq, peer));
                continue;
            }
            Action::Duplicate => {
                let reply = build_reply(req, rseq, t2, tai_now_ns(), 64)?;
                send(&reply, peer, &mut st)?;
                send(&reply, peer, &mut st)?;
                st.duplicated += 1;
            }
            _ => send(
                &build_reply(req, rseq, t2, tai_now_ns(), 64)?,
                peer,
                &mut st,
            )?,
        }
        st.answered += 1;
        if let Some((h, ht2, hseq, to)) = held.take() {
            // T3 is taken when the held reply really leaves.
            send(&build_reply(&h, hseq, ht2, tai_now_ns(), 64)?, to, &mut st)?;
            st.answered += 1;
            st.reordered += 1;
        }
    }
    if let Some((h, ht2, hseq, to)) = held.take() {
        // Nothing came after it: it goes out last but is not out of order.
        send(&build_reply(&h, hseq, ht2, tai_now_ns(), 64)?, to, &mut st)?;
        st.answered += 1;
    }
    Ok(st)
}

impl FakeReflector {
    /// A fake reflector that answers every request with one genuine reply whose T3 is exactly
    /// `turnaround_ns` after its T2 (PTP format, and sent no earlier than that T3), then, from
    /// the same socket, with the datagrams `followers(n, &reply)` returns for the `n`th request
    /// (counted from 0), in that order. In its stats, `answered` counts the genuine replies and
    /// `datagrams_sent - answered` the followers.
    pub fn start_followed(
        ns: &Netns,
        bind: SocketAddr,
        turnaround_ns: u64,
        followers: impl FnMut(u64, &[u8]) -> Vec<Vec<u8>> + Send + 'static,
    ) -> Result<FakeReflector> {
        Self::spawn(ns, bind, false, move |sock, stop| {
            serve_followed(sock, turnaround_ns, followers, stop)
        })
    }
}

fn serve_followed(
    sock: UdpSocket,
    turnaround_ns: u64,
    mut followers: impl FnMut(u64, &[u8]) -> Vec<Vec<u8>>,
    stop: &AtomicBool,
) -> Result<FakeStats> {
    let mut st = FakeStats::default();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + FAKE_MAX_LIFE;
    while let Some((n, peer)) = next_datagram(&sock, &mut buf, stop, deadline)? {
        let t2 = tai_now_ns();
        st.requests += 1;
        let req = &buf[..n];
        if request_key(req).is_none() {
            st.malformed += 1;
            continue;
        }
        let t3 = t2 + turnaround_ns;
        let reply = build_reply(req, st.answered as u32, t2, t3, 64)?;
        // Honour the T3 it reports, or the sender's network RTT would come out short.
        while let Some(left) = t3.checked_sub(tai_now_ns()).filter(|l| *l > 0) {
            std::thread::sleep(Duration::from_nanos(left));
        }
        let extra = followers(st.answered, &reply);
        sock.send_to(&reply, peer).context("fake reflector send")?;
        st.answered += 1;
        st.datagrams_sent += 1;
        for p in &extra {
            sock.send_to(p, peer).context("fake reflector send")?;
            st.datagrams_sent += 1;
        }
    }
    Ok(st)
}
