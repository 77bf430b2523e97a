//! Hand-made UDP/IP frames sent with a pnet datalink channel from inside a namespace.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use pnet::datalink::{self, Channel, Config};
use pnet::packet::MutablePacket;
use pnet::packet::ethernet::{EtherTypes, MutableEthernetPacket};
use pnet::packet::ip::IpNextHeaderProtocols;
use pnet::packet::ipv4::{self, MutableIpv4Packet};
use pnet::packet::ipv6::MutableIpv6Packet;
use pnet::util::MacAddr;

use crate::capture::udp_checksum;
use crate::netns::Netns;

/// What to put in the UDP checksum field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Csum {
    /// Correct over the octets actually sent.
    Valid,
    /// 0 (IPv4: "no checksum").
    Zero,
    /// This exact value.
    Raw(u16),
}

/// One UDP datagram to craft.
#[derive(Clone, Debug)]
pub struct UdpFrame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    /// UDP length field; `None` = 8 + payload length (correct).
    pub udp_len: Option<u16>,
    pub csum: Csum,
    pub ttl: u8,
    /// IPv4: send the datagram as two fragments, the first carrying this many octets of the
    /// UDP segment (a multiple of 8). See [`UdpFrame::build_frames`].
    pub ipv4_fragment_at: Option<usize>,
    /// IPv6: this many Destination Options headers (8 octets each) before the UDP header.
    pub ipv6_dst_opts: usize,
}

impl UdpFrame {
    pub fn new(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    ) -> UdpFrame {
        UdpFrame {
            src_mac,
            dst_mac,
            src,
            dst,
            sport,
            dport,
            payload,
            udp_len: None,
            csum: Csum::Valid,
            ttl: 64,
            ipv4_fragment_at: None,
            ipv6_dst_opts: 0,
        }
    }

    /// The UDP segment: header (checksum as `csum` says) and payload.
    fn segment(&self) -> Vec<u8> {
        let seg_len = 8 + self.payload.len();
        let mut seg = vec![0u8; seg_len];
        seg[0..2].copy_from_slice(&self.sport.to_be_bytes());
        seg[2..4].copy_from_slice(&self.dport.to_be_bytes());
        let ulen = self.udp_len.unwrap_or(seg_len as u16);
        seg[4..6].copy_from_slice(&ulen.to_be_bytes());
        seg[8..].copy_from_slice(&self.payload);
        let c = match self.csum {
            Csum::Valid => udp_checksum(self.src, self.dst, &seg),
            Csum::Zero => 0,
            Csum::Raw(v) => v,
        };
        seg[6..8].copy_from_slice(&c.to_be_bytes());
        seg
    }

    fn eth_header(&self, ethertype: u16) -> Vec<u8> {
        let mut f = Vec::with_capacity(1514);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// The Ethernet frames of this datagram: one, or two IPv4 fragments (`ipv4_fragment_at`),
    /// with `ipv6_dst_opts` extension headers on IPv6. The UDP checksum covers the whole
    /// datagram, as the receiver checks it after reassembly.
    pub fn build_frames(&self) -> Result<Vec<Vec<u8>>> {
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let Some(at) = self.ipv4_fragment_at else {
                    return Ok(vec![self.build()?]);
                };
                let seg = self.segment();
                if at % 8 != 0 || at == 0 || at >= seg.len() {
                    bail!("fragment split {at} of a {}-octet segment", seg.len());
                }
                let id: u16 = rand::random();
                let mut frames = Vec::new();
                for (part, off, more) in [(&seg[..at], 0, true), (&seg[at..], at, false)] {
                    let mut ip = [0u8; 20];
                    ip[0] = 0x45;
                    ip[2..4].copy_from_slice(&((20 + part.len()) as u16).to_be_bytes());
                    ip[4..6].copy_from_slice(&id.to_be_bytes());
                    let frag = (off / 8) as u16 | if more { 0x2000 } else { 0 };
                    ip[6..8].copy_from_slice(&frag.to_be_bytes());
                    ip[8] = self.ttl;
                    ip[9] = 17;
                    ip[12..16].copy_from_slice(&s.octets());
                    ip[16..20].copy_from_slice(&d.octets());
                    let c = crate::capture::csum_fold(crate::capture::csum_add(0, &ip));
                    ip[10..12].copy_from_slice(&(!c).to_be_bytes());
                    let mut f = self.eth_header(0x0800);
                    f.extend_from_slice(&ip);
                    f.extend_from_slice(part);
                    frames.push(f);
                }
                Ok(frames)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                if self.ipv6_dst_opts == 0 {
                    return Ok(vec![self.build()?]);
                }
                let seg = self.segment();
                let mut ext = Vec::new();
                for i in 0..self.ipv6_dst_opts {
                    let next = if i + 1 == self.ipv6_dst_opts { 17 } else { 60 };
                    // Next Header, Hdr Ext Len 0 (8 octets), PadN of 4 octets.
                    ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                }
                let mut ip = [0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&((ext.len() + seg.len()) as u16).to_be_bytes());
                ip[6] = 60;
                ip[7] = self.ttl;
                ip[8..24].copy_from_slice(&s.octets());
                ip[24..40].copy_from_slice(&d.octets());
                let mut f = self.eth_header(0x86DD);
                f.extend_from_slice(&ip);
                f.extend_from_slice(&ext);
                f.extend_from_slice(&seg);
                Ok(vec![f])
            }
            _ => bail!("mixed address families"),
        }
    }

    /// The Ethernet frame. IP lengths always describe the octets present; only the UDP length
    /// field can lie (`udp_len`).
    pub fn build(&self) -> Result<Vec<u8>> {
        let seg = self.segment();
        let seg_len = seg.len();

        let ip_len = match self.src {
            IpAddr::V4(_) => 20,
            IpAddr::V6(_) => 40,
        };
        let mut buf = vec![0u8; 14 + ip_len + seg_len];
        {
            let mut eth = MutableEthernetPacket::new(&mut buf).context("eth buffer")?;
            eth.set_source(MacAddr::from(self.src_mac));
            eth.set_destination(MacAddr::from(self.dst_mac));
            match (self.src, self.dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    eth.set_ethertype(EtherTypes::Ipv4);
                    let mut ip =
                        MutableIpv4Packet::new(eth.payload_mut()).context("ipv4 buffer")?;
                    ip.set_version(4);
                    ip.set_header_length(5);
                    ip.set_total_length((20 + seg_len) as u16);
                    ip.set_identification(rand::random());
                    ip.set_flags(ipv4::Ipv4Flags::DontFragment);
                    ip.set_ttl(self.ttl);
                    ip.set_next_level_protocol(IpNextHeaderProtocols::Udp);
                    ip.set_source(s);
                    ip.set_destination(d);
                    ip.set_payload(&seg);
                    let cs = ipv4::checksum(&ip.to_immutable());
                    ip.set_checksum(cs);
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    eth.set_ethertype(EtherTypes::Ipv6);
                    let mut ip =
                        MutableIpv6Packet::new(eth.payload_mut()).context("ipv6 buffer")?;
                    ip.set_version(6);
                    ip.set_payload_length(seg_len as u16);
                    ip.set_next_header(IpNextHeaderProtocols::Udp);
                    ip.set_hop_limit(self.ttl);
                    ip.set_source(s);
                    ip.set_destination(d);
                    ip.set_payload(&seg);
                }
                _ => bail!("mixed address families"),
            }
        }
        Ok(buf)
    }
}

/// Sends `frames` out of `ifname` in `ns` through an AF_PACKET channel (pnet datalink), with
/// `gap` between frames.
pub fn send_frames(ns: &Netns, ifname: &str, frames: &[Vec<u8>], gap: Duration) -> Result<()> {
    ns.enter(|| send_frames_here(ifname, frames, gap))?
}

/// [`send_frames`] from the calling thread's namespace (e.g. in a [`Netns::spawn_thread`]).
pub fn send_frames_here(ifname: &str, frames: &[Vec<u8>], gap: Duration) -> Result<()> {
    let iface = datalink::interfaces()
        .into_iter()
        .find(|i| i.name == ifname)
        .ok_or_else(|| anyhow!("no interface {ifname} here"))?;
    let cfg = Config {
        read_timeout: Some(Duration::from_millis(10)),
        ..Config::default()
    };
    let mut tx = match datalink::channel(&iface, cfg).context("datalink channel")? {
        Channel::Ethernet(tx, _rx) => tx,
        _ => bail!("unexpected channel type"),
    };
    for f in frames {
        match tx.send_to(f, None) {
            Some(Ok(())) => {}
            Some(Err(e)) => bail!("send_to {ifname}: {e}"),
            None => bail!("send_to {ifname}: no result"),
        }
        std::thread::sleep(gap);
    }
    Ok(())
}
