//! A counting TCP proxy between ZooKeeper clients (agents) and ZooKeeper: what each client
//! costs ZooKeeper, in bytes and frames, per direction.
//!
//! Frames are split on ZooKeeper's 4-byte length prefix so that pings (xid -2) and watch
//! notifications (xid -1) are told apart from requests and their replies: a client's idle cost
//! (pings) then does not hide, or pass for, what a membership change costs. The first frame of
//! each direction is the session handshake (no header).
//!
//! The proxy runs on a thread that joined the namespace it listens in; dropping the
//! [`CountingProxy`] stops it and closes every connection.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::netns::Netns;
use crate::server_thread::ServerThread;

/// Longest frame the parser accepts (ZooKeeper's default jute.maxbuffer is about 1 MB): a
/// longer prefix means the stream is not ZooKeeper's and parsing stops (bytes still count).
pub const MAX_FRAME: usize = 64 << 20;
/// ZooKeeper's xids of server-initiated and keep-alive frames.
const XID_NOTIFICATION: i32 = -1;
const XID_PING: i32 = -2;

/// What went one way on a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Every byte, framing included.
    pub bytes: u64,
    pub frames: u64,
    pub ping_bytes: u64,
    pub ping_frames: u64,
    /// Watch notifications (server to client only).
    pub event_bytes: u64,
    pub event_frames: u64,
}

impl Flow {
    /// Bytes that are not pings: the session handshake, requests, replies and events.
    pub fn work_bytes(&self) -> u64 {
        self.bytes - self.ping_bytes
    }

    /// Frames that are neither pings nor events: requests (client to server) or replies.
    pub fn op_frames(&self) -> u64 {
        self.frames - self.ping_frames - self.event_frames
    }

    fn add(&mut self, o: &Flow) {
        self.bytes += o.bytes;
        self.frames += o.frames;
        self.ping_bytes += o.ping_bytes;
        self.ping_frames += o.ping_frames;
        self.event_bytes += o.event_bytes;
        self.event_frames += o.event_frames;
    }

    /// `self - earlier` (counters only grow).
    pub fn since(&self, earlier: &Flow) -> Flow {
        Flow {
            bytes: self.bytes - earlier.bytes,
            frames: self.frames - earlier.frames,
            ping_bytes: self.ping_bytes - earlier.ping_bytes,
            ping_frames: self.ping_frames - earlier.ping_frames,
            event_bytes: self.event_bytes - earlier.event_bytes,
            event_frames: self.event_frames - earlier.event_frames,
        }
    }
}

/// Both directions of one client (one connection, or all of a client's connections).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub to_server: Flow,
    pub to_client: Flow,
    pub connections: u64,
}

impl Traffic {
    /// Bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.to_server.bytes + self.to_client.bytes
    }

    /// Bytes both ways, pings excluded.
    pub fn work_bytes(&self) -> u64 {
        self.to_server.work_bytes() + self.to_client.work_bytes()
    }

    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            to_server: self.to_server.since(&earlier.to_server),
            to_client: self.to_client.since(&earlier.to_client),
            connections: self.connections - earlier.connections,
        }
    }
}

/// Splits one direction of a ZooKeeper stream into frames as bytes arrive.
#[derive(Debug, Default)]
struct FrameCounter {
    flow: Flow,
    /// Bytes of the current frame's length prefix (`len.1` of 4 read).
    len: ([u8; 4], usize),
    /// Body bytes of the current frame still to come.
    left: usize,
    /// The first bytes of the current body (its xid), `head.1` of 4 read.
    head: ([u8; 4], usize),
    /// Whether the current frame is the handshake (the first of the stream).
    handshake_done: bool,
    frame_len: usize,
    /// Not ZooKeeper framing: count bytes only.
    lost: bool,
}

impl FrameCounter {
    fn feed(&mut self, mut buf: &[u8]) {
        self.flow.bytes += buf.len() as u64;
        while !buf.is_empty() && !self.lost {
            if self.left == 0 {
                let (b, n) = &mut self.len;
                let take = (4 - *n).min(buf.len());
                b[*n..*n + take].copy_from_slice(&buf[..take]);
                *n += take;
                buf = &buf[take..];
                if *n < 4 {
                    return;
                }
                let len = u32::from_be_bytes(*b) as usize;
                self.len.1 = 0;
                if len > MAX_FRAME {
                    self.lost = true;
                    return;
                }
                self.frame_len = len;
                self.left = len;
                self.head.1 = 0;
                if len == 0 {
                    self.end_frame();
                }
                continue;
            }
            let take = self.left.min(buf.len());
            let (h, n) = &mut self.head;
            let hk = (4 - *n).min(take);
            h[*n..*n + hk].copy_from_slice(&buf[..hk]);
            *n += hk;
            self.left -= take;
            buf = &buf[take..];
            if self.left == 0 {
                self.end_frame();
            }
        }
    }

    fn end_frame(&mut self) {
        let bytes = 4 + self.frame_len as u64;
        self.flow.frames += 1;
        if !self.handshake_done {
            self.handshake_done = true;
            return;
        }
        if self.head.1 == 4 {
            match i32::from_be_bytes(self.head.0) {
                XID_PING => {
                    self.flow.ping_frames += 1;
                    self.flow.ping_bytes += bytes;
                }
                XID_NOTIFICATION => {
                    self.flow.event_frames += 1;
                    self.flow.event_bytes += bytes;
                }
                _ => {}
            }
        }
    }
}

/// One proxied connection.
#[derive(Debug)]
struct Conn {
    client: SocketAddr,
    opened: Instant,
    to_server: FrameCounter,
    to_client: FrameCounter,
}

type Conns = Arc<Mutex<Vec<Conn>>>;

/// A counting proxy in front of ZooKeeper; see the module docs.
pub struct CountingProxy {
    listen: SocketAddr,
    conns: Conns,
    /// Dropped last: stops and joins the server.
    _server: ServerThread,
}

impl CountingProxy {
    /// Listens on `listen` inside `ns` and forwards every connection to `upstream`.
    pub fn start(ns: &Netns, listen: SocketAddr, upstream: SocketAddr) -> Result<CountingProxy> {
        let conns: Conns = Arc::default();
        let c = conns.clone();
        let server = ServerThread::start(
            ns,
            "the ZooKeeper counting proxy",
            listen,
            move |listener, stop| accept_loop(listener, upstream, c, stop),
        )?;
        Ok(CountingProxy {
            listen,
            conns,
            _server: server,
        })
    }

    /// Where clients connect (the SERVERS_ZK to give them).
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// `addr:port` as SERVERS_ZK wants it.
    pub fn connect_string(&self) -> String {
        self.listen.to_string()
    }

    /// Traffic per client address, over all its connections so far.
    pub fn by_client(&self) -> BTreeMap<IpAddr, Traffic> {
        let conns = self.conns.lock().expect("proxy counters");
        let mut out: BTreeMap<IpAddr, Traffic> = BTreeMap::new();
        for c in conns.iter() {
            let t = out.entry(c.client.ip()).or_default();
            t.to_server.add(&c.to_server.flow);
            t.to_client.add(&c.to_client.flow);
            t.connections += 1;
        }
        out
    }

    /// Traffic of one client address (zero if it never connected).
    pub fn client(&self, ip: IpAddr) -> Traffic {
        self.by_client().remove(&ip).unwrap_or_default()
    }

    /// When each connection of `ip` was opened, oldest first.
    pub fn connection_times(&self, ip: IpAddr) -> Vec<Instant> {
        let conns = self.conns.lock().expect("proxy counters");
        conns
            .iter()
            .filter(|c| c.client.ip() == ip)
            .map(|c| c.opened)
            .collect()
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    conns: Conns,
    mut stop: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    let relay_stop = stop.clone();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((down, client)) = r else { continue };
                let idx = {
                    let mut c = conns.lock().expect("proxy counters");
                    c.push(Conn {
                        client,
                        opened: Instant::now(),
                        to_server: FrameCounter::default(),
                        to_client: FrameCounter::default(),
                    });
                    c.len() - 1
                };
                let conns = conns.clone();
                tasks.spawn(relay(down, upstream, idx, conns, relay_stop.clone()));
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    tasks.shutdown().await;
}

/// Copies both ways until either side closes (or the proxy stops), counting.
async fn relay(
    down: TcpStream,
    upstream: SocketAddr,
    idx: usize,
    conns: Conns,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(Ok(up)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream)).await
    else {
        return;
    };
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (mut dr, mut dw) = down.into_split();
    let (mut ur, mut uw) = up.into_split();
    let c1 = conns.clone();
    let to_server = async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = dr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            c1.lock().expect("proxy counters")[idx]
                .to_server
                .feed(&buf[..n]);
            if uw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = uw.shutdown().await;
    };
    let to_client = async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = ur.read(&mut buf).await {
            if n == 0 {
                break;
            }
            conns.lock().expect("proxy counters")[idx]
                .to_client
                .feed(&buf[..n]);
            if dw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = dw.shutdown().await;
    };
    tokio::select! {
        _ = async { tokio::join!(to_server, to_client) } => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(xid: i32, body: usize) -> Vec<u8> {
        let mut f = ((4 + body) as u32).to_be_bytes().to_vec();
        f.extend(xid.to_be_bytes());
        f.extend(std::iter::repeat_n(7u8, body));
        f
    }

    #[test]
    fn frames_are_classified_across_reads() {
        let mut stream = 20u32.to_be_bytes().to_vec();
        stream.extend([0u8; 20]); // handshake
        stream.extend(frame(XID_PING, 8));
        stream.extend(frame(XID_NOTIFICATION, 40));
        stream.extend(frame(5, 100));
        for chunk in [1, 3, 7, 1000] {
            let mut c = FrameCounter::default();
            for part in stream.chunks(chunk) {
                c.feed(part);
            }
            let f = c.flow;
            assert_eq!(f.bytes, stream.len() as u64);
            assert_eq!(f.frames, 4);
            assert_eq!((f.ping_frames, f.ping_bytes), (1, 16));
            assert_eq!((f.event_frames, f.event_bytes), (1, 48));
            assert_eq!(f.op_frames(), 2);
            assert_eq!(f.work_bytes(), stream.len() as u64 - 16);
        }
    }

    #[test]
    fn a_huge_prefix_stops_parsing_but_not_counting() {
        let mut c = FrameCounter::default();
        c.feed(&u32::MAX.to_be_bytes());
        c.feed(&[1, 2, 3]);
        assert_eq!(c.flow.bytes, 7);
        assert_eq!(c.flow.frames, 0);
    }
}
