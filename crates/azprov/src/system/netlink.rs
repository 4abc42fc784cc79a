//! Blocking rtnetlink requests for `RealSystem`: dump the IPv4 routes and add one route. Messages are built and
//! parsed by `netlink-packet-route`; the socket is `netlink-sys` without any async runtime.

use std::io;
use std::net::Ipv4Addr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::{Ipv4Route, NewIpv4Route, NextHop};

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
        let mut off = 0usize;
        while off + 16 <= size {
            let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
            if len < 16 || off + len > size {
                return Err(invalid(format!("malformed netlink message length {len}")));
            }
            seen += 1;
            if seen > MAX_MESSAGES {
                return Err(invalid("netlink answer too long"));
            }
            let one = &buf[off..off + len];
            off += len.div_ceil(4) * 4;
            let Ok(parsed) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(one) else { continue };
            if parsed.header.sequence_number != seq {
                continue;
            }
            match parsed.payload {
                NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(answers),
                        Some(_) => Err(e.to_io()),
                    };
                }
                NetlinkPayload::InnerMessage(m) => answers.push(m),
                _ => {}
            }
        }
    }
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
