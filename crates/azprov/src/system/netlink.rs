//! Blocking rtnetlink for `RealSystem`: dump the IPv4 routes and add one route, dump links and IPv4 addresses, set a
//! link up, and watch link notifications (`RTNLGRP_LINK`) with a bounded `poll`. Messages are built and parsed by
//! `netlink-packet-route`; the socket is `netlink-sys` without any async runtime.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::{Ipv4Address, Ipv4Route, Link, LinkEvent, LinkWatch, NewIpv4Route, NextHop};

/// Large enough for any datagram the kernel sends in a dump.
const RECV_BUF: usize = 64 * 1024;
/// Sanity bound on a dump's length (messages), so a misbehaving peer cannot keep us reading forever.
const MAX_MESSAGES: usize = 1 << 20;

fn open() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    Ok(sock)
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Send one request and collect the answers until `NLMSG_DONE` (dumps) or the ACK/NACK (`NLM_F_ACK`).
/// Messages the library cannot parse are skipped.
fn request(payload: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let sock = open()?;
    let seq = std::process::id() ^ 0x617a_7076; // any value; replies echo it
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
    msg.finalize();
    let mut out_buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut out_buf[..]);
    sock.send(&out_buf, 0)?;

    let mut answers = Vec::new();
    let mut buf = vec![0u8; RECV_BUF];
    let mut seen = 0usize;
    loop {
        let size = sock.recv(&mut &mut buf[..], 0)?.min(buf.len());
        if size == 0 {
            return Err(invalid("netlink socket closed before the answer ended"));
        }
        let mut end = None;
        for parsed in messages(&buf[..size])? {
            seen += 1;
            if seen > MAX_MESSAGES {
                return Err(invalid("netlink answer too long"));
            }
            let Some(parsed) = parsed else { continue };
            if parsed.header.sequence_number != seq {
                continue;
            }
            match parsed.payload {
                NetlinkPayload::Done(_) => end = Some(Ok(())),
                NetlinkPayload::Error(e) => {
                    end = Some(match e.code {
                        None => Ok(()),
                        Some(_) => Err(e.to_io()),
                    });
                }
                NetlinkPayload::InnerMessage(m) => answers.push(m),
                _ => {}
            }
            if end.is_some() {
                break;
            }
        }
        if let Some(end) = end {
            return end.map(|_| answers);
        }
    }
}

/// The messages of one datagram, in order; `None` for a message the library cannot parse.
fn messages(buf: &[u8]) -> io::Result<Vec<Option<NetlinkMessage<RouteNetlinkMessage>>>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < 16 || off + len > buf.len() {
            return Err(invalid(format!("malformed netlink message length {len}")));
        }
        out.push(NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..off + len]).ok());
        off += len.div_ceil(4) * 4;
    }
    Ok(out)
}

fn v4(addr: &RouteAddress) -> Option<Ipv4Addr> {
    match addr {
        RouteAddress::Inet(a) => Some(*a),
        _ => None,
    }
}

/// Our view of one `RTM_NEWROUTE` message; `None` for non-IPv4 messages.
fn convert(msg: &RouteMessage) -> Option<Ipv4Route> {
    if msg.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut route = Ipv4Route {
        destination: Ipv4Addr::UNSPECIFIED,
        prefix_len: msg.header.destination_prefix_length,
        kind: u8::from(msg.header.kind),
        table: u32::from(msg.header.table),
        protocol: u8::from(msg.header.protocol),
        metric: 0,
        hops: Vec::new(),
    };
    let mut oif = None;
    let mut gateway = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => route.destination = v4(a)?,
            RouteAttribute::Gateway(a) => gateway = v4(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => route.metric = *p,
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::MultiPath(hops) => {
                for h in hops {
                    let gw = h.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(a) => v4(a),
                        _ => None,
                    });
                    route.hops.push(NextHop { oif: h.interface_index, gateway: gw });
                }
            }
            _ => {}
        }
    }
    if let Some(oif) = oif {
        route.hops.insert(0, NextHop { oif, gateway });
    }
    Some(route)
}

pub(super) fn ipv4_routes() -> io::Result<Vec<Ipv4Route>> {
    let mut req = RouteMessage::default();
    req.header.address_family = AddressFamily::Inet;
    let answers = request(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)?;
    Ok(answers
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => convert(r),
            _ => None,
        })
        .collect())
}

pub(super) fn add_ipv4_route(route: &NewIpv4Route) -> io::Result<()> {
    if route.prefix_len > 32 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "prefix length above 32"));
    }
    let mut msg = RouteMessage::default();
    msg.header = RouteHeader {
        address_family: AddressFamily::Inet,
        destination_prefix_length: route.prefix_len,
        table: RouteHeader::RT_TABLE_MAIN,
        protocol: RouteProtocol::Boot,
        scope: RouteScope::Universe,
        kind: RouteType::Unicast,
        ..Default::default()
    };
    if route.prefix_len > 0 {
        msg.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(route.destination)));
    }
    msg.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(route.gateway)));
    msg.attributes.push(RouteAttribute::Oif(route.oif));
    request(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK).map(|_| ())
}

// --- links and addresses ----------------------------------------------------------------------------------------

/// `RTNLGRP_LINK`: the multicast group of link notifications (`RTMGRP_LINK` is its bit in the old bind mask).
const RTNLGRP_LINK: u32 = 1;
/// Receive buffer of a watch socket: room for bursts of link notifications (each ~1–2 KiB with statistics).
const WATCH_RCVBUF: usize = 1 << 20;

/// `00:0d:3a:04:75:98` bytes → `000D3A047598`; empty unless six bytes.
fn mac12(bytes: &[u8]) -> String {
    if bytes.len() != 6 {
        return String::new();
    }
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Our view of one link message.
fn link_of(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        link_type: u16::from(msg.header.link_layer_type),
        flags: msg.header.flags.bits(),
        ..Default::default()
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) => link.mac = mac12(a),
            LinkAttribute::OperState(s) => link.oper_state = u8::from(*s),
            LinkAttribute::CarrierDownCount(c) => link.carrier_down_count = Some(*c),
            LinkAttribute::Controller(m) => link.master = Some(*m),
            _ => {}
        }
    }
    link
}

pub(super) fn links() -> io::Result<Vec<Link>> {
    let answers = request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)?;
    Ok(answers
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
            _ => None,
        })
        .collect())
}

pub(super) fn set_link_up(index: u32) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK).map(|_| ())
}

pub(super) fn ipv4_addresses() -> io::Result<Vec<Ipv4Address>> {
    let mut req = AddressMessage::default();
    req.header.family = AddressFamily::Inet;
    let answers = request(RouteNetlinkMessage::GetAddress(req), NLM_F_DUMP)?;
    let mut out = Vec::new();
    for m in &answers {
        let RouteNetlinkMessage::NewAddress(a) = m else { continue };
        if a.header.family != AddressFamily::Inet {
            continue;
        }
        // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on point-to-point links)
        let pick = |local: bool| {
            a.attributes.iter().find_map(|attr| match (attr, local) {
                (AddressAttribute::Local(IpAddr::V4(v)), true) | (AddressAttribute::Address(IpAddr::V4(v)), false) => {
                    Some(*v)
                }
                _ => None,
            })
        };
        if let Some(address) = pick(true).or_else(|| pick(false)) {
            out.push(Ipv4Address { index: a.header.index, address, prefix_len: a.header.prefix_len });
        }
    }
    Ok(out)
}

/// A socket subscribed to `RTNLGRP_LINK`, with the events of the last datagram not yet handed out.
pub(super) struct LinkSocket {
    sock: Socket,
    pending: VecDeque<LinkEvent>,
    buf: Vec<u8>,
}

pub(super) fn link_watch() -> io::Result<LinkSocket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    // a larger queue makes an overrun (and a re-read of the state) rarer; not fatal when refused
    let _ = sock.set_rx_buf_sz(WATCH_RCVBUF);
    sock.add_membership(RTNLGRP_LINK)?;
    sock.set_non_blocking(true)?;
    Ok(LinkSocket { sock, pending: VecDeque::new(), buf: vec![0u8; RECV_BUF] })
}

impl LinkSocket {
    /// Read every datagram queued now into `pending`; `Ok(false)` when none was queued.
    fn drain(&mut self) -> io::Result<bool> {
        let mut any = false;
        loop {
            let (size, from) = match self.sock.recv_from(&mut &mut self.buf[..], 0) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(any),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOBUFS.raw_os_error()) => {
                    self.pending.push_back(LinkEvent::Overrun);
                    any = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            any = true;
            // only the kernel (port 0) speaks for the links
            if from.port_number() != 0 {
                continue;
            }
            let size = size.min(self.buf.len());
            let Ok(parsed) = messages(&self.buf[..size]) else {
                // a datagram we cannot walk: treat as lost events
                self.pending.push_back(LinkEvent::Overrun);
                continue;
            };
            for m in parsed.into_iter().flatten() {
                match m.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                        self.pending.push_back(LinkEvent::New(link_of(&l)))
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                        self.pending.push_back(LinkEvent::Del(link_of(&l)))
                    }
                    _ => {}
                }
            }
        }
    }
}

impl LinkWatch for LinkSocket {
    fn next_event(&mut self, timeout: Duration) -> io::Result<Option<LinkEvent>> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            if self.drain()? {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ts = Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&self.sock, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}
